"""Model registry: ``create_model(name, ...)`` and ``list_models()``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from mobilenets.architectures import (
    Architecture,
    MobileNet,
    mobilenet_v1_architecture,
    mobilenet_v2_architecture,
    mobilenet_v3_architecture,
)

ARCHITECTURES: dict[str, Callable[..., Architecture]] = {
    "mobilenet_v1": mobilenet_v1_architecture,
    "mobilenet_v1_full_conv": lambda **kw: mobilenet_v1_architecture(block="full_conv", **kw),
    "mobilenet_v1_shallow": lambda **kw: mobilenet_v1_architecture(remove_14x14_rows=True, **kw),
    "mobilenet_v2": mobilenet_v2_architecture,
    "mobilenet_v3_small": lambda **kw: mobilenet_v3_architecture("small", **kw),
    "mobilenet_v3_large": lambda **kw: mobilenet_v3_architecture("large", **kw),
    "mobilenet_v3_small_minimal": lambda **kw: mobilenet_v3_architecture("small", is_minimal=True, **kw),
    "mobilenet_v3_large_minimal": lambda **kw: mobilenet_v3_architecture("large", is_minimal=True, **kw),
}


def list_models() -> list[str]:
    return list(ARCHITECTURES)


def get_architecture(name: str, width: float = 1.0, **options: Any) -> Architecture:
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(ARCHITECTURES)}")
    if width <= 0:
        raise ValueError(f"width must be positive, got {width}")
    try:
        architecture = ARCHITECTURES[name](width=width, **options)
    except TypeError as error:
        raise ValueError(f"{name}: unsupported option ({error})") from None
    return replace(architecture, name=name, options={"width": width, **options})


def create_model(
    name: str,
    num_classes: int | None = None,
    width: float = 1.0,
    weights: str | Path | None = None,
    **options: Any,
) -> MobileNet:
    """Build a MobileNet by name; optionally load weights.

    ``weights`` is a path (our safetensors format, a torchvision or a timm checkpoint of the same
    architecture; layouts are converted and shapes checked) or a name from ``list_weights()``.
    ``num_classes`` defaults to the checkpoint's (1000 without weights); when it differs from the
    checkpoint's, the backbone is loaded and a fresh classifier is made (fine-tuning).
    """
    if weights is None:
        return MobileNet(get_architecture(name, width, **options), 1000 if num_classes is None else num_classes)
    from mobilenets.weights import load_model

    return load_model(weights, name=name, width=width, num_classes=num_classes, **options)
