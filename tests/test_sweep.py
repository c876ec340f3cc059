"""The sweep service end to end on a real local Ray and real MLflow (sqlite and a server)."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from stetune.sweep import run_sweep
from stetune.sweep.runner import without_credentials
from sweep_helpers import (RETRIES_TAG, check_one_run_per_trial, check_replicates_are_best,
                           small_spec, sweep_runs, write_spec)

pytestmark = pytest.mark.slow

# A plugin dataset: digits, except that its first load anywhere raises, so the one trial that
# uses it crashes once and Tune retries it (max_failures)
FLAKY = '''
import os
from pathlib import Path

from stetune.data import dataset_info, register_dataset


@register_dataset("flaky-digits", num_classes=10, input_size=(1, 28, 28), title="flaky digits")
def flaky_digits(root, download, seed):
    folder = os.environ.get("STETUNE_TEST_FLAKY_DIR")  # set for the workers only: the driver's
    marker = Path(folder or ".") / "crashed"          # look at the data (preflight) never crashes
    if folder and not marker.exists():
        marker.touch()
        raise RuntimeError("flaky-digits: crashing once, on purpose")
    return dataset_info("digits").loader(root, download, seed)
'''


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """conftest's 2-CPU local Ray, started with the flaky plugin importable: Ray's workers load
    $STETUNE_PLUGINS from the environment the local Ray started with; the driver imports it."""
    import ray

    folder = tmp_path_factory.mktemp("flaky")
    (folder / "flaky_plugin.py").write_text(textwrap.dedent(FLAKY))
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(folder))
        mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(folder),
                                                              os.environ.get("PYTHONPATH")])))
        mp.setenv("STETUNE_PLUGINS", "flaky_plugin")
        mp.setenv("STETUNE_TEST_FLAKY_DIR", str(folder))
        importlib.import_module("flaky_plugin")
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
    from stetune.data import _DATASETS  # registries are per process: later modules must not see it

    _DATASETS.pop("flaky-digits")
    sys.modules.pop("flaky_plugin", None)


def test_local_sweep_one_parent_one_child_per_trial(tmp_path, local_ray):
    # mode min (val_loss): the sense the other sweeps (val_acc) leave untested
    spec = small_spec(tmp_path, "local", ["budget.trials_per_cell=2", "replicates.seeds=[1, 2]",
                                          "train.epochs=1", "metric=val_loss", "mode=min"])
    state = run_sweep(spec, verbose=0)
    children = check_one_run_per_trial(spec, n_search=12, n_replicate=12)
    # every cell got its own equal budget, and its best config was replicated with each seed
    cells = [c.data.tags["stetune.cell"] for c in children if c.data.tags["stetune.phase"] == "search"]
    assert sorted(set(cells)) == sorted(f"{s}/{b}" for s, b in spec.cells())
    assert all(cells.count(c) == 2 for c in set(cells))
    # the lowest val_loss, not the first or the highest: most cells' two lrs differ in loss
    assert check_replicates_are_best(spec) >= 4
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
    leaks = [str(f) for f in Path(spec.sweep_dir()).rglob("*") if f.is_file()
             and "s3:cr" in f.read_bytes().decode("latin1")]
    assert not leaks, leaks  # spec.json, sweep.json, Tune's experiment and trial state
    client, parents, children = sweep_runs(spec)
    for run in (*parents, *children):
        assert not any("s3:cr" in str(v) for v in (*run.data.params.values(),
                                                     *run.data.tags.values()))


def asha_ends(trials: list[tuple[str, dict]], rungs, reduction_factor: float, sign: int) -> dict:
    """Ray's ASHA rule replayed over trials in the order they reached each rung: a trial stops at
    a rung when its value there is below the (1 - 1/reduction_factor) quantile of the values
    trials reached that rung with before it; -> {trial: the epoch it ends at (None: ran on)}."""
    recorded = {r: [] for r in rungs}
    ends = {}
    for name, values in trials:
        ends[name] = None
        for r in rungs:
            if r not in values:  # it stopped before r, where ASHA would have let it go on
                ends[name] = f"no result at epoch {r}"
                break
            before, v = recorded[r], sign * values[r]
            cutoff = np.percentile(before, (1 - 1 / reduction_factor) * 100) if before else None
            before.append(v)
            if cutoff is not None and v < cutoff:
                ends[name] = r
                break
    return ends


def test_asha_prunes_each_cell_against_its_own_trials_only(tmp_path, local_ray):
    """relu at 4 bits and at 1 bit: at every lr in the range the 1-bit cell's val_acc is far
    below the 4-bit cell's after epochs 1 and 2 (about 0.3-0.5 against 0.65-0.8, then 0.5-0.7
    against 0.85-0.9). One trial at a time (max_concurrent=1), so every trial reaches each rung
    after all trials issued before it: ASHA's decisions can be replayed exactly."""
    spec = small_spec(tmp_path, "asha-cells", [
        "cells.ste=[relu]", "cells.bits=[4, 1]", "budget.trials_per_cell=3", "train.epochs=3",
        "search={lr: {dist: loguniform, low: 0.03, high: 0.08}}", "replicates.seeds=[]",
        "max_concurrent=1", "asha.grace_period=1", "asha.reduction_factor=2"])
    run_sweep(spec, verbose=0)
    children = check_one_run_per_trial(spec, n_search=6, n_replicate=0,
                                       statuses=("finished", "pruned"))
    client, _, _ = sweep_runs(spec)
    search = sorted((c for c in children if c.data.tags["stetune.phase"] == "search"),
                    key=lambda c: c.info.start_time)
    for a, b in zip(search, search[1:]):  # the replay's premise: no two trials ran at once
        assert a.info.end_time <= b.info.start_time, (a.info.run_name, b.info.run_name)
    history = lambda c: client.get_metric_history(c.info.run_id, "val_acc")  # noqa: E731
    acc = {c.info.run_id: {m.step: m.value for m in history(c)} for c in search}
    ends = {c.info.run_id: max(acc[c.info.run_id])
            if c.data.tags["stetune.status"] == "pruned" else None for c in search}
    cell = {c.info.run_id: c.data.tags["stetune.cell"] for c in search}
    good, bad = ([n for n in acc if cell[n] == k] for k in ("relu/4", "relu/1"))
    rungs = (1, 2)  # grace_period * reduction_factor**k below max_t=3; epoch 3 ends every trial

    # what happened is ASHA within each cell, trial by trial
    replay = {}
    for names in (good, bad):
        replay |= asha_ends([(n, acc[n]) for n in names], rungs, 2, sign=1)
    assert ends == replay, {n: (cell[n], acc[n], ends[n], replay[n]) for n in acc}
    assert any(e is not None for e in ends.values()), "nothing was pruned: the replay shows nothing"
    # the 1-bit cell is worse than the 4-bit cell at the grace period, trial for trial, yet its
    # own ASHA lets some of its trials train on: one shared ASHA would stop them all there
    assert max(acc[n][1] for n in bad) < min(acc[n][1] for n in good)
    assert [n for n in bad if ends[n] is None or ends[n] > spec.asha.grace_period]
    shared = asha_ends([(n, acc[n]) for n in acc], rungs, 2, sign=1)
    assert all(shared[n] == spec.asha.grace_period for n in bad)


def test_a_retry_is_on_its_run_and_an_existing_sweep_name_is_refused(tmp_path, local_ray):
    # one tiny sweep for both: its only trial crashes once (flaky-digits) and is retried
    spec = small_spec(tmp_path, "twice", ["budget.trials_per_cell=1", "replicates.seeds=[]",
                                          "cells.ste=[relu]", "cells.bits=[2]", "search={}",
                                          "dataset=flaky-digits"])
    run_sweep(spec, verbose=0)
    (run,) = check_one_run_per_trial(spec, n_search=1, n_replicate=0, statuses=("finished",),
                                     retries=True)
    assert run.data.tags[RETRIES_TAG] == "1"  # on the run, where users see it too
    # the shared check refuses a retry no test asked for: max_failures hid a crash
    with pytest.raises(AssertionError, match="retried after a crash"):
        check_one_run_per_trial(spec, n_search=1, n_replicate=0)
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


@pytest.mark.parametrize("pack", [1, 2])
def test_sigkill_driver_then_resume_finishes_exactly_the_budget(tmp_path, pack):
    # pack 2: the search's trials in packs of 2 and 1 per cell, each replicate pair in one
    seeds = "[1]" if pack == 1 else "[1, 2]"
    spec = small_spec(tmp_path, "crash", ["budget.trials_per_cell=3", f"replicates.seeds={seeds}",
                                          "cells.ste=[identity, clipped_relu]", "cells.bits=[2]",
                                          "train.epochs=3", "train.limit=1000",
                                          f"resources.pack={pack}"])
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
    runs = check_one_run_per_trial(spec, n_search=6, n_replicate=2 * len(spec.replicates.seeds))
    assert all(("stetune.pack" in r.data.tags) == (pack > 1) for r in runs)
