"""Run a sweep of any kind: look its kind up in the table, open the sweep session (sweep dir,
MLflow parent run, Ray) and let the kind run its phases inside it."""

from __future__ import annotations

import dataclasses
import os
import urllib.parse

from ..naming import split_credentials
from .kinds import get_kind
from .session import sweep_session

__all__ = ["run_sweep", "without_credentials"]


def without_credentials(spec):
    """The spec with the password moved out of its tracking URI into the environment variable
    its client reads (the URI's own password wins over one already set): MLflow's
    MLFLOW_TRACKING_USERNAME / _PASSWORD for http(s), libpq's PGPASSWORD for PostgreSQL (the spec
    refuses one in any other URI). No file, state, log or job payload then holds it."""
    uri, user, password = split_credentials(spec.mlflow.tracking_uri)
    if uri == spec.mlflow.tracking_uri:
        return spec
    if uri.lower().startswith(("http://", "https://")):
        os.environ["MLFLOW_TRACKING_USERNAME"] = user or ""
        if password:
            os.environ["MLFLOW_TRACKING_PASSWORD"] = password
    elif uri.lower().startswith("postgres"):
        os.environ["PGPASSWORD"] = urllib.parse.unquote(password)  # the URI form is %-escaped
    else:
        raise ValueError(f"mlflow.tracking_uri must keep its password in the environment, but "
                         f"holds one for {uri.split(':', 1)[0]}")
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
