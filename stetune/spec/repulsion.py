"""Repulsion experiment spec (`kind: repulsion`, the paper's Fig. 2/4): start from a trained
minimum and continue training it with other STEs at a small learning rate (the probe), then
optionally the normal schedule. A minimum "repels" an STE when the training loss rises by at
least `repelled_factor` over the probe. Validated before any work starts; no Ray or MLflow here."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..quant import list_stes
from . import _check as c
from .run import RunSpec, SpecError
from .sweep import NAME_RULE, SWEEP_OWNED, TRAIN_FIELDS, Mlflow, Placement, Resources

__all__ = ["RepulsionSpec", "Start", "Probe", "Schedule", "KIND"]

KIND = "repulsion"
START_TRAIN_FIELDS = ("epochs", "lr", "batch_size", "momentum", "weight_decay", "milestones",
                      "gamma", "seed")
# the continuation owns its lr and schedule: probe and schedule set them, not `train`
FIXED_FIELDS = tuple(f for f in TRAIN_FIELDS if f not in ("epochs", "lr", "milestones",
                                                          "measure_start"))


@dataclass(frozen=True)
class Start:
    """Where the minimum comes from: exactly one of checkpoint, run, or ste (+ train) to train it."""
    checkpoint: str | None = None    # a weights file: a training checkpoint or a bare state_dict
    run: str | None = None           # an MLflow run id with a `weights/model.pt` artifact
    tracking_uri: str | None = None  # where `run` lives; None: this spec's own tracking URI
    #                                  (a default sqlite store is new: name the earlier sweep's)
    ste: str | None = None           # train the start here, with this STE ...
    train: dict = field(default_factory=dict)  # ... and these RunSpec fields (epochs, lr, ...)


@dataclass(frozen=True)
class Probe:
    epochs: int = 20     # paper: 20 epochs ...
    lr: float = 1e-5     # ... at lr 1e-5, constant


@dataclass(frozen=True)
class Schedule:
    epochs: int = 0                 # 0: stop after the probe; paper: 200 more epochs
    lr: float | None = None         # None: the model's default (paper's Table 2)
    milestones: tuple[int, ...] | None = None  # None: the model's default, scaled to epochs


@dataclass(frozen=True)
class RepulsionSpec(Placement):
    name: str                        # required; [A-Za-z0-9_.-]+
    model: str                       # required; one of list_models()
    dataset: str                     # required; one of DATASETS
    bits: int                        # required: 1..8 (a float net has no STE to repel)
    start: Start                     # required: the minimum to start from
    stes: tuple[str, ...] = ()       # STEs to continue with; from_dict: absent = every STE
    probe: Probe = Probe()
    schedule: Schedule = Schedule()
    repelled_factor: float = 1.5     # loss(after probe) / loss(start) at or above this: repelled
    seeds: tuple[int, ...] = (0,)    # data order of the continuation (the weights are the start)
    train: dict = field(default_factory=dict)  # fixed RunSpec fields of every stage
    resources: Resources = Resources()
    max_concurrent: int = 2          # two trials at once: fits a 2-core laptop
    storage: str = "runs"            # sweep directory root, relative to the cwd
    mlflow: Mlflow = Mlflow()

    kind = KIND  # class constant (not a field): what load_sweep_spec dispatches on

    # -- views ---------------------------------------------------------------------------------
    @property
    def epochs(self) -> int:
        """Epochs of one continuation trial after its epoch-0 measurement."""
        return self.probe.epochs + self.schedule.epochs

    def continued_stes(self) -> tuple[str, ...]:
        return self.stes or tuple(list_stes())

    def start_spec(self) -> RunSpec | None:
        """The RunSpec that trains the start minimum, or None when it is given."""
        if self.start.ste is None:
            return None
        inherited = {k: copy.deepcopy(v) for k, v in self.train.items()
                     if k in ("device", "data_dir", "limit", "alpha", "alpha_scale")}
        return RunSpec(model=self.model, dataset=self.dataset, bits=self.bits, ste=self.start.ste,
                       **{**inherited, **copy.deepcopy(self.start.train)})

    def probe_spec(self, ste: str, seed: int, init_from: str | None) -> RunSpec:
        return RunSpec(model=self.model, dataset=self.dataset, bits=self.bits, ste=ste, seed=seed,
                       init_from=init_from, epochs=self.probe.epochs, lr=self.probe.lr,
                       milestones=[], measure_start=True, **copy.deepcopy(self.train))

    def schedule_spec(self, ste: str, seed: int, init_from: str | None) -> RunSpec | None:
        if not self.schedule.epochs:
            return None
        ms = list(self.schedule.milestones) if self.schedule.milestones is not None else None
        return RunSpec(model=self.model, dataset=self.dataset, bits=self.bits, ste=ste, seed=seed,
                       init_from=init_from, epochs=self.schedule.epochs, lr=self.schedule.lr,
                       milestones=ms, **copy.deepcopy(self.train))

    # -- dict round trip -----------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = {"kind": KIND, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}}
        for key in ("start", "probe", "schedule", "resources", "mlflow"):
            d[key] = dataclasses.asdict(d[key])
        if d["schedule"]["milestones"] is not None:
            d["schedule"]["milestones"] = list(d["schedule"]["milestones"])
        d["stes"], d["seeds"] = list(self.stes), list(self.seeds)
        return copy.deepcopy(d)

    @classmethod
    def from_dict(cls, d: Any) -> "RepulsionSpec":
        from ..data import DATASETS
        from ..models import list_models

        d = c.kind_mapping(d, cls, KIND)
        bits = c.require(d, "bits", "", "bits: 4")
        if not (c.is_int(bits) and 1 <= bits <= 8):
            c.fail("bits", "an int in 1..8 (quantized: a float net has no STE)", bits)
        kw: dict[str, Any] = {
            "name": c.str_field(c.require(d, "name", "", "name: repulsion"), "name",
                                pattern=NAME_RULE, rule="a name of characters [A-Za-z0-9_.-]"),
            "model": c.choice_field(c.require(d, "model", "", "model: lenet5"), "model",
                                    list_models()),
            "dataset": c.choice_field(c.require(d, "dataset", "", "dataset: fashion-mnist"),
                                      "dataset", DATASETS),
            "bits": bits, "start": _start(c.require(d, "start", "", "start: {ste: clipped_relu}"))}
        if "stes" in d:
            items = c.list_field(d["stes"], "stes", nonempty=True)
            kw["stes"] = tuple(c.choice_field(s, f"stes[{i}]", list_stes())
                               for i, s in enumerate(items))
            c.unique(list(kw["stes"]), "stes")
        else:
            kw["stes"] = tuple(list_stes())
        kw["probe"] = c.section(d, "probe", Probe, epochs=c.ints(1),
                                lr=c.numbers("a number > 0", lambda x: x > 0))
        kw["schedule"] = c.section(d, "schedule", Schedule, epochs=c.ints(0),
                                   lr=lambda v, p: None if v is None else c.number_field(
                                       v, p, "a number > 0", lambda x: x > 0),
                                   milestones=lambda v, p: None if v is None else c.unique_ints(1)(v, p))
        checks = {"repelled_factor": c.numbers("a number > 1", lambda x: x > 1),
                  "seeds": _seeds, "max_concurrent": c.ints(1), "storage": c.str_field}
        for key, check in checks.items():
            if key in d:
                kw[key] = check(d[key], key)
        if "train" in d:
            kw["train"] = _fields(d["train"], "train", FIXED_FIELDS)
        kw["resources"] = c.section(d, "resources", Resources, cpus_per_trial=c.numbers(
            "a number > 0", lambda x: x > 0), gpus_per_trial=c.gpus)
        kw["mlflow"] = c.section(d, "mlflow", Mlflow, tracking_uri=c.opt_str, experiment=c.opt_str)
        spec = cls(**kw)
        spec._check_runs()
        return spec

    def _check_runs(self) -> None:
        """Build every stage's RunSpec now, so a bad value fails here, named by its spec path."""
        ste = self.continued_stes()[0]
        for build, paths in (
                (self.start_spec, {k: f"start.train.{k}" for k in self.start.train}),
                (lambda: self.probe_spec(ste, self.seeds[0], None),
                 {"epochs": "probe.epochs", "lr": "probe.lr", **{k: f"train.{k}" for k in self.train}}),
                (lambda: self.schedule_spec(ste, self.seeds[0], None),
                 {"lr": "schedule.lr", "milestones": "schedule.milestones"})):
            try:
                run = build()
                if run is not None:
                    run.resolved().validate()
            except SpecError as e:
                raise c.reroute(e, paths) from None
        if self.schedule.milestones and max(self.schedule.milestones) > self.schedule.epochs:
            c.fail("schedule.milestones", f"epochs within 1..schedule.epochs="
                   f"{self.schedule.epochs}", list(self.schedule.milestones))


def _start(value: Any) -> Start:
    d = c.mapping(value, "start", none_ok=False)
    c.check_keys(d, [f.name for f in dataclasses.fields(Start)], "start")
    given = [k for k in ("checkpoint", "run", "ste") if d.get(k) is not None]
    if len(given) != 1:
        raise SpecError("start must give exactly one of checkpoint (a weights file), run (an "
                        f"MLflow run id) or ste (train the start here), but got start={d!r}")
    if d.get("train") and given != ["ste"]:
        raise SpecError("start.train applies only with start.ste (training the start here), but "
                        f"got start.train with start.{given[0]}")
    if d.get("tracking_uri") is not None and given != ["run"]:
        raise SpecError("start.tracking_uri applies only with start.run, but got "
                        f"start.tracking_uri with start.{given[0]}")
    kw = {k: c.str_field(d[k], f"start.{k}") for k in ("checkpoint", "run", "tracking_uri")
          if d.get(k) is not None}
    if d.get("ste") is not None:
        kw["ste"] = c.choice_field(d["ste"], "start.ste", list_stes())
        kw["train"] = _fields(d.get("train") or {}, "start.train", START_TRAIN_FIELDS)
    return Start(**kw)


def _fields(value: Any, path: str, allowed) -> dict:
    d = copy.deepcopy(c.mapping(value, path))
    c.check_keys(d, allowed, path)
    c.runspec_types(d, path)
    return d


def _seeds(value: Any, path: str) -> tuple[int, ...]:
    seeds = c.unique_ints(0)(value, path)
    if not seeds:
        c.fail(path, "a non-empty list of ints >= 0", list(value))
    return seeds


assert not set(FIXED_FIELDS) & set(SWEEP_OWNED)  # the spec's own fields are never train fields
