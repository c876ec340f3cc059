"""Faults injected for real into sweeps on a real local Ray and MLflow; each test reads back what
MLflow holds, the exit code and the one-line message."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from service_helpers import stop_session
from sweep_helpers import small_spec, sweep_runs, write_spec

pytestmark = pytest.mark.slow


def _run(*args, env=None, timeout=600):
    proc = subprocess.Popen([sys.executable, "-m", "stetune.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, env=env)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        stop_session(proc)
    return proc.returncode, out, err


def test_every_trial_failing_is_a_failed_command_naming_them(tmp_path):
    import os

    # fashion-mnist where it is not, offline: every trial raises DatasetNotFoundError
    spec = small_spec(tmp_path, "nodata", ["dataset=fashion-mnist", "cells.ste=[relu]",
                                           "cells.bits=[2, 4]", "budget.trials_per_cell=1",
                                           "search={}", "replicates.seeds=[1]", "max_failures=0",
                                           f"train.data_dir={tmp_path / 'nothing'}"])
    env = {**os.environ, "STETUNE_OFFLINE": "1", "STETUNE_SYSTEM_DATASETS": str(tmp_path / "no")}
    rc, out, err = _run("sweep", str(write_spec(spec, tmp_path / "s.yaml")), "--quiet", env=env)
    assert rc == 3, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("stetune: 2 trial(s) failed: search: relu/2 (") and "relu/4" in last
    assert "fashion-mnist" in last  # why, from the trial's error
    header = next(ln for ln in out.splitlines() if ln.startswith("cell"))
    assert "failed" in header.split() and "done" in header.split()
    row = next(ln for ln in out.splitlines() if ln.startswith("relu/2")).split()
    assert row[1:6] == ["1", "0", "0", "0", "1"]  # trials, done, pruned, diverged, failed
    state = json.loads((spec.sweep_dir() / "sweep.json").read_text())
    assert set(state["failed"]) == {"search"} and len(state["failed"]["search"]) == 2
    _, parents, children = sweep_runs(spec)
    assert parents[0].info.status == "FINISHED"  # the sweep did its budget; its trials failed
    assert sorted((c.info.status, c.data.tags["stetune.status"]) for c in children) == \
        [("FAILED", "failed")] * 2
