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
