"""SweepTracker against real MLflow: a sqlite store and a live `mlflow server` over HTTP."""

from __future__ import annotations

import math
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from stetune.naming import default_tracking_uri, flatten
from stetune.tracking import SweepTracker, TrackingConflict, TrackingStateError

SPEC = {"name": "demo", "model": "lenet5", "dataset": "digits",
        "grid": {"ste": ["clipped_relu", "identity"], "bits": [2, 4]},
        "budget": {"trials_per_cell": 3, "epochs": 3}, "search": {"lr": [0.001, 0.1]}}
TRIALS = {  # trial_id -> (ste, bits); t2 fails once, is retried, then pruned
    "t0": ("clipped_relu", 2), "t1": ("identity", 2), "t2": ("clipped_relu", 4)}


def epoch_metrics(trial_id: str, epoch: int) -> dict:
    loss = float("nan") if (trial_id == "t1" and epoch == 3) else 1.0 / epoch
    return {"val_acc": 0.5 + 0.1 * epoch, "train_loss": loss, "lr": 0.01,
            "acc@top1": 0.4, "ste": TRIALS[trial_id][0], "status": "ok"}  # last two: not metrics


def trial_args(trial_id: str) -> dict:
    ste, bits = TRIALS[trial_id]
    return {"params": {"lr": 0.01, "opt": {"momentum": 0.9}, "milestones": [20, 40]},
            "tags": {"stetune.ste": ste, "stetune.bits": bits, "stetune.phase": "search"}}


def run_sweep(uri: str, experiment: str, name: str) -> SweepTracker:
    tr = SweepTracker(uri, experiment, name)
    tr.start_sweep(SPEC)
    for tid in TRIALS:
        run_id = tr.trial_run(tid, **trial_args(tid))
        for epoch in (1, 2, 3) if tid != "t2" else (1, 2):
            tr.log_epoch(tid, epoch_metrics(tid, epoch), step=epoch)
        if tid == "t2":  # failure then retry from the epoch-1 checkpoint: epoch 2 is re-reported
            tr.end_trial(tid, "failed")
            assert tr.client.get_run(run_id).info.status == "FAILED"
            assert tr.trial_run(tid, **trial_args(tid)) == run_id
            for epoch in (2, 3):
                tr.log_epoch(tid, epoch_metrics(tid, epoch), step=epoch)
    tr.end_trial("t0", "finished", {"best_val_acc": 0.8, "ste": "clipped_relu"})
    tr.end_trial("t1", "diverged", {"best_val_acc": 0.7, "train_loss": float("inf")})
    tr.end_trial("t2", "pruned")
    tr.end_sweep()
    return tr


def check_sweep(client: MlflowClient, experiment: str, name: str, tmp: Path) -> None:
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL)
    parents = [r for r in runs if r.data.tags.get("stetune.kind") == "sweep"]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.data.tags["stetune.sweep"] == name and parent.info.status == "FINISHED"
    assert {"stetune.git_commit", "version.mlflow", "version.torch", "version.ray",
            "host.hostname", "host.python", "host.cpu_count"} <= set(parent.data.tags)
    assert parent.data.params["budget.trials_per_cell"] == "3"
    assert parent.data.params["grid.ste"] == '["clipped_relu", "identity"]'

    children = {r.data.tags["stetune.trial_id"]: r for r in runs if r is not parent}
    assert set(children) == set(TRIALS) and len(runs) == 4
    expected = {"t0": ("finished", "FINISHED"), "t1": ("diverged", "FINISHED"),
                "t2": ("pruned", "FINISHED")}
    for tid, run in children.items():
        t = run.data.tags
        assert t["mlflow.parentRunId"] == parent.info.run_id and run.info.run_name == tid
        assert (t["stetune.status"], run.info.status) == expected[tid]
        assert (t["stetune.ste"], t["stetune.bits"], t["stetune.phase"]) == \
            (TRIALS[tid][0], str(TRIALS[tid][1]), "search")
        assert run.data.params == {"lr": "0.01", "opt.momentum": "0.9", "milestones": "[20, 40]"}
        hist = client.get_metric_history(run.info.run_id, "val_acc")
        assert sorted(m.step for m in hist) == [1, 2, 3]
        assert "ste" not in run.data.metrics and "status" not in run.data.metrics
        assert "acc_top1" in run.data.metrics  # '@' is not allowed in metric keys
    assert children["t0"].data.metrics["final/best_val_acc"] == 0.8
    assert "final/ste" not in children["t0"].data.metrics
    assert math.isnan(children["t1"].data.metrics["train_loss"])  # divergence stays visible
    # sqlite stores +inf as the largest double; either way it is not finite
    assert children["t1"].data.metrics["final/train_loss"] >= sys.float_info.max

    local = client.download_artifacts(parent.info.run_id, "spec.yaml", str(tmp))
    assert yaml.safe_load(Path(local).read_text()) == SPEC


@pytest.fixture(scope="module")
def sqlite_uri(tmp_path_factory) -> str:
    # One store for the module: creating a sqlite store runs MLflow's migrations (seconds).
    return default_tracking_uri(tmp_path_factory.mktemp("store") / "sweeps")


def test_flatten_and_uri(tmp_path):
    assert flatten({"a": {"b": 1, "c": [1, "x"]}, "d": (), "e": {}}) == \
        {"a.b": 1, "a.c": '[1, "x"]', "d": "[]", "e": "{}"}
    assert flatten({"x": 1}, prefix="p") == {"p.x": 1}
    uri = default_tracking_uri(tmp_path / "s" / "sw")
    assert uri == f"sqlite:///{tmp_path}/s/sw/mlflow.db" and uri.startswith("sqlite:////")


def test_sqlite_sweep(sqlite_uri, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # artifacts must land next to the db, not in ./mlruns
    run_sweep(sqlite_uri, "exp-sqlite", "sweep-a")
    check_sweep(MlflowClient(sqlite_uri), "exp-sqlite", "sweep-a", tmp_path)
    assert not (tmp_path / "mlruns").exists()
    db_dir = Path(sqlite_uri.removeprefix("sqlite:///")).parent
    assert list((db_dir / "artifacts").rglob("spec.yaml"))


def test_resume_is_idempotent(sqlite_uri, tmp_path):
    first = run_sweep(sqlite_uri, "exp-resume", "sweep-r")
    client = MlflowClient(sqlite_uri)
    exp_id = client.get_experiment_by_name("exp-resume").experiment_id
    n_runs = len(client.search_runs([exp_id], run_view_type=ViewType.ALL))
    t0 = first.trial_run("t0", **trial_args("t0"))

    # A restarted driver: new object, empty caches, same store.
    second = SweepTracker(sqlite_uri, "exp-resume", "sweep-r")
    assert second.start_sweep(SPEC, resume=True) == first.parent_run_id
    parent = client.get_run(first.parent_run_id)
    assert parent.info.status == "RUNNING" and parent.data.tags["stetune.resumes"] == "1"
    second.log_epoch("t1", epoch_metrics("t1", 3), step=3)  # cache miss before trial_run
    assert second.trial_run("t0", **trial_args("t0")) == t0
    for epoch in (2, 3, 4):
        second.log_epoch("t0", {"val_acc": 0.9, "epoch": 99}, step=epoch)
    second.end_trial("t0", "finished")
    second.end_sweep()

    assert sorted(m.step for m in client.get_metric_history(t0, "val_acc")) == [1, 2, 3, 4]
    assert "epoch" not in client.get_run(t0).data.metrics  # the step is the epoch
    t1 = client.get_run(second.trial_run("t1", **trial_args("t1")))
    assert len(client.get_metric_history(t1.info.run_id, "val_acc")) == 3
    assert len(client.search_runs([exp_id], run_view_type=ViewType.ALL)) == n_runs
    assert client.get_run(t0).data.params == {"lr": "0.01", "opt.momentum": "0.9",
                                              "milestones": "[20, 40]"}


def test_existing_name_without_resume(sqlite_uri):
    SweepTracker(sqlite_uri, "exp-dup", "dup").start_sweep(SPEC)
    with pytest.raises(TrackingConflict, match=re.escape(
            "a sweep named 'dup' already exists in MLflow experiment 'exp-dup'; use another name")):
        SweepTracker(sqlite_uri, "exp-dup", "dup").start_sweep(SPEC)


def test_resume_of_a_sweep_mlflow_does_not_hold_is_refused(sqlite_uri):
    tracker = SweepTracker(sqlite_uri, "exp-gone", "gone")
    with pytest.raises(TrackingStateError, match="holds no run of sweep 'gone'"):
        tracker.start_sweep(SPEC, resume=True)
    assert tracker.client.search_runs([tracker.experiment_id]) == []  # nothing made instead


def test_secrets_are_masked(sqlite_uri, tmp_path):
    spec = {**SPEC, "storage": {"API_Key": "k-123", "Password": "pw-123", "path": "/data"},
            "credentials": {"user": "u-123"}, "hooks": [{"token": "tk-123"}],
            "mlflow": {"tracking_uri": "postgresql://alice:db-123@db:5432/mlflow"}}
    tr = SweepTracker(sqlite_uri, "exp-secret", "sec")
    tr.start_sweep(spec)
    run_id = tr.trial_run("t0", params={"lr": 0.1, "aws_secret_access_key": "s-123"},
                          tags={"stetune.phase": "search", "hf_token": "t-123"})
    client = MlflowClient(sqlite_uri)
    parent, child = client.get_run(tr.parent_run_id), client.get_run(run_id)
    p = parent.data.params
    assert p["storage.API_Key"] == p["storage.Password"] == p["credentials"] == "***"
    assert p["storage.path"] == "/data" and "tk-123" not in p["hooks"]
    assert p["mlflow.tracking_uri"] == "postgresql://alice:***@db:5432/mlflow"
    assert child.data.params == {"lr": "0.1", "aws_secret_access_key": "***"}
    assert child.data.tags["hf_token"] == "***"
    text = Path(client.download_artifacts(tr.parent_run_id, "spec.yaml", str(tmp_path)))
    dumped = repr([p, parent.data.tags, child.data.params, child.data.tags, text.read_text()])
    assert not re.search(r"\w-123", dumped)


def test_http_server_sweep(mlflow_server, tmp_path):
    url, server_tmp = mlflow_server
    run_sweep(url, "exp-http", "sweep-h")
    check_sweep(MlflowClient(url), "exp-http", "sweep-h", tmp_path)
    assert list((server_tmp / "artifacts").rglob("spec.yaml"))  # stored by the server, proxied


def test_new_sqlite_store_appears_complete(tmp_path):
    """While a driver creates its store, anyone opening mlflow.db (stetune status, mlflow ui)
    finds either no file or every table migrated: a half-made store makes the second opener run
    MLflow's migrations again and fails the driver ("table _alembic_tmp_... already exists")."""
    db = tmp_path / "s" / "mlflow.db"
    creator = subprocess.Popen(
        [sys.executable, "-c", "import sys; from stetune.tracking import SweepTracker; "
         "SweepTracker(sys.argv[1], 'exp', 's')", f"sqlite:///{db}"])
    seen = []  # (tables, alembic versions) each time the file was there
    while creator.poll() is None:
        if db.exists():
            # wait out the creator's ordinary writes (its experiment) rather than count them
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
            try:
                tables = {r[0] for r in con.execute("select name from sqlite_master where type='table'")}
                version = (con.execute("select version_num from alembic_version").fetchall()
                           if "alembic_version" in tables else None)
                seen.append((frozenset(tables), version))
            except sqlite3.OperationalError as e:  # e.g. a table dropped mid-read by a migration
                seen.append((str(e), None))
            finally:
                con.close()
        time.sleep(0.002)
    assert creator.returncode == 0
    con = sqlite3.connect(db)
    final = (frozenset(r[0] for r in con.execute("select name from sqlite_master where type='table'")),
             con.execute("select version_num from alembic_version").fetchall())
    con.close()
    assert seen, "the store appeared only after the creator exited: nothing was observed"
    assert all(s == final for s in seen), [s for s in seen if s != final][:1]
    assert sorted(p.name for p in db.parent.iterdir() if p.name.endswith(".tmp")) == []
