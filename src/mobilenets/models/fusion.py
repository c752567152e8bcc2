"""Folding BatchNorm into the convolution before it, for inference, export and int8.

y = γ·(Wx − μ)/σ + β is one convolution with weights γW/σ and bias β − γμ/σ: one pass over the
activations instead of two, and the form every runtime and int8 scheme expects.
"""

from __future__ import annotations

import copy

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fold_batchnorm_in_place(model: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm into the convolution before it (any module whose children are named
    ``conv``/``bn``, as ``ConvBNAct``'s are); returns ``model``."""
    for module in model.modules():
        conv, bn = getattr(module, "conv", None), getattr(module, "bn", None)
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            module.conv = fuse_conv_bn_eval(conv.eval(), bn.eval())
            module.bn = nn.Identity()
    return model


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with every Conv→BN pair merged into one biased conv."""
    return fold_batchnorm_in_place(copy.deepcopy(model).eval())
