"""The driver side every sweep kind shares: the sweep directory and its sweep.json state, the
MLflow parent run, and a Ray connection. Every kind's phases run inside one Session."""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import ray

from ..tracking import SweepTracker
from .callbacks import register_tracker
from .kinds.base import SweepKind

__all__ = ["Session", "sweep_session", "state_path", "save_state"]


def state_path(spec) -> Path:
    return spec.sweep_dir() / "sweep.json"


def save_state(spec, state: dict) -> None:
    path = state_path(spec)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, default=str))
    tmp.replace(path)  # atomic: a killed driver leaves the previous state, never half of one


@dataclass
class Session:
    """What a kind's run(session) works with: its spec, the sweep.json state it fills (saved at
    the end; `save()` after each finished phase lets a resume skip it), the MLflow tracker."""
    spec: Any
    kind: SweepKind
    state: dict
    resume: bool
    verbose: int
    tracker: SweepTracker

    def save(self) -> None:
        save_state(self.spec, self.state)


@contextmanager
def sweep_session(spec, kind: SweepKind, *, address: str | None, resume: bool,
                  verbose: int) -> Iterator[Session]:
    """Yield the sweep's Session (state: sweep.json; empty for a new sweep) with its parent MLflow
    run open, its tracker registered for the callbacks and Ray initialised. On exit the state is
    saved and logged to the parent run, which ends FINISHED, or FAILED if the body raised."""
    root = spec.sweep_dir()
    path = state_path(spec)
    if path.exists() and not resume:
        how = (f"use `stetune resume {spec.name}` or another name" if kind.resumable
               else "use another name (or delete it)")
        raise FileExistsError(f"sweep '{spec.name}' already exists in {root}; {how}")
    root.mkdir(parents=True, exist_ok=True)
    state = json.loads(path.read_text()) if path.exists() else {}
    (root / "spec.json").write_text(json.dumps(spec.to_dict(), indent=2))
    save_state(spec, state)

    uri, experiment = spec.resolved_tracking_uri(), spec.resolved_experiment()
    tracker = SweepTracker(uri, experiment, spec.name, phases=kind.phases)
    tracker.start_sweep(spec.to_dict(), resume=resume)
    register_tracker(tracker, uri, experiment, spec.name)
    if not ray.is_initialized():
        # "local" always starts a fresh Ray here: a bare init() would join whatever cluster
        # /tmp/ray/ray_current_cluster points at, even a dead one
        ray.init(address=address or "local", include_dashboard=False if address is None else None,
                 log_to_driver=verbose > 1)
    session = Session(spec, kind, state, resume, verbose, tracker)
    try:
        yield session
    except BaseException:
        tracker.end_sweep("FAILED")
        raise
    session.save()
    tracker.log_artifact(str(path))
    tracker.end_sweep("FINISHED")
