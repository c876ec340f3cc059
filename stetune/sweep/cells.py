"""Per-cell search and early stopping behind single Ray Tune components.

The table must compare cells tuned equally. One TPE over the whole grid would spend its budget
on the cells it likes, and one ASHA would stop every trial of a weak cell; so CellSearcher hands
out trials round-robin, each cell's own OptunaSearch proposing its hyper-parameters, until every
cell has had `trials_per_cell`, and CellASHA runs one ASHA per cell."""

from __future__ import annotations

import math
import pickle
import warnings
from functools import partial

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from ..spec.sweep import suggest
from .kinds.base import cell_config, cell_key
from .samplers import make_sampler, open_storage, study_name

__all__ = ["CellSearcher", "CellASHA"]


class _PickledState:
    """Tune saves searchers and schedulers with the experiment: the whole state, sub-searchers
    and per-cell brackets included, so `stetune resume` continues where the driver died."""

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
                 storage: str | None = None, sweep: str = "sweep", epochs: int | None = None):
        super().__init__(metric=metric, mode=mode)
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
            self.issued[i] += 1
            self.trial_cell[trial_id] = i
        params = self.subs[i].suggest(trial_id) or {}
        ot_trial = self.subs[i]._ot_trials.get(trial_id)
        if ot_trial is not None:  # the dashboard's link to the MLflow run (same tag there)
            ot_trial.set_user_attr("stetune.trial_id", f"search-{trial_id}")
        ste, bits = self.cells[i]
        return {"cfg": cell_config(ste, bits, "search", params, seed=0)}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.trial_cell and self.metric in result:
            self.subs[self.trial_cell[trial_id]].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self.trial_cell:
            never = result is None or self.metric not in result  # Optuna records it as failed
            # stopped early by ASHA: Optuna's PRUNED (its value the last intermediate one), so
            # the dashboard and TPE tell it from a trial that ran every epoch
            epochs = getattr(self, "epochs", None)  # None: a searcher saved by an older stetune
            pruned = (not never and not error and epochs is not None
                      and result.get("status") != "diverged"
                      and result.get("epoch", epochs) < epochs)
            sub = self.subs[self.trial_cell[trial_id]]
            value = None if never else result[self.metric]
            if isinstance(value, (int, float)) and math.isfinite(value) \
                    and trial_id in sub._ot_trials:  # Tune hands the last result only here
                with warnings.catch_warnings():  # "already reported at this step": fine
                    warnings.simplefilter("ignore")
                    sub._ot_trials[trial_id].report(value, int(result.get("training_iteration", 1)))
            sub.on_trial_complete(trial_id, None if never or pruned else result,
                                  error=error or never)


class CellASHA(_PickledState, FIFOScheduler):
    """ASHA early stopping with one bracket set per cell: a trial competes only with the trials
    of its own cell, so every cell keeps its best configurations."""

    def __init__(self, metric: str, mode: str, max_t: int, grace_period: int, reduction_factor: float):
        super().__init__()
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

    def on_trial_add(self, tune_controller, trial):
        self._sub(trial).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result):
        return self._sub(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result):
        self._sub(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial):
        sub = self._sub(trial)
        if trial.trial_id in sub._trial_info:
            sub.on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return "Per-cell ASHA: " + ", ".join(
            f"{k} stopped {s._num_stopped}" for k, s in sorted(self.cells.items()))
