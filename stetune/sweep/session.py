"""The driver side every sweep kind shares: the sweep directory and its sweep.json state, the
MLflow parent run, and a Ray connection. Every kind's phases run inside one Session."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import ray

from ..naming import gist, redact
from ..storage import Location, StorageUnreachable, clear_failure, failure
from ..store import (StoreUnusable, TrackingUnreachable, bound_client_retries, check_server,
                     check_sqlite_store)
from ..tracking import SweepTracker
from .callbacks import register_tracker
from .kinds.base import SweepKind
from .lock import DriverLock, SweepLocked
from .progress import set_display

__all__ = ["Session", "SweepInterrupted", "SweepStateError", "StorageError", "ClusterUnreachable",
           "sweep_session", "state_path", "save_state"]

# INFO lines of the libraries under a sweep, shown with -v only: MLflow's "Creating initial
# MLflow database tables", Optuna's "A new study created", Ray's start-up and token-auth notes
_CHATTY = ("mlflow", "alembic", "optuna", "ray", "ray.tune",
           "ray._private.authentication.authentication_token_setup")
_TRACEBACKS = ("ray.tune.execution.tune_controller", "ray.tune.tune")
# Tune's storage syncing, whose failures and slowness the sweep's one line says (an object store
# that stopped answering): their tracebacks and hints only with -v
_STORAGE_LOGS = ("ray.train._internal.storage", "ray.train._internal.syncer",
                 "ray.tune.execution.experiment_state")


def state_path(spec) -> Location:
    return spec.sweep_dir() / "sweep.json"


def save_state(spec, state: dict) -> None:
    # atomic: a killed driver leaves the previous state, never half of one
    state_path(spec).write_text(json.dumps(state, indent=2, default=str))


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
    signals: _Signals | None = None

    def save(self) -> None:
        save_state(self.spec, self.state)


class SweepInterrupted(Exception):
    """The driver got SIGINT or SIGTERM: the running trials were stopped, the phase is left
    for `resume`, and the open MLflow runs are ended KILLED."""

    def __init__(self, signum: int, phase: str | None = None, ended: int | None = None,
                 total: int | None = None):
        self.signum, self.phase, self.ended, self.total = signum, phase, ended, total
        where = f" during the {phase} phase" if phase else ""
        done = f" ({ended} of {total} trials ended)" if total is not None else ""
        super().__init__(f"interrupted by {signal.Signals(signum).name}{where}{done}")


class SweepStateError(RuntimeError):
    """A sweep's saved state (Tune's, sweep.json, spec.json) cannot be used as it is; the message
    names the file and what the user can do."""


class ClusterUnreachable(ConnectionError):
    """--address names a Ray cluster that does not answer: nothing was created."""


class StorageError(ValueError):
    """`storage` cannot hold the sweep (a file, read-only, no permission): nothing was made."""


class _Signals:
    """SIGINT and SIGTERM both stop the sweep the way Tune stops on Ctrl-C (trials stopped, the
    experiment state saved); which one came decides the exit code. Outside a Tune run they raise
    KeyboardInterrupt, which the session turns into SweepInterrupted."""

    def __init__(self):
        self.received: int | None = None
        self._saved: dict[int, object] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers are the main thread's
        for sig in (signal.SIGINT, signal.SIGTERM):  # after ray.init, whose SIGTERM handler exits
            self._saved.setdefault(sig, signal.getsignal(sig))
            signal.signal(sig, self.handle)

    def handle(self, signum, frame) -> None:
        self.received = self.received or signum
        raise KeyboardInterrupt

    def on_sigterm_in_tune(self, signum, frame) -> None:
        self.received = self.received or signum
        signal.raise_signal(signal.SIGINT)  # Tune's own handler: a graceful stop

    def restore(self) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)


@contextmanager
def sweep_session(spec, kind: SweepKind, *, verbose: int, **kw) -> Iterator[Session]:
    """The session (below) with the libraries' output as `verbose` says, put back after: a
    process that runs several sweeps (tests, notebooks) keeps its own settings."""
    restore = _quiet(verbose)
    try:
        with _sweep_session(spec, kind, verbose=verbose, **kw) as session:
            yield session
    finally:
        restore()


@contextmanager
def _sweep_session(spec, kind: SweepKind, *, address: str | None, resume: bool,
                   verbose: int, allow_spec_change: bool = False) -> Iterator[Session]:
    """Yield the sweep's Session (state: sweep.json; empty for a new sweep) with its parent MLflow
    run open, its tracker registered for the callbacks and Ray initialised. On exit the state is
    saved and logged to the parent run, which ends FINISHED; KILLED with its open trial runs if
    the driver was interrupted (SweepInterrupted), FAILED with them if the body raised."""
    root = spec.sweep_dir()
    path = state_path(spec)
    clear_failure()  # an earlier sweep's in this process (tests, notebooks)
    bound_client_retries()
    check_server(spec.resolved_tracking_uri())  # a down server: fail now, make nothing
    check_cluster(address)
    lock = DriverLock(root, spec.name)
    try:
        root.mkdir()
        lock.acquire()  # before anything is read or written: one driver per sweep
    except SweepLocked:
        raise
    except OSError as e:  # a file where a folder must be, a read-only mount, no permission,
        # a bucket that does not exist or refuses these credentials (said with what to check)
        why = f"{e}; {e.hint}" if isinstance(e, StorageUnreachable) else (
            f"{gist(e)}; set storage to a writable directory")
        raise StorageError(f"storage {spec.storage!r} cannot hold the sweep: {why}") from None
    try:
        if path.exists() and not resume:
            how = (f"use `stetune resume {spec.name}` or another name" if kind.resumable
                   else "use another name (or delete it)")
            raise FileExistsError(f"sweep '{spec.name}' already exists in {root}; {how}")
        with _run(spec, kind, root, path, address, resume, verbose,
                  allow_spec_change) as session:
            yield session
    finally:
        lock.release()


@contextmanager
def _run(spec, kind, root: Location, path: Location, address, resume: bool, verbose: int,
         allow_spec_change: bool):
    state = _read_state(path) if path.exists() else {}
    uri, experiment = spec.resolved_tracking_uri(), spec.resolved_experiment()
    try:  # a resume needs the store its runs are in; neither may be an empty or foreign file
        check_sqlite_store(uri, must_exist=resume)
    except StoreUnusable as e:
        how = ("restore the sweep's mlflow.db, or rerun the spec under another name" if resume
               else "delete it or point mlflow.tracking_uri elsewhere")
        raise SweepStateError(f"{e}; {how}") from None

    def prepare() -> SweepTracker:
        if kind.preflight is not None:  # e.g. the dataset is missing: before any run is made
            kind.preflight(spec, local=address is None)
        return _open_tracker(uri, experiment, spec, kind)

    if address is None:  # a local sweep's checks need no Ray: they overlap its start (seconds)
        with ThreadPoolExecutor(1, thread_name_prefix="stetune-prepare") as pool:
            prepared = pool.submit(prepare)
            _init_ray(address, verbose)
            tracker = prepared.result()
    else:  # on a cluster the data is looked at where the trials run
        _init_ray(address, verbose)
        tracker = prepare()
    tracker.start_sweep(spec.to_dict(), resume=resume, allow_changes=allow_spec_change)
    signals = _Signals()
    session = Session(spec, kind, state, resume, verbose, tracker, signals)
    try:  # from here on the parent run is open: every way out ends it
        state.pop("interrupted", None)  # a resume continues where that stopped
        (root / "spec.json").write_text(json.dumps(spec.to_dict(), indent=2))
        save_state(spec, state)
        register_tracker(tracker, uri, experiment, spec.name)
        signals.install()
        yield session
        # the wrap-up is still the sweep's: a signal here ends it KILLED too (resume redoes it)
        session.save()
        tracker.log_text(path.read_text(), "sweep.json")
        text = kind.summary(spec, state)
        tracker.describe(f"Sweep `{spec.name}` ({kind.name}): {kind.description}.\n\n```\n{text}\n```",
                         kind.headline(spec, state) if kind.headline else None)
        tracker.end_sweep("FINISHED")
    except (SweepInterrupted, KeyboardInterrupt) as e:
        if not isinstance(e, SweepInterrupted):
            e = SweepInterrupted(signals.received or signal.SIGINT)
        state["interrupted"] = {"phase": e.phase, "signal": signal.Signals(e.signum).name}
        _end(session, "KILLED", "interrupted", e)
        raise e from None
    except BaseException as e:
        _end(session, "FAILED", "failed", e)
        raise
    finally:
        signals.restore()


def _quiet(verbose: int):
    """Library chatter off unless -v; stetune's progress display as verbose says. Returns what
    puts the previous settings back."""
    import optuna

    loggers = {name: logging.getLogger(name) for name in (*_CHATTY, *_TRACEBACKS, *_STORAGE_LOGS)}
    levels = {name: lg.level for name, lg in loggers.items()}
    env = {k: os.environ.get(k) for k in ("RAY_AIR_NEW_OUTPUT", "TUNE_WARN_THRESHOLD_S")}
    optuna_level = optuna.logging.get_verbosity()

    def restore() -> None:
        set_display(1)
        optuna.logging.set_verbosity(optuna_level)
        for name, lg in loggers.items():
            # after a store failure, Tune's background upload that was waiting on it fails
            # later still: its traceback must not follow the sweep's last line
            if not (name in _STORAGE_LOGS and failure() is not None):
                lg.setLevel(levels[name])
            lg.removeFilter(_no_trial_tracebacks)
        for k, v in env.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)

    set_display(verbose)
    if verbose >= 2:
        return restore
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # optuna resets its logger's level
    for name in _CHATTY:
        loggers[name].setLevel(logging.WARNING if "auth" not in name else logging.ERROR)
    for name in _STORAGE_LOGS:
        loggers[name].setLevel(logging.CRITICAL)
    # a failed trial's traceback: the summary names the trial and its error, Tune keeps the
    # traceback in the trial's error.txt (shown with -v)
    for name in _TRACEBACKS:
        loggers[name].addFilter(_no_trial_tracebacks)
    # Tune's newer console output prints each phase's configuration box and a TensorBoard hint
    # at any verbosity; its classic reporter is silent at verbose=0
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    os.environ.setdefault("TUNE_WARN_THRESHOLD_S", "5")  # "on_step_begin took 0.6 s" notes
    return restore


def _no_trial_tracebacks(record: logging.LogRecord) -> bool:
    # also Tune's own notes on a stop, whose "Tuner.restore(...)" is stetune resume here
    return not str(record.msg).startswith((
        "Trial task failed", "Trials did not complete", "Stop signal received",
        "Experiment has been interrupted"))


def check_cluster(address: str | None, timeout: float = 5.0) -> None:
    """A TCP connect to --address's head (GCS, or a Ray client server): Ray itself retries a dead
    address for minutes. "auto" is left to Ray, which fails fast when no cluster runs here."""
    if address in (None, "auto", "local"):
        return
    where = address.split("://", 1)[-1].rstrip("/")
    host, _, port = where.rpartition(":") if ":" in where else (where, "", "")
    default = 10001 if address.startswith("ray://") else 6379
    try:
        socket.create_connection((host, int(port or default)), timeout=timeout).close()
    except (OSError, ValueError) as e:
        raise ClusterUnreachable(f"the Ray cluster at {address} does not answer ({gist(e)}): "
                                 f"nothing was created; start it (ray start --head) or fix "
                                 f"--address") from None


def _open_tracker(uri: str, experiment: str, spec, kind) -> SweepTracker:
    try:
        return SweepTracker(uri, experiment, spec.name, phases=kind.phases)
    except ImportError as e:  # e.g. postgresql:// is SQLAlchemy's psycopg (3), not psycopg2
        raise StoreUnusable(f"the MLflow store {redact(uri)} needs the Python module {e.name!r}, "
                            f"which is not installed here: install it, or name an installed "
                            f"driver in the URI (e.g. postgresql+psycopg2://)") from None


def _init_ray(address: str | None, verbose: int) -> None:
    # Tune reports a trial's error (our summary names it); Ray would print it once more at
    # exit, after the sweep's one last line
    os.environ.setdefault("RAY_IGNORE_UNHANDLED_ERRORS", "1")
    if ray.is_initialized():
        return
    try:
        # "local" always starts a fresh Ray here: a bare init() would join whatever cluster
        # /tmp/ray/ray_current_cluster points at, even a dead one
        ray.init(address=address or "local", include_dashboard=False if address is None else None,
                 log_to_driver=verbose > 2,
                 logging_level=logging.INFO if verbose >= 2 else logging.WARNING)
    except ConnectionError as e:
        raise ClusterUnreachable(f"no Ray cluster at {address} ({gist(e)}): nothing was created; "
                                 f"start one (ray start --head) or fix --address") from None


def _read_state(path: Location) -> dict:
    try:
        state = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise SweepStateError(f"{path} is not the sweep's state (JSON: {e}); restore it from the "
                              f"parent MLflow run's sweep.json artifact, or rerun the sweep under "
                              f"another name") from None
    if not isinstance(state, dict):
        raise SweepStateError(f"{path} must hold a JSON object, but holds {type(state).__name__}")
    return state


def _end(session: Session, status: str, trials: str, cause: BaseException) -> None:
    """End the parent run and every trial run still open: nothing is left RUNNING. Best effort:
    when the disk or the MLflow server is what failed, what could not be done is added to the
    cause's message (as a note), and the cause is what the user sees."""
    missed = []
    try:
        session.save()
    except OSError as e:  # the cause itself (a store that failed) is said once
        missed.append("sweep.json was not updated" + ("" if e is cause else f" ({gist(e)})"))
    try:
        check_server(session.tracker.tracking_uri, timeout=3)  # a dead server: don't wait on it
        session.tracker.end_open_trials(trials)
        session.tracker.end_sweep(status)
    except TrackingUnreachable:
        missed.append("its MLflow runs stay RUNNING until `stetune resume` ends them")
    except Exception as e:  # noqa: BLE001 (the cause matters more than this)
        missed.append(f"its MLflow runs could not be ended {status} ({gist(e)}); `stetune resume` "
                      f"ends them")
    for note in missed:
        cause.add_note(note)

