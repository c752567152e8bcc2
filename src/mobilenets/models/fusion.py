"""Folding BatchNorm into the convolution before it (inference and int8)."""

from __future__ import annotations

import copy

from torch import nn


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every Conv→BN pair merged into one biased conv (what the exporter does)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    from mobilenets.models.layers import ConvBNAct

    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        if isinstance(module, ConvBNAct) and isinstance(module.bn, nn.BatchNorm2d):
            module.conv = fuse_conv_bn_eval(module.conv, module.bn)
            module.bn = nn.Identity()
    return folded
