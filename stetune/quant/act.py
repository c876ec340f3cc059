"""Activation-quantization config and modules (torchao style: a config dataclass plus
`quantize_activations_(model, config)` that swaps activations in place)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .lloyd import MAX_BITS, lloyd_alpha
from .ste import get_ste

__all__ = ["ActQuantConfig", "QuantAct", "make_activation", "quantize_activations_", "set_ste_",
           "parse_bits"]

FLOAT = "float"  # bits value meaning plain ReLU, no quantization (for pre-training)


def parse_bits(bits: int | str) -> int | str:
    """'2' -> 2, 'float' -> 'float'; anything else outside 1..MAX_BITS is an error."""
    if isinstance(bits, str) and bits.strip().lower() in (FLOAT, "fp32", "32"):
        return FLOAT
    try:
        value = int(bits)
        ok = not isinstance(bits, bool) and value == float(bits)
    except (TypeError, ValueError):
        ok = False
    if not ok or not 1 <= value <= MAX_BITS:
        raise ValueError(f"bits must be in 1..{MAX_BITS} or 'float', but got {bits=}")
    return value


@dataclass(frozen=True)
class ActQuantConfig:
    bits: int | str = FLOAT      # 1..8, or "float" for a plain ReLU network
    ste: str = "clipped_relu"    # backward proxy; ignored in float
    alpha: float | None = None   # quantizer step; None = Lloyd-Max on |N(0,1)| for `bits`
    alpha_scale: float = 1.0     # multiplies alpha (to study the resolution)

    def __post_init__(self):
        object.__setattr__(self, "bits", parse_bits(self.bits))
        get_ste(self.ste)  # raises with the list of known STEs
        if self.alpha is not None and not self.alpha > 0:
            raise ValueError(f"alpha must be > 0 (or None for Lloyd-Max), but got alpha={self.alpha}")
        if not self.alpha_scale > 0:
            raise ValueError(f"alpha_scale must be > 0, but got alpha_scale={self.alpha_scale}")

    @property
    def is_float(self) -> bool:
        return self.bits == FLOAT

    def resolved_alpha(self) -> float | None:
        if self.is_float:
            return None
        base = self.alpha if self.alpha is not None else lloyd_alpha(self.bits)
        return base * self.alpha_scale


class QuantAct(nn.Module):
    """Uniform activation quantizer with a straight-through backward. Holds no parameters or
    buffers, so float and quantized networks share one state_dict layout."""

    def __init__(self, config: ActQuantConfig):
        super().__init__()
        if config.is_float:
            raise ValueError("QuantAct needs bits in 1..8, but got bits='float' (use nn.ReLU)")
        self.bits, self.levels = config.bits, 2**config.bits - 1
        self.alpha = config.resolved_alpha()
        self.top = self.alpha * self.levels
        self.set_ste(config.ste)
        # saturation: share of inputs above the top level, counted only while tracking (the
        # comparison costs a pass, so the trainer turns it on for evaluation only)
        self.track_saturation = False
        self.reset_saturation()

    def set_ste(self, name: str) -> None:
        self.fn, self.ste = get_ste(name), name

    def reset_saturation(self) -> None:
        self._sat, self._seen = 0, 0

    def saturation(self) -> float | None:
        return float(self._sat) / self._seen if self._seen else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.track_saturation:
            self._sat = self._sat + (x > self.top).sum()  # stays on device until read
            self._seen += x.numel()
        return self.fn.apply(x, self.alpha, self.levels)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, alpha={self.alpha:.4f}, ste={self.ste}"


def make_activation(config: ActQuantConfig) -> nn.Module:
    return nn.ReLU() if config.is_float else QuantAct(config)


def quantize_activations_(model: nn.Module, config: ActQuantConfig) -> nn.Module:
    """Replace every activation (nn.ReLU or QuantAct) of `model` by one built from `config`.
    Activations hold no state, so weights and BN statistics are untouched."""
    for name, child in model.named_children():
        if isinstance(child, (nn.ReLU, QuantAct)):
            setattr(model, name, make_activation(config))
        else:
            quantize_activations_(child, config)
    return model


def set_ste_(model: nn.Module, ste: str) -> nn.Module:
    """Switch the STE of every quantized activation (the repulsion experiment)."""
    get_ste(ste)
    for module in model.modules():
        if isinstance(module, QuantAct):
            module.set_ste(ste)
    return model
