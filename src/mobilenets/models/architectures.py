"""The MobileNet family as data: one table per model, rows as in the papers, one builder.

Tables hold absolute channel widths at width multiplier 1.0, exactly as printed in the papers:

- MobileNet v1: Howard et al. 2017, Table 1 (rows as depthwise-separable pairs).
- MobileNetV2: Sandler et al. 2018, Table 2 (``t, c, n, s`` rows).
- MobileNetV3: Howard et al. 2019, Tables 1 (Large) and 2 (Small) (``kernel, exp size, #out, SE, NL, s``).

Width multipliers follow each paper's own rounding: v1 uses ``int(c·α)``; V2/V3 round to multiples
of 8 (``make_divisible``). The builder turns scaled rows into the blocks in ``layers.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from torch import nn

from mobilenets.core.errors import ModelArgumentError
from mobilenets.models.layers import ConvBNAct, DepthwiseSeparable, InvertedResidual, make_activation, make_divisible
from mobilenets.models.metadata import ModelMetadata

# --------------------------------------------------------------------------------------------------
# Paper rows
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeparableRow:
    """MobileNet v1 Table 1: a ``Conv dw / s`` row followed by its ``Conv 1×1`` row."""

    out_channels: int
    stride: int


@dataclass(frozen=True)
class BottleneckRow:
    """MobileNetV2 Table 2: expansion ``t``, output channels ``c``, repeats ``n``, first stride ``s``."""

    t: int
    c: int
    n: int
    s: int


@dataclass(frozen=True)
class BneckRow:
    """MobileNetV3 Tables 1–2: ``bneck k×k``, exp size, #out, SE, NL, s."""

    kernel: int
    exp_size: int
    out: int
    se: bool
    nl: Literal["relu", "hardswish"]
    s: int


MOBILENET_V1_STEM = 32  # Conv / s2, 3×3×3×32
MOBILENET_V1_ROWS = (
    SeparableRow(64, 1),
    SeparableRow(128, 2),
    SeparableRow(128, 1),
    SeparableRow(256, 2),
    SeparableRow(256, 1),
    SeparableRow(512, 2),
    *[SeparableRow(512, 1)] * 5,  # "5×" rows at 14×14×512
    SeparableRow(1024, 2),
    # Table 1 prints s2 here, but the feature map stays 7×7 (the next row is "Avg Pool 7×7"), and every
    # reference implementation uses stride 1.
    SeparableRow(1024, 1),
)

MOBILENET_V2_STEM = 32
MOBILENET_V2_ROWS = (
    BottleneckRow(t=1, c=16, n=1, s=1),
    BottleneckRow(t=6, c=24, n=2, s=2),
    BottleneckRow(t=6, c=32, n=3, s=2),
    BottleneckRow(t=6, c=64, n=4, s=2),
    BottleneckRow(t=6, c=96, n=3, s=1),
    BottleneckRow(t=6, c=160, n=3, s=2),
    BottleneckRow(t=6, c=320, n=1, s=1),
)
MOBILENET_V2_LAST_CONV = 1280

MOBILENET_V3_LARGE_STEM = 16
MOBILENET_V3_LARGE_ROWS = (
    BneckRow(3, 16, 16, False, "relu", 1),
    BneckRow(3, 64, 24, False, "relu", 2),
    BneckRow(3, 72, 24, False, "relu", 1),
    BneckRow(5, 72, 40, True, "relu", 2),
    BneckRow(5, 120, 40, True, "relu", 1),
    BneckRow(5, 120, 40, True, "relu", 1),
    BneckRow(3, 240, 80, False, "hardswish", 2),
    BneckRow(3, 200, 80, False, "hardswish", 1),
    BneckRow(3, 184, 80, False, "hardswish", 1),
    BneckRow(3, 184, 80, False, "hardswish", 1),
    BneckRow(3, 480, 112, True, "hardswish", 1),
    BneckRow(3, 672, 112, True, "hardswish", 1),
    BneckRow(5, 672, 160, True, "hardswish", 2),
    BneckRow(5, 960, 160, True, "hardswish", 1),
    BneckRow(5, 960, 160, True, "hardswish", 1),
)
MOBILENET_V3_LARGE_LAST_CONV = 960  # conv2d 1×1, NBN
MOBILENET_V3_LARGE_HEAD = 1280  # pool, then conv2d 1×1 NBN (a linear layer on the pooled vector)

MOBILENET_V3_SMALL_STEM = 16
MOBILENET_V3_SMALL_ROWS = (
    BneckRow(3, 16, 16, True, "relu", 2),
    BneckRow(3, 72, 24, False, "relu", 2),
    BneckRow(3, 88, 24, False, "relu", 1),
    BneckRow(5, 96, 40, True, "hardswish", 2),
    BneckRow(5, 240, 40, True, "hardswish", 1),
    BneckRow(5, 240, 40, True, "hardswish", 1),
    BneckRow(5, 120, 48, True, "hardswish", 1),
    BneckRow(5, 144, 48, True, "hardswish", 1),
    BneckRow(5, 288, 96, True, "hardswish", 2),
    BneckRow(5, 576, 96, True, "hardswish", 1),
    BneckRow(5, 576, 96, True, "hardswish", 1),
)
MOBILENET_V3_SMALL_LAST_CONV = 576
MOBILENET_V3_SMALL_HEAD = 1024


def minimal(row: BneckRow) -> BneckRow:
    """The "minimal" V3 variant of a row: no SE, no hard-swish, 3×3 kernels (for hardware without them)."""
    return replace(row, kernel=3, se=False, nl="relu")


# --------------------------------------------------------------------------------------------------
# Scaled, concrete blocks: what the builder consumes
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConvSpec:
    """A plain ConvBNAct (stem, V1 full-convolution ablation, V2/V3 last 1×1 conv)."""

    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    activation: str | None


@dataclass(frozen=True)
class SeparableSpec:
    in_channels: int
    out_channels: int
    stride: int
    activation: str


@dataclass(frozen=True)
class BottleneckSpec:
    in_channels: int
    expanded_channels: int
    out_channels: int
    kernel: int
    stride: int
    activation: str
    squeeze_channels: int | None


BlockSpec = ConvSpec | SeparableSpec | BottleneckSpec


@dataclass(frozen=True)
class Architecture:
    """Everything the builder needs; also what profiling and weight metadata describe."""

    name: str
    stem: ConvSpec
    blocks: tuple[BlockSpec, ...]
    last_conv: ConvSpec | None = None
    head_hidden: int | None = None
    head_activation: str | None = None
    dropout: float = 0.2
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1
    options: dict = field(default_factory=dict)


def mobilenet_v1_architecture(
    width: float = 1.0,
    block: Literal["separable", "full_conv"] = "separable",
    remove_14x14_rows: bool = False,
    activation: str = "relu",
    dropout: float = 0.0,
    bn_eps: float = 1e-5,
) -> Architecture:
    """MobileNet v1 (Table 1). ``block="full_conv"`` is Table 4's full-convolution baseline;
    ``remove_14x14_rows`` is Table 5's "shallow" network (the five 14×14×512 rows removed)."""
    if block not in ("separable", "full_conv"):
        raise ModelArgumentError(f"block {block!r}: choose 'separable' (the paper's) or 'full_conv' (Table 4)")
    if int(MOBILENET_V1_STEM * width) < 1:  # int() rounds down: a narrower stem has no channel at all
        raise ModelArgumentError(
            f"width {width!r}: too narrow for MobileNet v1 (its {MOBILENET_V1_STEM}-channel stem keeps none); "
            f"give width ≥ {1 / MOBILENET_V1_STEM:g}"
        )

    def scale(channels: int) -> int:
        return int(channels * width)  # the paper's (and Keras') rounding

    rows = list(MOBILENET_V1_ROWS)
    if remove_14x14_rows:
        first_repeat = rows.index(SeparableRow(512, 1))
        del rows[first_repeat : first_repeat + 5]
    in_channels = scale(MOBILENET_V1_STEM)
    stem = ConvSpec(3, in_channels, 3, 2, activation)
    blocks: list[BlockSpec] = []
    for row in rows:
        out = scale(row.out_channels)
        if block == "full_conv":
            blocks.append(ConvSpec(in_channels, out, 3, row.stride, activation))
        else:
            blocks.append(SeparableSpec(in_channels, out, row.stride, activation))
        in_channels = out
    return Architecture(name="mobilenet_v1", stem=stem, blocks=tuple(blocks), dropout=dropout, bn_eps=bn_eps)


def mobilenet_v2_architecture(width: float = 1.0, dropout: float = 0.2, bn_eps: float = 1e-5) -> Architecture:
    """MobileNetV2 (Table 2). The last 1×1 conv keeps 1280 channels below width 1 (paper §6.1)."""
    in_channels = make_divisible(MOBILENET_V2_STEM * width)
    stem = ConvSpec(3, in_channels, 3, 2, "relu6")
    blocks: list[BlockSpec] = []
    for row in MOBILENET_V2_ROWS:
        out = make_divisible(row.c * width)
        for i in range(row.n):
            expanded = round(in_channels * row.t)
            stride = row.s if i == 0 else 1
            blocks.append(BottleneckSpec(in_channels, expanded, out, 3, stride, "relu6", None))
            in_channels = out
    last = make_divisible(MOBILENET_V2_LAST_CONV * max(1.0, width))
    return Architecture(
        name="mobilenet_v2",
        stem=stem,
        blocks=tuple(blocks),
        last_conv=ConvSpec(in_channels, last, 1, 1, "relu6"),
        dropout=dropout,
        bn_eps=bn_eps,
    )


def mobilenet_v3_architecture(
    size: Literal["small", "large"],
    width: float = 1.0,
    is_minimal: bool = False,
    convention: Literal["tf", "torchvision"] = "tf",
    dropout: float = 0.2,
    bn_eps: float = 1e-3,
    bn_momentum: float = 0.01,
) -> Architecture:
    """MobileNetV3-Small/Large (Tables 1–2), optionally "minimal".

    ``convention`` decides two roundings that only matter below width 1:

    - "tf" (default; the paper's TF models and timm): the pooled head keeps 1280/1024 channels, and
      each expansion is the paper's ratio (exp size / input) applied to the *scaled* input width.
    - "torchvision": the head is scaled with the width, and each exp size is scaled directly.

    BN defaults follow TF (eps 1e-3, momentum 0.01 in PyTorch's convention = TF's decay 0.99).
    """
    if convention not in ("tf", "torchvision"):
        raise ModelArgumentError(f"convention {convention!r}: choose 'tf' (the paper's and timm's) or 'torchvision'")
    if size == "large":
        stem_channels, rows = MOBILENET_V3_LARGE_STEM, MOBILENET_V3_LARGE_ROWS
        last_conv, head = MOBILENET_V3_LARGE_LAST_CONV, MOBILENET_V3_LARGE_HEAD
    else:
        stem_channels, rows = MOBILENET_V3_SMALL_STEM, MOBILENET_V3_SMALL_ROWS
        last_conv, head = MOBILENET_V3_SMALL_LAST_CONV, MOBILENET_V3_SMALL_HEAD
    if is_minimal:
        rows = tuple(minimal(row) for row in rows)
    activation = "relu" if is_minimal else "hardswish"
    in_channels = make_divisible(stem_channels * width)
    stem = ConvSpec(3, in_channels, 3, 2, activation)
    blocks: list[BlockSpec] = []
    paper_in_channels = stem_channels
    for row in rows:
        if convention == "tf":
            expanded = make_divisible(in_channels * row.exp_size / paper_in_channels)
        else:
            expanded = make_divisible(row.exp_size * width)
        out = make_divisible(row.out * width)
        paper_in_channels = row.out
        squeeze = make_divisible(expanded // 4) if row.se else None
        blocks.append(BottleneckSpec(in_channels, expanded, out, row.kernel, row.s, row.nl, squeeze))
        in_channels = out
    last = make_divisible(last_conv * width)
    head_width = head * width if convention == "torchvision" else head * max(1.0, width)
    name = f"mobilenet_v3_{size}" + ("_minimal" if is_minimal else "")
    return Architecture(
        name=name,
        stem=stem,
        blocks=tuple(blocks),
        last_conv=ConvSpec(in_channels, last, 1, 1, activation),
        head_hidden=make_divisible(head_width),
        head_activation=activation,
        dropout=dropout,
        bn_eps=bn_eps,
        bn_momentum=bn_momentum,
    )


# --------------------------------------------------------------------------------------------------
# The builder
# --------------------------------------------------------------------------------------------------


def build_block(spec: BlockSpec, bn_eps: float, bn_momentum: float) -> nn.Module:
    norm = {"bn_eps": bn_eps, "bn_momentum": bn_momentum}
    if isinstance(spec, ConvSpec):
        return ConvBNAct(
            spec.in_channels,
            spec.out_channels,
            kernel_size=spec.kernel,
            stride=spec.stride,
            activation=spec.activation,
            **norm,
        )
    if isinstance(spec, SeparableSpec):
        return DepthwiseSeparable(
            spec.in_channels, spec.out_channels, stride=spec.stride, activation=spec.activation, **norm
        )
    return InvertedResidual(
        spec.in_channels,
        spec.expanded_channels,
        spec.out_channels,
        kernel_size=spec.kernel,
        stride=spec.stride,
        activation=spec.activation,
        squeeze_channels=spec.squeeze_channels,
        **norm,
    )


class MobileNet(nn.Module):
    """Any member of the family, built from an ``Architecture``.

    API (timm-style): ``forward_features`` (last feature map), ``forward_head`` (pool → [hidden] →
    classifier), ``reset_classifier``, and ``forward_feature_maps`` with ``feature_info`` for use as a
    detection/segmentation backbone.
    """

    def __init__(self, architecture: Architecture, num_classes: int = 1000) -> None:
        check_num_classes(num_classes)
        super().__init__()
        self.architecture = architecture
        norm = {"bn_eps": architecture.bn_eps, "bn_momentum": architecture.bn_momentum}
        self.stem = build_block(architecture.stem, **norm)
        self.blocks = nn.Sequential(*(build_block(spec, **norm) for spec in architecture.blocks))
        self.last_conv = build_block(architecture.last_conv, **norm) if architecture.last_conv else nn.Identity()
        features = (architecture.last_conv or architecture.blocks[-1]).out_channels
        if architecture.head_hidden:
            # V3's "conv2d 1×1, NBN" after pooling: a linear layer with bias on the pooled vector.
            self.head_hidden = nn.Linear(features, architecture.head_hidden)
            self.head_activation = make_activation(architecture.head_activation)
            features = architecture.head_hidden
        else:
            self.head_hidden = nn.Identity()
            self.head_activation = nn.Identity()
        self.num_features = features
        self.dropout = nn.Dropout(architecture.dropout)
        self.num_classes = num_classes
        self.classifier = nn.Linear(features, num_classes) if num_classes else nn.Identity()
        self.feature_info = self._describe_feature_levels()
        self.metadata = ModelMetadata(architecture=architecture.name, options=dict(architecture.options))
        self._init_weights()

    @property
    def weights_metadata(self) -> dict:
        """``metadata`` as a plain dict (the form files hold); prefer ``metadata``."""
        return self.metadata.to_dict()

    @weights_metadata.setter
    def weights_metadata(self, value: dict) -> None:
        self.metadata = ModelMetadata.from_dict(value)

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.zeros_(module.bias)

    def _describe_feature_levels(self) -> list[dict]:
        """One level per output stride: the last block before each downsampling, and the final map."""
        specs = [self.architecture.stem, *self.architecture.blocks]
        stride, levels = 1, []
        for index, spec in enumerate(specs):
            stride *= spec.stride
            next_downsamples = index + 1 == len(specs) or specs[index + 1].stride > 1
            if next_downsamples:
                levels.append({"block": index - 1, "reduction": stride, "channels": spec.out_channels})
        if self.architecture.last_conv is not None:
            levels[-1] = {
                "block": "last_conv",
                "reduction": stride,
                "channels": self.architecture.last_conv.out_channels,
            }
        return levels

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_conv(self.blocks(self.stem(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(x.mean((2, 3)), 1)
        x = self.head_activation(self.head_hidden(x))
        x = self.dropout(x)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps at every output stride (2, 4, 8, 16, 32), for detection/segmentation necks."""
        wanted = {level["block"] for level in self.feature_info}
        maps = []
        x = self.stem(x)
        if -1 in wanted:
            maps.append(x)
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in wanted:
                maps.append(x)
        if "last_conv" in wanted:
            maps.append(self.last_conv(x))
        return maps

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier for ``num_classes`` classes (0 = no classifier, pooled features out)."""
        check_num_classes(num_classes)
        self.num_classes = num_classes
        self.classifier = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        if num_classes:
            nn.init.normal_(self.classifier.weight, 0, 0.01)
            nn.init.zeros_(self.classifier.bias)


def check_num_classes(num_classes: object) -> None:
    """A number of classes is a whole number ≥ 0 (0: no classifier); torch's own errors for -1, 10.0 or "10"
    name a tensor shape, not the argument."""
    if not (isinstance(num_classes, int) and not isinstance(num_classes, bool) and num_classes >= 0):
        raise ModelArgumentError(
            f"num_classes {num_classes!r}: give a whole number ≥ 0 (the classifier's outputs; 0 builds no "
            "classifier), e.g. num_classes=10"
        )
