"""Critical points of the population loss f(v, w) (REFERENCE.md section 5, "Landscape").

f depends on w only through theta = angle(w, w*), so every critical "point" below is really a
set (any ||w|| > 0, any direction at the given angle); the functions return one representative.
(I + 11^T)^{-1} = I - 11^T/(m+1), so no matrix is ever inverted.
"""
from __future__ import annotations

import math

import numpy as np

from .model import Problem

__all__ = [
    "global_minimum", "spurious_exists", "spurious_minimum", "saddle_angle", "saddle",
    "identity_norm_at_spurious",
]


def _solve_i_plus_ones(b: np.ndarray) -> np.ndarray:
    """(I + 11^T)^{-1} b by Sherman-Morrison."""
    return b - b.sum() / (b.size + 1)


def global_minimum(prob: Problem) -> tuple[np.ndarray, np.ndarray]:
    """(v*, w*): f = 0 there (theta = 0, any positive multiple of w* works as well)."""
    return prob.v_star.copy(), prob.w_star.copy()


def spurious_exists(prob: Problem) -> bool:
    """Existence condition (1^T v*)^2 < (m+1)/2 ||v*||^2, i.e. v^T v* < 0 at the candidate.

    (v^T v* < 0 makes theta = pi a local minimum in w: f = const + theta (v^T v*)/(2 pi).)
    """
    vs = prob.v_star
    return bool(vs.sum() ** 2 < (prob.m + 1) / 2 * (vs @ vs))


def spurious_minimum(prob: Problem, w=None) -> tuple[np.ndarray, np.ndarray] | None:
    """Spurious local minimum theta = pi, v = (I + 11^T)^{-1}(11^T - I) v*, or None if absent.

    Returns (v, -c w*) with c = ||w|| when `w` is given (to match a norm), else c = 1.
    v simplifies to 2 (1^T v*)/(m+1) 1 - v*.
    """
    if not spurious_exists(prob):
        return None
    c = 1.0 if w is None else float(np.linalg.norm(np.asarray(w, dtype=float)))
    if not c > 0:
        raise ValueError(f"w must be nonzero, but got ||w||={c}")
    vs = prob.v_star
    v = _solve_i_plus_ones(vs.sum() - vs)  # (11^T - I) v* = (1^T v*) 1 - v*
    return v, -c * prob.w_star


def saddle_angle(prob: Problem) -> float | None:
    """The unique theta at which v(theta) = (I+11^T)^{-1}((1-2theta/pi)I + 11^T)v* has v^T v* = 0.

    v(theta)^T v* is affine in theta; solving gives theta_s = pi/2 * A / (A - s^2) with
    A = (m+1)||v*||^2, s = 1^T v*.  theta_s <= pi iff 2 s^2 <= A (the spurious condition,
    non-strict); None when it fails (no saddle of this family).
    """
    vs = prob.v_star
    s2 = vs.sum() ** 2
    big_a = (prob.m + 1) * (vs @ vs)
    if not 2 * s2 <= big_a:
        return None
    return float(math.pi / 2 * big_a / (big_a - s2))


def saddle(prob: Problem, theta: float | None = None, seed: int = 0
           ) -> tuple[np.ndarray, np.ndarray] | None:
    """A saddle (v(theta), w) of f with v^T v* = 0, so df/dv = 0 and df/dw = 0.

    Both conditions of REFERENCE ("v^T v* = 0 and v = (I+11^T)^{-1}((1-2theta/pi)I+11^T)v*")
    pin theta to saddle_angle(prob); `theta` defaults to it and, if given, must equal it
    (ValueError otherwise).  w is a unit vector at that angle from w*, in a seeded random
    plane.  Returns None when no saddle exists.
    """
    t_s = saddle_angle(prob)
    if t_s is None:
        return None
    if theta is not None and abs(theta - t_s) > 1e-9:
        raise ValueError(f"theta must be the saddle angle {t_s!r} of this problem "
                         f"(v^T v* = 0 nowhere else), but got theta={theta!r}")
    vs = prob.v_star
    v = _solve_i_plus_ones((1.0 - 2.0 * t_s / math.pi) * vs + vs.sum())
    rng = np.random.default_rng(seed)
    u = rng.standard_normal(prob.n)
    u -= (u @ prob.w_star) * prob.w_star
    u /= np.linalg.norm(u)
    return v, math.cos(t_s) * prob.w_star + math.sin(t_s) * u


def identity_norm_at_spurious(prob: Problem) -> float:
    """||E g_identity|| at the spurious minimum: 2(m-1) / (sqrt(2pi)(m+1)^2) (1^T v*)^2.

    Raises ValueError when the spurious minimum does not exist.
    """
    if not spurious_exists(prob):
        raise ValueError("spurious minimum must exist ((1^T v*)^2 < (m+1)/2 ||v*||^2), "
                         f"but got (1^T v*)^2={prob.v_star.sum() ** 2!r}, "
                         f"(m+1)/2 ||v*||^2={(prob.m + 1) / 2 * (prob.v_star @ prob.v_star)!r}")
    m = prob.m
    return 2 * (m - 1) / (math.sqrt(2 * math.pi) * (m + 1) ** 2) * prob.v_star.sum() ** 2
