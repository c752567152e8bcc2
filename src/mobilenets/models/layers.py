"""The building blocks shared by every MobileNet: one implementation of each.

- ``ConvBNAct``: convolution → BatchNorm → optional activation (every conv of every family).
- ``DepthwiseSeparable``: MobileNet v1's block (paper Fig. 3): 3×3 depthwise, then 1×1 pointwise,
  each followed by BN and the activation.
- ``InvertedResidual``: MobileNetV2/V3's bottleneck: optional 1×1 expansion, k×k depthwise, optional
  squeeze-and-excitation, linear 1×1 projection, residual when shapes allow.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

# An execution mode is chosen by setting these attributes, never by replacing ``forward``:
# ``training_kernel``: a function ``(module, x) -> y`` that computes the block in training mode (the fused
# C++ kernels of ``mobilenets.kernels`` set it; ``None`` is PyTorch's own ops); ``depthwise_in_float32``:
# run a depthwise convolution outside autocast (bf16 depthwise backward is slow on CPUs).
TrainingKernel = Callable[[nn.Module, torch.Tensor], torch.Tensor]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "hardswish": nn.Hardswish,
}


def make_activation(name: str | None) -> nn.Module:
    if name is None:
        return nn.Identity()
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name](inplace=True)


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to a multiple of ``divisor`` without losing more than 10% of it.

    MobileNetV2/V3 round widths this way so that channel counts suit SIMD lanes and accelerators.
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class ConvBNAct(nn.Sequential):
    """Convolution (no bias: BatchNorm follows) → BatchNorm → activation.

    Children are named ``conv``/``bn``/``act`` so that fusion and quantization tools find them by name.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        activation: str | None = "relu",
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=(kernel_size - 1) // 2,
            groups=groups,
            bias=False,
        )
        self.bn = nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum)
        self.act = make_activation(activation)
        self.training_kernel: TrainingKernel | None = None
        self.depthwise_in_float32 = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training_kernel is not None and self.training:
            return self.training_kernel(self, x)
        if self.depthwise_in_float32 and torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                return self.act(self.bn(self.conv(x.float())))
        return self.act(self.bn(self.conv(x)))


class SqueezeExcitation(nn.Module):
    """Channel attention of MobileNetV3 (paper §5.3): pool → 1×1 reduce → ReLU → 1×1 expand → hard-sigmoid."""

    def __init__(self, channels: int, squeeze_channels: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeeze_channels, 1)
        self.act = nn.ReLU(inplace=True)
        self.expand = nn.Conv2d(squeeze_channels, channels, 1)
        self.gate = nn.Hardsigmoid(inplace=True)
        self.training_kernel: TrainingKernel | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training_kernel is not None and self.training:
            return self.training_kernel(self, x)
        scale = x.mean((2, 3), keepdim=True)
        scale = self.gate(self.expand(self.act(self.reduce(scale))))
        return x * scale


class DepthwiseSeparable(nn.Module):
    """MobileNet v1 block: a 3×3 depthwise filter per channel, then a 1×1 conv that combines them."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        activation: str = "relu",
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        norm = {"bn_eps": bn_eps, "bn_momentum": bn_momentum}
        self.depthwise = ConvBNAct(
            in_channels, in_channels, kernel_size=3, stride=stride, groups=in_channels, activation=activation, **norm
        )
        self.pointwise = ConvBNAct(in_channels, out_channels, kernel_size=1, activation=activation, **norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class InvertedResidual(nn.Module):
    """MobileNetV2/V3 bottleneck: expand (1×1) → depthwise (k×k) → [SE] → project (1×1, linear).

    The expansion conv is omitted when the expanded width equals the input width (V2's t=1 rows,
    V3's first rows), as in both papers' reference implementations.
    """

    def __init__(
        self,
        in_channels: int,
        expanded_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        activation: str,
        squeeze_channels: int | None = None,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        norm = {"bn_eps": bn_eps, "bn_momentum": bn_momentum}
        self.use_residual = stride == 1 and in_channels == out_channels
        if expanded_channels != in_channels:
            self.expand = ConvBNAct(in_channels, expanded_channels, kernel_size=1, activation=activation, **norm)
        else:
            self.expand = nn.Identity()
        self.depthwise = ConvBNAct(
            expanded_channels,
            expanded_channels,
            kernel_size=kernel_size,
            stride=stride,
            groups=expanded_channels,
            activation=activation,
            **norm,
        )
        if squeeze_channels:
            self.squeeze_excite = SqueezeExcitation(expanded_channels, squeeze_channels)
        else:
            self.squeeze_excite = nn.Identity()
        # Linear bottleneck (V2 paper §3.2): no activation after the projection.
        self.project = ConvBNAct(expanded_channels, out_channels, kernel_size=1, activation=None, **norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.squeeze_excite(self.depthwise(self.expand(x))))
        return x + out if self.use_residual else out
