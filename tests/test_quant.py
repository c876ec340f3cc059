"""Quantizer, Lloyd-Max resolution and STE gradients against REFERENCE.md section 1."""

import pytest
import torch

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


def test_lloyd_alpha_is_a_stationary_point_of_the_mse():
    # d/da E[(X - Q_a(X))^2] = 0 at the returned alpha: check numerically on a fine grid
    x = torch.linspace(0, 8, 400_001, dtype=torch.float64)
    w = 2 * torch.exp(-x**2 / 2) / (2 * torch.pi) ** 0.5  # half-normal density
    for bits in (1, 2, 3, 4):
        L = 2**bits - 1

        def mse(a):
            q = a * torch.clamp(torch.round(x / a), 0, L)
            return torch.trapezoid((x - q) ** 2 * w, x).item()

        a = lloyd_alpha(bits)
        assert mse(a) < mse(a * 1.01) and mse(a) < mse(a * 0.99)


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
