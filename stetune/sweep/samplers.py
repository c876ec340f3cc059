"""Optuna samplers behind `search.method` (tpe | random | grid), and the persistent storage of
each cell's study. One sampler per cell, seeded per cell, so every cell is searched alike."""

from __future__ import annotations

import optuna

from ..journal import open_study_storage
from ..spec.search import METHODS

__all__ = ["make_sampler", "open_storage", "study_name", "METHODS", "CellGridSampler",
           "study_verdicts"]


class CellGridSampler(optuna.samplers.GridSampler):
    """Optuna's GridSampler for one cell's study under Tune, two things changed:
    - the k-th trial it starts gets point k (of the seed's shuffle), however many run at once.
      Its count is pickled with the searcher in Tune's experiment state, so after a resume the
      re-issued trials get the points of the trials the killed driver lost; Optuna's own choice
      (by trial number, then unfinished points) would repeat a running point and skip a lost one.
    - no Study.stop() after the last point: that raises outside study.optimize (Tune asks and
      tells), and the cell's budget, the grid size, ends the search anyway."""

    def __init__(self, search_space: dict, seed: int | None = None):
        super().__init__(search_space, seed)
        self.started = 0

    def before_trial(self, study, trial) -> None:
        attrs = trial.system_attrs
        if "grid_id" in attrs or "fixed_params" in attrs or self.started >= self._n_min_trials:
            return super().before_trial(study, trial)  # past the grid: Optuna's own choice
        study._storage.set_trial_system_attr(trial._trial_id, "search_space", self._search_space)
        study._storage.set_trial_system_attr(trial._trial_id, "grid_id", self.started)
        self.started += 1

    def after_trial(self, study, trial, state, values) -> None:
        pass


def make_sampler(method: str, search: dict, seed: int) -> optuna.samplers.BaseSampler:
    """The sampler of one cell's study (`search` maps tuned fields to Params; grid: choice
    Params, whose value lists span the grid)."""
    if method == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if method == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if method == "grid":
        return CellGridSampler({name: list(p.values) for name, p in search.items()}, seed=seed)
    raise ValueError(f"search.method must be one of {list(METHODS)}, but got {method!r}")


def study_name(sweep: str, cell: str) -> str:
    """'quickstart/relu/4': optuna-dashboard lists the studies of every sweep of a storage."""
    return f"{sweep}/{cell}"


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An RDB storage (sqlite beside the sweep's state by default, any SQLAlchemy URL on a
    cluster) or the journal in the sweep's object store: written by the driver only, read by
    optuna-dashboard and `stetune analyze`."""
    return open_study_storage(url)


def check_new_studies(url: str, names: list[str]) -> None:
    """A new search must not add its trials to another sweep's studies (a shared storage that
    holds a sweep of the same name): refuse, naming them."""
    taken = sorted(set(optuna.get_all_study_names(open_storage(url))) & set(names))
    if taken:
        from ..naming import redact
        from ..tracking import TrackingConflict

        raise TrackingConflict(f"the Optuna storage {redact(url)} already holds the studies "
                               f"{taken}: another sweep of this name ran there; use another name "
                               f"or delete those studies (optuna delete-study)")


def end_stale_trials(url: str, names: list[str]) -> int:
    """Trials a killed driver left RUNNING in the studies (its Tune snapshot never knew them;
    the resumed search re-issued that work) end FAIL, so the dashboard shows no phantom trial
    running. Returns how many."""
    storage, n = open_storage(url), 0
    for name in set(names) & set(optuna.get_all_study_names(storage)):
        study = optuna.load_study(study_name=name, storage=storage)
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
            n += 1
    return n


def drop_studies(url: str, names: list[str]) -> None:
    """A resumed sweep whose search never got saved by Tune runs the phase from its start: the
    studies its killed driver began are dropped with that phase's orphan MLflow runs."""
    storage = open_storage(url)
    for name in set(names) & set(optuna.get_all_study_names(storage)):
        optuna.delete_study(study_name=name, storage=storage)


def study_verdicts(url: str, names: list[str], phase: str = "search") -> dict[str, str]:
    """{Tune trial id: "COMPLETE" | "PRUNED"} of the trials the studies hold as ended: on resume,
    what a killed driver had told Optuna after Tune's last snapshot, which the rerun must keep
    (Optuna cannot change an ended trial)."""
    storage, out, prefix = open_storage(url), {}, f"{phase}-"
    ended = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    for name in set(names) & set(optuna.get_all_study_names(storage)):
        study = optuna.load_study(study_name=name, storage=storage)
        for t in study.get_trials(deepcopy=False, states=ended):
            tid = t.user_attrs.get("stetune.trial_id", "")
            if tid.startswith(prefix):
                out[tid[len(prefix):]] = t.state.name
    return out
