"""Process and service helpers for the integration tests that start real servers (Ray heads,
MLflow, PostgreSQL) in their own sessions: free ports, a clean environment, waiting until a
service answers, and a teardown that signals only that session's processes."""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def base_env(home: Path | None = None, **auth: str) -> dict:
    """This environment without any Ray address or auth setting, plus `auth`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(auth)
    if home is not None:
        env["HOME"] = str(home)
    return env


def session_pids(sid: int) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # state ppid pgrp session ...
            pids.append(int(stat.parent.name))
    return pids


def http_get(url: str, token: str | None) -> tuple[int, str]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def wait_for(what: str, ok, proc: subprocess.Popen, log: Path, timeout: float = 120) -> float:
    t0 = time.monotonic()
    while not ok():
        if proc.poll() is not None:
            pytest.fail(f"{what} exited {proc.returncode}:\n{log.read_text()[-4000:]}")
        if time.monotonic() - t0 > timeout:
            pytest.fail(f"{what} not up in {timeout:.0f} s:\n{log.read_text()[-4000:]}")
        time.sleep(0.5)
    return time.monotonic() - t0


def stop_session(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM the session leader (`ray start --block` stops its Ray processes; the MLflow server
    its workers), then SIGKILL whatever is left of its session, by pid."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while session_pids(proc.pid) and time.monotonic() < deadline:
        proc.poll()
        time.sleep(0.5)
    for pid in session_pids(proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(10)


def pg_bin() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                      key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    return versions[-1].parent if versions else None


@contextlib.contextmanager
def postgres(tmp: Path):
    """A throwaway cluster on 127.0.0.1 with password (scram) auth, databases `mlflow` (as the
    PostgreSQL image's POSTGRES_DB makes it) and `postgres`. initdb refuses to run as root: as
    root the cluster belongs to the `postgres` user."""
    root = os.geteuid() == 0
    as_owner = ["runuser", "-u", "postgres", "--"] if root else []
    data, pwfile = tmp / "pgdata", tmp / "pwfile"
    # percent, at, slash, colon: the entrypoint must quote them in URIs and in the auth ini
    password = secrets.token_hex(12) + "%@/:"
    pwfile.write_text(password + "\n")
    pwfile.chmod(0o600)
    if root:
        pg = pwd.getpwnam("postgres")
        for p in (tmp, pwfile):
            os.chown(p, pg.pw_uid, pg.pw_gid)
    (port,) = free_ports(1)
    subprocess.run([*as_owner, pg_bin() / "initdb", "-D", data, "-U", "stetune", f"--pwfile={pwfile}",
                    "-A", "scram-sha-256", "-E", "UTF8", "--no-sync"],
                   check=True, capture_output=True, cwd=tmp)
    pwfile.unlink()
    log = tmp / "postgres.log"
    subprocess.run([*as_owner, pg_bin() / "pg_ctl", "-D", data, "-l", log, "-w", "-t", "60", "-o",
                    f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
                   check=True, capture_output=True, cwd=tmp)
    try:
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=port, user="stetune", password=password,
                                dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE mlflow")
        conn.close()
        yield {"host": "127.0.0.1", "port": port, "user": "stetune", "password": password}
    finally:
        subprocess.run([*as_owner, pg_bin() / "pg_ctl", "-D", data, "-m", "fast", "-w", "stop"],
                       capture_output=True, cwd=tmp)
