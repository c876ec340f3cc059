"""Resolution of the uniform activation quantizer, by Lloyd's algorithm on half-Gaussian data.

The paper fixes alpha once per bit-width: the step a of the uniform quantizer with levels
{0, a, ..., (2^b-1)a} that best represents |N(0,1)| in mean squared error (inputs are assumed
to come out of a BatchNorm without affine, so roughly unit Gaussian). Lloyd's iteration for a
uniform codebook alternates nearest-level assignment with the least-squares step
a = E[X k(X)] / E[k(X)^2]. We evaluate those expectations exactly (closed-form half-normal
moments) instead of on simulated samples, so the result is the true fixed point, not a noisy
estimate; `samples=` reproduces the simulated variant.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

__all__ = ["lloyd_alpha", "MAX_BITS"]

MAX_BITS = 8  # 255 levels; beyond that activation quantization is effectively float


def _pdf(x: float) -> float:
    return 0.0 if math.isinf(x) else math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def _cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _half_normal_moments(lo: float, hi: float) -> tuple[float, float]:
    """P(lo < X <= hi) and E[X 1{lo < X <= hi}] for X ~ |N(0,1)| (density 2 phi on x >= 0)."""
    return 2.0 * (_cdf(hi) - _cdf(lo)), 2.0 * (_pdf(lo) - _pdf(hi))


def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bits must be in 1..{MAX_BITS}, but got {bits=}")


def _lloyd_step(a: float, levels: int) -> float:
    """One Lloyd update a -> E[X k(X)] / E[k(X)^2], k(X) the nearest level of step a."""
    num = den = 0.0
    for k in range(1, levels + 1):  # level k takes ((k-1/2)a, (k+1/2)a], the top one the tail
        hi = (k + 0.5) * a if k < levels else math.inf
        p, m1 = _half_normal_moments((k - 0.5) * a, hi)
        num, den = num + k * m1, den + k * k * p
    return num / den


@lru_cache(maxsize=None)
def _lloyd_exact(bits: int, tol: float, max_iter: int) -> float:
    # The plain iteration contracts by ~0.9995 per step at 8 bits (55k steps, and a stop on a
    # small step still leaves it 1e-7 short): Steffensen's acceleration of the same map reaches
    # its fixed point in a few dozen steps; a plain step wherever the extrapolation is unsafe.
    levels = 2**bits - 1
    a = 1.0  # any positive start converges: the fixed-point map is a contraction here
    for _ in range(max_iter):
        g1 = _lloyd_step(a, levels)
        g2 = _lloyd_step(g1, levels)
        curvature = g2 - 2.0 * g1 + a
        a_new = a - (g1 - a) ** 2 / curvature if curvature != 0.0 else g2
        if not (a_new > 0.0 and math.isfinite(a_new)):
            a_new = g2
        if abs(a_new - a) < tol:
            return a_new
        a = a_new
    raise RuntimeError(f"Lloyd iteration did not converge in {max_iter=} steps for {bits=}")


def _lloyd_sampled(bits: int, samples: int, seed: int, tol: float, max_iter: int) -> float:
    x = np.abs(np.random.default_rng(seed).standard_normal(samples))
    levels, a = 2**bits - 1, 1.0
    for _ in range(max_iter):
        k = np.clip(np.round(x / a), 0, levels)
        a_new = float(x @ k / (k @ k))
        if abs(a_new - a) < tol:
            return a_new
        a = a_new
    raise RuntimeError(f"Lloyd iteration did not converge in {max_iter=} steps for {bits=}")


def lloyd_alpha(bits: int, *, samples: int | None = None, seed: int = 0,
                tol: float = 1e-12, max_iter: int = 100_000) -> float:
    """MSE-optimal step of the `bits`-bit uniform quantizer for |N(0,1)| inputs (cached).

    samples=None evaluates Lloyd's iteration on the exact distribution; an int runs it on that
    many simulated half-Gaussian samples instead (how the paper's authors obtained theirs).
    """
    _check_bits(bits)
    if samples is None:
        return _lloyd_exact(bits, tol, max_iter)
    if samples < 100:
        raise ValueError(f"samples must be >= 100, but got {samples=}")
    return _lloyd_sampled(bits, samples, seed, tol, max_iter)
