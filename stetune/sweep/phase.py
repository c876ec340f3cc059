"""The Tune plumbing every sweep kind shares: a phase is one Tune experiment under
<storage>/<name>/<phase> (a grid of trial configs, or a searcher's), built here with the same
trial directory names, callbacks (MLflow runs, progress lines), retries and restore-on-resume
for every kind; on the workers, `trial_workspace` restores a retried trial's checkpoint and
reports each epoch with it. Kinds get plain `Outcome`s back, never Tune's result objects."""

from __future__ import annotations

import math
import os
import signal
import tempfile
import threading
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

import ray
from ray import tune
from ray.tune.error import TuneError
from ray.tune.logger import JsonLoggerCallback

from ..checkpoint import CHECKPOINT_FILE
from ..storage import Location, said, unreachable
from ..tracking import STORE_ERRORS
from .callbacks import SchedulerState, StoreHealth, TrackingCallback
from .stopping import SaveBeforeStop
from .kinds.base import FINAL_KEYS, trial_status
from .packs import MEMBER_END, PackDemux, is_pack, member_id
from .progress import PhaseProgress
from .session import SweepInterrupted, SweepStateError
from .worker import Workspace, trial_workspace

__all__ = ["Phase", "Outcome", "run_phase", "run_one", "trial_workspace", "Workspace",
           "trial_dirname", "check_dataset", "DataUnavailable"]

# short trials checkpoint often by design (resume from a recent epoch); Tune's warning about
# frequent snapshots would fire for every one
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
# the MLflow client prints a "View run" URL for every run it ends over HTTP
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
# Tune's default loggers: CSV, JSON and TensorBoard files per trial, written on the driver for
# every result. MLflow holds the metrics; result.json alone stays (Outcome.history reads it).
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
# a pack's member-end and checkpoint-only results carry no metric (packs.py)
os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
# a new worker process per trial re-imports torch and re-initialises (seconds each); trials seed
# and build everything themselves, so a reused worker gives the same results
REUSE_ACTORS = True


def trial_dirname(trial) -> str:
    return trial.trial_id  # default names embed every parameter and overflow path limits


# -- on the worker: worker.py; here the dataset probe ----------------------------------------------
class DataUnavailable(OSError):
    """The sweep's dataset cannot be loaded where trials run: said before any trial starts."""


def _probe_dataset(name: str, data_dir: str | None) -> str | None:
    from .. import load_plugins
    from ..data import DatasetError, load_dataset

    load_plugins()  # a plugin's dataset, on a cluster node
    try:
        load_dataset(name, data_dir, limit=1)
    except (DatasetError, OSError) as e:  # DatasetNotFoundError is an OSError
        return str(e)
    except Exception as e:  # noqa: BLE001 (a plugin's loader may raise anything)
        return f"dataset {name!r} cannot be loaded ({type(e).__name__}: {e})"
    return None


def check_dataset(name: str, data_dir: str | None, local: bool) -> None:
    """Load the dataset once, here (a local sweep) or on a node of the cluster (where the data
    lives), so that a missing one is one line before the sweep makes anything."""
    why = (_probe_dataset(name, data_dir) if local else
           ray.get(ray.remote(num_cpus=0)(_probe_dataset).remote(name, data_dir)))
    if why is not None:
        raise DataUnavailable(f"{why}; nothing was started")


# -- on the driver ---------------------------------------------------------------------------------
@dataclass
class Phase:
    """One Tune experiment of a sweep: what runs, on what, and how its trials are judged."""
    name: str                        # the stetune.phase tag and the experiment folder
    trainable: Callable              # fn(config, **kwargs) on a worker; config["cfg"] is the trial
    kwargs: dict                     # shipped once through the object store (tune.with_parameters)
    epochs: int                      # a full trial's length (progress and statuses)
    per_cell: int                    # trials per cell, for the progress lines
    configs: list[dict] | None = None  # a grid: one trial per {cell, phase, params, tags} ...
    searcher: Any = None             # ... or a Tune searcher issuing `num_samples` of them
    num_samples: int = 1
    members: int | None = None       # trials counted as members, when some are packs (packs.py)
    scheduler: Any = None            # None: run every trial to its end
    resources: dict = field(default_factory=lambda: {"cpu": 1})
    metric: str = "val_acc"          # the progress lines' best value
    mode: str = "max"
    status: Callable | None = None   # status(last, errored=...) -> str; None: trial_status(epochs)
    fixed: dict = field(default_factory=dict)  # logged as params of every trial ...
    params: Callable | None = None   # ... or params(cfg): a trial's resolved run spec (picklable)
    final_keys: tuple = FINAL_KEYS
    log_weights: bool = False        # finished trials log weights/model.pt (runs worth starting from)
    max_failures: int = 2            # retries per trial, resumed from its last checkpoint
    channel: str | None = None       # the workers' key-value channel (stopping.py, packs.py)

    def judge(self) -> Callable:
        return self.status or partial(trial_status, epochs=self.epochs)


@dataclass
class Outcome:
    """A trial as it ended: its config, last result, status, error and checkpoint."""
    cfg: dict
    last: dict
    status: str
    error: BaseException | None
    checkpoint: Any
    _result: Any = None
    member: int | None = None        # its index in its pack's checkpoint; None: not in a pack

    def history(self) -> list[dict]:
        """Every result the trial reported, in epoch order."""
        df = self._result.metrics_dataframe if self._result is not None else None
        if df is not None and self.member is not None:
            df = df[df["member"] == self.member]
            if MEMBER_END in df:
                df = df[df[MEMBER_END].isna()]
        return [] if df is None else df.sort_values("epoch").to_dict("records")


def run_phase(session, phase: Phase) -> list[Outcome]:
    """Run (or, on resume, restore and finish) the phase; one Outcome per trial. Tune's own
    requests to an object store that fail (its state, a new phase's folder) say so in one line."""
    with said(session.spec.sweep_dir() / phase.name, "Tune's request to"):
        return _run_phase(session, phase)


def _run_phase(session, phase: Phase) -> list[Outcome]:
    spec, path = session.spec, session.spec.sweep_dir() / phase.name
    trainable = tune.with_resources(tune.with_parameters(phase.trainable, **phase.kwargs),
                                    phase.resources)
    if session.resume and path.exists():
        tuner = _restore(path, trainable, phase.name)
    else:
        status = phase.judge()
        # a pack's members reach these two as trials of their own (PackDemux)
        callbacks = [PackDemux([
            TrackingCallback(spec.resolved_tracking_uri(), spec.resolved_experiment(),
                             spec.name, phase.name, status, fixed=phase.fixed,
                             final_keys=phase.final_keys, log_weights=phase.log_weights,
                             params=phase.params),
            PhaseProgress(phase.name, phase.metric, phase.mode, status, phase.per_cell,
                          _total(phase))]),
            JsonLoggerCallback()]
        if phase.scheduler is not None:
            callbacks.append(SchedulerState(phase.scheduler))
        if phase.channel is not None:  # a stop lets the running trials checkpoint first
            callbacks.append(SaveBeforeStop(phase.channel))
        if not spec.sweep_dir().local:
            callbacks.append(StoreHealth())
        grid = {} if phase.configs is None else {"cfg": tune.grid_search(phase.configs)}
        tuner = tune.Tuner(
            trainable, param_space=grid,
            tune_config=tune.TuneConfig(
                search_alg=phase.searcher, scheduler=phase.scheduler,
                num_samples=phase.num_samples, max_concurrent_trials=spec.max_concurrent,
                trial_dirname_creator=trial_dirname, reuse_actors=REUSE_ACTORS),
            run_config=tune.RunConfig(
                name=phase.name, callbacks=callbacks, **_tune_storage(spec.sweep_dir()),
                verbose=1 if session.verbose >= 2 else 0,  # Ray's tables: -v
                failure_config=tune.FailureConfig(max_failures=phase.max_failures),
                # two: a driver killed before its snapshot naming the newest checkpoint reached
                # storage resumes from the one before (Tune forces that snapshot after two)
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2)))
    results, stopped = _fit(session, tuner)
    ended = results.num_terminated + results.num_errors
    if stopped or ended < _tune_total(phase):  # Tune returns early only when told to stop
        signals = session.signals  # (trials it stopped count as terminated: ask MLflow instead)
        raise SweepInterrupted((signals and signals.received) or signal.SIGINT, phase.name,
                               session.tracker.count_ended(phase.name), _total(phase))
    if session.resume:  # runs of trials the killed driver never snapshotted would be duplicates
        keep = {f"{phase.name}-{tid}" for r, cfg in _with_configs(results)
                for tid in _trial_ids(r, cfg)}
        session.tracker.prune_orphans(phase.name, keep)
    judge = phase.judge()
    outcomes = [o for r, cfg in _with_configs(results) for o in _outcomes(r, cfg, judge)]
    # failed trials (errors, not diverged runs: those are results) make the command exit 3
    failed = session.state.setdefault("failed", {})
    failed[phase.name] = [f"{o.cfg['cell']} ({_first_line(o.error)})" for o in outcomes
                          if o.status == "failed"]
    if not failed[phase.name]:
        del failed[phase.name]
    if not failed:
        del session.state["failed"]
    return outcomes


def _tune_total(phase: Phase) -> int:
    return len(phase.configs) if phase.configs is not None else phase.num_samples


def _total(phase: Phase) -> int:
    """The phase's trials, a pack's members each counted."""
    if phase.members is not None:
        return phase.members
    return (sum(len(c.get("members", [c])) for c in phase.configs) if phase.configs is not None
            else phase.num_samples)


def _with_configs(results) -> list[tuple[Any, dict]]:
    """(Result, its trial's cfg) per trial. Tune's Result takes the config from the last result,
    so a trial that failed before it reported (e.g. its every attempt placed on a node that had
    died but was not yet declared dead) has none there: its Trial, in the same order, has it."""
    trials = getattr(getattr(results, "_experiment_analysis", None), "trials", None)
    return [(r, (r.config or getattr(t, "config", None) or {}).get("cfg", {}))
            for r, t in zip(results, trials or [None] * len(results))]


def _trial_ids(r, cfg: dict) -> list[str]:
    tid = r.metrics.get("trial_id") or Path(r.path).name
    return [member_id(tid, i) for i in range(len(cfg["members"]))] if is_pack(cfg) else [tid]


def _outcomes(r, cfg: dict, judge) -> list[Outcome]:
    """One Outcome per trial, or per member of a pack (from its member-tagged results)."""
    errored = r.error is not None
    if not is_pack(cfg):
        return [Outcome(cfg, r.metrics or {}, judge(r.metrics or {}, errored=errored), r.error,
                        r.checkpoint, r)]
    df = r.metrics_dataframe
    outs = []
    for i, member in enumerate(cfg["members"]):
        rows = ([] if df is None or "member" not in df else
                df[(df["member"] == i)].to_dict("records"))
        epochs = [_plain(row) for row in rows if not isinstance(row.get(MEMBER_END), str)]
        left = any(isinstance(row.get(MEMBER_END), str) for row in rows)  # ASHA stopped it
        last = epochs[-1] if epochs else {}
        # a pack that failed fails the members still in it; one that left before keeps its end
        status = judge(last, errored=errored and not left and last.get("status") != "diverged")
        outs.append(Outcome(member, last, status, r.error if status == "failed" else None,
                            r.checkpoint, r, member=i))
    return outs


def _plain(row: dict) -> dict:
    """A result row as reported: without the columns other members' rows brought (NaN here)."""
    return {k: v for k, v in row.items() if not (isinstance(v, float) and math.isnan(v))}


def _first_line(error: BaseException | None) -> str:
    if error is None:
        return "no result reported"
    lines = [ln.strip() for ln in str(error).strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else type(error).__name__)[:200]  # Ray puts the cause last


def _tune_storage(where: Location) -> dict:
    """Tune's storage arguments: a local folder as a path; an object store as its pyarrow
    filesystem (the one whose endpoint and credentials the AWS variables gave) and a path in it.
    Trials then upload their checkpoints there themselves: no disk is shared."""
    if where.local:
        return {"storage_path": where.path}
    return {"storage_path": where.path, "storage_filesystem": where.fs}


def _restore(path: Location, trainable, name: str):
    """The interrupted phase's Tuner, or a one-line SweepStateError: never a silent restart."""
    again = f"delete {path} to run the {name} phase again from its start"
    fs = _tune_storage(path)
    if not tune.Tuner.can_restore(path.path, fs.get("storage_filesystem")):
        raise SweepStateError(f"{path}: Tune's experiment state is missing or unreadable, so the "
                              f"{name} phase cannot continue where it stopped; {again}")
    try:
        # the restored callbacks are unpickled copies: they find the driver's tracker by name
        return tune.Tuner.restore(path.path, trainable=trainable, resume_unfinished=True,
                                  resume_errored=True,
                                  storage_filesystem=fs.get("storage_filesystem"))
    except Exception as e:  # unpickling: another stetune version's state, or a damaged file
        if (err := unreachable(e, path, "reading Tune's state at")) is not None:
            raise err from None  # the store failed, not the state
        raise SweepStateError(f"{path}: Tune's experiment state cannot be restored "
                              f"({type(e).__name__}: {_first_line(e)}), e.g. it was written by "
                              f"another stetune version; {again}, or rerun the sweep under "
                              f"another name") from None


def _fit(session, tuner):
    """(tuner.fit(), whether a stop signal came): SIGTERM is mapped to Tune's graceful SIGINT
    stop (Ray's own handler would exit at once). Tune's SIGINT handler puts back the handler it
    replaced (ours) when it fires, which is how a Ctrl-C that Tune handled shows; the sweep's
    handlers come back after either way, as Tune otherwise leaves its own set."""
    signals = session.signals
    if signals is None or threading.current_thread() is not threading.main_thread():
        return _fit_unwrapped(tuner), False
    signals.install()
    signal.signal(signal.SIGTERM, signals.on_sigterm_in_tune)
    try:
        results = _fit_unwrapped(tuner)
        stopped = signals.received is not None or signal.getsignal(signal.SIGINT) == signals.handle
    finally:
        signals.install()
    return results, stopped


def _fit_unwrapped(tuner):
    """tuner.fit(), where a failing store (a full disk, a dead MLflow server) raised in one of our
    callbacks comes out as itself: Tune wraps it in a TuneError holding a traceback as text."""
    try:
        return tuner.fit()
    except TuneError as e:
        cause = e.__cause__ or e.__context__
        if isinstance(cause, (OSError, *STORE_ERRORS)):
            raise cause from None
        raise


def run_one(session, phase: Phase, dest: Location, what: str) -> Outcome:
    """A one-trial phase (a float pre-training, a repulsion start) whose final checkpoint file is
    copied to `dest`; anything but a finished trial is an error naming `what`."""
    out = run_phase(session, phase)[0]
    if out.status != "finished" or out.checkpoint is None:
        raise RuntimeError(f"{what} ended {out.status}: {out.error or 'see its MLflow run'}")
    with tempfile.TemporaryDirectory() as tmp, \
            said(session.spec.sweep_dir() / phase.name, "downloading the checkpoint from"):
        out.checkpoint.to_directory(tmp)
        dest.write_bytes((Path(tmp) / CHECKPOINT_FILE).read_bytes())
    return out
