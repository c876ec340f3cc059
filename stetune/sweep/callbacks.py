"""Tune callbacks on the driver: trial lifecycle -> MLflow runs (the progress display: progress.py).

They run in the driver process, so every MLflow write comes from one place (no sqlite write
contention) and workers on other nodes need no shared filesystem: their metrics travel to the
driver through Tune's own result channel."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

from ray.tune import Callback

from ..naming import WEIGHTS_ARTIFACT, run_name
from ..tracking import SweepTracker
from .kinds.base import FINAL_KEYS

__all__ = ["TrackingCallback", "SchedulerState", "StoreHealth", "register_tracker", "get_tracker",
           "trial_config"]

# keys Tune adds to every result: bookkeeping, not training metrics
TUNE_BOOKKEEPING = frozenset({
    "done", "pid", "timestamp", "should_checkpoint", "iterations_since_restore", "time_since_restore",
    "training_iteration", "time_this_iter_s", "time_total_s", "date", "hostname", "node_ip",
    "trial_id", "experiment_tag", "config", "checkpoint_dir_name", "node_id"})

# per-epoch keys logged under another name: the param `lr` is the initial learning rate, the
# metric the scheduled one (MLflow shows params and metrics side by side)
RENAMED = {"lr": "schedule/lr"}

# The driver's open trackers by (uri, experiment, sweep). Callbacks restored by Tuner.restore are
# unpickled copies; they find the driver's tracker here instead of opening a second one.
_TRACKERS: dict[tuple[str, str, str], SweepTracker] = {}


def register_tracker(tracker: SweepTracker, tracking_uri: str, experiment: str, sweep_name: str) -> None:
    _TRACKERS[(tracking_uri, experiment, sweep_name)] = tracker


def get_tracker(tracking_uri: str, experiment: str, sweep_name: str) -> SweepTracker:
    return _TRACKERS[(tracking_uri, experiment, sweep_name)]


def trial_config(trial) -> dict:
    """A trial's {cell, phase, params, tags} (every phase puts it under config["cfg"])."""
    return trial.config["cfg"]


class TrackingCallback(Callback):
    """Maps each Tune trial to one MLflow child run of the sweep's parent run, logging its config
    as it is: params as params, cell, phase and tags as tags; per-epoch results as metrics; the
    status its phase judges at the end. Picklable (Tune saves it with the experiment); after a
    restore it uses the driver's registered tracker, which finds the runs it already made by
    trial id, so a resumed sweep duplicates nothing."""

    def __init__(self, tracking_uri: str, experiment: str, sweep_name: str, phase: str, status,
                 fixed: dict | None = None, final_keys=FINAL_KEYS, log_weights: bool = False,
                 params=None):
        self.args = (tracking_uri, experiment, sweep_name)
        self.phase, self.status = phase, status  # status(last, errored=...) -> str
        self.fixed = dict(fixed or {})  # the phase's fixed fields, logged with each trial
        self.params = params  # params(cfg) -> the trial's resolved run spec; None: fixed + cfg
        self.final_keys, self.log_weights = tuple(final_keys), log_weights
        self._tracker: SweepTracker | None = None
        self._nodes: dict[str, str] = {}
        self._checkpoints: dict = {}

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_tracker"} | {"_tracker": None}

    def __setstate__(self, state):
        self.__dict__.update({"_checkpoints": {}} | state)

    def get_state(self):
        # Tune snapshots the experiment now: a resume from it will not re-report the epochs the
        # writer still holds, so the snapshot keeps them (not a write here: that would put the
        # store back on the event loop at every snapshot, and a failing store would abort it)
        unwritten = self.tracker.unwritten()
        return {"unwritten": unwritten} if unwritten else None

    def set_state(self, state: dict) -> None:
        self._unwritten = state.get("unwritten") or {}

    @property
    def tracker(self) -> SweepTracker:
        if self._tracker is None:
            self._tracker = get_tracker(*self.args)
            self._tracker.rewrite(self.__dict__.pop("_unwritten", {}))
        return self._tracker

    def key(self, trial) -> str:
        return f"{self.phase}-{trial.trial_id}"

    def on_trial_start(self, iteration, trials, trial, **info):
        cfg = trial_config(trial)
        params = self.params(cfg) if self.params else {**self.fixed, **cfg["params"]}
        self.tracker.trial_run(self.key(trial), params=params, name=run_name(cfg),
                               tags={**cfg.get("tags", {}), "stetune.cell": cfg["cell"],
                                     "stetune.phase": cfg["phase"]})

    def on_trial_result(self, iteration, trials, trial, result, **info):
        key = self.key(trial)
        node = result.get("node_id") or result.get("node_ip")
        if node and self._nodes.get(key) != node:  # where it runs (a retry may move it)
            self.tracker.tag_trial(key, {"stetune.node": node})
            self._nodes[key] = node
        metrics = {RENAMED.get(k, k): v for k, v in result.items() if k not in TUNE_BOOKKEEPING}
        self.tracker.log_epoch(key, metrics, step=int(result.get("epoch", iteration)))

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        self._checkpoints[self.key(trial)] = checkpoint

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        status = self.status(last, errored=False)
        checkpoint = self._checkpoints.pop(self.key(trial), None) or trial.checkpoint
        try:
            if isinstance(last.get("note"), str):  # a trial's own word on its outcome
                self.tracker.tag_trial(self.key(trial), {"stetune.note": last["note"]})
            if self.log_weights and status == "finished" and checkpoint is not None:
                self._log_weights(self.key(trial), checkpoint, getattr(trial, "member", None))
        except Exception as e:  # the trial's result stands without its weights: don't lose the sweep
            warnings.warn(f"trial {self.key(trial)}: its weights were not logged to MLflow: {e!r}")
        finally:
            self.tracker.end_trial(self.key(trial), status, _finals(last, self.final_keys),
                                   name=_ended_name(trial, status))

    def _log_weights(self, key: str, checkpoint, member: int | None = None) -> None:
        """The model weights and run spec of the trial's last checkpoint (no optimizer state);
        a pack member's own, out of its pack's checkpoint."""
        import torch

        from ..checkpoint import CHECKPOINT_FILE, safe_load

        with tempfile.TemporaryDirectory(prefix="stetune-weights-") as tmp:
            state = safe_load(Path(checkpoint.to_directory(f"{tmp}/ckpt")) / CHECKPOINT_FILE,
                              map_location="cpu")
            if member is not None:
                from ..pack import member_weights

                state = member_weights(state, member)
            out = Path(tmp) / Path(WEIGHTS_ARTIFACT).name
            torch.save({"model": state["model"], "spec": state["spec"]}, out)
            self.tracker.log_trial_artifact(key, str(out), str(Path(WEIGHTS_ARTIFACT).parent))

    def on_trial_recover(self, iteration, trials, trial, **info):
        # a crash Tune retries (max_failures) leaves the run looking clean otherwise: say how
        # many times this trial was restarted from its last checkpoint (its run may not exist
        # yet when its actor failed to start: trial_run makes it, or finds it, first)
        self.on_trial_start(iteration, trials, trial)
        self.tracker.tag_trial(self.key(trial), {"stetune.retries": trial.num_failures})

    def on_trial_error(self, iteration, trials, trial, **info):
        self._checkpoints.pop(self.key(trial), None)
        self.tracker.end_trial(self.key(trial), "failed",
                               _finals(trial.last_result or {}, self.final_keys),
                               name=_ended_name(trial, "failed"))


def _ended_name(trial, status: str) -> str:
    """The run's name with how it ended, where that is not 'ran every epoch' (set for a
    finished one too: a resumed trial may finish after a killed driver named it pruned)."""
    if status == "finished":
        return run_name(trial_config(trial))
    return run_name(trial_config(trial), status, (trial.last_result or {}).get("epoch"))


def _finals(last: dict, keys) -> dict:
    return {k: last[k] for k in keys if isinstance(last.get(k), (int, float))}


class SchedulerState(Callback):
    """Saves the scheduler (ASHA's per-cell brackets) with each experiment snapshot. Tune saves
    only the scheduler it started with (in tuner.pkl); restored, that one has seen no result, and
    a resumed search would judge its rungs afresh. tuner.pkl pickles this callback with the
    scheduler, so the restored copy still holds the restored scheduler."""

    def __init__(self, scheduler):
        self.scheduler = scheduler

    def get_state(self):
        return {"scheduler": dict(self.scheduler.__dict__)}

    def set_state(self, state: dict) -> None:
        self.scheduler.__dict__.update(state["scheduler"])
        on_restore = getattr(self.scheduler, "on_restore", None)
        if on_restore is not None:
            on_restore()


class StoreHealth(Callback):
    """Ends the phase at the controller's next step once a request of the driver to the sweep's
    object store failed (sweep state, the lock's heartbeat, Optuna's journal, whose failures
    Tune's Optuna searcher only warns about): the sweep stops in one line, its runs ended, for a
    resume once the store answers, instead of going on with a study that missed a result."""

    def on_step_begin(self, iteration, trials, **info):
        from ..storage import failure

        if (e := failure()) is not None:
            raise e
