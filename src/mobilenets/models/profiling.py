"""Resource counts as the papers report them: parameters, multiply-adds, and where they go.

Counting conventions (those of the papers' tables and of torchvision's/timm's counts): parameters are trainable tensors (BN affine included, running
statistics not); MACs are the multiply-adds of convolutions and linear layers for one image. The
layer-type breakdown reproduces MobileNet v1 Table 2 (weights of conv/linear layers only, as the
paper counts them).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

LAYER_TYPES = ("conv_1x1", "depthwise", "full_conv", "fully_connected")

# The widest model ``profile`` builds: above it the weights no longer fit a machine's memory (the widest
# published MobileNet is 1.4). Input sizes are bounded by models.preprocessing.check_resolution.
MAX_WIDTH = 4.0
# The most classes ``profile`` builds: a 1,280-wide head over 100,000 classes already holds 128 M weights.
MAX_NUM_CLASSES = 100_000


def check_width(width: float, option: str = "--width", *, at_most: float = MAX_WIDTH) -> float:
    """``width`` if it is a usable width multiplier α (finite, > 0, ≤ ``at_most``), else one line."""
    from mobilenets.core.errors import MobilenetsError

    if not 0 < width <= at_most:  # NaN fails this too
        raise MobilenetsError(
            f"{option} {width:g}: the width multiplier must be > 0 and at most {at_most:g} (e.g. 0.5, 0.75, 1.0)"
        )
    return width


def layer_type(module: nn.Module) -> str | None:
    if isinstance(module, nn.Linear):
        return "fully_connected"
    if isinstance(module, nn.Conv2d):
        if module.groups == module.in_channels and module.groups > 1:
            return "depthwise"
        if module.kernel_size == (1, 1):
            return "conv_1x1"
        return "full_conv"
    return None


@dataclass
class Profile:
    model: str
    width: float
    resolution: int
    num_classes: int
    params: int
    macs: int
    fp32_bytes: int
    int8_bytes: int
    macs_by_type: dict[str, int] = field(default_factory=dict)
    weights_by_type: dict[str, int] = field(default_factory=dict)

    def share(self, kind: str) -> tuple[float, float]:
        """(MAC share, parameter share) of a layer type, as fractions — Table 2's two columns."""
        total_weights = sum(self.weights_by_type.values())
        return self.macs_by_type[kind] / self.macs, self.weights_by_type[kind] / total_weights

    def to_dict(self) -> dict:
        data = asdict(self)
        data["shares"] = {kind: dict(zip(("macs", "params"), self.share(kind), strict=True)) for kind in LAYER_TYPES}
        return data


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def profile_model(model: nn.Module, resolution: int = 224) -> Profile:
    """Count parameters and MACs of ``model`` on one ``resolution``×``resolution`` RGB image."""
    macs_by_type = dict.fromkeys(LAYER_TYPES, 0)
    weights_by_type = dict.fromkeys(LAYER_TYPES, 0)
    hooks = []

    def count(module: nn.Module, _inputs, output: torch.Tensor) -> None:
        kind = layer_type(module)
        if isinstance(module, nn.Conv2d):
            kernel_h, kernel_w = module.kernel_size
            per_output = module.in_channels // module.groups * kernel_h * kernel_w
            macs_by_type[kind] += output.numel() // output.shape[0] * per_output
        else:
            macs_by_type[kind] += module.in_features * module.out_features

    for module in model.modules():
        kind = layer_type(module)
        if kind is not None:
            weights_by_type[kind] += module.weight.numel()
            hooks.append(module.register_forward_hook(count))
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, 3, resolution, resolution))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    params = count_parameters(model)
    architecture = getattr(model, "architecture", None)
    tensors = sum(t.numel() for t in model.state_dict().values() if t.is_floating_point())
    return Profile(
        model=architecture.name if architecture else type(model).__name__,
        width=architecture.options.get("width", 1.0) if architecture else 1.0,
        resolution=resolution,
        num_classes=getattr(model, "num_classes", 0),
        params=params,
        macs=sum(macs_by_type.values()),
        fp32_bytes=4 * tensors,
        # int8 deployment: conv/linear weights in one byte (BN folded away), biases and scales in fp32.
        int8_bytes=sum(weights_by_type.values()) + 4 * 2 * sum(_output_channels(model)),
        macs_by_type=macs_by_type,
        weights_by_type=weights_by_type,
    )


def _output_channels(model: nn.Module) -> list[int]:
    """Per-output-channel fp32 values that survive int8 conversion: a bias and a scale each."""
    return [m.weight.shape[0] for m in model.modules() if layer_type(m) is not None]


def profile_grid(
    name: str,
    widths: tuple[float, ...] = (1.0, 0.75, 0.5, 0.25),
    resolutions: tuple[int, ...] = (224, 192, 160, 128),
    num_classes: int = 1000,
    **options,
) -> list[Profile]:
    """The α × ρ table of the v1 paper (Tables 6/7): one profile per width and resolution."""
    from mobilenets.models.factory import create_model

    profiles = []
    for width in widths:
        model = create_model(name, num_classes=num_classes, width=width, **options)
        profiles.extend(profile_model(model, resolution) for resolution in resolutions)
    return profiles
