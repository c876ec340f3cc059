"""One driver per sweep: `<sweep dir>/driver.lock`, created exclusively, holds the driver's host,
pid and start time, and a heartbeat thread touches it while the driver lives. Another `sweep` or
`resume` of the same sweep is refused in one line naming them. A lock is stale, and taken over,
when its heartbeat stopped (a driver SIGKILLed on any host sharing the directory) or, on the same
host, when its pid is gone. Plain files and mtimes: works on a directory shared between hosts."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

__all__ = ["DriverLock", "SweepLocked", "HEARTBEAT_S", "STALE_S"]

HEARTBEAT_S = 5.0   # how often a live driver touches its lock
STALE_S = 60.0      # twelve missed heartbeats: the driver is gone (allows for NFS attribute caching)


class SweepLocked(FileExistsError):
    """Another live driver holds the sweep."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


class DriverLock:
    def __init__(self, sweep_dir: Path, name: str):
        self.path, self.name = Path(sweep_dir) / "driver.lock", name
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> None:
        me = {"host": socket.gethostname(), "pid": os.getpid(), "token": self.token,
              "started": datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")}
        for _ in range(3):  # a stale lock is removed, then the exclusive create is tried again
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                held, age = self._read()
                if not self._stale(held, age):
                    raise SweepLocked(
                        f"sweep '{self.name}' is being run by pid {held.get('pid', '?')} on host "
                        f"{held.get('host', '?')} since {held.get('started', '?')} (last heartbeat "
                        f"{age:.0f} s ago); wait for it or stop that driver (a lock without a "
                        f"heartbeat for {STALE_S:.0f} s is taken over: {self.path})") from None
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self._thread = threading.Thread(target=self._beat, name="stetune-lock", daemon=True)
            self._thread.start()
            return
        raise SweepLocked(f"sweep '{self.name}': could not take {self.path} (another driver "
                          f"is taking it at the same time)")

    def _read(self) -> tuple[dict, float]:
        try:
            age = time.time() - self.path.stat().st_mtime
            held = json.loads(self.path.read_text() or "{}")
        except FileNotFoundError:
            return {}, float("inf")
        except (OSError, ValueError):  # half-written by a driver killed while creating it
            held = {}
        return (held if isinstance(held, dict) else {}), age

    @staticmethod
    def _stale(held: dict, age: float) -> bool:
        if age > STALE_S:
            return True
        same_host = held.get("host") == socket.gethostname()
        return same_host and isinstance(held.get("pid"), int) and not _alive(held["pid"])

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:  # removed under us: nothing to keep alive
                return

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(HEARTBEAT_S)
        held, _ = self._read()
        if held.get("token") == self.token:  # never remove a lock another driver took over
            self.path.unlink(missing_ok=True)
