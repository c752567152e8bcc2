"""Model registry: ``create_model(name, ...)`` and ``list_models()``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from mobilenets.models.architectures import (
    Architecture,
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


