"""Sweep spec: a grid of cells (ste x bits), a search space tuned with an equal budget in each
cell, then the best config of every cell re-run with replicate seeds. Loaded from YAML
(`sweeps/*.yaml`), validated before any work starts; every default lives in the dataclasses below.
No Ray, MLflow or Optuna import here: the sweep runner builds on this."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data import DATASETS
from ..quant import list_stes, parse_bits
from . import _check as c
from .run import MODEL_DEFAULTS, RunSpec, SpecError

__all__ = ["SweepSpec", "Param", "Cells", "Budget", "Replicates", "Asha", "Resources", "Mlflow",
           "suggest", "TUNABLE", "METRIC_MODES"]

TUNABLE = ("lr", "momentum", "weight_decay", "batch_size", "gamma", "alpha_scale")
INT_TUNABLE = ("batch_size",)  # sampled with dist int or choice only
SWEEP_OWNED = ("model", "dataset", "ste", "bits", "seed", "init_from", "switch_ste", "switch_ste_at")
# measure_start (an epoch-0 report) belongs to the repulsion experiment: in a network sweep it
# would count as a Tune iteration and end every ASHA trial one epoch early
TRAIN_FIELDS = tuple(f.name for f in dataclasses.fields(RunSpec)
                     if f.name not in SWEEP_OWNED and f.name != "measure_start")
PRETRAIN_FIELDS = ("epochs", "lr", "batch_size", "momentum", "weight_decay", "milestones", "gamma")
PRETRAIN_INHERITS = ("device", "data_dir", "limit")  # from train: both stages see the same data
METRIC_MODES = {"val_acc": "max", "val_loss": "min", "train_loss": "min", "train_acc": "max"}
DISTS = {"loguniform": ("low", "high"), "uniform": ("low", "high"),
         "int": ("low", "high", "log", "step"), "choice": ("values",)}
NAME_RULE = r"(?!\.+$)[A-Za-z0-9_.-]+"  # used in paths and MLflow names; '.' and '..' are not


@dataclass(frozen=True)
class Param:
    """One search dimension (Optuna distribution)."""
    dist: str                         # loguniform | uniform | int | choice
    low: float | int | None = None    # loguniform: 0 < low < high; uniform: low < high; int: low <= high
    high: float | int | None = None
    log: bool = False                 # int only: sample on a log scale (needs low >= 1)
    step: int | None = None           # int only: None means 1
    values: tuple = ()                # choice only: the candidates

    def to_dict(self) -> dict:
        d = {"dist": self.dist, "low": self.low, "high": self.high, "log": self.log,
             "step": self.step, "values": list(self.values)}
        return {k: d[k] for k in ("dist", *DISTS[self.dist]) if not (k == "step" and d[k] is None)}

    def endpoints(self) -> list[tuple[str, Any]]:
        """(sub-path, value) pairs a trial can reach at the extremes: what RunSpec must accept."""
        if self.dist == "choice":
            return [(f"values[{i}]", v) for i, v in enumerate(self.values)]
        return [("low", self.low), ("high", self.high)]


@dataclass(frozen=True)
class Cells:
    ste: tuple[str, ...]              # required: STEs compared (list_stes())
    bits: tuple[int | str, ...]       # required: 1..8, or "float"

    def __call__(self) -> list[tuple[str, int | str]]:
        """`spec.cells()`: the grid as (ste, bits) pairs, ste-major (grid order)."""
        return [(ste, bits) for ste in self.ste for bits in self.bits]


@dataclass(frozen=True)
class Budget:
    trials_per_cell: int = 4          # equal per cell, so cells compare fairly; 4 fits a laptop run


@dataclass(frozen=True)
class Replicates:
    seeds: tuple[int, ...] = (1, 2, 3)  # 3 seeds give a mean and spread; () skips the phase


@dataclass(frozen=True)
class Asha:
    enabled: bool = True              # stop bad trials early: more of the budget on good configs
    grace_period: int = 1             # epochs every trial gets before it can be stopped
    reduction_factor: float = 2       # keep the top 1/2 at each rung (halving)


@dataclass(frozen=True)
class Resources:
    cpus_per_trial: float = 1         # one core per trial: the small nets are not thread-bound
    gpus_per_trial: float = 0         # CPU by default: runs anywhere; fractional shares a GPU


@dataclass(frozen=True)
class Mlflow:
    tracking_uri: str | None = None   # None: sqlite:///<abs storage>/<name>/mlflow.db, no server
    experiment: str | None = None     # None: the sweep name


class Placement:
    """Where a sweep's files and MLflow runs go (shared by every sweep kind); needs `name`,
    `storage` and `mlflow` fields."""

    def sweep_dir(self) -> Path:
        return Path(self.storage).expanduser().resolve() / self.name

    def resolved_tracking_uri(self) -> str:
        return self.mlflow.tracking_uri or f"sqlite:///{self.sweep_dir() / 'mlflow.db'}"

    def resolved_experiment(self) -> str:
        return self.mlflow.experiment or self.name


@dataclass(frozen=True)
class SweepSpec(Placement):
    name: str                         # required; [A-Za-z0-9_.-]+
    model: str                        # required; one of list_models()
    dataset: str                      # required; one of DATASETS
    cells: Cells                      # required: the comparison grid
    search: dict[str, Param] = field(default_factory=dict)  # empty: 1 trial/cell; beats train's value
    train: dict = field(default_factory=dict)  # fixed RunSpec fields; missing: RunSpec/model defaults
    budget: Budget = Budget()
    replicates: Replicates = Replicates()
    pretrain: dict | None = None      # None: no float stage; else its checkpoint inits every trial
    asha: Asha = Asha()
    resources: Resources = Resources()
    max_concurrent: int = 2           # two trials at once: fits a 2-core laptop
    max_failures: int = 2             # retries per trial, resumed from its last epoch
    metric: str = "val_acc"           # what the search optimises and replicates report
    mode: str = "max"                 # must match metric; from_dict takes the metric's if absent
    seed: int = 0                     # Optuna TPE seed: the search is reproducible
    storage: str = "runs"             # Ray Tune results and checkpoints, relative to the cwd
    mlflow: Mlflow = Mlflow()

    # -- views (spec.cells() is the grid as (ste, bits) pairs: see Cells.__call__) -----------
    @property
    def epochs(self) -> int:
        """Epochs of one trial (train.epochs or the model's paper default)."""
        return self.train.get("epochs") or MODEL_DEFAULTS[self.model]["epochs"]

    def run_spec(self, ste: str, bits: int | str, seed: int, params: dict | None = None, *,
                 init_from: str | None = None) -> RunSpec:
        """The RunSpec of one trial: train fields, then the sampled params, then cell and seed."""
        params = dict(params or {})
        if unknown := sorted(set(params) - set(TUNABLE)):
            raise SpecError(f"params must be tunable fields {list(TUNABLE)}, but got {unknown}")
        fixed = {**copy.deepcopy(self.train), **params}
        return RunSpec(model=self.model, dataset=self.dataset, ste=ste, bits=bits, seed=seed,
                       init_from=init_from, **fixed)

    def pretrain_spec(self, seed: int = 0) -> RunSpec | None:
        """The float pre-training RunSpec, or None when the sweep has no pretrain stage."""
        if self.pretrain is None:
            return None
        inherited = {k: copy.deepcopy(self.train[k]) for k in PRETRAIN_INHERITS if k in self.train}
        return RunSpec(model=self.model, dataset=self.dataset, bits="float", seed=seed,
                       **inherited, **copy.deepcopy(self.pretrain))

    # -- dict round trip -----------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["search"] = {k: p.to_dict() for k, p in self.search.items()}
        for key in ("cells", "budget", "replicates", "asha", "resources", "mlflow"):
            d[key] = {k: list(v) if isinstance(v, tuple) else v
                      for k, v in dataclasses.asdict(d[key]).items()}
        return copy.deepcopy(d)

    @classmethod
    def from_dict(cls, d: Any) -> "SweepSpec":
        from ..models import list_models

        if not isinstance(d, dict):
            raise SpecError(f"a sweep spec must be a mapping at the top level, but got {d!r}")
        c.check_keys(d, [f.name for f in dataclasses.fields(cls)], "")
        req = {k: c.require(d, k, "", ex) for k, ex in (
            ("name", "name: my-sweep"), ("model", "model: lenet5"), ("dataset", "dataset: digits"),
            ("cells", "cells: {ste: [clipped_relu], bits: [2]}"))}
        kw: dict[str, Any] = {
            "name": c.str_field(req["name"], "name", pattern=NAME_RULE,
                                rule="a name of characters [A-Za-z0-9_.-]"),
            "model": c.choice_field(req["model"], "model", list_models()),
            "dataset": c.choice_field(req["dataset"], "dataset", DATASETS),
            "cells": _cells(req["cells"]), "search": _search(d.get("search")),
            "train": _train(d.get("train")), "pretrain": _pretrain(d.get("pretrain", None))}
        kw["budget"] = c.section(d, "budget", Budget, trials_per_cell=c.ints(1))
        kw["replicates"] = c.section(d, "replicates", Replicates, seeds=c.unique_ints(0))
        kw["asha"] = c.section(d, "asha", Asha, enabled=c.bool_field, grace_period=c.ints(1),
                              reduction_factor=c.numbers("a number > 1", lambda x: x > 1))
        kw["resources"] = c.section(d, "resources", Resources, gpus_per_trial=c.gpus,
                                   cpus_per_trial=c.numbers("a number > 0", lambda x: x > 0))
        kw["mlflow"] = c.section(d, "mlflow", Mlflow, tracking_uri=c.opt_str, experiment=c.opt_str)
        for key, check in (("max_concurrent", c.ints(1)), ("max_failures", c.ints(0)),
                           ("seed", c.ints(0)), ("storage", c.str_field),
                           ("metric", lambda v, p: c.choice_field(v, p, list(METRIC_MODES)))):
            if key in d:
                kw[key] = check(d[key], key)
        sense = METRIC_MODES[kw.get("metric", cls.metric)]
        kw["mode"] = c.choice_field(d.get("mode", sense), "mode", ["max", "min"])
        if kw["mode"] != sense:
            raise SpecError(f"mode must be {sense!r} for metric={kw.get('metric', cls.metric)!r} "
                            f"(its sense), but got mode={kw['mode']!r}")
        spec = cls(**kw)
        _check_combination(spec)
        return spec


# -- section parsers ---------------------------------------------------------------------------
def _cells(value: Any) -> Cells:
    d = c.mapping(value, "cells", none_ok=False)
    c.check_keys(d, ("ste", "bits"), "cells")
    stes = c.list_field(c.require(d, "ste", "cells", "ste: [clipped_relu]"), "cells.ste", nonempty=True)
    for i, ste in enumerate(stes):
        c.choice_field(ste, f"cells.ste[{i}]", list_stes())
    c.unique(stes, "cells.ste")
    raw = c.list_field(c.require(d, "bits", "cells", "bits: [2, 4]"), "cells.bits", nonempty=True)
    bits = []
    for i, b in enumerate(raw):
        try:
            bits.append(parse_bits(b))
        except (ValueError, OverflowError):  # OverflowError: int(inf)
            c.fail(f"cells.bits[{i}]", "in 1..8 or 'float'", b)
    c.unique(bits, "cells.bits")
    return Cells(ste=tuple(stes), bits=tuple(bits))


def _search(value: Any) -> dict[str, Param]:
    d = c.mapping(value, "search")
    for key in d:  # a RunSpec field that is not tunable gets its own message in _param
        if key not in TRAIN_FIELDS + SWEEP_OWNED:
            c.check_keys({key: None}, TUNABLE, "search")
    return {name: _param(name, entry) for name, entry in d.items()}


def _param(name: str, value: Any) -> Param:
    path = f"search.{name}"
    if name not in TUNABLE:
        raise SpecError(f"{path} is not tunable: search keys must be in {list(TUNABLE)}, but got "
                        f"{path} (fix it in train.{name}, or as a cell)")
    d = c.mapping(value, path, none_ok=False)
    dist = c.choice_field(c.require(d, "dist", path, "dist: loguniform"), f"{path}.dist", list(DISTS))
    if name in INT_TUNABLE and dist not in ("int", "choice"):
        c.fail(f"{path}.dist", f"'int' or 'choice' for the int field {name}", dist)
    c.check_keys(d, ("dist", *DISTS[dist]), f"{path} (dist {dist})")
    if dist == "choice":
        values = c.list_field(c.require(d, "values", path, "values: [0.0, 1.0e-4]"), f"{path}.values",
                              nonempty=True)
        for i, v in enumerate(values):
            if not (v is None or isinstance(v, (str, bool)) or c.is_number(v)):
                c.fail(f"{path}.values[{i}]", "a number, string, bool or null", v)
        c.unique(values, f"{path}.values")
        return Param(dist, values=tuple(values))
    low = c.require(d, "low", path, "low: 0.001")
    high = c.require(d, "high", path, "high: 0.1")
    is_ok, kind = (c.is_int, "an int") if dist == "int" else (c.is_number, "a number")
    for key, v in (("low", low), ("high", high)):
        if not is_ok(v):
            c.fail(f"{path}.{key}", kind, v)
    if dist == "loguniform" and low <= 0:
        c.fail(f"{path}.low", "> 0 for loguniform", low)
    if (high <= low) if dist != "int" else (high < low):
        c.fail(f"{path}.high", f"{'>=' if dist == 'int' else '>'} {path}.low={low!r} for {dist}", high)
    log, step = d.get("log", False), d.get("step")
    if dist == "int":
        c.bool_field(log, f"{path}.log")
        if log and low < 1:
            c.fail(f"{path}.low", ">= 1 for int with log: true", low)
        if step is not None:
            c.int_field(step, f"{path}.step", 1)
            if log and step != 1:
                c.fail(f"{path}.step", "1 (or absent) with log: true (Optuna)", step)
    return Param(dist, low=low, high=high, log=log, step=step)


def _train(value: Any) -> dict:
    d = copy.deepcopy(c.mapping(value, "train"))
    c.check_keys(d, TRAIN_FIELDS, "train")
    c.runspec_types(d, "train")
    return d


def _pretrain(value: Any) -> dict | None:
    if value is None:
        return None
    d = copy.deepcopy(c.mapping(value, "pretrain", none_ok=False))
    c.check_keys(d, PRETRAIN_FIELDS, "pretrain")
    c.runspec_types(d, "pretrain")
    return d


def _check_combination(spec: SweepSpec) -> None:
    """Build the RunSpecs the sweep will build (every cell, the search's extremes, the pretrain
    stage), so a bad combination fails now, addressed by its spec path."""
    paths = {k: f"train.{k}" for k in spec.train}
    for ste, bits in spec.cells():
        try:
            spec.run_spec(ste, bits, 0)
        except SpecError as e:
            raise c.reroute(e, paths) from None
    ste, bits = spec.cells()[0]
    for name, p in spec.search.items():
        for sub, value in p.endpoints():
            try:
                spec.run_spec(ste, bits, 0, {name: value})
            except SpecError as e:
                raise c.reroute(e, {**paths, name: f"search.{name}.{sub}"}) from None
    if not spec.search and spec.budget.trials_per_cell != 1:
        c.fail("budget.trials_per_cell", "1 when search is empty (nothing to tune)",
               spec.budget.trials_per_cell)
    if spec.asha.enabled and spec.asha.grace_period > spec.epochs:
        c.fail("asha.grace_period", f"<= the epochs of a trial ({spec.epochs})", spec.asha.grace_period)
    if spec.pretrain is not None:
        try:
            spec.pretrain_spec()
        except SpecError as e:
            raise c.reroute(e, {**{k: f"train.{k}" for k in PRETRAIN_INHERITS},
                                **{k: f"pretrain.{k}" for k in spec.pretrain}}) from None


def suggest(trial, search: dict) -> dict:
    """Optuna define-by-run space: one suggest_* call per search entry (Param or its dict), in
    order; returns the params. Module-level, so functools.partial(suggest, search=...) pickles."""
    params = {}
    for name, p in search.items():
        p = p.to_dict() if isinstance(p, Param) else p
        if p["dist"] in ("loguniform", "uniform"):
            params[name] = trial.suggest_float(name, float(p["low"]), float(p["high"]),
                                               log=p["dist"] == "loguniform")
        elif p["dist"] == "int":
            params[name] = trial.suggest_int(name, p["low"], p["high"], step=p.get("step") or 1,
                                             log=bool(p.get("log", False)))
        elif p["dist"] == "choice":
            params[name] = trial.suggest_categorical(name, list(p["values"]))
        else:
            raise SpecError(f"search.{name}.dist must be one of {list(DISTS)}, but got {p['dist']!r}")
    return params
