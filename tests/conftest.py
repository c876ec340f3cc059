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


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto's S3 API server on 127.0.0.1 (no real S3 server installs from the registries here);
    yields its endpoint URL."""
    with running_s3_server(tmp_path_factory.mktemp("s3")) as (url, _):
        yield url


@contextlib.contextmanager
def running_s3_server(tmp):
    """moto's S3 API server on a free port of 127.0.0.1; yields (endpoint URL, process)."""
    port = free_port()
    log = open(tmp / "s3.log", "ab")
    proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "moto_server"),
                             "-H", "127.0.0.1", "-p", str(port)], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    try:
        wait_for("moto s3 server", up, proc, tmp / "s3.log", timeout=60)
        yield url, proc
    finally:
        os.killpg(proc.pid, signal.SIGCONT)  # a test may have stopped it
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()


@pytest.fixture
def s3(s3_server, monkeypatch):
    """A new bucket on the S3 server, its credentials in the environment (as every process of
    a sweep reads them); yields 's3://<bucket>'."""
    import secrets

    import boto3

    from stetune.storage import clear_failure

    clear_failure()  # a failure an earlier test provoked in this process would fail this one fast
    env = {"AWS_ENDPOINT_URL": s3_server, "AWS_ACCESS_KEY_ID": "stetune-test",
           "AWS_SECRET_ACCESS_KEY": secrets.token_hex(8), "AWS_REGION": "us-east-1"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    bucket = f"stetune-{secrets.token_hex(4)}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    return f"s3://{bucket}"
