"""Quantizer, Lloyd-Max resolution and STE gradients against REFERENCE.md section 1."""

import numpy as np
import pytest
import torch
from scipy import integrate, optimize, stats

from stetune.quant import (ActQuantConfig, QuantAct, QuantSTE, get_ste, list_stes, lloyd_alpha,
                           parse_bits, quantize, register_ste)

# alphas published with the paper's related code (obtained on simulated half-Gaussian samples)
PUBLISHED = {1: 1.2221, 2: 0.6511, 4: 0.1946}


def test_lloyd_alpha_matches_published_2bit_to_1e3():
    assert lloyd_alpha(2) == pytest.approx(PUBLISHED[2], abs=1e-3)


@pytest.mark.parametrize("bits", [1, 4])
def test_lloyd_alpha_1_and_4_bits_within_sampling_noise_of_published(bits):
    # The exact fixed point is 1.22401 (1 bit) and 0.19325 (4 bits); the published values differ by
    # 1.9e-3 and 1.35e-3, which is the spread of Lloyd on 1e5 simulated samples (next test).
    assert lloyd_alpha(bits) == pytest.approx(PUBLISHED[bits], abs=2e-3)


def test_simulated_lloyd_brackets_published_values():
    for bits, published in PUBLISHED.items():
        sampled = [lloyd_alpha(bits, samples=100_000, seed=s) for s in range(4)]
        assert min(sampled) - 1e-3 <= published <= max(sampled) + 1e-3, (bits, sampled)


def _half_normal_mse(a: float, bits: int) -> float:
    """E[(X - a k(X))^2] for X ~ |N(0,1)| with k(X) the nearest of 0..2^b-1: the error Lloyd's
    algorithm minimises (it assigns each x to its nearest level; the forward quantizer's ceil
    shares the levels, not the assignment). Closed form per interval from scipy's normal pdf and
    survival function, so the reference shares no code with stetune.quant.lloyd."""
    k = np.arange(2**bits)
    lo = np.concatenate([[0.0], (k[1:] - 0.5) * a])
    hi = np.concatenate([(k[:-1] + 0.5) * a, [np.inf]])
    p = 2 * (stats.norm.sf(lo) - stats.norm.sf(hi))           # P(lo < X <= hi)
    m1 = 2 * (stats.norm.pdf(lo) - stats.norm.pdf(hi))        # E[X; lo < X <= hi]
    x_pdf = lambda x: np.nan_to_num(x) * stats.norm.pdf(x)    # x phi(x), 0 at x = inf
    m2 = p + 2 * (x_pdf(lo) - x_pdf(hi))                      # E[X^2; lo < X <= hi]
    return float(np.sum(m2 - 2 * a * k * m1 + (a * k) ** 2 * p))


def test_half_normal_mse_reference_is_the_integral():
    # the reference's closed form against direct quadrature, so a slip in it cannot pass as truth
    a, bits = 0.41, 2
    edges = [0.0] + [(j + 0.5) * a for j in range(2**bits - 1)] + [np.inf]
    quad = sum(integrate.quad(lambda x: (x - j * a) ** 2 * 2 * stats.norm.pdf(x), lo, hi,
                              epsabs=1e-14)[0] for j, (lo, hi) in enumerate(zip(edges, edges[1:])))
    assert _half_normal_mse(a, bits) == pytest.approx(quad, rel=1e-12)


@pytest.mark.parametrize("bits", range(1, 9))
def test_lloyd_alpha_is_the_exact_mse_minimiser_at_every_bit_width(bits):
    # The MSE has one minimum over a wide range of steps (checked on a grid), so Brent's search
    # from the grid's best bracket finds the global minimiser.
    grid = np.geomspace(1e-3, 4.0, 300)
    mse = np.array([_half_normal_mse(a, bits) for a in grid])
    interior_minima = np.flatnonzero((mse[1:-1] < mse[:-2]) & (mse[1:-1] < mse[2:])) + 1
    assert len(interior_minima) == 1, grid[interior_minima]
    i = interior_minima[0]
    best = optimize.minimize_scalar(_half_normal_mse, bracket=(grid[i - 1], grid[i], grid[i + 1]),
                                    args=(bits,), method="brent", tol=1e-12).x
    # rel=1e-6: the MSE is flat at its minimum, so float64 pins the argmin to ~sqrt(eps), 3e-8
    # relative (measured against a root of the exact derivative). A plain Lloyd iteration stopped
    # at a 1e-4 relative change errs by 2.6e-5 (1 bit), 2.4e-4 (2), 9.2e-4 (3), 2.8e-3 (4) ...
    # 1.1 (8 bits, where the map contracts by only ~0.9995 a step): caught at every bit width.
    assert lloyd_alpha(bits) == pytest.approx(best, rel=1e-6, abs=0)


def test_lloyd_alpha_rejects_bad_bits():
    for bits in (0, 9, -1):
        with pytest.raises(ValueError, match=f"bits must be in 1..8, but got bits={bits}"):
            lloyd_alpha(bits)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_quantizer_levels_and_intervals(bits):
    a, L = 0.37, 2**bits - 1
    levels = torch.arange(L + 1, dtype=torch.float32) * a
    x = torch.linspace(-1, (L + 2) * a, 20_001)
    y = quantize(x, a, L)
    assert set(y.unique().tolist()) <= set(levels.tolist())
    # sigma_a(x) = k a for (k-1) a < x <= k a, 0 below, top above (checked in float64)
    xd = x.double()
    expected = torch.clamp(torch.ceil(xd / a), 0, L) * a
    inner = (xd / a - torch.round(xd / a)).abs() > 1e-5  # away from the boundaries' rounding
    assert torch.allclose(y.double()[inner], expected[inner], atol=1e-6)
    assert y[x <= 0].eq(0).all() and y[x > L * a + 1e-5].eq(levels[-1]).all()


def test_quantizer_boundary_points():
    a, L = 0.6507697, 3
    top = torch.tensor(a * L, dtype=torch.float32)
    x = torch.stack([torch.tensor(0.0), torch.tensor(-0.0), torch.tensor(1e-6), top,
                     top + 1e-4, torch.tensor(a)])
    y = quantize(x, a, L)
    assert y.tolist() == pytest.approx([0, 0, a, 3 * a, 3 * a, a], abs=1e-6)


def _coarse_grad(ste: str, x: torch.Tensor, bits: int = 2, alpha: float = 0.6):
    x = x.clone().requires_grad_(True)
    act = QuantAct(ActQuantConfig(bits=bits, ste=ste, alpha=alpha))
    g = torch.randn_like(x)
    act(x).backward(g)
    return x.grad, g, act.top


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_ste_gradient_masks_are_exact(bits):
    alpha = 0.6
    top = torch.tensor(alpha * (2**bits - 1), dtype=torch.float32).item()
    # random points plus the boundaries 0 and top, and the points right next to them
    x = torch.cat([torch.randn(5000) * 3, torch.tensor([0.0, -0.0, top, 1e-7, -1e-7]),
                   torch.tensor([top]).nextafter(torch.tensor([0.0])),
                   torch.tensor([top]).nextafter(torch.tensor([99.0]))])
    masks = {"identity": torch.ones_like(x, dtype=torch.bool),
             "relu": x > 0,
             "clipped_relu": (x > 0) & (x < top)}
    for ste, mask in masks.items():
        grad, g, _ = _coarse_grad(ste, x, bits, alpha)
        assert torch.equal(grad, torch.where(mask, g, torch.zeros_like(g))), ste
    # the boundaries themselves: no gradient at 0 (ReLU, clipped) nor at top (clipped)
    grad, g, _ = _coarse_grad("clipped_relu", torch.tensor([0.0, top]), bits, alpha)
    assert grad.tolist() == [0.0, 0.0]
    grad, g, _ = _coarse_grad("relu", torch.tensor([0.0, top]), bits, alpha)
    assert grad.tolist() == [0.0, g[1].item()]


def test_ste_backward_is_the_proxy_derivative_away_from_kinks():
    x = torch.randn(1000) * 2
    for ste in list_stes():
        grad, g, top = _coarse_grad(ste, x)
        xp = x.clone().requires_grad_(True)
        get_ste(ste).proxy(xp, top).backward(g)
        away = ((x.abs() > 1e-3) & ((x - top).abs() > 1e-3))
        assert torch.equal(grad[away], xp.grad[away]), ste


def test_forward_identical_for_every_ste():
    x = torch.randn(4, 8, 5, 5)
    outs = [QuantAct(ActQuantConfig(bits=2, ste=s))(x) for s in list_stes()]
    assert all(torch.equal(outs[0], o) for o in outs[1:])


def test_register_ste_with_one_decorator():
    @register_ste("test_tanh")
    class TanhSTE(QuantSTE):
        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(inputs[0])

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return grad * (1 - torch.tanh(x) ** 2), None, None

    assert "test_tanh" in list_stes()
    x = torch.tensor([0.0, 1.0], requires_grad=True)
    QuantAct(ActQuantConfig(bits=2, ste="test_tanh"))(x).sum().backward()
    assert x.grad.tolist() == pytest.approx([1.0, 1 - torch.tanh(torch.tensor(1.0)).item() ** 2])
    with pytest.raises(TypeError, match="must subclass QuantSTE"):
        register_ste("bad")(object)


def test_bad_config_errors_name_the_field():
    with pytest.raises(ValueError, match="ste must be one of .* but got ste='nope'"):
        ActQuantConfig(bits=2, ste="nope")
    for bad in (0, 9, "3.5", "x", True, 2.5):
        with pytest.raises(ValueError, match="bits must be in 1..8 or 'float'"):
            parse_bits(bad)
    assert parse_bits("float") == "float" and parse_bits("4") == 4
    with pytest.raises(ValueError, match="alpha must be > 0"):
        ActQuantConfig(bits=2, alpha=0.0)


def test_saturation_rate_counts_inputs_above_top():
    act = QuantAct(ActQuantConfig(bits=2, alpha=0.5))  # top = 1.5
    act.track_saturation = True
    act(torch.tensor([0.0, 1.0, 1.5, 2.0, 3.0]))
    assert act.saturation() == pytest.approx(2 / 5)
