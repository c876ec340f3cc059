"""The driver side every sweep kind shares: the sweep directory and its sweep.json state, the
MLflow parent run, and a Ray connection. Network and theory sweeps both run inside it."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import ray

from ..tracking import SweepTracker
from .callbacks import register_tracker

__all__ = ["sweep_session", "state_path", "save_state"]


def state_path(spec) -> Path:
    return spec.sweep_dir() / "sweep.json"


def save_state(spec, state: dict) -> None:
    path = state_path(spec)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, default=str))
    tmp.replace(path)  # atomic: a killed driver leaves the previous state, never half of one


@contextmanager
def sweep_session(spec, *, address: str | None, resume: bool, verbose: int,
                  resumable: bool = True) -> Iterator[dict]:
    """Yield the sweep's state dict (sweep.json; empty for a new sweep) with its parent MLflow run
    open, its tracker registered for the callbacks and Ray initialised. On exit the state is saved
    and logged to the parent run, which ends FINISHED, or FAILED if the body raised."""
    root = spec.sweep_dir()
    path = state_path(spec)
    if path.exists() and not resume:
        how = f"use `stetune resume {spec.name}` or another name" if resumable else \
            "use another name (or delete it)"
        raise FileExistsError(f"sweep '{spec.name}' already exists in {root}; {how}")
    root.mkdir(parents=True, exist_ok=True)
    state = json.loads(path.read_text()) if path.exists() else {}
    (root / "spec.json").write_text(json.dumps(spec.to_dict(), indent=2))
    save_state(spec, state)

    uri, experiment = spec.resolved_tracking_uri(), spec.resolved_experiment()
    tracker = SweepTracker(uri, experiment, spec.name)
    tracker.start_sweep(spec.to_dict(), resume=resume)
    register_tracker(tracker, uri, experiment, spec.name)
    if not ray.is_initialized():
        # "local" always starts a fresh Ray here: a bare init() would join whatever cluster
        # /tmp/ray/ray_current_cluster points at, even a dead one
        ray.init(address=address or "local", include_dashboard=False if address is None else None,
                 log_to_driver=verbose > 1)
    try:
        yield state
    except BaseException:
        tracker.end_sweep("FAILED")
        raise
    save_state(spec, state)
    tracker.log_artifact(str(path))
    tracker.end_sweep("FINISHED")
