"""Tests of stetune.theory: the two-linear-layer model of Yin et al. (ICLR 2019), REFERENCE §5."""
from __future__ import annotations

import argparse
import math

import numpy as np
import pytest

from stetune.theory import (STES, coarse_gradient_descent, correlation, correlation_formula,
                            cosine, expected_coarse_grad_w, global_minimum, grad_v, grad_w,
                            identity_norm_at_spurious, initial_point, loss, make_problem,
                            monte_carlo, one_step_losses, per_sample, plot_one_step, pq,
                            pq_closed_form, saddle, saddle_angle, spurious_exists,
                            spurious_minimum, theta)
from stetune.theory.model import Problem
from stetune.theory import cli


def random_point(prob, seed, w_norm=1.7):
    """v ~ N(0, I_m); w uniform direction with norm w_norm (clipped ReLU depends on ||w||)."""
    rng = np.random.default_rng(1000 + seed)
    w = rng.standard_normal(prob.n)
    return rng.standard_normal(prob.m), w_norm * w / np.linalg.norm(w)


def at_angle(prob, t, norm, seed=0):
    """A w with theta(w, w*) = t and ||w|| = norm."""
    u = np.random.default_rng(seed).standard_normal(prob.n)
    u -= (u @ prob.w_star) * prob.w_star
    u /= np.linalg.norm(u)
    return norm * (math.cos(t) * prob.w_star + math.sin(t) * u)


# ---------------------------------------------------------------- exact vs Monte-Carlo
@pytest.mark.parametrize("m,n,seed", [(3, 4, 0), (5, 8, 1), (10, 6, 2)])
def test_exact_matches_monte_carlo(m, n, seed):
    prob = make_problem(m, n, seed)
    v, w = random_point(prob, seed)
    mc = monte_carlo(v, w, prob, 1_000_000, seed=seed)
    exact = {"loss": np.array(loss(v, w, prob)), "grad_v": grad_v(v, w, prob)}
    for ste in STES:
        exact[f"coarse_{ste}"] = expected_coarse_grad_w(v, w, prob, ste)
    for key, value in exact.items():
        z = np.abs(mc.mean[key] - value) / mc.stderr[key]
        assert np.all(mc.stderr[key] > 0), key
        assert np.all(z <= 5.0), f"{key}: max |z| = {z.max():.2f}"


def test_monte_carlo_chunks_merge_exactly():
    prob = make_problem(3, 4, 7)
    v, w = random_point(prob, 7)
    one = monte_carlo(v, w, prob, 1000, seed=3, chunk=1000)
    many = monte_carlo(v, w, prob, 1000, seed=3, chunk=7)  # same stream, Chan merge
    Z = np.random.default_rng(3).standard_normal((1000, 3, 4))
    direct = per_sample(Z, v, w, prob)
    for key, x in direct.items():
        np.testing.assert_allclose(many.mean[key], x.mean(axis=0), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(many.stderr[key], x.std(axis=0, ddof=1) / math.sqrt(1000),
                                   rtol=1e-10)
        np.testing.assert_allclose(one.stderr[key], many.stderr[key], rtol=1e-10)


# ---------------------------------------------------------------- p, q and limits
@pytest.mark.parametrize("t", [0.0, 1e-9, 0.3, 1.5, math.pi / 2, 2.5, math.pi - 1e-9, math.pi])
@pytest.mark.parametrize("w_norm", [0.05, 1.0, 1.7, 30.0])
def test_pq_quadrature_matches_closed_form(t, w_norm):
    np.testing.assert_allclose(pq(t, w_norm), pq_closed_form(t, w_norm), rtol=0, atol=1e-12)


def test_limits_theta_zero_and_pi_are_finite_and_continuous():
    prob = make_problem(5, 8, 3)
    v, _ = random_point(prob, 3)
    for t0, t1 in [(0.0, 1e-8), (math.pi, math.pi - 1e-8)]:
        w0, w1 = at_angle(prob, t0, 1.3), at_angle(prob, t1, 1.3)
        assert abs(theta(w0, prob.w_star) - t0) < 1e-12
        for ste in STES:
            g0 = expected_coarse_grad_w(v, w0, prob, ste)
            assert np.all(np.isfinite(g0))
            np.testing.assert_allclose(g0, expected_coarse_grad_w(v, w1, prob, ste), atol=1e-7)
        assert np.all(grad_w(v, w0, prob) == 0)  # kink: minimum-norm Clarke subgradient
        assert math.isnan(cosine(v, w0, prob, "relu"))


# ---------------------------------------------------------------- correlation identities
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("ste", STES)
def test_correlation_identities(seed, ste):
    prob = make_problem(5, 8, seed)
    for w_norm in (0.6, 1.0, 1.7):
        v, w = random_point(prob, seed, w_norm)
        vec = correlation(v, w, prob, ste)
        assert abs(vec - correlation_formula(v, w, prob, ste)) <= 1e-9
        assert vec >= 0.0  # -E g is a descent direction for w (weakly) for every STE
    v, _ = random_point(prob, seed)
    for t in (1e-6, math.pi - 1e-6):  # near the limits too
        w = at_angle(prob, t, 1.2, seed)
        assert abs(correlation(v, w, prob, ste) - correlation_formula(v, w, prob, ste)) <= 1e-9


# ---------------------------------------------------------------- landscape
@pytest.mark.parametrize("seed", range(4))
def test_spurious_minimum(seed):
    prob = make_problem(5, 8, seed)
    assert spurious_exists(prob)
    v, w = spurious_minimum(prob)
    assert abs(theta(w, prob.w_star) - math.pi) < 1e-12
    assert v @ prob.v_star < 0  # what makes theta = pi a local minimum in w
    assert np.linalg.norm(grad_v(v, w, prob)) <= 1e-12
    assert np.all(grad_w(v, w, prob) == 0)  # f is not differentiable in w here: kink, 0 returned
    for ste in ("relu", "clipped_relu"):
        for scale in (1.0, 2.5):  # a spurious "point" is a ray in w
            assert np.linalg.norm(expected_coarse_grad_w(v, scale * w, prob, ste)) <= 1e-9
    g_id = expected_coarse_grad_w(v, w, prob, "identity")
    assert abs(np.linalg.norm(g_id) - identity_norm_at_spurious(prob)) <= 1e-9
    assert identity_norm_at_spurious(prob) > 0
    np.testing.assert_allclose(g_id / np.linalg.norm(g_id), -prob.w_star, atol=1e-12)  # radial
    f0 = loss(v, w, prob)  # a local minimum: small perturbations do not decrease f
    rng = np.random.default_rng(seed)
    for _ in range(50):
        d = rng.standard_normal(prob.m + prob.n) * 1e-3
        assert loss(v + d[:5], w + d[5:], prob) >= f0 - 1e-15


def test_no_spurious_minimum_when_condition_fails():
    prob = Problem(4, 3, np.ones(4), np.array([1.0, 0.0, 0.0]))  # (1^T v*)^2 = 16 >= 10
    assert not spurious_exists(prob)
    assert spurious_minimum(prob) is None
    with pytest.raises(ValueError, match="spurious minimum must exist"):
        identity_norm_at_spurious(prob)
    with pytest.raises(ValueError, match="spurious"):
        initial_point(prob, "spurious")


def test_global_minimum_and_saddle():
    prob = make_problem(5, 8, 0)
    v, w = global_minimum(prob)
    assert loss(v, w, prob) == pytest.approx(0.0, abs=1e-15)
    for ste in STES:
        assert np.linalg.norm(expected_coarse_grad_w(v, 1.4 * w, prob, ste)) <= 1e-12
    t_s = saddle_angle(prob)
    sv, sw = saddle(prob)
    assert abs(theta(sw, prob.w_star) - t_s) < 1e-12 and math.pi / 2 <= t_s <= math.pi
    assert abs(sv @ prob.v_star) < 1e-12
    assert np.linalg.norm(grad_v(sv, sw, prob)) < 1e-12
    assert np.linalg.norm(grad_w(sv, sw, prob)) < 1e-12
    with pytest.raises(ValueError, match="theta must be the saddle angle"):
        saddle(prob, theta=1.0)


# ---------------------------------------------------------------- Algorithm 1
@pytest.mark.parametrize("ste", ["relu", "clipped_relu"])
def test_descent_converges_to_global_minimum_under_theorem2(ste):
    prob = make_problem(5, 8, 0)
    v0 = 0.5 * prob.v_star
    w0 = at_angle(prob, 1.2, 1.3, seed=3)
    s = prob.v_star.sum()
    assert v0 @ prob.v_star > 0 and theta(w0, prob.w_star) < math.pi / 2
    assert s * v0.sum() <= s ** 2
    res = coarse_gradient_descent(prob, ste, lr=0.1, steps=3000, v0=v0, w0=w0)
    assert np.all(np.diff(res.f) <= 1e-12)  # monotone non-increasing
    assert res.summary["converged"] and res.f[-1] < 1e-6
    assert res.theta[-1] < 1e-4
    np.testing.assert_allclose(res.v, prob.v_star, atol=1e-4)
    assert res.summary["min_cosine"] > 0


def test_identity_ste_leaves_spurious_minimum_relu_stays():
    prob = make_problem(5, 8, 2)
    steps, lr = 200, 0.1
    runs = {ste: coarse_gradient_descent(prob, ste, lr, steps, init="spurious", eps=0.0)
            for ste in STES}
    for ste in ("relu", "clipped_relu"):
        assert runs[ste].summary["dist_from_start"] <= 1e-9
        assert runs[ste].summary["left_spurious"] is False
    ident = runs["identity"]
    assert ident.summary["dist_from_start"] > 0.3 and ident.summary["left_spurious"]
    # While ||w|| > 0: v stays optimal (theta = pi) and E g_id = -c w* is radial with the
    # constant norm c, so w shrinks linearly: distance after k steps = k lr c.
    c = identity_norm_at_spurious(prob)
    k = 40
    assert k * lr * c < 1.0  # w has not reached the origin yet
    assert ident.dist_start[k] == pytest.approx(k * lr * c, rel=1e-9)


def test_minibatch_descent_is_seeded():
    prob = make_problem(3, 4, 1)
    a = coarse_gradient_descent(prob, "relu", 0.05, 30, batch=64, seed=5)
    b = coarse_gradient_descent(prob, "relu", 0.05, 30, batch=64, seed=5)
    c = coarse_gradient_descent(prob, "relu", 0.05, 30, batch=64, seed=6)
    np.testing.assert_array_equal(a.f, b.f)
    assert not np.array_equal(a.f, c.f)
    assert a.f.shape == (31,) and np.isfinite(a.f).all()


def test_one_step_losses_and_plot(tmp_path):
    prob = make_problem(5, 8, 0)
    v, w = random_point(prob, 0)
    etas = np.linspace(0.0, 0.2, 21)
    out = one_step_losses(prob, v, w, "relu", etas, (10, 50, 1000, None), seed=0)
    assert out.shape == (4, 21)
    np.testing.assert_allclose(out[:, 0], loss(v, w, prob), rtol=1e-14)
    # exact row: slope at eta = 0 is -(||df/dv||^2 + <E g, df/dw>)
    slope = -(grad_v(v, w, prob) @ grad_v(v, w, prob) + correlation(v, w, prob, "relu"))
    h = 1e-6
    fd = (one_step_losses(prob, v, w, "relu", [h], (None,))[0, 0] - loss(v, w, prob)) / h
    assert fd == pytest.approx(slope, rel=1e-4)
    path = plot_one_step(prob, v, w, "relu", tmp_path / "fig1.png")
    assert (tmp_path / "fig1.png").stat().st_size > 0 and path == tmp_path / "fig1.png"


# ---------------------------------------------------------------- validation and CLI
def test_errors_name_the_field():
    with pytest.raises(ValueError, match=r"m must be >= 1, but got m=0"):
        make_problem(0, 4)
    with pytest.raises(ValueError, match=r"n must be >= 2, but got n=1"):
        make_problem(3, 1)
    prob = make_problem(3, 4)
    with pytest.raises(ValueError, match=r"ste must be one of"):
        expected_coarse_grad_w(np.ones(3), np.ones(4), prob, "tanh")
    with pytest.raises(ValueError, match=r"lr must be > 0, but got lr=0"):
        coarse_gradient_descent(prob, "relu", lr=0, steps=3)


def _parser():
    parser = argparse.ArgumentParser(prog="stetune")
    cli.add_parser(parser.add_subparsers(dest="command"))
    return parser


def test_cli_runs_and_writes_fig1_and_json(tmp_path, capsys):
    fig, js = tmp_path / "fig1.png", tmp_path / "s.json"
    args = _parser().parse_args(["theory", "--ste", "relu", "--steps", "50",
                                 "--fig1", str(fig), "--json", str(js)])
    assert args.func(args) == 0
    assert fig.stat().st_size > 0 and js.stat().st_size > 0
    out = capsys.readouterr().out
    assert "final_loss" in out and "theta" in out


@pytest.mark.parametrize("flag,value,field", [("--m", "0", "m"), ("--n", "1", "n"),
                                              ("--lr", "0", "lr"), ("--steps", "0", "steps")])
def test_cli_invalid_values_exit_2(flag, value, field, capsys):
    args = _parser().parse_args(["theory", flag, value])
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert f"{field} must be" in err and "Traceback" not in err
    assert cli.main(["theory", flag, value]) == 2
