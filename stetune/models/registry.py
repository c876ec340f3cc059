"""Model registry (timm style): `@register_model(...)` entrypoints that carry their metadata (the
paper's training defaults, the input shape they are built for), `create_model` the only door."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from ..quant import ActQuantConfig
from ..registry import Registry

__all__ = ["ModelInfo", "register_model", "create_model", "list_models", "model_info"]


@dataclass(frozen=True)
class ModelInfo:
    """What a model family brings besides its builder: the paper's defaults (Table 2) and shape."""
    name: str
    fn: Callable[..., nn.Module]
    epochs: int                          # training epochs when a spec leaves them unset
    batch_size: int
    lr: float
    milestone_fracs: tuple[float, ...]   # lr x gamma at these fractions of the epochs, so a
    #                                      shortened run keeps the schedule's shape
    input_size: tuple[int, int, int]     # (C, H, W) the family is built for
    title: str = ""                      # display name (tables, help)

    def summary(self) -> str:
        c, h, w = self.input_size
        return (f"{self.name} ({self.title or self.name}, {c}x{h}x{w}; {self.epochs} epochs, "
                f"batch {self.batch_size}, lr {self.lr:g})")


_MODELS: Registry[ModelInfo] = Registry("model")


def register_model(*, epochs: int, batch_size: int, lr: float, milestone_fracs: tuple[float, ...],
                   input_size: tuple[int, int, int], title: str = "", name: str | None = None):
    """Decorator: register a builder `fn(act, num_classes, in_channels) -> nn.Module` under its
    function name (or `name`) with its metadata; a second builder under one name is an error."""
    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or fn.__name__
        _MODELS.add(key, ModelInfo(key, fn, epochs, batch_size, lr, tuple(milestone_fracs),
                                   tuple(input_size), title), source=fn)
        return fn
    return wrap


def list_models() -> tuple[str, ...]:
    return _MODELS.names()


def model_info(name: str) -> ModelInfo:
    return _MODELS.get(name)


def create_model(name: str, *, bits: int | str = "float", ste: str = "clipped_relu",
                 alpha: float | None = None, alpha_scale: float = 1.0, num_classes: int = 10,
                 in_channels: int | None = None) -> nn.Module:
    """Build `name` with quantized activations (`bits` 1..8) or float ReLUs (`bits='float'`).

    Float and quantized builds of one model share their state_dict keys, so a float
    checkpoint loads into the quantized net (the paper's initialisation)."""
    info = model_info(name)
    if not (isinstance(num_classes, int) and num_classes >= 2):
        raise ValueError(f"num_classes must be an int >= 2, but got {num_classes=}")
    act = ActQuantConfig(bits=bits, ste=ste, alpha=alpha, alpha_scale=alpha_scale)
    kwargs = {} if in_channels is None else {"in_channels": in_channels}
    return info.fn(act=act, num_classes=num_classes, **kwargs)
