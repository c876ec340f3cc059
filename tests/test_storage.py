"""Sweep storage on a local disk and in an object store (moto's S3 API server on loopback, see
conftest.s3_server): one Location API for both, Optuna's studies as a journal in the store, the
one-driver lock without an exclusive create, what a spec with s3:// storage needs, and the
commands a user runs on such a sweep. Separate hosts sharing no disk: test_multihost.py."""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
import threading
import time

import optuna
import pytest

from stetune.journal import open_study_storage
from stetune.spec import SpecError
from stetune.storage import locate
from stetune.studies import load_studies
from stetune.sweep.lock import DriverLock, SweepLocked
from sweep_helpers import run_cli, small_spec, write_spec


@pytest.fixture(params=["local", "s3"])
def where(request, tmp_path):
    if request.param == "local":
        (tmp_path / "root").mkdir()
        return locate(tmp_path / "root")
    return locate(request.getfixturevalue("s3") + "/root")


def test_a_location_reads_and_writes_alike_on_disk_and_in_an_object_store(where):
    sub = where / "sub"
    sub.mkdir()
    f = sub / "a.json"
    assert not f.exists() and not f.is_file()
    with pytest.raises(FileNotFoundError):
        f.read_text()
    f.write_text("one")
    f.write_text("two")  # replaced whole
    (sub / "b.txt").write_bytes(b"x")
    assert f.read_text() == "two" and f.is_file() and sub.is_dir() and not f.is_dir()
    assert abs(f.mtime() - time.time()) < 5
    assert [p.name for p in sub.iterdir()] == ["a.json", "b.txt"]  # no .tmp left beside them
    assert [p.name for p in sub.glob("*.json")] == ["a.json"]
    assert (where / "nothing").iterdir() == []
    assert f.parent == sub and f.name == "a.json" and f.with_suffix(".tmp").name == "a.tmp"
    assert str(f) == (f.path if where.local else f"s3://{f.path}")
    f.unlink()
    assert not f.exists()
    f.unlink(missing_ok=True)
    with pytest.raises(FileNotFoundError):
        f.unlink()


def test_optuna_studies_live_in_an_object_store_as_an_append_only_journal(s3):
    url = f"{s3}/sw/optuna"
    objective = lambda t: t.suggest_float("x", 0, 1)  # noqa: E731
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_study_storage(url)
    study = optuna.create_study(study_name="sw/relu/2", storage=storage, direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=0))
    study.optimize(objective, n_trials=6)
    # another process's view: a storage opened afresh holds the same trials
    again = optuna.load_study(study_name="sw/relu/2",
                              storage=open_study_storage(url, readonly=True))
    assert [(t.params, t.value, t.state) for t in again.trials] == \
        [(t.params, t.value, t.state) for t in study.trials]
    # Tune pickles the searcher with its storage: the copy appends after what is there
    clone = pickle.loads(pickle.dumps(storage))
    optuna.load_study(study_name="sw/relu/2", storage=clone).optimize(objective, n_trials=2)
    assert len(optuna.load_study(study_name="sw/relu/2", storage=open_study_storage(url)).trials) == 8
    # each append is an object of its own, numbered by its first log: none was overwritten
    objects = locate(url).glob("*.jsonl")
    firsts = [int(o.name.split(".")[0]) for o in objects]
    sizes = [len(o.read_text().splitlines()) for o in objects]
    assert firsts == [sum(sizes[:i]) for i in range(len(sizes))], (firsts, sizes)
    # analysis reads it back, naming the cells that have a study
    studies, why = load_studies(url, "sw", ["relu/2", "relu/4"])
    assert why is None and set(studies) == {"relu/2"} and len(studies["relu/2"].trials) == 8


def test_tunes_own_requests_to_a_refusing_store_are_one_line_and_the_local_disks_errors_pass(
        monkeypatch):
    """run_phase wraps Tune in storage.said: a new phase's Tuner makes its folder in the store
    itself (pyarrow's raw OSError, no errno); that becomes the store's one-line failure, while an
    error of the local disk (it has an errno) stays what it is."""
    import errno

    from ray import tune

    from stetune.storage import StorageUnreachable, clear_failure, failure, said

    with socket.socket() as s:  # a port nothing listens on: connections are refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(k, "stetune-test")
    where = locate("s3://nowhere/team/sw/search")
    clear_failure()
    try:
        with pytest.raises(StorageUnreachable) as e, said(where, "Tune's request to"):
            tune.Tuner(lambda config: None, run_config=tune.RunConfig(
                name="search", storage_path="nowhere/team/sw", storage_filesystem=where.fs))
        assert str(e.value).startswith(f"Tune's request to {where.uri} failed (AWS Error ") and \
            "HeadBucket" in str(e.value) and "\n" not in str(e.value), e.value
        assert failure() is e.value  # the driver stops on it; later requests fail at once
        clear_failure()
        full = OSError(errno.ENOSPC, "No space left on device")
        with pytest.raises(OSError) as e, said(where, "Tune's request to"):
            raise full
        assert e.value is full and failure() is None
    finally:
        clear_failure()


def test_after_a_store_failure_tunes_late_upload_tracebacks_stay_silent(monkeypatch):
    """Tune's background upload of its state, stalled on the same store, fails after the sweep
    has said its last line: its logger stays silent then (a sweep that ended well restores it)."""
    import logging

    from stetune.storage import clear_failure, unreachable
    from stetune.sweep.session import _quiet

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    lg = logging.getLogger("ray.train._internal.storage")  # Tune's _create_directory logs here
    before = lg.level
    try:
        clear_failure()
        _quiet(0)()
        assert lg.level == before
        restore = _quiet(0)
        assert not lg.isEnabledFor(logging.ERROR)
        unreachable(OSError("When testing for existence of bucket 'b': AWS Error "
                            "NETWORK_CONNECTION"), locate("s3://b/x"), "writing")
        restore()
        assert not lg.isEnabledFor(logging.ERROR)
    finally:
        clear_failure()
        lg.setLevel(before)


def _claim(where, host: str, pid: int) -> None:
    (where / "driver.locks" / f"other-{pid}.json").write_text(json.dumps(
        {"host": host, "pid": pid, "token": "other", "started": "then"}))


def test_one_driver_per_sweep_in_an_object_store(s3):
    where = locate(s3) / "sw"
    claims = lambda: [p.name for p in (where / "driver.locks").glob("*.json")]  # noqa: E731
    a = DriverLock(where, "sw")
    a.acquire()
    with pytest.raises(SweepLocked, match=rf"sweep 'sw' is being run by pid {os.getpid()} on "
                                          rf"host {socket.gethostname()} since "):
        DriverLock(where, "sw").acquire()
    assert claims() == [f"{a.token}.json"]  # the refused driver withdrew its claim
    assert DriverLock(where, "sw").holder()[0]["token"] == a.token
    a.release()
    assert claims() == [] and DriverLock(where, "sw").holder() is None
    # a live driver on another host holds it; a driver on this host whose pid is gone does not
    _claim(where, "elsewhere", 1)
    with pytest.raises(SweepLocked, match="pid 1 on host elsewhere"):
        DriverLock(where, "sw").acquire()
    (where / "driver.locks" / "other-1.json").unlink()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _claim(where, socket.gethostname(), dead.pid)
    b = DriverLock(where, "sw")
    b.acquire()  # taken over: the dead driver's claim is removed
    assert claims() == [f"{b.token}.json"]
    b.release()


def test_two_drivers_racing_for_a_sweep_never_both_hold_it(s3):
    where = locate(s3) / "race"
    for _ in range(8):  # (a round where each sees the other refuses both: safe, and rare)
        locks, held = [DriverLock(where, "race") for _ in range(3)], []
        start = threading.Barrier(len(locks))

        def take(lock):
            start.wait()
            try:
                lock.acquire()
                held.append(lock)
            except SweepLocked:
                pass

        threads = [threading.Thread(target=take, args=(lk,)) for lk in locks]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(held) <= 1, "two drivers hold the sweep"
        for lock in held:
            lock.release()
        assert not (where / "driver.locks").glob("*.json")  # nothing left behind either way


def test_the_heartbeat_rewrites_the_claim_and_never_brings_back_a_removed_one(s3, monkeypatch):
    import stetune.sweep.lock as mod

    monkeypatch.setattr(mod, "HEARTBEAT_S", 0.2)
    where = locate(s3) / "beat"
    lock = DriverLock(where, "beat")
    lock.acquire()
    mine = where / "driver.locks" / f"{lock.token}.json"
    time.sleep(2.5)  # an object's time is to the second
    assert mine.with_suffix(".beat").mtime() > mine.mtime()
    assert lock.holder()[1] < 2
    mine.unlink()  # another driver took it over, judging this one dead
    time.sleep(1)
    assert not mine.exists()
    lock.release()


def test_an_object_store_needs_an_mlflow_server_and_keeps_the_studies_beside_the_state(s3, tmp_path):
    with pytest.raises(SpecError, match=r"^mlflow.tracking_uri must be set when storage is an "
                                        rf"object store .* storage='{s3}/team'"):
        small_spec(tmp_path, "objs", [f"storage={s3}/team"])
    for bad in ("s3://", "s3:///team", "hdfs://nn/team", "file:///tmp/x"):
        with pytest.raises(SpecError, match=r"^storage must be a local path or an object store "
                                            rf"\(s3://BUCKET/prefix, gs://BUCKET/prefix\), but "
                                            rf"got storage='{bad}'$"):
            small_spec(tmp_path, "objs", [f"storage={bad}"], tracking_uri="http://mlflow:5000")
    spec = small_spec(tmp_path, "objs", [f"storage={s3}/team"], tracking_uri="http://mlflow:5000")
    assert str(spec.sweep_dir()) == f"{s3}/team/objs"
    assert spec.resolved_optuna_storage() == f"{s3}/team/objs/optuna"


@pytest.mark.slow
def test_a_sweep_in_an_object_store_from_start_to_analysis(s3, tmp_path):
    """What a user runs, on storage that is only a bucket: sweep, list, show, resume, analyze,
    export; nothing of the sweep lands on the local disk but the MLflow store it was given."""
    storage = f"{s3}/team"
    db = tmp_path / "mlflow" / "mlflow.db"
    db.parent.mkdir()
    spec = small_spec(tmp_path, "obj", [
        f"storage={storage}", "cells.ste=[relu]", "cells.bits=[2]", "budget.trials_per_cell=2",
        "replicates.seeds=[1]", "train.limit=200"], tracking_uri=f"sqlite:///{db}")
    path = write_spec(spec, tmp_path / "obj.yaml")
    env = dict(os.environ)
    code, out, err = run_cli("sweep", str(path), "--quiet", env=env, cwd=tmp_path)
    assert code == 0, err[-3000:]
    assert f"stetune analyze obj --storage {storage}" in out
    root = locate(storage) / "obj"
    assert json.loads((root / "sweep.json").read_text())["summary"]
    assert json.loads((root / "spec.json").read_text())["storage"] == storage
    assert not (root / "driver.locks").glob("*.json")  # released
    assert (root / "optuna").glob("*.jsonl")
    assert any(d.glob("checkpoint_*") for d in (root / "search").iterdir() if d.is_dir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow", "obj.yaml"]

    code, out, err = run_cli("list", "--storage", storage, env=env)
    assert code == 0 and out.splitlines()[1].split()[:3] == ["obj", "network", "done"], out
    code, out, err = run_cli("show", "obj", "--storage", storage, "--json", env=env)
    assert code == 0 and json.loads(out)["status"] == "done", out
    code, out, err = run_cli("resume", "obj", "--storage", storage, env=env)
    assert code == 0 and "is complete; nothing to resume" in out, err
    code, again, err = run_cli("sweep", str(path), "--quiet", env=env)
    assert code == 2 and "already exists" in err, err

    code, out, err = run_cli("analyze", "obj", "--storage", storage, env=env)
    assert code == 0, err[-3000:]
    report = (root / "analysis" / "report.md").read_text()
    assert "## Search (Optuna)" in report and "Optuna's journal" in report
    assert (root / "analysis" / "optuna").glob("relu-2-history.png")
    code, out, err = run_cli("export", "obj", "--storage", storage, "--format", "markdown",
                             "--out", f"{storage}/obj-table1.md", env=env)
    assert code == 0, err
    assert "ReLU" in (locate(storage) / "obj-table1.md").read_text()
