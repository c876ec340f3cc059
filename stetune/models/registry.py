"""Model registry (timm style): `@register_model` entrypoints, `create_model` the only door."""

from __future__ import annotations

from typing import Callable

from torch import nn

from ..quant import ActQuantConfig

__all__ = ["register_model", "create_model", "list_models"]

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    _MODELS[fn.__name__] = fn
    return fn


def list_models() -> tuple[str, ...]:
    return tuple(_MODELS)


def create_model(name: str, *, bits: int | str = "float", ste: str = "clipped_relu",
                 alpha: float | None = None, alpha_scale: float = 1.0, num_classes: int = 10,
                 in_channels: int | None = None) -> nn.Module:
    """Build `name` with quantized activations (`bits` 1..8) or float ReLUs (`bits='float'`).

    Float and quantized builds of one model share their state_dict keys, so a float
    checkpoint loads into the quantized net (the paper's initialisation)."""
    if name not in _MODELS:
        raise ValueError(f"model must be one of {list_models()}, but got model={name!r}")
    if not (isinstance(num_classes, int) and num_classes >= 2):
        raise ValueError(f"num_classes must be an int >= 2, but got {num_classes=}")
    act = ActQuantConfig(bits=bits, ste=ste, alpha=alpha, alpha_scale=alpha_scale)
    kwargs = {} if in_channels is None else {"in_channels": in_channels}
    return _MODELS[name](act=act, num_classes=num_classes, **kwargs)
