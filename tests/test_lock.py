"""The one-driver-per-sweep lock on its own: exclusive, released, stale when its heartbeat stops
(any host) or its pid is gone (this host), never removed from under another driver."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from stetune.sweep.lock import STALE_S, DriverLock, SweepLocked


def _held(path, host, pid, age=0.0):
    path.write_text(json.dumps({"host": host, "pid": pid, "token": "other", "started": "then"}))
    t = time.time() - age
    os.utime(path, (t, t))


def test_exclusive_then_released(tmp_path):
    a = DriverLock(tmp_path, "s")
    a.acquire()
    with pytest.raises(SweepLocked, match=rf"sweep 's' is being run by pid {os.getpid()} on "
                                          rf"host {socket.gethostname()} since "):
        DriverLock(tmp_path, "s").acquire()
    a.release()
    assert not a.path.exists()
    b = DriverLock(tmp_path, "s")
    b.acquire()
    b.release()


def test_a_live_lock_on_another_host_is_respected_until_its_heartbeat_stops(tmp_path):
    lock = DriverLock(tmp_path, "s")
    _held(lock.path, "other-host", 1, age=STALE_S / 2)
    with pytest.raises(SweepLocked, match="pid 1 on host other-host"):
        lock.acquire()
    _held(lock.path, "other-host", 1, age=STALE_S + 5)  # its driver was SIGKILLed
    lock.acquire()
    assert json.loads(lock.path.read_text())["token"] == lock.token
    lock.release()


def test_a_dead_pid_on_this_host_is_stale_at_once(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = DriverLock(tmp_path, "s")
    _held(lock.path, socket.gethostname(), dead.pid)
    lock.acquire()
    lock.release()


def test_release_never_removes_a_lock_another_driver_took_over(tmp_path):
    lock = DriverLock(tmp_path, "s")
    lock.acquire()
    _held(lock.path, "other-host", 7)  # taken over after we were thought dead
    lock.release()
    assert json.loads(lock.path.read_text())["host"] == "other-host"


def test_the_heartbeat_keeps_the_lock_fresh(tmp_path, monkeypatch):
    import stetune.sweep.lock as mod

    monkeypatch.setattr(mod, "HEARTBEAT_S", 0.05)
    lock = DriverLock(tmp_path, "s")
    lock.acquire()
    old = time.time() - 1000
    os.utime(lock.path, (old, old))
    time.sleep(0.3)
    assert time.time() - lock.path.mtime() < 5
    lock.release()


def test_resume_of_a_sweep_still_starting_names_its_driver(tmp_path):
    """A driver holds the lock before it saves spec.json (Ray's start takes seconds): a resume
    then is refused naming that driver, not told there is no such sweep."""
    sys.path.insert(0, os.path.dirname(__file__))
    from sweep_helpers import run_cli

    (tmp_path / "s").mkdir()
    lock = DriverLock(tmp_path / "s", "s")
    lock.acquire()
    try:
        rc, _, err = run_cli("resume", "s", "--storage", str(tmp_path), timeout=120)
    finally:
        lock.release()
    assert rc == 2, err
    assert err.strip().splitlines()[-1].startswith(
        f"stetune resume: error: sweep 's' is being run by pid {os.getpid()} on host "), err
    rc, _, err = run_cli("resume", "s", "--storage", str(tmp_path), timeout=120)
    assert rc == 2 and err.strip().endswith(f"no sweep named 's' in {tmp_path}"), err
