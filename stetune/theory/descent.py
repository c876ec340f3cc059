"""Algorithm 1 (coarse gradient descent) on the two-linear-layer model, and the paper's Fig. 1.

v <- v - eta E[dl/dv] (the exact v-gradient), w <- w - eta E[g_mu] (the coarse gradient), with
exact expectations (batch=None) or mini-batch means over freshly sampled Z.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .landscape import spurious_minimum
from .model import (Problem, _check_ste, _point, cosine, expected_coarse_grad_w, grad_v,
                    loss, theta)
from .montecarlo import batch_gradients

__all__ = ["INITS", "DescentResult", "initial_point", "coarse_gradient_descent",
           "one_step_losses", "plot_one_step"]

INITS = ("random", "spurious")


@dataclass
class DescentResult:
    """Trajectory (index k = iterate after k steps, k = 0..steps) and a summary dict."""

    v: np.ndarray  # final iterate
    w: np.ndarray
    f: np.ndarray  # exact population loss
    cos: np.ndarray  # exact cos(E g_mu, df/dw); nan where either vanishes
    w_norm: np.ndarray
    theta: np.ndarray
    dist_start: np.ndarray  # ||(v, w) - (v0, w0)||
    summary: dict = field(default_factory=dict)


def initial_point(prob: Problem, init: str = "random", *, eps: float = 0.0, seed: int = 0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Starting (v0, w0).

    "random": v0 ~ N(0, I_m), w0 uniform on the unit sphere (seeded).
    "spurious": the spurious minimum (||w|| = 1) plus eps times a seeded uniformly random
    unit vector of R^{m+n}; ValueError if the problem has no spurious minimum.
    """
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, but got init={init!r}")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, but got eps={eps}")
    rng = np.random.default_rng(seed)
    if init == "random":
        w0 = rng.standard_normal(prob.n)
        return rng.standard_normal(prob.m), w0 / np.linalg.norm(w0)
    sp = spurious_minimum(prob)
    if sp is None:
        raise ValueError("init='spurious' needs a spurious minimum, which requires "
                         "(1^T v*)^2 < (m+1)/2 ||v*||^2; this problem (seed) has none")
    d = rng.standard_normal(prob.m + prob.n)
    d *= eps / np.linalg.norm(d)
    return sp[0] + d[: prob.m], sp[1] + d[prob.m:]


def coarse_gradient_descent(prob: Problem, ste: str, lr: float = 0.1, steps: int = 1000, *,
                            init: str = "random", eps: float = 0.0, batch: int | None = None,
                            seed: int = 0, v0=None, w0=None, tol: float = 1e-6,
                            radius: float = 1e-3) -> DescentResult:
    """Run Algorithm 1 for `steps` iterations from initial_point(...) or from (v0, w0).

    Summary: final_loss, converged (final f < tol), min_cosine (over finite cosines),
    monotone (f never increased by more than 1e-12), dist_from_start, and
    dist_from_spurious / left_spurious (distance from the spurious minimum > radius; the
    reference is the unperturbed spurious point for init="spurious", else the spurious point
    with ||w|| = ||w0||; None when the problem has none).
    """
    _check_ste(ste)
    if not lr > 0:
        raise ValueError(f"lr must be > 0, but got lr={lr}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, but got steps={steps}")
    if batch is not None and batch < 1:
        raise ValueError(f"batch must be >= 1, but got batch={batch}")
    if (v0 is None) != (w0 is None):
        raise ValueError("v0 and w0 must be given together, but got only one of them")
    if v0 is None:
        v, w = initial_point(prob, init, eps=eps, seed=seed)
    else:
        v, w = (np.array(x, dtype=float) for x in _point(v0, w0, prob))
    start = np.concatenate([v, w])
    ref = spurious_minimum(prob) if init == "spurious" and v0 is None else \
        spurious_minimum(prob, w=w)
    rng = np.random.default_rng([seed, 1])  # mini-batch stream, independent of the init's
    rec = {k: np.empty(steps + 1) for k in ("f", "cos", "w_norm", "theta", "dist_start")}
    for k in range(steps + 1):
        rec["f"][k] = loss(v, w, prob)
        rec["cos"][k] = cosine(v, w, prob, ste)
        rec["w_norm"][k] = np.linalg.norm(w)
        rec["theta"][k] = theta(w, prob.w_star)
        rec["dist_start"][k] = np.linalg.norm(np.concatenate([v, w]) - start)
        if k == steps:
            break
        if batch is None:
            gv, gw = grad_v(v, w, prob), expected_coarse_grad_w(v, w, prob, ste)
        else:
            gv, gw = batch_gradients(rng.standard_normal((batch, prob.m, prob.n)), v, w, prob, ste)
        v, w = v - lr * gv, w - lr * gw  # simultaneous update, as in Algorithm 1
        if not (np.all(np.isfinite(w)) and np.linalg.norm(w) > 0):
            raise FloatingPointError(f"w became {w} at step {k + 1}; lower lr (got lr={lr})")
    finite = rec["cos"][np.isfinite(rec["cos"])]
    d_sp = None if ref is None else float(np.linalg.norm(np.concatenate([v - ref[0], w - ref[1]])))
    summary = {
        "ste": ste, "lr": lr, "steps": steps, "batch": batch, "init": init, "eps": eps,
        "seed": seed, "final_loss": float(rec["f"][-1]), "converged": bool(rec["f"][-1] < tol),
        "tol": tol, "min_cosine": float(finite.min()) if finite.size else None,
        "monotone": bool(np.all(np.diff(rec["f"]) <= 1e-12)),
        "final_theta": float(rec["theta"][-1]), "final_w_norm": float(rec["w_norm"][-1]),
        "dist_from_start": float(rec["dist_start"][-1]), "dist_from_spurious": d_sp,
        "radius": radius, "left_spurious": None if d_sp is None else bool(d_sp > radius),
        "dist_v_to_v_star": float(np.linalg.norm(v - prob.v_star)),
    }
    return DescentResult(v=v, w=w, summary=summary, **rec)


def one_step_losses(prob: Problem, v, w, ste: str, etas, sample_sizes=(10, 50, 1000),
                    seed: int = 0) -> np.ndarray:
    """Paper's Fig. 1: exact f after one step along minus a sampled coarse gradient.

    For each sample size S (None = exact expectations) one gradient (dl/dv, g_mu) is estimated
    from S fresh samples of Z; row i holds f(v - eta g_v, w - eta g_w) for every eta.
    Returns an array of shape (len(sample_sizes), len(etas)).
    """
    _check_ste(ste)
    v, w = _point(v, w, prob)
    etas = np.asarray(etas, dtype=float)
    rng = np.random.default_rng(seed)
    out = np.empty((len(sample_sizes), etas.size))
    for i, size in enumerate(sample_sizes):
        if size is None:
            gv, gw = grad_v(v, w, prob), expected_coarse_grad_w(v, w, prob, ste)
        elif size < 1:
            raise ValueError(f"sample size must be >= 1, but got sample_size={size}")
        else:
            gv, gw = batch_gradients(rng.standard_normal((size, prob.m, prob.n)), v, w, prob, ste)
        out[i] = [loss(v - e * gv, w - e * gw, prob) for e in etas]
    return out


def plot_one_step(prob: Problem, v, w, ste: str, path, *, etas=None,
                  sample_sizes=(10, 50, 1000), seed: int = 0, exact: bool = True):
    """Plot one_step_losses (eta in [0, 0.2] by default) to `path` (.png/.pdf); returns path.

    The exact-expectation curve is added as a dashed reference when `exact`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # lazy: plotting is optional
    from matplotlib.figure import Figure

    etas = np.linspace(0.0, 0.2, 41) if etas is None else np.asarray(etas, dtype=float)
    sizes = list(sample_sizes) + ([None] if exact else [])
    vals = one_step_losses(prob, v, w, ste, etas, sizes, seed)
    fig = Figure(figsize=(5.0, 3.6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for size, row in zip(sizes, vals):
        style = dict(ls="--", color="k") if size is None else {}
        ax.plot(etas, row, label="exact E[g]" if size is None else f"{size} samples", **style)
    ax.set_xlabel("learning rate $\\eta$")
    ax.set_ylabel("loss $f$ after one step")
    ax.set_title(f"one coarse-gradient step, {ste} STE (m={prob.m}, n={prob.n})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return path

