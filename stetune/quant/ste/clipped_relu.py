"""Clipped ReLU STE: mu(x) = min(max(x, 0), top), the gradient passes where 0 < x < top."""

import torch

from .base import QuantSTE
from .registry import register_ste

__all__ = ["ClippedReLUSTE"]


@register_ste("clipped_relu")
class ClippedReLUSTE(QuantSTE):
    @staticmethod
    def setup_context(ctx, inputs, output):
        x, alpha, levels = inputs
        ctx.top = alpha * levels  # top level (2^b - 1) a
        ctx.save_for_backward(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        # hardtanh_backward passes grad where min < x < max (strict at both ends): one fused
        # kernel, as fast as ReLU's threshold_backward, with no boolean mask materialised.
        return torch.ops.aten.hardtanh_backward(grad, x, 0.0, ctx.top), None, None

    @staticmethod
    def proxy(x: torch.Tensor, top: float) -> torch.Tensor:
        return x.clamp(0.0, top)
