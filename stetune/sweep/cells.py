"""Per-cell search and early stopping behind single Ray Tune components.

The table must compare cells tuned equally. One TPE over the whole grid would spend its budget
on the cells it likes, and one ASHA would stop every trial of a weak cell; so CellSearcher hands
out trials round-robin, each cell's own OptunaSearch proposing its hyper-parameters, until every
cell has had `trials_per_cell`, and CellASHA runs one ASHA per cell."""

from __future__ import annotations

import math
import pickle
import warnings
from dataclasses import dataclass
from functools import partial

from optuna.exceptions import UpdateFinishedTrialError
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.schedulers.async_hyperband import _Bracket
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from ..spec.sweep import suggest
from .kinds.base import cell_config, cell_key
from .packs import MEMBER_END, member_id, pack_config, put_stop
from .samplers import make_sampler, open_storage, study_name, study_verdicts

__all__ = ["CellSearcher", "CellASHA", "PackASHA"]

CURVE_POINTS = 25  # intermediate values per Optuna trial: a learning curve, not every epoch


class _PickledState:
    """Tune saves the searcher with the experiment: the whole state, sub-searchers included, so
    `stetune resume` continues where the driver died (schedulers: callbacks.SchedulerState)."""

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        # trust boundary: the sweep's own storage directory, whose Tune experiment state is
        # pickled by Ray itself (README, "Interruptions, failures, a second driver")
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))


class CellSearcher(_PickledState, Searcher):
    def __init__(self, cells: list[tuple[str, int | str]], search: dict, trials_per_cell: int,
                 metric: str, mode: str, seed: int = 0, *, method: str = "tpe",
                 storage: str | None = None, sweep: str = "sweep", epochs: int | None = None,
                 pack: int = 1):
        super().__init__(metric=metric, mode=mode)
        # pack > 1: each Tune trial is a pack of up to `pack` members of one cell, each member
        # its own Optuna trial (id "<tune id>-<i>"; packs.py); member_last: their last results
        self.pack, self.packs, self.member_last, self.members_done = pack, {}, {}, set()
        self.ends: list[tuple] = []  # ended trials Optuna has not heard of yet (_complete)
        self.cells = [tuple(c) for c in cells]
        self.trials_per_cell, self.epochs = trials_per_cell, epochs
        # the define-by-run space must be a picklable module-level function, or Tune cannot save
        # the searcher with the experiment state
        space = partial(suggest, search=search)
        # one storage for every cell's study (pickled with the searcher: RDBStorage reconnects)
        self.storage = storage  # its URL: where optuna-dashboard and `stetune analyze` look
        store = open_storage(storage) if storage else None
        self.subs = [OptunaSearch(space=space, metric=metric, mode=mode,
                                  sampler=make_sampler(method, search, seed + i), storage=store,
                                  study_name=study_name(sweep, cell_key(*c)) if store else None)
                     for i, c in enumerate(self.cells)]
        self.issued = [0] * len(self.cells)
        self.trial_cell: dict[str, int] = {}

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # metric, mode and space are fixed at construction

    def suggest(self, trial_id: str):
        if trial_id in self.trial_cell:  # Tune may ask again for the same trial
            i = self.trial_cell[trial_id]
        else:
            open_cells = [i for i, n in enumerate(self.issued) if n < self.trials_per_cell]
            if not open_cells:
                return Searcher.FINISHED
            i = min(open_cells, key=lambda j: (self.issued[j], j))  # round-robin over cells
            self.trial_cell[trial_id] = i
            self.issued[i] += self._size(trial_id, i)
        cfgs = [self._member(i, tid) for tid in self._ids(trial_id)]
        return {"cfg": pack_config(cfgs) if trial_id in self.packs else cfgs[0]}

    def save(self, checkpoint_path: str) -> None:
        super().save(checkpoint_path)  # with the ends not yet told: a resume tells them
        self._tell_ends()

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        for name, empty in (("pack", 1), ("packs", {}), ("member_last", {}),
                            ("members_done", set()), ("epochs", None), ("ends", [])):
            self.__dict__.setdefault(name, empty)  # a searcher saved by an older stetune
        self._tell_ends()

    def _size(self, trial_id: str, i: int) -> int:
        k = min(self.pack, self.trials_per_cell - self.issued[i])
        if self.pack > 1:
            self.packs[trial_id] = k
        return k

    def _ids(self, trial_id: str) -> list[str]:
        """The Optuna trials a Tune trial stands for: itself, or its pack's members."""
        k = self.packs.get(trial_id)
        return [trial_id] if k is None else [member_id(trial_id, j) for j in range(k)]

    def _member(self, i: int, tid: str) -> dict:
        params = self.subs[i].suggest(tid) or {}
        ot_trial = self.subs[i]._ot_trials.get(tid)
        if ot_trial is not None:  # the dashboard's link to the MLflow run (same tag there)
            ot_trial.set_user_attr("stetune.trial_id", f"search-{tid}")
        ste, bits = self.cells[i]
        return cell_config(ste, bits, "search", params, seed=0)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id not in self.trial_cell:
            return
        if "member" in result:  # a pack member's epoch, or its end (ASHA stopped it)
            tid = member_id(trial_id, result["member"])
            if MEMBER_END in result:
                self._complete(self.trial_cell[trial_id], tid, self.member_last.get(tid))
                return
            result = self.member_last[tid] = {**result, "training_iteration": result["epoch"]}
        else:
            tid = trial_id
        if self.metric in result and self._curve_point(result):
            try:
                self.subs[self.trial_cell[trial_id]].on_trial_result(tid, result)
            except UpdateFinishedTrialError:  # a resumed trial that had ended in the study
                pass                          # before its driver was killed: it stands

    def _curve_point(self, result: dict) -> bool:
        """Whether this epoch goes into Optuna's intermediate values: about CURVE_POINTS per
        trial (each is a storage transaction on the driver); the last one always does."""
        epochs, epoch = self.epochs, result.get("epoch")
        if not (isinstance(epochs, int) and isinstance(epoch, int)):
            return True
        return epoch % max(1, -(-epochs // CURVE_POINTS)) == 0 or epoch >= epochs

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self.trial_cell:
            return
        if trial_id not in self.packs:
            return self._complete(self.trial_cell[trial_id], trial_id, result, error)
        for tid in self._ids(trial_id):  # the pack's members still in it when it ended
            self._complete(self.trial_cell[trial_id], tid, self.member_last.get(tid), error)

    def _complete(self, cell: int, trial_id: str, result: dict | None, error: bool = False) -> None:
        """Optuna hears of a trial's end once Tune's snapshot holds it (`save`): an ended Optuna
        trial cannot change, and a driver killed before the snapshot reruns or re-issues it. The
        search's last end is told at once (no snapshot may follow)."""
        if trial_id in self.members_done:
            return
        self.members_done.add(trial_id)
        self.ends.append((cell, trial_id, result, error))
        if len(self.members_done) >= self.trials_per_cell * len(self.cells):
            self._tell_ends()

    def _tell_ends(self) -> None:
        ends, self.ends = self.ends, []
        for end in ends:
            self._tell(*end)

    def _tell(self, cell: int, trial_id: str, result: dict | None, error: bool) -> None:
        never = result is None or self.metric not in result  # Optuna records it as failed
        # stopped early by ASHA: Optuna's PRUNED (its value the last intermediate one), so
        # the dashboard and TPE tell it from a trial that ran every epoch
        epochs = self.epochs  # None: a searcher saved by an older stetune
        pruned = (not never and not error and epochs is not None
                  and result.get("status") != "diverged"
                  and result.get("epoch", epochs) < epochs)
        sub = self.subs[cell]
        value = None if never else result[self.metric]
        try:
            if isinstance(value, (int, float)) and math.isfinite(value) \
                    and trial_id in sub._ot_trials:  # Tune hands the last result only here
                with warnings.catch_warnings():  # "already reported at this step": fine
                    warnings.simplefilter("ignore")
                    sub._ot_trials[trial_id].report(value, int(result.get("training_iteration", 1)))
            sub.on_trial_complete(trial_id, None if never or pruned else result,
                                  error=error or never)
        except UpdateFinishedTrialError:  # told before the driver was killed: it stands
            pass


class _StudyVerdicts:
    """A resumed search keeps the verdicts its killed driver gave after Tune's last snapshot:
    the studies hold them (Optuna writes at once), the rerun re-reports from older checkpoints,
    and Optuna cannot change an ended trial. A trial the study pruned stops at its first result;
    one it completed is never stopped. `studies`: (storage URL, study names); None: not kept."""

    studies: tuple[str, list[str]] | None = None
    verdicts: dict[str, str] = {}

    def on_restore(self) -> None:
        if self.studies is not None:
            self.verdicts = study_verdicts(*self.studies)

    def _verdict(self, trial_id: str, decision: str) -> str:
        verdict = self.verdicts.get(trial_id)
        if verdict == "PRUNED":
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE if verdict == "COMPLETE" else decision


class CellASHA(_StudyVerdicts, FIFOScheduler):
    """ASHA early stopping with one bracket set per cell: a trial competes only with the trials
    of its own cell, so every cell keeps its best configurations."""

    def __init__(self, metric: str, mode: str, max_t: int, grace_period: int, reduction_factor: float,
                 studies: tuple[str, list[str]] | None = None):
        super().__init__()
        self.studies = studies
        self.kwargs = dict(time_attr="training_iteration", metric=metric, mode=mode, max_t=max_t,
                           grace_period=grace_period, reduction_factor=reduction_factor)
        self.cells: dict[str, ASHAScheduler] = {}

    def _sub(self, trial) -> ASHAScheduler:
        key = trial.config["cfg"]["cell"]
        if key not in self.cells:
            self.cells[key] = ASHAScheduler(**self.kwargs)
        return self.cells[key]

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True  # fixed at construction

    def rungs(self) -> tuple[int, ...]:
        """The epochs after which ASHA may stop a trial (its worker waits for the answer there)."""
        return tuple(sorted(m for m, _ in ASHAScheduler(**self.kwargs)._brackets[0]._rungs))

    def on_trial_add(self, tune_controller, trial):
        self._sub(trial).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result):
        return self._verdict(trial.trial_id, self._sub(trial).on_trial_result(
            tune_controller, trial, result))

    def on_trial_complete(self, tune_controller, trial, result):
        self._sub(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial):
        sub = self._sub(trial)
        if trial.trial_id in sub._trial_info:
            sub.on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return "Per-cell ASHA: " + ", ".join(
            f"{k} stopped {s._num_stopped}" for k, s in sorted(self.cells.items()))


@dataclass
class _Stub:
    trial_id: str


class PackASHA(_StudyVerdicts, FIFOScheduler):
    """ASHA with one bracket per cell over pack members (by their epoch, not Tune's iteration,
    which counts a pack's results). The pack trial itself always continues; a stopped member's
    decision goes to its worker through the key-value store (again for a re-reported rung after
    a retry or resume, so the decision stands). Saved with each snapshot by SchedulerState."""

    def __init__(self, metric: str, mode: str, max_t: int, grace_period: int,
                 reduction_factor: float, channel: str,
                 studies: tuple[str, list[str]] | None = None):
        super().__init__()
        self.studies = studies
        self.score, self.sign = metric, 1 if mode == "max" else -1
        self.max_t, self.grace, self.rf, self.channel = max_t, grace_period, reduction_factor, channel
        self.cells: dict[str, _Bracket] = {}
        self.stopped: set[str] = set()

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True  # fixed at construction

    def rungs(self) -> tuple[int, ...]:
        return tuple(sorted(m for m, _ in _Bracket(self.grace, self.max_t, self.rf, 0)._rungs))

    def on_trial_result(self, tune_controller, trial, result):
        member, value, epoch = result.get("member"), result.get(self.score), result.get("epoch")
        if member is None or MEMBER_END in result or not isinstance(epoch, int) \
                or not isinstance(value, (int, float)) or epoch >= self.max_t:
            return TrialScheduler.CONTINUE
        mid = member_id(trial.trial_id, member)
        if mid not in self.stopped:
            cell = trial.config["cfg"]["cell"]
            bracket = self.cells.setdefault(cell, _Bracket(self.grace, self.max_t, self.rf, 0))
            reward = self.sign * value if math.isfinite(value) else -math.inf
            decision = self._verdict(mid, bracket.on_result(_Stub(mid), epoch, reward))
            if decision == TrialScheduler.STOP:
                self.stopped.add(mid)
        if mid in self.stopped:
            put_stop(self.channel, mid)
        return TrialScheduler.CONTINUE

    def debug_string(self) -> str:
        return f"Per-cell ASHA over pack members: {len(self.stopped)} stopped"
