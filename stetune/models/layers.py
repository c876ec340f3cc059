"""Building blocks shared by the model families."""

from torch import nn

from ..quant import ActQuantConfig, make_activation

__all__ = ["bn_act"]


def bn_act(i: int, channels: int, act: ActQuantConfig, dims: int = 2) -> list[tuple[str, nn.Module]]:
    """Named (bn{i}, act{i}): BatchNorm without scale and shift, then the activation. The paper's
    modified BN keeps each quantizer's input near unit Gaussian, where Lloyd-Max alpha is optimal."""
    bn = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
    return [(f"bn{i}", bn(channels, affine=False)), (f"act{i}", make_activation(act))]
