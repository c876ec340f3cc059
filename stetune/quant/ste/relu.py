"""(Vanilla) ReLU STE: mu(x) = max(x, 0), the gradient passes where x > 0."""

import torch

from .base import QuantSTE
from .registry import register_ste

__all__ = ["ReLUSTE"]


@register_ste("relu")
class ReLUSTE(QuantSTE):
    @staticmethod
    def setup_context(ctx, inputs, output):
        # sigma_a(x) > 0 exactly when x > 0, so the output is a free mask: the next layer keeps
        # it alive anyway, and backward is the same single kernel as float ReLU's.
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return torch.ops.aten.threshold_backward(grad, y, 0.0), None, None

    @staticmethod
    def proxy(x: torch.Tensor, top: float) -> torch.Tensor:
        return x.clamp(min=0.0)
