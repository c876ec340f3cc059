"""MLflow tracking for sweeps: one parent run per sweep, one child run per trial.

Every write goes through one explicit MlflowClient owned by the Ray driver (a Tune Callback calls
this), so workers on other nodes need neither MLflow access nor a shared filesystem, and no global
`mlflow.start_run` state is touched (the driver tracks many trials at once). All calls are
idempotent on (sweep, trial_id, step), so a retried trial or a driver restarted with resume=True
never duplicates runs, params or metric points.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from sqlalchemy.exc import SQLAlchemyError
from mlflow.entities import Metric, Param, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import (MAX_ENTITY_KEY_LENGTH, MAX_PARAM_VAL_LENGTH,
                                     MAX_PARAMS_TAGS_PER_BATCH, MAX_TAG_VAL_LENGTH)

from .naming import (MASK, TRIAL_STATUSES, as_float, flatten, is_secret_key, metric_key, quote,
                     redact)
from .tracking_store import create_sqlite_store, download_weights, log_sweep_artifacts
from .tracking_writer import EpochWriter
from .version import provenance_tags

__all__ = ["SweepTracker", "TrackingConflict", "SpecChanged", "TrackingStateError", "STORE_ERRORS",
           "download_weights", "log_sweep_artifacts"]

_SWEEP_STATUSES = ("FINISHED", "FAILED", "KILLED")


def _str_items(d: dict, limit: int) -> dict[str, str]:
    """Flat, redacted, string-valued and length-capped: what MLflow accepts for params and tags."""
    out = {}
    for k, v in flatten(redact(d)).items():
        k = str(k)[:MAX_ENTITY_KEY_LENGTH]
        v = MASK if is_secret_key(k) else str(v)
        out[k] = v if len(v) <= limit else v[: limit - 3] + "..."  # MLflow rejects longer values
    return out


def _now_ms() -> int:
    return int(time.time() * 1000)


class TrackingConflict(ValueError):
    """What MLflow holds conflicts with the request (a new sweep whose name is taken, a deleted
    experiment): the user picks another name or restores it. Nothing was written."""


class SpecChanged(TrackingConflict):
    """A resume with a spec other than the one the sweep started with."""


# what a failing store (full disk, dead server) raises: MLflow's, and the Optuna studies' (RDB)
STORE_ERRORS = (MlflowException, SQLAlchemyError)


class TrackingStateError(RuntimeError):
    """MLflow lacks what the sweep's own files say it holds (a resume whose parent run is gone)."""


@dataclass
class _Trial:
    run_id: str
    last_step: float | None  # last logged epoch, -inf if none; None: not looked up in MLflow yet
    ended: bool = False


class SweepTracker:
    """Parent run for a sweep, child runs for its trials, written through one MlflowClient."""

    def __init__(self, tracking_uri: str, experiment: str, sweep_name: str,
                 phases: tuple[str, ...] | None = None):
        if not sweep_name:
            raise ValueError("sweep_name must be non-empty")
        self.tracking_uri, self.experiment, self.sweep_name = tracking_uri, experiment, sweep_name
        self.phases = phases  # the sweep kind's phases; None: any
        artifact_location = None
        if tracking_uri.startswith("sqlite:"):
            from sqlalchemy.engine import make_url
            db = make_url(tracking_uri).database
            if db and db != ":memory:":
                db_path = Path(db).expanduser().resolve()
                db_path.parent.mkdir(parents=True, exist_ok=True)
                # MLflow's default artifact root for a sqlite store is ./mlruns under the *current
                # directory*; keep artifacts next to the database so the store is self-contained.
                artifact_location = (db_path.parent / "artifacts").as_uri()
                if not db_path.exists():
                    create_sqlite_store(db_path, artifact_location)
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.experiment_id = self._get_or_create_experiment(experiment, artifact_location)
        self._parent_run_id: str | None = None
        self._resumed = False  # a fresh sweep's trial runs are all in self._trials: no lookups
        self._trials: dict[str, _Trial] = {}
        self._epochs = EpochWriter(self.client)  # per-epoch metrics, batched off the event loop
        self._rewritten: dict[str, int] = {}  # run id -> last epoch queued by rewrite()
        self._context: dict | None = None

    @property
    def context_tags(self) -> dict[str, str]:
        """MLflow's own context tags (mlflow.user, mlflow.source.*) and stetune's provenance
        (git commit, versions, host), set on every run the sweep makes."""
        if self._context is None:
            from mlflow.tracking.context.registry import resolve_tags

            self._context = _str_items(resolve_tags(provenance_tags()), MAX_TAG_VAL_LENGTH)
        return self._context

    def _get_or_create_experiment(self, name: str, artifact_location: str | None) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            try:
                return self.client.create_experiment(name, artifact_location=artifact_location)
            except MlflowException:  # created concurrently by another driver: use theirs
                exp = self.client.get_experiment_by_name(name)
                if exp is None:
                    raise
        if exp.lifecycle_stage != "active":
            raise TrackingConflict(f"MLflow experiment {name!r} is deleted; restore it "
                                   f"(mlflow experiments restore) or use another name")
        return exp.experiment_id

    @property
    def parent_run_id(self) -> str:
        if self._parent_run_id is None:
            raise RuntimeError("start_sweep() has not been called")
        return self._parent_run_id

    # ---- sweep (parent run) -------------------------------------------------------------------

    def _find_parent(self):
        runs = self.client.search_runs(
            [self.experiment_id], run_view_type=ViewType.ACTIVE_ONLY, max_results=1,
            filter_string=(f"tags.`stetune.sweep` = {quote(self.sweep_name)} "
                           "and tags.`stetune.kind` = 'sweep'"),
            order_by=["attributes.start_time DESC"])
        return runs[0] if runs else None

    def start_sweep(self, spec: dict, resume: bool = False, allow_changes: bool = False) -> str:
        """Open (or, resuming, reopen) the parent run. A resume whose spec differs from the one
        the sweep started with is refused (SpecChanged) unless allow_changes: then the changed
        fields are tagged on the run and the new spec is kept beside the first one."""
        existing = self._find_parent()
        if existing is not None and not resume:
            raise TrackingConflict(f"a sweep named {self.sweep_name!r} already exists in MLflow "
                                   f"experiment {self.experiment!r}; use another name")
        if existing is None and resume:  # spec.json is written after the parent run is made
            raise TrackingStateError(
                f"MLflow ({redact(self.tracking_uri)}, experiment {self.experiment!r}) holds no "
                f"run of sweep {self.sweep_name!r}, which its saved state says it started: the "
                f"store was replaced or emptied; restore it, or rerun the spec under another name")
        tags = {**self.context_tags, "stetune.sweep": self.sweep_name, "stetune.kind": "sweep"}
        params = _str_items(spec, MAX_PARAM_VAL_LENGTH)
        spec_file = "spec.yaml"
        if existing is None:
            run = self.client.create_run(self.experiment_id, run_name=self.sweep_name,
                                         tags={"stetune.sweep": self.sweep_name,
                                               "stetune.kind": "sweep"})
            run_id = run.info.run_id
        else:
            run_id = existing.info.run_id
            old = existing.data.params
            changed = sorted(k for k in params if k in old and old[k] != params[k])
            resumes = int(existing.data.tags.get("stetune.resumes", 0)) + 1
            if changed and not allow_changes:
                raise SpecChanged(
                    f"sweep {self.sweep_name!r} started with another spec: "
                    + ", ".join(f"{k}: {old[k]} -> {params[k]}" for k in changed[:8])
                    + (f" (+{len(changed) - 8} more)" if len(changed) > 8 else "")
                    + "; resume with the spec it started with, or pass --allow-spec-change")
            self.client.update_run(run_id, status="RUNNING")
            tags["stetune.resumes"] = resumes
            if changed:  # MLflow params are immutable: they keep the first values
                tags[f"stetune.spec_changed.{resumes}"] = ", ".join(changed)
                spec_file = f"spec.resume{resumes}.yaml"
            params = {k: v for k, v in params.items() if k not in old}
        self._parent_run_id, self._resumed = run_id, existing is not None
        self._log_batch(run_id, params=params, tags=_str_items(tags, MAX_TAG_VAL_LENGTH))
        # Same redaction as the params: the artifact must not leak what the params hide.
        self.client.log_text(run_id, yaml.safe_dump(redact(spec), sort_keys=False), spec_file)
        return run_id

    def log_text(self, text: str, artifact_file: str) -> None:
        """A file of the sweep's (sweep.json) as an artifact of the parent run: read from its
        storage, which may be an object store, so sent as text."""
        self.client.log_text(self.parent_run_id, text, artifact_file)

    def tag_sweep(self, tags: dict) -> None:
        self._log_batch(self.parent_run_id, tags=_str_items(tags, MAX_TAG_VAL_LENGTH))

    def describe(self, text: str, metrics: dict | None = None) -> None:
        """The parent run's description (MLflow's note, shown as Markdown on the run's page) and
        the sweep's headline numbers as metrics (e.g. the best value per cell)."""
        self.flush()
        ts = _now_ms()
        self._log_batch(self.parent_run_id,
                        metrics=[Metric(metric_key(k), f, ts, 0) for k, v in (metrics or {}).items()
                                 if (f := as_float(v)) is not None],
                        tags={"mlflow.note.content": text[:MAX_TAG_VAL_LENGTH]})

    def end_sweep(self, status: str = "FINISHED") -> None:
        self.flush()
        if status not in _SWEEP_STATUSES:
            raise ValueError(f"sweep status must be one of {_SWEEP_STATUSES}, got {status!r}")
        self.client.set_terminated(self.parent_run_id, status=status)

    # ---- trials (child runs) ------------------------------------------------------------------

    def _find_trial_run(self, trial_id: str):
        runs = self.client.search_runs(
            [self.experiment_id], run_view_type=ViewType.ACTIVE_ONLY, max_results=2,
            filter_string=(f"tags.`stetune.trial_id` = {quote(trial_id)} "
                           f"and tags.`mlflow.parentRunId` = {quote(self.parent_run_id)}"),
            order_by=["attributes.start_time ASC"])  # oldest first: the one a resume must reuse
        return runs[0] if runs else None

    def trial_run(self, trial_id: str, *, params: dict, tags: dict, name: str | None = None) -> str:
        trial_id = str(trial_id)
        cached = self._trials.get(trial_id)
        if cached is not None:
            if cached.ended:  # a retried trial runs again
                self.client.update_run(cached.run_id, status="RUNNING")
                cached.ended = False
            return cached.run_id
        phase = tags.get("stetune.phase")
        if phase is not None and self.phases is not None and phase not in self.phases:
            raise ValueError(f"stetune.phase must be one of {self.phases}, but got {phase!r}")
        want_params = _str_items(params, MAX_PARAM_VAL_LENGTH)
        want_tags = _str_items(tags, MAX_TAG_VAL_LENGTH)
        run = self._find_trial_run(trial_id) if self._resumed else None
        if run is None:
            run = self.client.create_run(
                self.experiment_id, run_name=name or trial_id,
                tags={**self.context_tags, "stetune.trial_id": trial_id,
                      "mlflow.parentRunId": self.parent_run_id,
                      "stetune.sweep": self.sweep_name, "stetune.kind": "trial"})
            trial = _Trial(run.info.run_id, last_step=-math.inf)  # fresh run: nothing logged
            old_params, old_tags = {}, {}
        else:
            trial = _Trial(run.info.run_id, last_step=None)
            if run.info.status != "RUNNING":
                self.client.update_run(trial.run_id, status="RUNNING")
            old_params, old_tags = run.data.params, run.data.tags
        # Only what is missing or changed: a second call never re-sends (or conflicts on) params.
        self._log_batch(trial.run_id,
                        params={k: v for k, v in want_params.items() if k not in old_params},
                        tags={k: v for k, v in want_tags.items() if old_tags.get(k) != v})
        self._trials[trial_id] = trial
        return trial.run_id

    def tag_trial(self, trial_id: str, tags: dict) -> None:
        """Set tags on an existing trial run (e.g. the node a retried trial moved to)."""
        self._log_batch(self._trial(trial_id).run_id, tags=_str_items(tags, MAX_TAG_VAL_LENGTH))

    def log_trial_artifact(self, trial_id: str, local_path: str, artifact_path: str) -> None:
        self.client.log_artifact(self._trial(trial_id).run_id, local_path, artifact_path)

    def prune_orphans(self, phase: str, keep: set[str]) -> list[str]:
        """Delete this sweep's `phase` trial runs whose trial id is not in `keep`: runs opened by a
        driver that was killed before its experiment snapshot recorded the trial. The resumed
        sweep re-issues that work under new trial ids, so the orphan would be a duplicate."""
        self.flush()
        runs = self._children(f"tags.`stetune.phase` = {quote(phase)}")
        dropped = [r.data.tags.get("stetune.trial_id", "") for r in runs
                   if r.data.tags.get("stetune.trial_id") not in keep]
        for r in runs:
            if r.data.tags.get("stetune.trial_id") not in keep:
                self.client.delete_run(r.info.run_id)
                self._trials.pop(r.data.tags.get("stetune.trial_id", ""), None)
        return dropped

    def count_ended(self, phase: str) -> int:
        """How many of this sweep's `phase` trial runs have ended (are not RUNNING)."""
        self.flush()
        runs = self._children(f"tags.`stetune.phase` = {quote(phase)}")
        return sum(r.info.status != "RUNNING" for r in runs)

    def end_open_trials(self, status: str) -> list[str]:
        """End every trial run of this sweep still RUNNING with `status` (a driver stopping
        mid-phase: interrupted, or failed); returns their trial ids."""
        self.flush()
        if self._parent_run_id is None:
            return []
        runs = self._children("attributes.status = 'RUNNING'")
        ended = []
        for r in runs:
            trial_id = r.data.tags.get("stetune.trial_id", "")
            self._log_batch(r.info.run_id, tags={"stetune.status": status})
            self.client.set_terminated(r.info.run_id, status=TRIAL_STATUSES[status])
            if trial_id in self._trials:
                self._trials[trial_id].ended = True
            ended.append(trial_id)
        return ended

    def _children(self, where: str) -> list:
        return self.client.search_runs(
            [self.experiment_id], run_view_type=ViewType.ACTIVE_ONLY, max_results=50_000,
            filter_string=f"tags.`mlflow.parentRunId` = {quote(self.parent_run_id)} and {where}")

    def _trial(self, trial_id: str) -> _Trial:
        trial_id = str(trial_id)
        trial = self._trials.get(trial_id)
        if trial is None:  # driver restarted: the run exists in MLflow, the cache does not
            run = self._find_trial_run(trial_id)
            if run is None:
                raise KeyError(f"no MLflow run for trial {trial_id!r}; call trial_run() first")
            trial = self._trials[trial_id] = _Trial(run.info.run_id, last_step=None,
                                                    ended=run.info.status != "RUNNING")
        if trial.last_step is None:  # every per-epoch key is logged in one batch: any shows it
            keys = [k for k in self.client.get_run(trial.run_id).data.metrics
                    if not k.startswith("final/")]
            trial.last_step = max((m.step for k in keys
                                   for m in self.client.get_metric_history(trial.run_id, k)),
                                  default=-math.inf)
            trial.last_step = max(trial.last_step, self._rewritten.get(trial.run_id, -math.inf))
        return trial

    def log_epoch(self, trial_id: str, metrics: dict, step: int) -> None:
        trial = self._trial(trial_id)
        step = int(step)
        if step <= trial.last_step:  # re-reported after a retry/resume: already in the history
            return
        ts = _now_ms()
        values = {metric_key(k): f for k, v in metrics.items()  # the epoch is the step
                  if k != "epoch" and (f := as_float(v)) is not None}
        self._epochs.put(trial.run_id, [Metric(k, v, ts, step) for k, v in values.items()])
        trial.last_step = step

    def flush(self) -> None:
        """Write the per-epoch metrics still pending (a failure raises here: STORE_ERRORS)."""
        self._epochs.flush()

    def unwritten(self) -> dict[str, list[tuple]]:
        """{run id: [(key, value, timestamp, step)]} the store has not taken (yet)."""
        return {run_id: [(m.key, m.value, m.timestamp, m.step) for m in ms]
                for run_id, ms in self._epochs.unwritten().items()}

    def rewrite(self, unwritten: dict[str, list[tuple]]) -> None:
        """Queue again what `unwritten` returned with a snapshot (a resume from it): those
        epochs count as logged, so a trial re-reporting them is not logged twice."""
        for run_id, ms in unwritten.items():
            self._epochs.put(run_id, [Metric(*m) for m in ms])
            self._rewritten[run_id] = max([m[3] for m in ms] + [self._rewritten.get(run_id, -1)])

    def end_trial(self, trial_id: str, status: str, summary: dict | None = None,
                  name: str | None = None) -> None:
        self.flush()  # this run's epochs (and any others) first
        if status not in TRIAL_STATUSES:
            raise ValueError(f"trial status must be one of {sorted(TRIAL_STATUSES)}, "
                             f"got {status!r}")
        trial = self._trial(trial_id)
        ts, last = _now_ms(), trial.last_step
        step = int(last) if math.isfinite(last) else 0  # summary sits at the trial's last epoch
        metrics = [Metric(metric_key(f"final/{k}"), f, ts, step)
                   for k, v in (summary or {}).items() if (f := as_float(v)) is not None]
        self._log_batch(trial.run_id, metrics=metrics, tags={"stetune.status": status})
        if name:  # e.g. "pruned@2 · ...": the runs table shows how it ended
            self.client.update_run(trial.run_id, name=name)
        self.client.set_terminated(trial.run_id, status=TRIAL_STATUSES[status])
        trial.ended = True

    # ---- batching -----------------------------------------------------------------------------

    def _log_batch(self, run_id: str, *, metrics=(), params: dict | None = None,
                   tags: dict | None = None) -> None:
        """One log_batch call when it fits, chunked to MLflow's per-request limits otherwise."""
        metrics = list(metrics)
        params = [Param(k, v) for k, v in (params or {}).items()]
        tags = [RunTag(k, v) for k, v in (tags or {}).items()]
        n = MAX_PARAMS_TAGS_PER_BATCH  # also below the 1000-metric and 1000-entity limits
        while metrics or params or tags:
            self.client.log_batch(run_id, metrics=metrics[:n], params=params[:n], tags=tags[:n])
            metrics, params, tags = metrics[n:], params[n:], tags[n:]
