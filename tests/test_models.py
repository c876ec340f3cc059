"""Every model x {float, 2, 4 bits} x every STE builds, runs forward/backward, and shares its
state_dict layout with its float twin."""

import pytest
import torch
from torch import nn

from stetune.models import create_model, list_models
from stetune.quant import ActQuantConfig, QuantAct, quantize_activations_, set_ste_

SHAPES = {"lenet5": (1, 28, 28), "vgg11": (3, 32, 32), "resnet20": (3, 32, 32)}
ACTIVATIONS = {"lenet5": 4, "vgg11": 8, "resnet20": 19}


def test_registry_lists_the_paper_models():
    assert set(list_models()) == {"lenet5", "vgg11", "resnet20"}
    with pytest.raises(ValueError, match="model must be one of .* but got model='resnet18'"):
        create_model("resnet18")


@pytest.mark.parametrize("name", sorted(SHAPES))
@pytest.mark.parametrize("bits,ste", [("float", "clipped_relu")]  # float ignores the STE
                         + [(b, s) for b in (2, 4) for s in ("identity", "relu", "clipped_relu")])
def test_forward_backward_shapes(name, bits, ste):
    torch.manual_seed(0)
    model = create_model(name, bits=bits, ste=ste, num_classes=7)
    x = torch.randn(3, *SHAPES[name])
    out = model(x)
    assert out.shape == (3, 7)
    out.sum().backward()
    assert all(p.grad is not None and p.grad.shape == p.shape for p in model.parameters())
    quant = [m for m in model.modules() if isinstance(m, QuantAct)]
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert len(quant if bits != "float" else relus) == ACTIVATIONS[name]
    assert all(m.affine is False for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_float_checkpoint_loads_into_quantized_model(name, tmp_path):
    torch.manual_seed(0)
    fp = create_model(name, bits="float")
    fp.train()
    fp(torch.randn(4, *SHAPES[name]))  # move BN running stats off their init
    torch.save(fp.state_dict(), tmp_path / "fp.pt")
    q = create_model(name, bits=2, ste="relu")
    q.load_state_dict(torch.load(tmp_path / "fp.pt"))  # strict: every key matches
    for k, v in fp.state_dict().items():
        assert torch.equal(v, q.state_dict()[k])


def test_quantize_activations_in_place_matches_fresh_build():
    torch.manual_seed(0)
    model = create_model("resnet20", bits="float")
    quantize_activations_(model, ActQuantConfig(bits=4, ste="identity"))
    acts = [m for m in model.modules() if isinstance(m, QuantAct)]
    assert len(acts) == ACTIVATIONS["resnet20"] and {m.ste for m in acts} == {"identity"}
    set_ste_(model, "relu")
    assert {m.ste for m in acts} == {"relu"}
    torch.manual_seed(0)
    fresh = create_model("resnet20", bits=4, ste="relu").eval()
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x), fresh(x))


def test_quantized_outputs_lie_on_levels():
    model = create_model("lenet5", bits=2).eval()
    seen = []
    model.act1.register_forward_hook(lambda m, i, o: seen.append(o))
    model(torch.randn(2, 1, 28, 28))
    levels = torch.arange(4) * model.act1.alpha
    assert torch.isin(seen[0], levels.float()).all()
