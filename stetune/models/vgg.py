"""VGG-11 for 32x32 inputs (CIFAR), BN (no affine) before every activation."""

from collections import OrderedDict

from torch import nn

from ..quant import ActQuantConfig
from .layers import bn_act
from .registry import register_model

__all__ = ["vgg11"]

# channels per conv, "M" a 2x2 max-pool; five pools take 32x32 down to 1x1
VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


# paper Table 2: 200 epochs, batch 128, lr 0.01, decay at 80 and 140
@register_model(epochs=200, batch_size=128, lr=0.01, milestone_fracs=(0.4, 0.7), input_size=(3, 32, 32),
                title="VGG-11")
def vgg11(act: ActQuantConfig, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    layers: list[tuple[str, nn.Module]] = []
    conv = pool = 0
    for v in VGG11:
        if v == "M":
            pool += 1
            layers.append((f"pool{pool}", nn.MaxPool2d(2)))
        else:
            conv += 1
            # no conv bias: the BN right after removes any per-channel shift
            layers += [(f"conv{conv}", nn.Conv2d(in_channels, v, 3, padding=1, bias=False)),
                       *bn_act(conv, v, act)]
            in_channels = v
    layers += [("flatten", nn.Flatten()), ("fc", nn.Linear(512, num_classes))]
    return nn.Sequential(OrderedDict(layers))
