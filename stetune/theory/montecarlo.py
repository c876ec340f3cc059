"""Monte-Carlo estimates of the model's loss and (coarse) gradients, with standard errors.

Z (k, m, n) is drawn in chunks so memory stays bounded; mean and standard error of every
quantity come from the same samples.  Per chunk the count, mean and centred sum of squares are
merged with Chan et al.'s update (the numerically stable form of accumulating sum and sum of
squares).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .model import STES, Problem, _check_ste, _point

__all__ = ["MCResult", "per_sample", "batch_gradients", "monte_carlo", "quantity_keys"]

_CHUNK_FLOATS = 4_000_000  # ~32 MB of Z per chunk


def quantity_keys(stes=STES) -> tuple[str, ...]:
    """Keys of MCResult.mean / .stderr: loss, grad_v and one coarse_<ste> per STE."""
    return ("loss", "grad_v") + tuple(f"coarse_{s}" for s in stes)


def _mu_prime(x: np.ndarray, ste: str) -> np.ndarray:
    """Derivative of the STE proxy mu at the pre-activations x."""
    if ste == "identity":
        return np.ones_like(x)
    if ste == "relu":
        return (x > 0).astype(float)
    return ((x > 0) & (x < 1)).astype(float)  # clipped ReLU, mu = min(max(x, 0), 1)


def per_sample(Z: np.ndarray, v, w, prob: Problem, stes=STES) -> dict[str, np.ndarray]:
    """Per-sample loss (k,), dl/dv (k, m) and coarse gradients g_mu (k, n) for Z of shape (k, m, n).

    l = 1/2 (v^T sigma(Zw) - y*)^2, dl/dv = sigma(Zw) r, g_mu = Z^T (mu'(Zw) . v) r with
    r = v^T sigma(Zw) - y*.
    """
    v, w = _point(v, w, prob)
    for s in stes:
        _check_ste(s)
    pre = Z @ w  # (k, m) pre-activations
    act = (pre > 0).astype(float)
    r = act @ v - (Z @ prob.w_star > 0).astype(float) @ prob.v_star  # (k,) residual
    out = {"loss": 0.5 * r * r, "grad_v": act * r[:, None]}
    for s in stes:
        coef = _mu_prime(pre, s) * v * r[:, None]  # (k, m)
        out[f"coarse_{s}"] = np.matmul(coef[:, None, :], Z)[:, 0, :]  # batched (1,m)@(m,n)
    return out


def batch_gradients(Z: np.ndarray, v, w, prob: Problem, ste: str) -> tuple[np.ndarray, np.ndarray]:
    """Mini-batch estimates (mean dl/dv, mean g_ste) from samples Z (k, m, n)."""
    q = per_sample(Z, v, w, prob, (ste,))
    return q["grad_v"].mean(axis=0), q[f"coarse_{ste}"].mean(axis=0)


@dataclass
class MCResult:
    """Monte-Carlo means and standard errors (std / sqrt(N)) keyed by quantity_keys()."""

    n_samples: int
    mean: dict[str, np.ndarray] = field(default_factory=dict)
    stderr: dict[str, np.ndarray] = field(default_factory=dict)


def monte_carlo(v, w, prob: Problem, n_samples: int, *, seed: int = 0, stes=STES,
                chunk: int | None = None) -> MCResult:
    """Estimate E[l], E[dl/dv] and E[g_mu] for each STE from n_samples draws of Z."""
    if n_samples < 2:
        raise ValueError(f"n_samples must be >= 2, but got n_samples={n_samples}")
    if chunk is None:
        chunk = max(1, _CHUNK_FLOATS // (prob.m * prob.n))
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, but got chunk={chunk}")
    rng = np.random.default_rng(seed)
    count = 0
    mean: dict[str, np.ndarray] = {}
    m2: dict[str, np.ndarray] = {}
    while count < n_samples:
        k = min(chunk, n_samples - count)
        Z = rng.standard_normal((k, prob.m, prob.n))
        for key, x in per_sample(Z, v, w, prob, stes).items():
            mb = x.mean(axis=0)
            m2b = ((x - mb) ** 2).sum(axis=0)
            if key not in mean:
                mean[key], m2[key] = mb, m2b
                continue
            tot = count + k
            delta = mb - mean[key]
            mean[key] = mean[key] + delta * (k / tot)
            m2[key] = m2[key] + m2b + delta ** 2 * (count * k / tot)
        count += k
    stderr = {key: np.sqrt(m2[key] / (count - 1) / count) for key in mean}
    return MCResult(count, {k: np.asarray(x) for k, x in mean.items()}, stderr)
