"""Model registry: every architecture by name, as (paper table builder, its arguments).

Torch-free until a model is built, so that listing models is instant (``mobilenets models``).
"""

from __future__ import annotations

import importlib
from dataclasses import replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mobilenets.models.architectures import Architecture

# name -> (builder in mobilenets.models.architectures, fixed arguments)
ARCHITECTURES: dict[str, tuple[str, dict[str, Any]]] = {
    "mobilenet_v1": ("mobilenet_v1_architecture", {}),
    "mobilenet_v1_full_conv": ("mobilenet_v1_architecture", {"block": "full_conv"}),
    "mobilenet_v1_shallow": ("mobilenet_v1_architecture", {"remove_14x14_rows": True}),
    "mobilenet_v2": ("mobilenet_v2_architecture", {}),
    "mobilenet_v3_small": ("mobilenet_v3_architecture", {"size": "small"}),
    "mobilenet_v3_large": ("mobilenet_v3_architecture", {"size": "large"}),
    "mobilenet_v3_small_minimal": ("mobilenet_v3_architecture", {"size": "small", "is_minimal": True}),
    "mobilenet_v3_large_minimal": ("mobilenet_v3_architecture", {"size": "large", "is_minimal": True}),
}


def list_models() -> list[str]:
    return list(ARCHITECTURES)


def get_architecture(name: str, width: float = 1.0, **options: Any) -> Architecture:
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(ARCHITECTURES)}")
    if not width > 0:
        raise ValueError(f"width must be positive, got {width}")
    builder_name, fixed = ARCHITECTURES[name]
    builder = getattr(importlib.import_module("mobilenets.models.architectures"), builder_name)
    try:
        architecture = builder(width=width, **fixed, **options)
    except TypeError as error:
        raise ValueError(f"{name}: unsupported option ({error})") from None
    return replace(architecture, name=name, options={"width": width, **options})
