"""Exact population quantities of the two-linear-layer model with binary activation.

Model (REFERENCE.md section 5; Yin et al., ICLR 2019): Z in R^{m x n} with i.i.d. N(0, 1)
entries, y = v^T sigma(Z w) with sigma(x) = 1{x > 0}; teacher y* = v*^T sigma(Z w*), ||w*|| = 1.

Every formula below was re-derived (the reference's agree).  Where the paper's form has a
removable 0/0 at theta = 0 or theta = pi (csc, cot, (w_hat + w*)/||w_hat + w*||) an
algebraically equal form without the singularity is used instead; see each docstring.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import integrate, special

__all__ = [
    "STES", "Problem", "Teacher", "make_problem", "theta", "loss", "grad_v", "grad_w",
    "xi", "pq", "pq_closed_form", "expected_coarse_grad_w", "correlation", "cosine",
    "correlation_formula_identity", "correlation_formula_relu",
    "correlation_formula_clipped_relu", "correlation_formula",
]

STES = ("identity", "relu", "clipped_relu")
_SQRT2PI = math.sqrt(2.0 * math.pi)
_SQRT_HALF_PI = math.sqrt(math.pi / 2)
# Below this sin(theta) the direction P w* / ||P w*|| is rounding noise, so it is treated as 0.
_SIN_EPS = 1e-12


@dataclass(frozen=True, eq=False)
class Problem:
    """Teacher of the model: sizes m (hidden units), n (input dim) and (v*, w*), ||w*|| = 1."""

    m: int
    n: int
    v_star: np.ndarray
    w_star: np.ndarray

    def __post_init__(self) -> None:
        _check_sizes(self.m, self.n)
        v_star = np.asarray(self.v_star, dtype=float)
        w_star = np.asarray(self.w_star, dtype=float)
        if v_star.shape != (self.m,):
            raise ValueError(f"v_star must have shape ({self.m},), but got shape {v_star.shape}")
        if w_star.shape != (self.n,):
            raise ValueError(f"w_star must have shape ({self.n},), but got shape {w_star.shape}")
        if abs(np.linalg.norm(w_star) - 1.0) > 1e-9:
            raise ValueError(f"w_star must have norm 1, but got norm {np.linalg.norm(w_star)!r}")
        object.__setattr__(self, "v_star", v_star)
        object.__setattr__(self, "w_star", w_star)


Teacher = Problem  # the brief's name for the same thing


def _check_sizes(m: int, n: int) -> None:
    if m < 1:
        raise ValueError(f"m must be >= 1, but got m={m}")
    if n < 2:  # theta needs a plane through w and w*
        raise ValueError(f"n must be >= 2, but got n={n}")


def make_problem(m: int, n: int, seed: int = 0) -> Problem:
    """Random teacher: v* ~ N(0, I_m), w* uniform on the unit sphere of R^n (seeded)."""
    _check_sizes(m, n)
    rng = np.random.default_rng(seed)
    v_star = rng.standard_normal(m)
    w_star = rng.standard_normal(n)
    return Problem(m, n, v_star, w_star / np.linalg.norm(w_star))


def _check_ste(ste: str) -> None:
    if ste not in STES:
        raise ValueError(f"ste must be one of {STES}, but got ste={ste!r}")


def _point(v, w, prob: Problem) -> tuple[np.ndarray, np.ndarray]:
    v = np.asarray(v, dtype=float)
    w = np.asarray(w, dtype=float)
    if v.shape != (prob.m,):
        raise ValueError(f"v must have shape ({prob.m},), but got shape {v.shape}")
    if w.shape != (prob.n,):
        raise ValueError(f"w must have shape ({prob.n},), but got shape {w.shape}")
    if not np.linalg.norm(w) > 0:
        raise ValueError("w must be nonzero and finite, but got ||w||=" f"{np.linalg.norm(w)}")
    return v, w


def theta(w, w_star) -> float:
    """Angle between w and w_star in [0, pi].

    Kahan's 2*atan2(||a - b||, ||a + b||) on the unit vectors: accurate near 0 and pi, where
    arccos of the inner product loses half the digits.
    """
    a = np.asarray(w, dtype=float)
    b = np.asarray(w_star, dtype=float)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if not (na > 0 and nb > 0):
        raise ValueError(f"theta needs nonzero vectors, but got norms {na} and {nb}")
    a, b = a / na, b / nb
    return float(2.0 * math.atan2(np.linalg.norm(a - b), np.linalg.norm(a + b)))


def _geometry(w, prob: Problem):
    """(w_hat, ||w||, theta, sin theta, e) with e = P w* / ||P w*|| (0 where undefined)."""
    nw = float(np.linalg.norm(w))
    w_hat = w / nw
    t = theta(w_hat, prob.w_star)
    u = prob.w_star - (prob.w_star @ w_hat) * w_hat
    nu = float(np.linalg.norm(u))
    e = u / nu if nu > _SIN_EPS else np.zeros_like(u)
    return w_hat, nw, t, math.sin(t), e


def loss(v, w, prob: Problem) -> float:
    """Population loss f(v, w) = E_Z[1/2 (v^T sigma(Zw) - y*)^2] (REFERENCE formula, O(m))."""
    v, w = _point(v, w, prob)
    t = theta(w, prob.w_star)
    vs = prob.v_star
    s1, s1_star = v.sum(), vs.sum()
    quad_v = v @ v + s1 ** 2  # v^T (I + 11^T) v
    cross = (1.0 - 2.0 * t / math.pi) * (v @ vs) + s1 * s1_star
    quad_star = vs @ vs + s1_star ** 2
    return float((quad_v - 2.0 * cross + quad_star) / 8.0)


def grad_v(v, w, prob: Problem) -> np.ndarray:
    """df/dv = 1/4 (I + 11^T) v - 1/4 ((1 - 2 theta/pi) I + 11^T) v*  (= E[dl/dv])."""
    v, w = _point(v, w, prob)
    t = theta(w, prob.w_star)
    vs = prob.v_star
    return (v + v.sum() - (1.0 - 2.0 * t / math.pi) * vs - vs.sum()) / 4.0


def grad_w(v, w, prob: Problem) -> np.ndarray:
    """df/dw = -(v^T v*) / (2 pi ||w||) P w* / ||P w*||,  P = I - w w^T / ||w||^2.

    f depends on w only through theta, and theta(w) has a cone-like kink at theta in {0, pi}
    (P w* = 0): there f is not differentiable and 0 (the minimum-norm Clarke subgradient) is
    returned.
    """
    v, w = _point(v, w, prob)
    _, nw, _, _, e = _geometry(w, prob)
    return -(v @ prob.v_star) / (2.0 * math.pi * nw) * e


def xi(x):
    """xi(x) = int_0^x r^2 exp(-r^2/2) dr = sqrt(pi/2) erf(x/sqrt2) - x exp(-x^2/2), x >= 0.

    The closed form cancels catastrophically for small x, so a Taylor series is used there.
    """
    x = np.asarray(x, dtype=float)
    x2 = x * x
    series = x * x2 * (1.0 / 3 - x2 * (1.0 / 10 - x2 * (1.0 / 56 - x2 / 432)))
    with np.errstate(over="ignore", invalid="ignore"):
        closed = math.sqrt(math.pi / 2) * special.erf(x / math.sqrt(2)) - x * np.exp(-x2 / 2)
    return np.where(x < 0.05, series, np.where(np.isinf(x), math.sqrt(math.pi / 2), closed))


def pq(t: float, w_norm: float) -> tuple[float, float]:
    """p(theta, w), q(theta, w) of the clipped ReLU STE by 1-D quadrature (REFERENCE definition).

    p = 1/(2 pi) int_{theta - pi/2}^{pi/2} cos(phi) xi(sec(phi)/||w||) dphi, q the same with
    sin(phi).  For theta < pi/2 the complement [-pi/2, theta - pi/2] is integrated instead
    (the full range gives p(0, w) = (1 - exp(-1/(2||w||^2)))/sqrt(2 pi) and q = 0 by symmetry),
    so the interval is always short near a limit and small theta is not lost to cancellation.
    sec(phi) blows up at +-pi/2, where xi saturates at sqrt(pi/2); capping its argument at 40
    changes nothing in double precision and avoids inf * 0.
    """
    if not (0.0 <= t <= math.pi + 1e-12):
        raise ValueError(f"theta must be in [0, pi], but got theta={t}")
    if not w_norm > 0:
        raise ValueError(f"w_norm must be > 0, but got w_norm={w_norm}")

    def xi_sec(phi: float) -> float:  # scalar xi(min(sec(phi)/||w||, 40)); quad calls it often
        c = math.cos(phi)
        x = 40.0 if c * 40.0 * w_norm <= 1.0 else 1.0 / (c * w_norm)
        if x < 0.05:
            x2 = x * x
            return x * x2 * (1.0 / 3 - x2 * (1.0 / 10 - x2 * (1.0 / 56 - x2 / 432)))
        return _SQRT_HALF_PI * math.erf(x / math.sqrt(2)) - x * math.exp(-x * x / 2)

    def integrals(lo: float, hi: float) -> tuple[float, float]:
        if hi <= lo:
            return 0.0, 0.0
        opts = dict(epsabs=1e-15, epsrel=1e-12, limit=200)
        ip = integrate.quad(lambda f: math.cos(f) * xi_sec(f), lo, hi, **opts)[0]
        iq = integrate.quad(lambda f: math.sin(f) * xi_sec(f), lo, hi, **opts)[0]
        return ip / (2 * math.pi), iq / (2 * math.pi)

    if t >= math.pi / 2:
        return integrals(t - math.pi / 2, math.pi / 2)
    p0 = -math.expm1(-0.5 / w_norm ** 2) / _SQRT2PI
    cp, cq = integrals(-math.pi / 2, t - math.pi / 2)
    return p0 - cp, -cq


def pq_closed_form(t: float, w_norm: float) -> tuple[float, float]:
    """Closed forms of p and q (derived here, not in the paper), used to check the quadrature.

    With x = z.w_hat, y = z.e and a = 1/||w||: q = E[y 1{0<x<a, y > -x cot theta}]
    = sin(theta)/(2 sqrt(2 pi)) erf(a / (sqrt2 sin theta)) and
    p = E[x 1{...}] = 1/(2 sqrt(2pi)) - phi(a) Phi(a cot theta) + cos(theta) q / sin(theta).
    """
    a = 1.0 / w_norm
    s, c = math.sin(t), math.cos(t)
    if s <= _SIN_EPS:  # theta in {0, pi}: full half-space wedge or empty wedge
        p0 = -math.expm1(-a * a / 2) / _SQRT2PI
        return (p0, 0.0) if c > 0 else (0.0, 0.0)
    er = math.erf(a / (math.sqrt(2) * s))
    q = s * er / (2 * _SQRT2PI)
    p = (1 + c * er) / (2 * _SQRT2PI) - math.exp(-a * a / 2) / _SQRT2PI * special.ndtr(a * c / s)
    return float(p), q


def expected_coarse_grad_w(v, w, prob: Problem, ste: str) -> np.ndarray:
    """E_Z[g_mu], g_mu = Z^T (mu'(Zw) . v)(v^T sigma(Zw) - y*), for ste in STES.

    With h = ||v||^2 + (1^T v)^2 - (1^T v)(1^T v*) + v^T v*:
    - identity: (||v||^2 w_hat - (v^T v*) w*) / sqrt(2 pi).
    - relu: h/(2 sqrt(2pi)) w_hat - cos(theta/2)(v^T v*)/sqrt(2pi) (w_hat+w*)/||w_hat+w*||; as
      ||w_hat + w*|| = 2 cos(theta/2) this is ((h - v^T v*) w_hat - (v^T v*) w*)/(2 sqrt(2pi)),
      which has no 0/0 at theta = pi.
    - clipped_relu (mu = min(max(x,0),1)): p(0,w) h/2 w_hat - (v^T v*)(p w_hat + q e), e the unit
      vector of P w*; equal to the paper's csc/cot form for 0 < theta < pi, and its limit
      at theta in {0, pi} (q = 0 there, so the undefined e does not matter).
    """
    _check_ste(ste)
    v, w = _point(v, w, prob)
    w_hat, nw, t, _, e = _geometry(w, prob)
    vs = prob.v_star
    vv = v @ vs
    if ste == "identity":
        return ((v @ v) * w_hat - vv * prob.w_star) / _SQRT2PI
    h = v @ v + v.sum() ** 2 - v.sum() * vs.sum() + vv
    if ste == "relu":
        return ((h - vv) * w_hat - vv * prob.w_star) / (2.0 * _SQRT2PI)
    p0 = -math.expm1(-0.5 / nw ** 2) / _SQRT2PI  # p(0, w) in closed form: E[x 1{0<x<1/||w||}]
    p, q = pq(t, nw)
    return (p0 * h / 2.0 - vv * p) * w_hat - vv * q * e


def correlation(v, w, prob: Problem, ste: str) -> float:
    """<E g_mu, df/dw> from the two vectors (compare with correlation_formula)."""
    return float(expected_coarse_grad_w(v, w, prob, ste) @ grad_w(v, w, prob))


def cosine(v, w, prob: Problem, ste: str) -> float:
    """cos(E g_mu, df/dw); nan where either vector is 0 (e.g. at critical points)."""
    g = expected_coarse_grad_w(v, w, prob, ste)
    d = grad_w(v, w, prob)
    den = np.linalg.norm(g) * np.linalg.norm(d)
    return float(g @ d / den) if den > 0 else float("nan")


def _corr_parts(v, w, prob: Problem):
    v, w = _point(v, w, prob)
    return float(v @ prob.v_star) ** 2, float(np.linalg.norm(w)), theta(w, prob.w_star)


def correlation_formula_identity(v, w, prob: Problem) -> float:
    """sin(theta) / ((2 pi)^{3/2} ||w||) (v^T v*)^2."""
    vv2, nw, t = _corr_parts(v, w, prob)
    return math.sin(t) / ((2 * math.pi) ** 1.5 * nw) * vv2


def correlation_formula_relu(v, w, prob: Problem) -> float:
    """sin(theta) / (2 (2 pi)^{3/2} ||w||) (v^T v*)^2."""
    vv2, nw, t = _corr_parts(v, w, prob)
    return math.sin(t) / (2 * (2 * math.pi) ** 1.5 * nw) * vv2


def correlation_formula_clipped_relu(v, w, prob: Problem) -> float:
    """q(theta, w) / (2 pi ||w||) (v^T v*)^2."""
    vv2, nw, t = _corr_parts(v, w, prob)
    return pq(t, nw)[1] / (2 * math.pi * nw) * vv2


def correlation_formula(v, w, prob: Problem, ste: str) -> float:
    """Dispatch to the closed-form correlation identity of `ste`."""
    _check_ste(ste)
    fn = {"identity": correlation_formula_identity, "relu": correlation_formula_relu,
          "clipped_relu": correlation_formula_clipped_relu}[ste]
    return fn(v, w, prob)
