"""Helpers for the sweep integration tests: a small real spec and MLflow checks."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

import yaml
from mlflow.tracking import MlflowClient

from stetune.spec import SweepSpec
from stetune.spec.load import apply_overrides

ROOT = Path(__file__).resolve().parents[1]


def small_spec(tmp_path: Path, name: str, sets: list[str] = (), tracking_uri: str | None = None) -> SweepSpec:
    d = yaml.safe_load((ROOT / "sweeps" / "quickstart.yaml").read_text())
    d = apply_overrides(d, [f"name={name}", f"storage={tmp_path}", "train.epochs=2",
                            "train.limit=400", *sets])
    if tracking_uri:
        d["mlflow"] = {"tracking_uri": tracking_uri}
    return SweepSpec.from_dict(d)


def write_spec(spec: SweepSpec, path: Path) -> Path:
    path.write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
    return path


def sweep_runs(spec: SweepSpec):
    """(parent runs, child runs) of the sweep, active runs only."""
    client = MlflowClient(spec.resolved_tracking_uri())
    exp = client.get_experiment_by_name(spec.resolved_experiment())
    runs = client.search_runs([exp.experiment_id], max_results=10_000)
    parents = [r for r in runs if r.data.tags.get("stetune.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("stetune.kind") == "trial"]
    return client, parents, children


def check_one_run_per_trial(spec: SweepSpec, n_search: int, n_replicate: int,
                            statuses=("finished", "pruned", "diverged")) -> list:
    """One finished parent; one finished child per trial, each with epochs 1..last exactly once."""
    client, parents, children = sweep_runs(spec)
    assert len(parents) == 1, [p.info.run_name for p in parents]
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    ids = [c.data.tags["stetune.trial_id"] for c in children]
    assert len(ids) == len(set(ids)), f"a trial has two MLflow runs: {sorted(ids)}"
    phases = [c.data.tags["stetune.phase"] for c in children]
    assert (phases.count("search"), phases.count("replicate")) == (n_search, n_replicate)
    for c in children:
        name = c.data.tags["stetune.trial_id"]
        assert c.info.status == "FINISHED", (name, c.info.status)
        status = c.data.tags["stetune.status"]
        assert status in statuses, (name, status)
        last = int(c.data.metrics["final/epoch"])
        if status == "finished":
            assert last == spec.epochs, (name, last)
        for key in ("epoch", "val_acc", "train_loss"):
            steps = [m.step for m in client.get_metric_history(c.info.run_id, key)]
            assert sorted(steps) == list(range(1, last + 1)), (name, key, steps)  # no gap, no dup
        assert "node_id" not in c.data.metrics  # a tag, not a metric
        assert c.data.params["ste"] == c.data.tags["stetune.ste"]
    return children


def cli(*args, env=None) -> subprocess.Popen:
    """`stetune ARGS` in its own session (stop_session ends it and its local Ray)."""
    return subprocess.Popen([sys.executable, "-m", "stetune.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, env=env)


def wait_for_runs(spec: SweepSpec, driver: subprocess.Popen, ready, timeout: float = 300) -> None:
    """Poll MLflow until ready(children) holds, the driver still running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.5)
        assert driver.poll() is None, driver.communicate()
        uri = spec.resolved_tracking_uri()
        if uri.startswith("sqlite:") and not (spec.sweep_dir() / "mlflow.db").exists():
            continue
        try:
            _, _, children = sweep_runs(spec)
        except Exception:  # the store is still being created
            continue
        if ready(children):
            return
    pytest.fail("the sweep never reached the point to inject the fault")
