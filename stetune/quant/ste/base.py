"""The quantized activation as an autograd Function; each STE subclass changes only backward."""

from __future__ import annotations

import torch

__all__ = ["QuantSTE", "quantize"]


def quantize(x: torch.Tensor, alpha: float, levels: int) -> torch.Tensor:
    """sigma_a(x) = a * ceil(x / a) clamped to {0, a, ..., levels*a} (REFERENCE section 1).

    Clamping before ceil gives the same levels with four in-place passes over one buffer and no
    boolean temporaries (comparisons and where() are several times slower than unary float
    kernels on CPU).
    """
    q = torch.div(x, alpha)
    return q.clamp_(0.0, float(levels)).ceil_().mul_(alpha)


class QuantSTE(torch.autograd.Function):
    """Forward: the uniform quantizer. Subclasses define setup_context (what backward needs,
    as little as possible) and backward (the STE's proxy derivative times the incoming grad).

    apply(x, alpha, levels) with alpha a float step and levels = 2**bits - 1.
    """

    name: str = ""

    @staticmethod
    def forward(x: torch.Tensor, alpha: float, levels: int) -> torch.Tensor:
        return quantize(x, alpha, levels)

    @staticmethod
    def proxy(x: torch.Tensor, top: float) -> torch.Tensor:
        """mu(x): the function whose derivative backward uses (for docs, tests and plots)."""
        raise NotImplementedError
