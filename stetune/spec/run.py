"""Run spec: one training run, validated before any work starts. Every default lives here."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..data import DATASETS
from ..quant import list_stes, parse_bits

__all__ = ["RunSpec", "MODEL_DEFAULTS", "SpecError"]

# Paper's Table 2 / REFERENCE.md section 3. Milestones are stored as fractions of the epochs so
# a shortened run keeps the schedule's shape (LeNet-5: 20, 40 of 50; VGG/ResNet: 80, 140 of 200).
MODEL_DEFAULTS: dict[str, dict] = {
    "lenet5":   {"epochs": 50,  "batch_size": 64,  "lr": 0.1,  "milestone_fracs": (0.4, 0.8)},
    "vgg11":    {"epochs": 200, "batch_size": 128, "lr": 0.01, "milestone_fracs": (0.4, 0.7)},
    "resnet20": {"epochs": 200, "batch_size": 128, "lr": 0.01, "milestone_fracs": (0.4, 0.7)},
}


class SpecError(ValueError):
    """A spec field breaks a rule; the message names the field, the rule and the value."""


@dataclass
class RunSpec:
    model: str = "lenet5"            # lenet5 | vgg11 | resnet20
    dataset: str = "digits"          # bundled with scikit-learn: runs offline anywhere
    ste: str = "clipped_relu"        # the paper's best STE
    bits: int | str = 2              # 1..8, or "float" for full-precision pre-training
    epochs: int | None = None        # None: the model's paper default
    batch_size: int | None = None    # None: the model's paper default
    lr: float | None = None          # None: the model's paper default
    momentum: float = 0.9            # paper: SGD with momentum 0.9
    weight_decay: float = 1e-4       # not stated in the paper; its authors' CIFAR code uses 1e-4
    milestones: list[int] | None = None  # lr x gamma at these epochs; None: paper's, scaled
    gamma: float = 0.1               # paper: decay x0.1
    seed: int = 0
    device: str = "auto"             # auto: cuda when available, else cpu
    data_dir: str | None = None      # None: $STETUNE_DATA or ~/.cache/stetune/data
    limit: int | None = None         # keep only this many train/val examples (quick runs)
    alpha: float | None = None       # quantizer step; None: Lloyd-Max on |N(0,1)|
    alpha_scale: float = 1.0         # multiplies alpha
    init_from: str | None = None     # float (or any same-model) checkpoint to start from
    switch_ste_at: int | None = None  # epoch (1-based) from which `switch_ste` replaces `ste`
    switch_ste: str | None = None
    measure_start: bool = False      # report an epoch 0: the start weights' losses, before any update
    extra: dict = field(default_factory=dict)  # free-form tags carried into the result

    def __post_init__(self):
        self.validate()

    # -- validation: every rule names its field ------------------------------------------------
    def validate(self) -> "RunSpec":
        from ..models import list_models

        def fail(msg: str):
            raise SpecError(msg)

        if self.model not in list_models():
            fail(f"model must be one of {list_models()}, but got model={self.model!r}")
        if self.dataset not in DATASETS:
            fail(f"dataset must be one of {DATASETS}, but got dataset={self.dataset!r}")
        for name in ("ste", "switch_ste"):
            value = getattr(self, name)
            if (value is not None or name == "ste") and value not in list_stes():
                fail(f"{name} must be one of {list_stes()}, but got {name}={value!r}")
        try:
            self.bits = parse_bits(self.bits)
        except ValueError as e:
            fail(str(e))
        _positive_int(self, "epochs", 1)
        _positive_int(self, "batch_size", 1)
        _positive_int(self, "limit", 1)
        _positive_int(self, "switch_ste_at", 1)
        if self.lr is not None and not (_is_number(self.lr) and self.lr > 0):
            fail(f"lr must be > 0, but got lr={self.lr!r}")
        if not (_is_number(self.momentum) and 0 <= self.momentum < 1):
            fail(f"momentum must be in [0, 1), but got momentum={self.momentum!r}")
        if not (_is_number(self.weight_decay) and self.weight_decay >= 0):
            fail(f"weight_decay must be >= 0, but got weight_decay={self.weight_decay!r}")
        if not (_is_number(self.gamma) and 0 < self.gamma <= 1):
            fail(f"gamma must be in (0, 1], but got gamma={self.gamma!r}")
        if self.milestones is not None:
            ms = list(self.milestones)
            if not all(isinstance(m, int) and m >= 1 for m in ms) or ms != sorted(set(ms)):
                fail(f"milestones must be increasing epochs >= 1, but got milestones={ms}")
        if self.alpha is not None and not (_is_number(self.alpha) and self.alpha > 0):
            fail(f"alpha must be > 0, but got alpha={self.alpha!r}")
        if not (_is_number(self.alpha_scale) and self.alpha_scale > 0):
            fail(f"alpha_scale must be > 0, but got alpha_scale={self.alpha_scale!r}")
        if not isinstance(self.measure_start, bool):
            fail(f"measure_start must be true or false, but got measure_start={self.measure_start!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            fail(f"seed must be an int >= 0, but got seed={self.seed!r}")
        if self.device != "auto" and not self.device.split(":")[0] in ("cpu", "cuda", "mps"):
            fail(f"device must be auto, cpu, cuda[:N] or mps, but got device={self.device!r}")
        if (self.switch_ste is None) != (self.switch_ste_at is None):
            fail("switch_ste and switch_ste_at must be given together, but got "
                 f"switch_ste={self.switch_ste!r}, switch_ste_at={self.switch_ste_at!r}")
        if self.switch_ste is not None and self.bits == "float":
            fail(f"switch_ste needs quantized activations, but got bits={self.bits!r}")
        return self

    # -- defaults resolved per model ---------------------------------------------------------
    def resolved(self) -> "RunSpec":
        """A copy with every None default filled from MODEL_DEFAULTS (what a result records)."""
        d = MODEL_DEFAULTS[self.model]
        epochs = self.epochs or d["epochs"]
        milestones = self.milestones
        if milestones is None:
            milestones = sorted({max(1, round(f * epochs)) for f in d["milestone_fracs"]})
        return dataclasses.replace(
            self, epochs=epochs, batch_size=self.batch_size or d["batch_size"],
            lr=self.lr if self.lr is not None else d["lr"], milestones=milestones)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunSpec":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise SpecError(f"keys must be RunSpec fields {sorted(names)}, but got unknown {unknown}")
        return cls(**d)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x


def _positive_int(spec: RunSpec, name: str, low: int) -> None:
    value = getattr(spec, name)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < low):
        raise SpecError(f"{name} must be an int >= {low}, but got {name}={value!r}")
