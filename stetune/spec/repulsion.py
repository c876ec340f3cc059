"""Repulsion experiment spec (`kind: repulsion`, the paper's Fig. 2/4): start from a trained
minimum and continue training it with other STEs at a small learning rate (the probe), then
optionally the normal schedule. A minimum "repels" an STE when the training loss rises by at
least `repelled_factor` over the probe. Validated before any work starts; no Ray or MLflow here."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

from ..data import list_datasets
from ..quant import MAX_BITS, list_stes
from .base import NO_PASSWORD, Placement
from .errors import fail, reroute
from .fields import Choice, FieldsOf, Int, ListOf, Num, Opt, Section, Str, dump, fld
from .run import EPOCH, MAX_EPOCHS, MAX_SEED, RunSpec, SpecError, _models
from .sweep import SWEEP_OWNED, TRAIN_FIELDS, Resources

__all__ = ["RepulsionSpec", "Start", "Probe", "Schedule"]

START_TRAIN_FIELDS = ("epochs", "lr", "batch_size", "momentum", "weight_decay", "milestones",
                      "gamma", "seed")
# the continuation owns its lr and schedule: probe and schedule set them, not `train`
FIXED_FIELDS = tuple(f for f in TRAIN_FIELDS if f not in ("epochs", "lr", "milestones",
                                                          "measure_start"))
GIVEN = ("checkpoint", "run", "ste")  # where the start comes from: exactly one


@dataclass(frozen=True)
class Start:
    """Where the minimum comes from: exactly one of checkpoint, run, or ste (+ train) to train it."""
    checkpoint: str | None = fld(Str(null=True), "a weights file: a training checkpoint or a bare "
                                 "state_dict", default=None)
    run: str | None = fld(Str(null=True), "an MLflow run id with a `weights/model.pt` artifact",
                          default=None)
    tracking_uri: str | None = fld(Str(NO_PASSWORD, null=True), "where `run` lives; None: this spec's own "
                                   "tracking URI (a default sqlite store is new: name the earlier "
                                   "sweep's)", default=None)
    ste: str | None = fld(Opt(Choice(list_stes)), "train the start here, with this STE ...",
                          default=None)
    train: dict = fld(FieldsOf(RunSpec, START_TRAIN_FIELDS), "... and these RunSpec fields "
                      "(epochs, lr, ...)", default_factory=dict)

    def _check(self, path: str) -> None:
        given = [k for k in GIVEN if getattr(self, k) is not None]
        if len(given) != 1:
            shown = {k: v for k, v in dump(self).items() if v not in (None, {})}
            raise SpecError(f"{path} must give exactly one of checkpoint (a weights file), run (an "
                            f"MLflow run id) or ste (train the start here), but got {path}={shown!r}")
        if self.train and given != ["ste"]:
            raise SpecError(f"{path}.train applies only with {path}.ste (training the start here), "
                            f"but got {path}.train with {path}.{given[0]}")
        if self.tracking_uri is not None and given != ["run"]:
            raise SpecError(f"{path}.tracking_uri applies only with {path}.run, but got "
                            f"{path}.tracking_uri with {path}.{given[0]}")


@dataclass(frozen=True)
class Probe:
    epochs: int = fld(EPOCH, "paper: 20 epochs ...", default=20)
    lr: float = fld(Num(gt=0), "... at lr 1e-5, constant", default=1e-5)


@dataclass(frozen=True)
class Schedule:
    epochs: int = fld(Int(ge=0, le=MAX_EPOCHS), "0: stop after the probe; paper: 200 more epochs",
                      default=0)
    lr: float | None = fld(Opt(Num(gt=0)), "None: the model's default (paper's Table 2)",
                           default=None)
    milestones: tuple[int, ...] | None = fld(Opt(ListOf(EPOCH, unique=True)), "None: the "
                                             "model's default, scaled to epochs", default=None)


@dataclass(frozen=True, kw_only=True)
class RepulsionSpec(Placement):
    """The repulsion experiment: continue a trained minimum with other STEs (a small-lr probe)."""
    kind: ClassVar[str] = "repulsion"

    model: str = fld(Choice(_models), "a registered model (lenet5, vgg11, resnet20, plugins)",
                     example="model: lenet5")
    dataset: str = fld(Choice(list_datasets), "a registered dataset (digits, fashion-mnist, "
                       "mnist, cifar10, ...)", example="dataset: fashion-mnist")
    bits: int = fld(Int(ge=1, le=MAX_BITS, words=f"an int in 1..{MAX_BITS} (quantized: a float "
                        "net has no STE)"), "quantized activation bits (a float net has no STE "
                    "to repel)", example="bits: 4")
    start: Start = fld(Section(Start, null=False), "the minimum to start from",
                       example="start: {ste: clipped_relu}")
    stes: tuple[str, ...] = fld(ListOf(Choice(list_stes), nonempty=True, unique=True),
                                "STEs to continue with; absent: every STE", default=(),
                                derive=lambda kw: tuple(list_stes()))
    probe: Probe = fld(Section(Probe), "the continuation at a small lr", default=Probe())
    schedule: Schedule = fld(Section(Schedule), "then optionally the normal schedule",
                             default=Schedule())
    repelled_factor: float = fld(Num(gt=1), "loss(after probe) / loss(start) at or above this: "
                                 "repelled", default=1.5)
    seeds: tuple[int, ...] = fld(ListOf(Int(ge=0, le=MAX_SEED), nonempty=True, unique=True),
                                 "data order of the continuation (the weights are the start)",
                                 default=(0,))
    train: dict = fld(FieldsOf(RunSpec, FIXED_FIELDS), "fixed RunSpec fields of every stage",
                      default_factory=dict)
    resources: Resources = fld(Section(Resources), "Ray resources of one trial",
                               default=Resources())
    max_concurrent: int = fld(Int(ge=1), "two trials at once: fits a 2-core laptop", default=2)

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

    # -- cross-field rules (run by from_dict after each field's own) ---------------------------
    def _check(self, path: str) -> None:
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
                raise reroute(e, paths) from None
        if self.schedule.milestones and max(self.schedule.milestones) > self.schedule.epochs:
            fail("schedule.milestones", f"epochs within 1..schedule.epochs="
                   f"{self.schedule.epochs}", list(self.schedule.milestones))


assert not set(FIXED_FIELDS) & set(SWEEP_OWNED)  # the spec's own fields are never train fields
