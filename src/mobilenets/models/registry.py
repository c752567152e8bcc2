"""Model registry: every architecture by name, as (paper table builder, its arguments).

Torch-free until a model is built, so that listing models is instant (``mobilenets models``).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import math
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from mobilenets.core.errors import ModelArgumentError

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
    """The ``Architecture`` of model ``name`` at ``width``; ``options`` are its builder's (e.g. ``dropout``).

    Raises ``ModelArgumentError`` for an unknown name (naming the closest), a width that is not a number
    > 0, or an option the architecture does not take.
    """
    if not isinstance(name, str) or name not in ARCHITECTURES:
        close = difflib.get_close_matches(name, list(ARCHITECTURES), n=1) if isinstance(name, str) else []
        raise ModelArgumentError(
            f"model {name!r}: no such architecture"
            + (f"; did you mean {close[0]}?" if close else f"; choose one of {', '.join(ARCHITECTURES)}")
        )
    check_width_argument(width)
    builder_name, fixed = ARCHITECTURES[name]
    builder = getattr(importlib.import_module("mobilenets.models.architectures"), builder_name)
    # Checked against the builder's signature rather than by catching its TypeError, which would also hide
    # a TypeError raised inside it.
    accepted = [p for p in inspect.signature(builder).parameters if p != "width" and p not in fixed]
    for key, value in options.items():
        if key not in accepted:
            raise ModelArgumentError(unknown_option(name, key=key, value=value, accepted=accepted, width=width))
    for key, value in options.items():
        check_option(key, value)
    architecture = builder(width=width, **fixed, **options)
    return replace(architecture, name=name, options={"width": width, **options})


def check_option(key: str, value: object) -> None:
    """The builders' numeric and switch options, in their ranges: torch would refuse dropout=2 naming a
    layer, and take bn_eps="x" until the first forward pass."""
    is_number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if key == "dropout" and not (is_number and 0 <= value < 1):
        raise ModelArgumentError(f"dropout={value!r}: give a probability in [0, 1), e.g. dropout=0.2")
    if key == "bn_eps" and not (is_number and value > 0):
        raise ModelArgumentError(f"bn_eps={value!r}: give a small number > 0 (BatchNorm's epsilon), e.g. bn_eps=1e-3")
    if key == "bn_momentum" and not (is_number and 0 < value <= 1):
        raise ModelArgumentError(f"bn_momentum={value!r}: give a number in (0, 1] (PyTorch's convention), e.g. 0.01")
    if key in ("is_minimal", "remove_14x14_rows") and not isinstance(value, bool):
        raise ModelArgumentError(f"{key}={value!r}: give True or False")
    if key == "activation":
        from mobilenets.models.layers import ACTIVATIONS

        if value not in ACTIVATIONS:
            raise ModelArgumentError(f"activation={value!r}: choose one of {', '.join(sorted(ACTIVATIONS))}")


def check_width_argument(width: object) -> None:
    """The ``width`` of the Python API: any finite number > 0 (NaN passes no comparison; ``True`` is no width).
    The command line's flags also have an upper bound (``models.profiling.check_width``)."""
    is_number = isinstance(width, int | float) and not isinstance(width, bool)
    if not (is_number and math.isfinite(width) and width > 0):
        raise ModelArgumentError(
            f"width {width!r}: give a finite number > 0 (the width multiplier; 1.0 is the paper's network), "
            "e.g. width=0.5"
        )


def unknown_option(name: str, *, key: str, value: object, accepted: list[str], width: float = 1.0) -> str:
    """The line refusing ``key=value`` for model ``name``: torchvision's ``pretrained`` gets how weights are
    chosen here (the checkpoints of this ``width``, which alone fit), a misspelt or timm option
    (``drop_rate``) the closest of ``accepted``."""
    if key == "pretrained":
        from mobilenets.models.published import PUBLISHED_WEIGHTS

        published = [w for w in PUBLISHED_WEIGHTS.values() if w.architecture == name]
        fitting = [w.name for w in published if w.width == width]
        if fitting:
            names = f"published for {name} at width {width:g}: {', '.join(fitting)}"
        elif published:
            others = ", ".join(f"{w.name} (width {w.width:g})" for w in published)
            names = f"none is published for {name} at width {width:g}; at other widths: {others}"
        else:
            names = f"none is published for {name}"
        return (
            f"pretrained={value!r}: not an option here; pass weights=NAME, a published name ({names}; all of "
            "them: list_weights()), or weights=PATH, a weights file; without weights= the model is random"
        )
    close = difflib.get_close_matches(key, accepted, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"{key}={value!r}: not an option of {name}{hint}; its options are {', '.join(accepted)}"
