"""ResNet-20 for CIFAR (He et al. 2016, section 4.2): 3 stages x 3 basic blocks of 16/32/64
channels, parameter-free shortcuts (option A), BN (no affine) before every activation."""

import torch
import torch.nn.functional as F
from torch import nn

from ..quant import ActQuantConfig, make_activation
from .registry import register_model

__all__ = ["resnet20", "BasicBlock"]


class ShortcutA(nn.Module):
    """Option A: subsample by 2 and zero-pad the new channels (no parameters)."""

    def __init__(self, extra_channels: int):
        super().__init__()
        self.pad = extra_channels // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, act: ActQuantConfig):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1, self.act1 = nn.BatchNorm2d(cout, affine=False), make_activation(act)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2, self.act2 = nn.BatchNorm2d(cout, affine=False), make_activation(act)
        self.shortcut = ShortcutA(cout - cin) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        # out-of-place add: a saved activation output must not be modified in place
        return self.act2(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNetCifar(nn.Module):
    def __init__(self, depth: int, act: ActQuantConfig, num_classes: int, in_channels: int):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"depth must be 6n+2, but got {depth=}")
        n = (depth - 2) // 6
        self.conv = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn, self.act = nn.BatchNorm2d(16, affine=False), make_activation(act)
        blocks, cin = [], 16
        for stage, cout in enumerate((16, 32, 64)):
            for i in range(n):
                blocks.append(BasicBlock(cin, cout, 2 if stage and i == 0 else 1, act))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.act(self.bn(self.conv(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# paper Table 2: 200 epochs, batch 128, lr 0.01, decay at 80 and 140
@register_model(epochs=200, batch_size=128, lr=0.01, milestone_fracs=(0.4, 0.7), input_size=(3, 32, 32),
                title="ResNet-20")
def resnet20(act: ActQuantConfig, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return ResNetCifar(20, act, num_classes, in_channels)
