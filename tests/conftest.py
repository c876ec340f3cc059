"""Shared fixtures: a real `mlflow server` on 127.0.0.1, and a real local Ray per test module."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import urllib.request

import pytest

from service_helpers import wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def local_ray():
    """A fresh 2-CPU local Ray for the module's tests, shut down after them."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@contextlib.contextmanager
def running_mlflow_server(tmp, port: int | None = None):
    """A real `mlflow server` on 127.0.0.1 with its sqlite store and artifacts in `tmp`; yields
    (url, process); stopped after (a test may kill it earlier and start another on the port)."""
    port = port or free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp}/srv.db",
           "--serve-artifacts", "--artifacts-destination", f"{tmp}/artifacts"]
    log = open(tmp / "server.log", "ab")
    # Own session: teardown signals the server and the workers it spawned, nothing else.
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tmp,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    try:
        waited = wait_for("mlflow server", healthy, proc, tmp / "server.log", timeout=120)
        print(f"mlflow server healthy after {waited:.1f} s")
        yield url, proc
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(15)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("server")
    with running_mlflow_server(tmp) as (url, _):
        yield url, tmp
