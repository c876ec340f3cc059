"""Run a sweep of any kind: look its kind up in the table, open the sweep session (sweep dir,
MLflow parent run, Ray) and let the kind run its phases inside it."""

from __future__ import annotations

import dataclasses
import os

from ..naming import split_credentials
from .kinds import get_kind
from .session import sweep_session

__all__ = ["run_sweep", "without_credentials"]


def without_credentials(spec):
    """The spec with a `user:password@` moved out of its http(s) tracking URI into MLflow's own
    MLFLOW_TRACKING_USERNAME / _PASSWORD (unless already set), so no file, state, log or job
    payload stetune writes holds the password; MLflow's client sends it from there."""
    uri, user, password = split_credentials(spec.mlflow.tracking_uri)
    if password is None and user is None:
        return spec
    os.environ.setdefault("MLFLOW_TRACKING_USERNAME", user or "")
    if password:
        os.environ.setdefault("MLFLOW_TRACKING_PASSWORD", password)
    return dataclasses.replace(spec, mlflow=dataclasses.replace(spec.mlflow, tracking_uri=uri))


def run_sweep(spec, *, address: str | None = None, resume: bool = False, verbose: int = 1,
              allow_spec_change: bool = False) -> dict:
    """Run (or resume) the sweep to the end; returns its state (sweep.json's content). Only a
    resumable kind resumes; another is rerun under a new name. A resume with another spec than
    the sweep started with is refused (tracking.SpecChanged) unless allow_spec_change."""
    spec = without_credentials(spec)
    kind = get_kind(spec.kind)
    if resume and not kind.resumable:
        raise ValueError(f"{kind.name} sweeps cannot be resumed; run the spec again under "
                         "another name")
    with sweep_session(spec, kind, address=address, resume=resume, verbose=verbose,
                       allow_spec_change=allow_spec_change) as session:
        kind.run(session)
    return session.state
