"""LeNet-5 for 28x28 inputs, the paper's variant: BN (no affine) before every activation."""

from collections import OrderedDict

from torch import nn

from ..quant import ActQuantConfig
from .layers import bn_act
from .registry import register_model

__all__ = ["lenet5"]


# paper Table 2: 50 epochs, batch 64, lr 0.1, decay at 20 and 40
@register_model(epochs=50, batch_size=64, lr=0.1, milestone_fracs=(0.4, 0.8), input_size=(1, 28, 28),
                title="LeNet-5")
def lenet5(act: ActQuantConfig, num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    # no bias before a BN: it would be removed by the BN's centring anyway
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(in_channels, 6, 5, padding=2, bias=False)), *bn_act(1, 6, act),
        ("pool1", nn.MaxPool2d(2)),                                                 # 14x14
        ("conv2", nn.Conv2d(6, 16, 5, bias=False)), *bn_act(2, 16, act),
        ("pool2", nn.MaxPool2d(2)),                                                 # 5x5
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(16 * 5 * 5, 120, bias=False)), *bn_act(3, 120, act, dims=1),
        ("fc2", nn.Linear(120, 84, bias=False)), *bn_act(4, 84, act, dims=1),
        ("fc3", nn.Linear(84, num_classes)),
    ]))
