"""Run spec: one training run, validated before any work starts. Every default lives here, each
field's rule beside it (the sweep specs' `train:` sections check their values with these)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..data import list_datasets
from ..quant import MAX_BITS, list_stes, parse_bits
from .errors import SpecError
from .fields import Bool, Choice, Int, ListOf, Mapping, Num, Opt, Rule, Str, fld, spec_fields

__all__ = ["RunSpec", "SpecError", "Bits", "MAX_EPOCHS", "MAX_BATCH_SIZE", "MAX_SEED"]

MAX_EPOCHS = 100_000         # far past any paper schedule (200): more is a typo, not a plan
MAX_BATCH_SIZE = 1_000_000   # more than any dataset here holds
MAX_SEED = 2**32 - 1         # numpy's seed range (data order, Optuna's sampler)


def _models() -> list[str]:
    from ..models import list_models  # lazily: stetune.models imports this module's users

    return list_models()


class Bits(Rule):
    """Activation bits: 1..MAX_BITS, or 'float' (full precision); normalised by parse_bits."""
    words = f"in 1..{MAX_BITS} or 'float'"

    def parse(self, value, path):
        try:
            return parse_bits(value)
        except (ValueError, OverflowError, TypeError):  # OverflowError: int(inf)
            raise SpecError(f"{path} must be {self.words}, but got {path}={value!r}") from None

    def schema(self):
        return {"anyOf": [{"type": "integer", "minimum": 1, "maximum": MAX_BITS},
                          {"const": "float"}]}


EPOCH = Int(ge=1, le=MAX_EPOCHS)
DEVICE = Str(("auto, cpu, cuda[:N] or mps", r"auto|(cpu|cuda|mps)(:.*)?"))


@dataclass
class RunSpec:
    model: str = fld(Choice(_models), "lenet5 | vgg11 | resnet20", default="lenet5")
    dataset: str = fld(Choice(list_datasets), "digits: bundled with scikit-learn, runs offline "
                       "anywhere", default="digits")
    ste: str = fld(Choice(list_stes), "the paper's best STE", default="clipped_relu")
    bits: int | str = fld(Bits(), "1..8, or 'float' for full-precision pre-training", default=2)
    epochs: int | None = fld(Opt(EPOCH), "None: the model's paper default", default=None)
    batch_size: int | None = fld(Opt(Int(ge=1, le=MAX_BATCH_SIZE)),
                                 "None: the model's paper default", default=None)
    lr: float | None = fld(Opt(Num(gt=0, noun="")), "None: the model's paper default",
                           default=None)
    momentum: float = fld(Num(ge=0, lt=1, noun=""), "paper: SGD with momentum 0.9", default=0.9)
    weight_decay: float = fld(Num(ge=0, noun=""), "not stated in the paper; its authors' CIFAR "
                              "code uses 1e-4", default=1e-4)
    milestones: list[int] | None = fld(
        Opt(ListOf(EPOCH, increasing="increasing epochs >= 1", to=list)),
        "lr x gamma at these epochs; None: the paper's, scaled to epochs", default=None)
    gamma: float = fld(Num(gt=0, le=1, noun=""), "paper: decay x0.1", default=0.1)
    seed: int = fld(Int(ge=0, le=MAX_SEED), "initial weights and data order", default=0)
    device: str = fld(DEVICE, "auto: cuda when available, else cpu", default="auto")
    data_dir: str | None = fld(Str(null=True), "None: $STETUNE_DATA or ~/.cache/stetune/data",
                               default=None)
    limit: int | None = fld(Opt(Int(ge=1)), "keep only this many train/val examples (quick "
                            "runs)", default=None)
    alpha: float | None = fld(Opt(Num(gt=0, noun="")), "quantizer step; None: Lloyd-Max on "
                              "|N(0,1)|", default=None)
    alpha_scale: float = fld(Num(gt=0, noun=""), "multiplies alpha", default=1.0)
    init_from: str | None = fld(Str(null=True), "float (or any same-model) checkpoint to start "
                                "from", default=None)
    switch_ste_at: int | None = fld(Opt(EPOCH), "epoch (1-based) from which switch_ste replaces "
                                    "ste", default=None)
    switch_ste: str | None = fld(Opt(Choice(list_stes)), "the STE from switch_ste_at on",
                                 default=None)
    measure_start: bool = fld(Bool(), "report an epoch 0: the start weights' losses, before any "
                              "update", default=False)
    extra: dict = fld(Mapping(), "free-form tags carried into the result", default_factory=dict)

    def __post_init__(self):
        self.validate()

    # -- validation: every rule names its field ------------------------------------------------
    def validate(self) -> "RunSpec":
        for f in spec_fields(type(self)):  # each field's own rule (bits comes back normalised)
            setattr(self, f.name, f.metadata["rule"].parse(getattr(self, f.name), f.name))
        if (self.switch_ste is None) != (self.switch_ste_at is None):
            raise SpecError("switch_ste and switch_ste_at must be given together, but got "
                            f"switch_ste={self.switch_ste!r}, switch_ste_at={self.switch_ste_at!r}")
        if self.switch_ste is not None and self.bits == "float":
            raise SpecError(f"switch_ste needs quantized activations, but got bits={self.bits!r}")
        return self

    # -- defaults resolved per model ---------------------------------------------------------
    def resolved(self) -> "RunSpec":
        """A copy with every None default filled from the model's registered defaults (the
        paper's Table 2): what a result records."""
        from ..models import model_info

        d = model_info(self.model)
        epochs = self.epochs or d.epochs
        milestones = self.milestones
        if milestones is None:
            milestones = sorted({max(1, round(f * epochs)) for f in d.milestone_fracs})
        return dataclasses.replace(
            self, epochs=epochs, batch_size=self.batch_size or d.batch_size,
            lr=self.lr if self.lr is not None else d.lr, milestones=milestones)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunSpec":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise SpecError(f"keys must be RunSpec fields {sorted(names)}, but got unknown {unknown}")
        return cls(**d)
