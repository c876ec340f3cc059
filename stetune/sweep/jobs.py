"""Submit a sweep to a running Ray cluster through the Ray Jobs API, and follow it."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ..spec import SweepSpec

__all__ = ["submit", "job_status", "job_logs", "client_errors", "is_auth_error"]

_PACKAGE = Path(__file__).resolve().parents[1]  # the stetune package directory


def _client(address: str):
    from ray.job_submission import JobSubmissionClient

    # Ray token auth. JobSubmissionClient adds the token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or
    # ~/.ray/auth_token) only when RAY_AUTH_MODE=token is set on the client too; a RAY_AUTH_TOKEN
    # alone would be ignored and the cluster answers 401. So send it ourselves when it is set.
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    headers = {"Authorization": f"Bearer {token}"} if token else None
    return JobSubmissionClient(address, headers=headers)


def submit(spec: SweepSpec, address: str, *, wait: bool = False) -> str:
    """Ship the resolved spec and this stetune source as the job's working dir and start
    `python -m stetune.cli sweep` on the cluster; returns the job id."""
    staging = Path(tempfile.mkdtemp(prefix="stetune-job-"))
    shutil.copytree(_PACKAGE, staging / "stetune",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    import yaml

    from ..naming import split_credentials

    d = spec.to_dict()
    # never ship a password: the cluster's driver logs to MLflow with the credentials in its own
    # environment (MLFLOW_TRACKING_USERNAME / _PASSWORD), as docker/compose.yaml sets them
    d["mlflow"]["tracking_uri"] = split_credentials(spec.mlflow.tracking_uri)[0]
    (staging / "sweep.yaml").write_text(yaml.safe_dump(d, sort_keys=False))
    entry = "python -m stetune.cli sweep sweep.yaml --address auto"
    try:
        client = _client(address)
        return client.submit_job(entrypoint=entry, runtime_env={"working_dir": str(staging)},
                                 metadata={"stetune.sweep": spec.name})
    finally:  # the working dir is uploaded by submit_job; also clean up when it fails
        shutil.rmtree(staging, ignore_errors=True)


def job_status(address: str, job_id: str) -> str:
    return str(_client(address).get_job_status(job_id).value)


def job_logs(address: str, job_id: str) -> str:
    return _client(address).get_job_logs(job_id)


def client_errors() -> tuple[type[BaseException], ...]:
    """What Ray's JobSubmissionClient raises for a refused or failed request: AuthenticationError
    (401/403), ConnectionError (no dashboard there), RuntimeError (other HTTP errors, e.g. 404)."""
    from ray.exceptions import AuthenticationError

    return AuthenticationError, ConnectionError, RuntimeError


def is_auth_error(e: BaseException) -> bool:
    from ray.exceptions import AuthenticationError

    return isinstance(e, AuthenticationError)
