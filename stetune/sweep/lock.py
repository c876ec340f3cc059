"""One driver per sweep: `<sweep dir>/driver.lock`, created exclusively, holds the driver's host,
pid and start time, and a heartbeat thread touches it while the driver lives. Another `sweep` or
`resume` of the same sweep is refused in one line naming them. A lock is stale, and taken over,
when its heartbeat stopped (a driver SIGKILLed on any host sharing the directory) or, on the same
host, when its pid is gone. Plain files and mtimes: works on a directory shared between hosts.

An object store has no exclusive create (through pyarrow), so there each driver writes a claim of
its own, `driver.locks/<token>.json`, then lists the claims: it holds the sweep only if no other
live claim is there, else it withdraws its own. Listing is strongly consistent after a write (S3,
GCS), so of two drivers at least the later sees the earlier: never both hold it."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timezone

from ..storage import Location, StorageUnreachable, locate

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
    def __init__(self, sweep_dir: Location | str, name: str):
        where = locate(sweep_dir)
        self.name, self.local = name, where.local
        self.path = where / "driver.lock"  # local; an object store's claims are under:
        self.claims = where / "driver.locks"
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> None:
        me = {"host": socket.gethostname(), "pid": os.getpid(), "token": self.token,
              "started": datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")}
        if not self.local:
            return self._claim(me)
        for _ in range(3):  # a stale lock is removed, then the exclusive create is tried again
            try:
                fd = os.open(self.path.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                held, age = self._read()
                if not self._stale(held, age):
                    raise self._locked(held, age, self.path) from None
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            return self._start()
        raise SweepLocked(f"sweep '{self.name}': could not take {self.path} (another driver "
                          f"is taking it at the same time)")

    def _claim(self, me: dict) -> None:
        mine = self.claims / f"{self.token}.json"
        mine.write_text(json.dumps(me))
        for claim in self.claims.glob("*.json"):
            if claim.name == mine.name:
                continue
            held, age = self._read(claim)
            if self._stale(held, age):
                self._withdraw(claim)  # a SIGKILLed driver's: taken over
                continue
            self._withdraw(mine)
            raise self._locked(held, age, claim)
        return self._start()

    @staticmethod
    def _withdraw(claim: Location) -> None:
        claim.unlink(missing_ok=True)
        claim.with_suffix(".beat").unlink(missing_ok=True)

    def _locked(self, held: dict, age: float, where: Location) -> SweepLocked:
        return SweepLocked(
            f"sweep '{self.name}' is being run by pid {held.get('pid', '?')} on host "
            f"{held.get('host', '?')} since {held.get('started', '?')} (last heartbeat "
            f"{age:.0f} s ago); wait for it or stop that driver (a lock without a "
            f"heartbeat for {STALE_S:.0f} s is taken over: {where})")

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._beat, name="stetune-lock", daemon=True)
        self._thread.start()

    def holder(self) -> tuple[dict, float] | None:
        """(what the lock holds, seconds since its heartbeat) if any driver holds it (read only;
        a stale lock too)."""
        locks = [self.path] if self.local else self.claims.glob("*.json")
        held = [h for p in locks if (h := self._read(p))[1] != float("inf")]  # inf: gone
        return min(held, key=lambda h: h[1]) if held else None

    def check(self) -> None:
        """Raise SweepLocked where a live driver holds the sweep (read only)."""
        found = self.holder()
        if found is not None and not self._stale(*found):
            where = self.path if self.local else self.claims
            raise self._locked(*found, where)

    def _read(self, path: Location | None = None) -> tuple[dict, float]:
        path, age = path or self.path, 0.0  # unreadable: taken as live, never taken over
        try:
            age = time.time() - path.mtime()
            held = json.loads(path.read_text() or "{}")
            if not self.local:  # its heartbeat is a separate object (see _beat)
                with contextlib.suppress(FileNotFoundError):
                    age = min(age, time.time() - path.with_suffix(".beat").mtime())
        except FileNotFoundError:
            return {}, float("inf")
        except StorageUnreachable:  # never judged from what could not be read
            raise
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
        # an object's time is its last write; the beat is written beside the claim, never the
        # claim itself, so a claim another driver removed (found stale) never comes back
        mine = self.claims / f"{self.token}.json"
        while not self._stop.wait(HEARTBEAT_S):
            try:
                if self.local:
                    os.utime(self.path.path)
                elif mine.exists():
                    mine.with_suffix(".beat").write_bytes(b"")
                else:  # taken over: nothing to keep alive
                    return
            except StorageUnreachable:  # the store failed for a moment: beat again next time
                continue
            except OSError:  # removed under us: nothing to keep alive
                return

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(HEARTBEAT_S)
        if not self.local:
            # a store that fails now must not hide why the sweep ended: the claim stays, and a
            # later driver on this host takes it over at once (its pid is gone)
            with contextlib.suppress(StorageUnreachable):
                self._withdraw(self.claims / f"{self.token}.json")
            return
        held, _ = self._read()
        if held.get("token") == self.token:  # never remove a lock another driver took over
            self.path.unlink(missing_ok=True)
