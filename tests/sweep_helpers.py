"""Helpers for the sweep integration tests: a small real spec and MLflow checks."""

from __future__ import annotations

import json
import math
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
RETRIES_TAG = "stetune.retries"  # set by the tracking callback when Tune restarts a crashed trial


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
                            statuses=("finished", "pruned", "diverged"),
                            retries: bool = False) -> list:
    """One finished parent; one finished child per trial, each with epochs 1..last exactly once;
    and no trial retried unless `retries`: max_failures would otherwise hide a crash that the
    retry happened to get past."""
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
    # Tune's own count (its experiment state) must be what the run says, so a retry the tracker
    # failed to record is caught too
    tagged = {c.data.tags["stetune.trial_id"]: int(c.data.tags.get(RETRIES_TAG, 0))
              for c in children}
    assert tagged == tune_failures(spec), (tagged, tune_failures(spec))
    if not retries:
        retried = {k: n for k, n in tagged.items() if n}
        assert not retried, f"trials retried after a crash (times): {retried}"
    return children


def tune_failures(spec: SweepSpec) -> dict[str, int]:
    """{'<phase>-<trial id>': times Tune restarted the trial after a crash}, from each phase's
    newest experiment state: Tune's record, independent of what the tracker logged."""
    out = {}
    for phase_dir in sorted(p for p in spec.sweep_dir().iterdir() if p.is_dir()):
        states = sorted(phase_dir.glob("experiment_state-*.json"))
        if not states:
            continue
        for trial_json, meta_json in json.loads(states[-1].read_text())["trial_data"]:
            trial_id = json.loads(trial_json)["trial_id"]
            out[f"{phase_dir.name}-{trial_id}"] = json.loads(meta_json)["num_failures"]
    return out


def check_replicates_are_best(spec: SweepSpec) -> int:
    """Each cell's replicate runs (one per seed) carry exactly the params, all but the seed, of
    the cell's best search trial as the code defines it (kinds/network._best_per_cell): among
    the trials that ran every epoch (not pruned, diverged or failed), the best final
    <metric> by the spec's mode; a tie accepts any of the tied trials. Returns how many cells
    had a single best trial whose params differ from another search trial's: there, replicating
    any other trial fails this check."""
    _, _, children = sweep_runs(spec)
    sign, key = (1 if spec.mode == "max" else -1), f"final/{spec.metric}"
    tuned = lambda run: {k: v for k, v in run.data.params.items() if k != "seed"}  # noqa: E731
    discriminating = 0
    for cell in sorted({c.data.tags["stetune.cell"] for c in children}):
        mine = [c for c in children if c.data.tags["stetune.cell"] == cell]
        search = [c for c in mine if c.data.tags["stetune.phase"] == "search"]
        reps = [c for c in mine if c.data.tags["stetune.phase"] == "replicate"]
        done = [c for c in search if c.data.tags["stetune.status"] == "finished"
                and math.isfinite(c.data.metrics.get(key, math.nan))]
        if not done:  # nothing fully trained: nothing to replicate
            assert not reps, (cell, [tuned(r) for r in reps])
            continue
        best = max(sign * c.data.metrics[key] for c in done)
        want = [tuned(c) for c in done if sign * c.data.metrics[key] == best]
        seeds = sorted(int(r.data.params["seed"]) for r in reps)
        assert seeds == sorted(spec.replicates.seeds), (cell, seeds)
        for r in reps:
            assert tuned(r) in want, f"{cell}: replicated {tuned(r)}, but the best is {want}"
        if len(want) == 1 and any(tuned(c) != want[0] for c in search):
            discriminating += 1
    return discriminating


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
