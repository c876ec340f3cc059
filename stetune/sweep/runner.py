"""Run a sweep of any kind: look its kind up in the table, open the sweep session (sweep dir,
MLflow parent run, Ray) and let the kind run its phases inside it."""

from __future__ import annotations

from .kinds import get_kind
from .session import sweep_session

__all__ = ["run_sweep"]


def run_sweep(spec, *, address: str | None = None, resume: bool = False, verbose: int = 1,
              allow_spec_change: bool = False) -> dict:
    """Run (or resume) the sweep to the end; returns its state (sweep.json's content). Only a
    resumable kind resumes; another is rerun under a new name. A resume with another spec than
    the sweep started with is refused (tracking.SpecChanged) unless allow_spec_change."""
    kind = get_kind(spec.kind)
    if resume and not kind.resumable:
        raise ValueError(f"{kind.name} sweeps cannot be resumed; run the spec again under "
                         "another name")
    with sweep_session(spec, kind, address=address, resume=resume, verbose=verbose,
                       allow_spec_change=allow_spec_change) as session:
        kind.run(session)
    return session.state
