"""Identity STE: mu(x) = x, the gradient passes through unchanged."""

import torch

from .base import QuantSTE
from .registry import register_ste

__all__ = ["IdentitySTE"]


@register_ste("identity")
class IdentitySTE(QuantSTE):
    @staticmethod
    def setup_context(ctx, inputs, output):
        pass  # nothing to keep: the coarse gradient is the incoming gradient

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None

    @staticmethod
    def proxy(x: torch.Tensor, top: float) -> torch.Tensor:
        return x
