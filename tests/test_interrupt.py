"""Ctrl-C (SIGINT) and SIGTERM stop a sweep cleanly: the running trials stop, sweep.json says
which phase was interrupted, every open MLflow run ends KILLED, the command exits 130 / 143 with
one line, and `resume` then finishes exactly the budget, with no run twice and no epoch twice."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from service_helpers import stop_session
from sweep_helpers import (check_one_run_per_trial, cli, small_spec, sweep_runs, tune_results,
                           wait_for_runs, write_spec)

pytestmark = pytest.mark.slow


def _interrupt(spec, driver, sig, phase: str) -> None:
    """Send `sig` to the driver alone (as `kill` or a scheduler would) and check what is left."""
    os.kill(driver.pid, sig)
    try:
        out, err = driver.communicate(timeout=180)
    finally:
        stop_session(driver)  # the driver's local Ray, whatever happened
    assert driver.returncode == 128 + sig, (driver.returncode, err[-3000:])
    lines = [ln for ln in err.splitlines() if ln.startswith("stetune ")]
    assert lines and lines[-1].startswith(f"stetune sweep: interrupted by {signal.Signals(sig).name} "
                                          f"during the {phase} phase"), err[-3000:]
    assert f"stetune resume {spec.name}" in lines[-1] and "Traceback" not in err
    state = json.loads((Path(spec.sweep_dir()) / "sweep.json").read_text())
    assert state["interrupted"] == {"phase": phase, "signal": signal.Signals(sig).name}
    assert phase not in state  # the phase is not recorded as done
    _, parents, children = sweep_runs(spec)
    assert [p.info.status for p in parents] == ["KILLED"]
    assert "RUNNING" not in {c.info.status for c in children}, [c.info.status for c in children]
    assert any(c.data.tags.get("stetune.status") == "interrupted" and c.info.status == "KILLED"
               for c in children)


def _resume(spec) -> None:
    resumed = cli("resume", spec.name, "--storage", spec.storage, "--quiet")
    try:
        out, err = resumed.communicate(timeout=600)
    finally:
        stop_session(resumed)
    assert resumed.returncode == 0, err[-4000:]
    state = json.loads((Path(spec.sweep_dir()) / "sweep.json").read_text())
    assert "interrupted" not in state and {"search", "replicate"} <= set(state)
    # the stop let the running trials checkpoint first: in Tune's own record of their results
    # (the tracker's dedup aside) no epoch was trained twice
    for phase in ("search", "replicate"):
        for trial, rows in tune_results(Path(spec.sweep_dir()) / phase).items():
            epochs = [r["epoch"] for r in rows if "epoch" in r]
            assert epochs == sorted(set(epochs)), (phase, trial, epochs)


def test_sigterm_during_search_then_resume(tmp_path):
    spec = small_spec(tmp_path, "term", ["budget.trials_per_cell=2", "replicates.seeds=[1]",
                                         "cells.ste=[identity, relu]", "cells.bits=[2]",
                                         "train.epochs=6", "train.limit=1000", "asha.enabled=false"])
    driver = cli("sweep", str(write_spec(spec, tmp_path / "term.yaml")), "--quiet")
    # a second driver is refused while this one lives, in one line naming it
    wait_for_runs(spec, driver, lambda cs: True)  # its store exists: it holds the lock
    second = cli("resume", spec.name, "--storage", spec.storage)
    out, err = second.communicate(timeout=120)
    assert second.returncode == 2, err[-3000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"stetune resume: error: sweep '{spec.name}' is being run by pid "
                           f"{driver.pid} on host ") and "since" in line
    # a search trial is running (its run's status is written as it starts and ends; its
    # metrics reach MLflow in batches, seconds later)
    wait_for_runs(spec, driver, lambda cs: any(c.info.status == "RUNNING" for c in cs))
    _interrupt(spec, driver, signal.SIGTERM, "search")
    assert not (Path(spec.sweep_dir()) / "driver.lock").exists()
    from stetune.analysis import load_sweep

    with pytest.warns(UserWarning, match="ended KILLED .* `stetune resume term` completes it"):
        load_sweep("term", spec.resolved_tracking_uri())
    _resume(spec)
    check_one_run_per_trial(spec, n_search=4, n_replicate=2, statuses=("finished",))


def test_sigint_during_replicates_then_resume(tmp_path):
    spec = small_spec(tmp_path, "int", ["budget.trials_per_cell=1", "replicates.seeds=[1, 2]",
                                        "cells.ste=[relu]", "cells.bits=[2]", "search={}",
                                        "train.epochs=6", "train.limit=1000"])
    driver = cli("sweep", str(write_spec(spec, tmp_path / "int.yaml")), "--quiet")
    wait_for_runs(spec, driver, lambda cs: any(c.data.tags.get("stetune.phase") == "replicate"
                                           and c.info.status == "RUNNING" for c in cs))
    _interrupt(spec, driver, signal.SIGINT, "replicate")
    _resume(spec)
    check_one_run_per_trial(spec, n_search=1, n_replicate=2, statuses=("finished",))
