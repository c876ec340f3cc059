"""Submit a sweep to a running Ray cluster through the Ray Jobs API, and follow it."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from ..spec import SweepSpec

__all__ = ["submit", "job_status", "job_logs"]

_PACKAGE = Path(__file__).resolve().parents[1]  # the stetune package directory


def _client(address: str):
    from ray.job_submission import JobSubmissionClient

    # Ray token auth: the client reads RAY_AUTH_TOKEN / ~/.ray/auth_token like every Ray client
    return JobSubmissionClient(address)


def submit(spec: SweepSpec, address: str, *, wait: bool = False) -> str:
    """Ship the resolved spec and this stetune source as the job's working dir and start
    `python -m stetune.cli sweep` on the cluster; returns the job id."""
    staging = Path(tempfile.mkdtemp(prefix="stetune-job-"))
    shutil.copytree(_PACKAGE, staging / "stetune",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    import yaml

    (staging / "sweep.yaml").write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
    entry = "python -m stetune.cli sweep sweep.yaml --address auto"
    client = _client(address)
    job_id = client.submit_job(entrypoint=entry, runtime_env={"working_dir": str(staging)},
                               metadata={"stetune.sweep": spec.name})
    shutil.rmtree(staging, ignore_errors=True)
    return job_id


def job_status(address: str, job_id: str) -> str:
    return str(_client(address).get_job_status(job_id).value)


def job_logs(address: str, job_id: str) -> str:
    return _client(address).get_job_logs(job_id)
