"""The sweep service end to end on a real local Ray and real MLflow (sqlite and a server)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from stetune.sweep import run_sweep
from stetune.sweep.runner import without_credentials
from sweep_helpers import check_one_run_per_trial, small_spec, sweep_runs, write_spec

pytestmark = pytest.mark.slow


def test_local_sweep_one_parent_one_child_per_trial(tmp_path, local_ray):
    spec = small_spec(tmp_path, "local", ["budget.trials_per_cell=2", "replicates.seeds=[1, 2]",
                                          "train.epochs=1"])
    state = run_sweep(spec, verbose=0)
    children = check_one_run_per_trial(spec, n_search=12, n_replicate=12)
    # every cell got its own equal budget, and its best config was replicated with each seed
    cells = [c.data.tags["stetune.cell"] for c in children if c.data.tags["stetune.phase"] == "search"]
    assert sorted(set(cells)) == sorted(f"{s}/{b}" for s, b in spec.cells())
    assert all(cells.count(c) == 2 for c in set(cells))
    rows = {r["cell"]: r for r in state["summary"]}
    assert all(r["replicates"] == 2 and 0 < r["replicate_val_acc_mean"] <= 1 for r in rows.values())
    # the parent run holds the spec and the final state
    client, (parent,), _ = sweep_runs(spec)
    names = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"spec.yaml", "sweep.json"} <= names


def test_sweep_logs_to_a_real_mlflow_server(tmp_path, local_ray, mlflow_server, monkeypatch):
    url, _ = mlflow_server
    for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(var, raising=False)  # restored after: run_sweep sets them
    # a password in the URI (with '@', ':' and '/' in it) is written nowhere
    secret = "s3:cr@t/x"
    with_password = url.replace("http://", f"http://alice:{secret}@")
    spec = small_spec(tmp_path, "served", ["budget.trials_per_cell=1", "replicates.seeds=[]",
                                           "cells.bits=[2]"], tracking_uri=with_password)
    run_sweep(spec, verbose=0)
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == secret  # where MLflow's client reads it
    spec = without_credentials(spec)  # such a URI is no URL for requests either
    assert spec.mlflow.tracking_uri == url
    check_one_run_per_trial(spec, n_search=3, n_replicate=0)
    leaks = [str(f) for f in spec.sweep_dir().rglob("*") if f.is_file()
             and "s3:cr" in f.read_bytes().decode("latin1")]
    assert not leaks, leaks  # spec.json, sweep.json, Tune's experiment and trial state
    client, parents, children = sweep_runs(spec)
    for run in (*parents, *children):
        assert not any("s3:cr" in str(v) for v in (*run.data.params.values(),
                                                     *run.data.tags.values()))


def test_existing_sweep_name_is_refused(tmp_path, local_ray):
    spec = small_spec(tmp_path, "twice", ["budget.trials_per_cell=1", "replicates.seeds=[]",
                                          "cells.ste=[relu]", "cells.bits=[2]"])
    run_sweep(spec, verbose=0)
    with pytest.raises(FileExistsError, match="stetune resume twice"):
        run_sweep(spec, verbose=0)


def kill_session(sid: int) -> None:
    """SIGKILL every process of session `sid`: the driver and the local Ray it started."""
    for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
        try:
            if os.getsid(pid) == sid:
                os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "stetune.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True, **kw)


def test_sigkill_driver_then_resume_finishes_exactly_the_budget(tmp_path):
    spec = small_spec(tmp_path, "crash", ["budget.trials_per_cell=3", "replicates.seeds=[1]",
                                          "cells.ste=[identity, clipped_relu]", "cells.bits=[2]",
                                          "train.epochs=3", "train.limit=1000"])
    path = write_spec(spec, tmp_path / "crash.yaml")
    driver = _cli("sweep", str(path), "--quiet")
    # wait until the search is under way (some trials ended, others still running), then SIGKILL
    # the driver and every process of its session (its local Ray too)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        time.sleep(1)
        assert driver.poll() is None, driver.stdout.read()
        if (tmp_path / "crash" / "mlflow.db").exists():
            try:
                _, _, children = sweep_runs(spec)
            except Exception:  # store still being created
                continue
            if sum(c.data.tags.get("stetune.status") is not None for c in children) >= 2:
                break
    else:
        pytest.fail("the sweep made no progress")
    kill_session(driver.pid)
    driver.wait()

    resumed = _cli("resume", "crash", "--storage", str(tmp_path), "--quiet")
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out[-4000:]
    assert "clipped_relu/2" in out and "mlflow ui --backend-store-uri" in out
    check_one_run_per_trial(spec, n_search=6, n_replicate=2)
