"""The stores under a running sweep failing for real: its disk filling up (a small tmpfs, as
root), its MLflow server killed mid-search, and its object store (moto's S3 server) stalling. Each run ends in one line naming what failed and
how to go on, leaves sweep.json and Tune's state usable, and `resume` then completes the budget:
every trial once in MLflow, every epoch once, nothing RUNNING."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import free_port, running_mlflow_server, running_s3_server
from service_helpers import stop_session
from sweep_helpers import (check_one_run_per_trial, cli, small_spec, sweep_runs, wait_for_runs,
                           write_spec)

pytestmark = pytest.mark.slow

# one cell, two searched configs and a replicate: the least that has every phase
# (a checkpoint every epoch: the disk must see writes while it is full, as in a long sweep)
SETS = ["cells.ste=[relu]", "cells.bits=[2]", "budget.trials_per_cell=2", "replicates.seeds=[1]",
        "train.epochs=3", "asha.enabled=false", "resources.checkpoint_s=0"]


def _a_trial_running(children) -> bool:
    # a run's status is written as the trial starts and ends (its epochs, in batches, later)
    return any(c.info.status == "RUNNING" for c in children)


def _finish(driver: subprocess.Popen, timeout: float = 600) -> tuple[int, str, str]:
    try:
        out, err = driver.communicate(timeout=timeout)
    finally:
        stop_session(driver)  # the driver's local Ray, whatever happened
    return driver.returncode, out, err


def _resume(spec, may_refuse: bool = False) -> None:
    rc, out, err = _finish(cli("resume", spec.name, "--storage", spec.storage, "--quiet"), 600)
    if may_refuse and rc == 1:  # the full disk cut Tune's own state file short (Ray writes it
        # in place): then resume must refuse in one line, never restart silently, and end its runs
        last = err.strip().splitlines()[-1]
        assert last.startswith("stetune resume: error: ") and "Tune's experiment state" in last, last
        _, parents, children = sweep_runs(spec)
        assert "RUNNING" not in {r.info.status for r in [*parents, *children]}
        return
    assert rc == 0, err[-4000:]
    state = json.loads((spec.sweep_dir() / "sweep.json").read_text())  # a folder, or s3://
    assert {"search", "replicate"} <= set(state) and "failed" not in state
    # retries allowed: a trial that failed writing its checkpoint to the full disk is retried
    check_one_run_per_trial(spec, n_search=2, n_replicate=1, statuses=("finished",), retries=True,
                            driver_died=True)


@contextlib.contextmanager
def _filled(disk):
    """Write zeros until the filesystem refuses (ENOSPC for everyone writing there), and keep
    it full: the sweep frees space as it goes (Tune drops old checkpoints), which a one-off fill
    would leave for its next writes."""
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
    stop = threading.Event()

    def keep_full():
        while not stop.is_set():
            try:
                os.write(fd, bytes(64 << 10))
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
                stop.wait(0.02)

    try:
        while True:
            os.write(fd, bytes(1 << 20))
    except OSError as e:
        assert e.errno == errno.ENOSPC, e
    thread = threading.Thread(target=keep_full, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        os.close(fd)


@pytest.mark.skipif(os.geteuid() != 0, reason="a small filesystem to fill needs root (mount tmpfs)")
def test_a_full_disk_mid_sweep_says_so_and_resume_completes(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(disk)], check=True)
    try:
        # storage and the default sqlite store both on the small disk
        # no retries: a trial failing on the full disk would be restarted (slowly) to fail again
        spec = small_spec(disk, "full", [*SETS, "max_failures=0"])
        driver = cli("sweep", str(write_spec(spec, tmp_path / "full.yaml")), "--quiet")
        with contextlib.ExitStack() as full:
            try:
                wait_for_runs(spec, driver, _a_trial_running)
                full.enter_context(_filled(disk))
            finally:
                rc, out, err = _finish(driver)
        assert rc == 1, err[-4000:]
        last = err.strip().splitlines()[-1]
        assert last.startswith("stetune sweep: error: disk full (") and \
            f"run `stetune resume full --storage {disk}`" in last, last
        assert not list(Path(spec.sweep_dir()).glob("*.tmp")), "a half-written file was left behind"
        (disk / "filler").unlink()
        _resume(spec, may_refuse=True)
    finally:
        subprocess.run(["umount", "--lazy", str(disk)], check=False)


def test_an_mlflow_server_dying_mid_sweep_fails_fast_then_resume_completes(tmp_path):
    srv, port = tmp_path / "srv", free_port()
    srv.mkdir()
    with running_mlflow_server(srv, port) as (url, server):
        spec = small_spec(tmp_path, "dead", SETS, tracking_uri=url)
        driver = cli("sweep", str(write_spec(spec, tmp_path / "dead.yaml")), "--quiet")
        try:
            wait_for_runs(spec, driver, _a_trial_running)
            os.killpg(server.pid, signal.SIGKILL)  # the server and its workers, at once
            server.wait()
            t0 = time.monotonic()
        finally:
            rc, out, err = _finish(driver)
        took = time.monotonic() - t0
    assert rc == 1, err[-4000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"stetune sweep: error: the MLflow server {url} stopped answering "
                           f"mid-sweep") and "run `stetune resume dead" in last, last
    assert "its MLflow runs stay RUNNING until `stetune resume` ends them" in last
    assert took < 120, f"a dead server took {took:.0f} s to notice (MLflow's retries bounded?)"
    json.loads((Path(spec.sweep_dir()) / "sweep.json").read_text())  # intact
    with running_mlflow_server(srv, port):  # back, on the same store
        _resume(spec)


def test_an_object_store_stalling_mid_sweep_says_so_then_resume_completes(tmp_path, monkeypatch):
    """storage in S3 whose server stops answering (SIGSTOP: requests hang until pyarrow's
    timeouts, as with a lost network) while a trial runs: the trials cannot checkpoint, the
    driver cannot save; one line names the store and how to go on. Back, resume completes."""
    import boto3

    with running_s3_server(tmp_path) as (url, server):
        for k, v in {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "stetune-test",
                     "AWS_SECRET_ACCESS_KEY": "stetune-test", "AWS_REGION": "us-east-1"}.items():
            monkeypatch.setenv(k, v)  # the driver's and its local Ray's environment
        boto3.client("s3").create_bucket(Bucket="sweeps")
        storage = "s3://sweeps/team"
        spec = small_spec(tmp_path, "stall", [*SETS, f"storage={storage}", "max_failures=1"],
                          tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
        driver = cli("sweep", str(write_spec(spec, tmp_path / "stall.yaml")), "--quiet")
        try:
            wait_for_runs(spec, driver, _a_trial_running)
            os.kill(server.pid, signal.SIGSTOP)
            t0 = time.monotonic()
        finally:
            rc, out, err = _finish(driver, 400)
        took = time.monotonic() - t0
        print(f"the driver ended {took:.0f} s after the store stalled")
        assert rc == 1, err[-4000:]
        last = err.strip().splitlines()[-1]
        assert last.startswith("stetune sweep: error: ") and storage in last and \
            f"run `stetune resume stall --storage {storage}`" in last, err[-4000:]
        assert took < 300, f"a stalled store took {took:.0f} s to give up on"
        _, parents, children = sweep_runs(spec)  # MLflow still answers: everything ended
        assert "RUNNING" not in {r.info.status for r in [*parents, *children]}
        os.kill(server.pid, signal.SIGCONT)
        _resume(spec)
