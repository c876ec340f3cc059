"""Straight-through estimators: one module each, behind QuantSTE and a name registry."""

from .base import QuantSTE, quantize
from .registry import get_ste, list_stes, register_ste
from . import identity, relu, clipped_relu  # noqa: F401  (register the built-in STEs)

__all__ = ["QuantSTE", "quantize", "register_ste", "get_ste", "list_stes"]
