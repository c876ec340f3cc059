"""Sweep spec: a grid of cells (ste x bits), a search space tuned with an equal budget in each
cell, then the best config of every cell re-run with replicate seeds. Loaded from YAML
(`sweeps/*.yaml`), validated before any work starts; every default lives in the dataclasses below,
each field's rule beside it. No Ray, MLflow or Optuna import here: the sweep runner builds on this."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from ..data import list_datasets
from ..quant import list_stes
from .base import NAME_RULE, Mlflow, Placement
from .errors import fail, reroute
from .errors import is_int
from .fields import Bool, Choice, FieldsOf, Int, ListOf, Num, Opt, Rule, Section, fld
from .run import MAX_EPOCHS, MAX_SEED, Bits, RunSpec, SpecError, _models
from .search import DISTS, TUNABLE, Param, Search, SearchSpace, suggest

__all__ = ["SweepSpec", "Param", "Cells", "Budget", "Replicates", "Asha", "Resources", "Mlflow",
           "suggest", "TUNABLE", "METRIC_MODES", "TRAIN_FIELDS", "SWEEP_OWNED", "NAME_RULE",
           "Placement", "DISTS"]

SWEEP_OWNED = ("model", "dataset", "ste", "bits", "seed", "init_from", "switch_ste", "switch_ste_at")
# measure_start (an epoch-0 report) belongs to the repulsion experiment: in a network sweep it
# would count as a Tune iteration and end every ASHA trial one epoch early
TRAIN_FIELDS = tuple(f.name for f in dataclasses.fields(RunSpec)
                     if f.name not in SWEEP_OWNED and f.name != "measure_start")
PRETRAIN_FIELDS = ("epochs", "lr", "batch_size", "momentum", "weight_decay", "milestones", "gamma")
PRETRAIN_INHERITS = ("device", "data_dir", "limit")  # from train: both stages see the same data
METRIC_MODES = {"val_acc": "max", "val_loss": "min", "train_loss": "min", "train_acc": "max"}
MAX_TRIALS = 100_000  # per cell: a day of 1-second trials; more is a typo, not a budget
DEFAULT_TRIALS = 4  # per cell, tpe or random: fits a laptop run


@dataclass(frozen=True)
class Cells:
    ste: tuple[str, ...] = fld(ListOf(Choice(list_stes), nonempty=True, unique=True),
                               "STEs compared (identity, relu, clipped_relu, plugins)",
                               example="ste: [clipped_relu]")
    bits: tuple[int | str, ...] = fld(ListOf(Bits(), nonempty=True, unique=True),
                                      "activation bits: 1..8, or 'float'", example="bits: [2, 4]")

    def __call__(self) -> list[tuple[str, int | str]]:
        """`spec.cells()`: the grid as (ste, bits) pairs, ste-major (grid order)."""
        return [(ste, bits) for ste in self.ste for bits in self.bits]


@dataclass(frozen=True)
class Budget:
    # None is resolved by SweepSpec (it depends on the search), so a spec always holds a number
    trials_per_cell: int | None = fld(Opt(Int(ge=1, le=MAX_TRIALS)), "equal per cell, so cells "
                                      "compare fairly; absent: 4 (a laptop run), the grid size "
                                      "for search.method grid, 1 for an empty search",
                                      default=None)


@dataclass(frozen=True)
class Replicates:
    seeds: tuple[int, ...] = fld(ListOf(Int(ge=0, le=MAX_SEED), unique=True), "3 seeds give a "
                                 "mean and spread; [] skips the phase", default=(1, 2, 3))


@dataclass(frozen=True)
class Asha:
    enabled: bool = fld(Bool(), "stop bad trials early: more of the budget on good configs",
                        default=True)
    grace_period: int = fld(Int(ge=1, le=MAX_EPOCHS), "epochs every trial gets before it can be "
                            "stopped", default=1)
    reduction_factor: float = fld(Num(gt=1), "keep the top 1/2 at each rung (halving)", default=2)


def _fractional_below_1(x) -> bool:  # Ray: a fraction of one GPU, or whole GPUs
    return x <= 1 or x == int(x)


MAX_PACK = 1024  # far past what one device fits of the smallest model


class Pack(Rule):
    """A pack size: an int in 1..MAX_PACK, or 'auto' (from the device's memory, on the worker)."""
    words = f"an int in 1..{MAX_PACK} or 'auto'"

    def parse(self, value, path):
        if value == "auto" or (is_int(value) and 1 <= value <= MAX_PACK):
            return value
        raise SpecError(f"{path} must be {self.words}, but got {path}={value!r}")

    def schema(self):
        return {"anyOf": [{"type": "integer", "minimum": 1, "maximum": MAX_PACK},
                          {"const": "auto"}]}


@dataclass(frozen=True)
class Resources:
    cpus_per_trial: float = fld(Num(gt=0), "one core per trial: the small nets are not "
                                "thread-bound", default=1)
    gpus_per_trial: float = fld(
        Num(ge=0, words="a number >= 0, fractional only below 1 (e.g. 0.25)",
            test=_fractional_below_1, extra={"anyOf": [{"maximum": 1}, {"multipleOf": 1}]}),
        "CPU by default: runs anywhere; fractional shares a GPU", default=0)
    checkpoint_s: float = fld(Num(ge=0, le=86_400), "seconds between a trial's checkpoints (0: "
                              "every epoch), and always its last epoch: a retry redoes at most "
                              "this much", default=5)
    pack: int | str = fld(Pack(), "trials of one cell trained as one vectorised model in one "
                          "process (1: one each; auto: from the device's memory)", default=1)


@dataclass(frozen=True, kw_only=True)
class SweepSpec(Placement):
    """A network sweep: STE x bits cells, each tuned with an equal budget, then replicated."""
    kind: ClassVar[str] = "network"
    bare_section: ClassVar[str] = "train"  # `--set epochs=2` sets train.epochs

    model: str = fld(Choice(_models), "a registered model (lenet5, vgg11, resnet20, plugins)",
                     example="model: lenet5")
    dataset: str = fld(Choice(list_datasets), "a registered dataset (digits, fashion-mnist, "
                       "mnist, cifar10, ...)", example="dataset: digits")
    cells: Cells = fld(Section(Cells, null=False), "the comparison grid",
                       example="cells: {ste: [clipped_relu], bits: [2]}")
    search: dict[str, Param] = fld(Search(TRAIN_FIELDS + SWEEP_OWNED), "tunable field -> "
                                   "distribution or value list, and method (tpe | random | grid)"
                                   " and storage; empty: 1 trial/cell; beats train's value",
                                   default_factory=SearchSpace)
    train: dict = fld(FieldsOf(RunSpec, TRAIN_FIELDS), "fixed RunSpec fields; missing: "
                      "RunSpec/model defaults", default_factory=dict)
    budget: Budget = fld(Section(Budget), "trials per cell", default=Budget())
    replicates: Replicates = fld(Section(Replicates), "re-runs of each cell's best config",
                                 default=Replicates())
    pretrain: dict | None = fld(Opt(FieldsOf(RunSpec, PRETRAIN_FIELDS)), "None: no float stage; "
                                "else its checkpoint inits every trial", default=None)
    asha: Asha = fld(Section(Asha), "early stopping (ASHA)", default=Asha())
    resources: Resources = fld(Section(Resources), "Ray resources of one trial",
                               default=Resources())
    max_concurrent: int = fld(Int(ge=1), "two trials at once: fits a 2-core laptop", default=2)
    max_failures: int = fld(Int(ge=0), "retries per trial, resumed from its last epoch",
                            default=2)
    metric: str = fld(Choice(METRIC_MODES), "what the search optimises and replicates report",
                      default="val_acc")
    mode: str = fld(Choice(["max", "min"]), "must match metric; absent: the metric's",
                    default="max", derive=lambda kw: METRIC_MODES[kw["metric"]])
    seed: int = fld(Int(ge=0, le=MAX_SEED), "Optuna sampler seed (cell i: seed + i): the "
                    "search is reproducible", default=0)

    def __post_init__(self):
        super().__post_init__()
        if self.budget.trials_per_cell is None:  # absent: what the search needs (Budget)
            if not self.search:
                n = 1
            elif self.search_method == "grid":
                n = self.search.grid_size()
            else:
                n = DEFAULT_TRIALS
            object.__setattr__(self, "budget", Budget(n))

    # -- views (spec.cells() is the grid as (ste, bits) pairs: see Cells.__call__) -----------
    @property
    def search_method(self) -> str:
        """How each cell's study samples: tpe | random | grid."""
        return self.search.method

    def resolved_optuna_storage(self) -> str:
        """Where each cell's Optuna study lives: search.storage, else sqlite beside the sweep's
        state, or Optuna's journal in the sweep's object store (journal.py)."""
        where = self.sweep_dir()
        return self.search.storage or (f"sqlite:///{where / 'optuna.db'}" if where.local
                                       else str(where / "optuna"))

    def to_dict(self) -> dict:
        """Placement's, with search's method and storage kept (a dict dump drops them)."""
        d = super().to_dict()
        d["search"] = self.search.to_dict()
        return d

    @property
    def epochs(self) -> int:
        """Epochs of one trial (train.epochs or the model's paper default)."""
        from ..models import model_info

        return self.train.get("epochs") or model_info(self.model).epochs

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

    # -- cross-field rules (run by from_dict after each field's own) ---------------------------
    def _check(self, path: str) -> None:
        """Mode vs metric, then build the RunSpecs the sweep will build (every cell, the
        search's extremes, the pretrain stage), so a bad combination fails now, addressed by
        its spec path."""
        sense = METRIC_MODES[self.metric]
        if self.mode != sense:
            raise SpecError(f"mode must be {sense!r} for metric={self.metric!r} (its sense), "
                            f"but got mode={self.mode!r}")
        paths = {k: f"train.{k}" for k in self.train}
        for ste, bits in self.cells():
            try:
                self.run_spec(ste, bits, 0)
            except SpecError as e:
                raise reroute(e, paths) from None
        ste, bits = self.cells()[0]
        for name, p in self.search.items():
            for sub, value in p.endpoints():
                try:
                    self.run_spec(ste, bits, 0, {name: value})
                except SpecError as e:
                    raise reroute(e, {**paths, name: f"search.{name}{sub}"}) from None
        if not self.search and self.budget.trials_per_cell != 1:
            fail("budget.trials_per_cell", "1 when search is empty (nothing to tune)",
                 self.budget.trials_per_cell)
        if self.search_method == "grid":
            self._check_grid()
        if self.asha.enabled and self.asha.grace_period > self.epochs:
            fail("asha.grace_period", f"<= the epochs of a trial ({self.epochs})",
                 self.asha.grace_period)
        if self.pretrain is not None:
            try:
                self.pretrain_spec()
            except SpecError as e:
                raise reroute(e, {**{k: f"train.{k}" for k in PRETRAIN_INHERITS},
                                  **{k: f"pretrain.{k}" for k in self.pretrain}}) from None

    def _check_grid(self) -> None:
        """Each cell runs the whole grid once: the budget is its size (fair, and nothing left
        out or run twice)."""
        n, got = self.search.grid_size(), self.budget.trials_per_cell
        sizes = " x ".join(f"{k} {len(v)}" for k, v in self.search.grid().items())
        if n > MAX_TRIALS:
            raise SpecError(f"search must have a grid of at most {MAX_TRIALS} points for "
                            f"search.method grid, but got {n} ({sizes})")
        if got != n:
            raise SpecError(f"budget.trials_per_cell must equal the grid size {n} ({sizes}) for "
                            f"search.method grid, but got budget.trials_per_cell={got} (leave "
                            f"it out: it defaults to the grid size)")
