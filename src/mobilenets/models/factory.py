"""``create_model``: a MobileNet by name, optionally with weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mobilenets.models.architectures import MobileNet
from mobilenets.models.registry import get_architecture


def create_model(
    name: str,
    num_classes: int | None = None,
    width: float | None = None,
    weights: str | Path | None = None,
    **options: Any,
) -> MobileNet:
    """Build a MobileNet by name; optionally load weights.

    ``weights`` is a path (our safetensors format, a torchvision or a timm checkpoint of the same
    architecture; layouts are converted and shapes checked) or a name from ``list_weights()``.
    ``num_classes`` defaults to the checkpoint's (1000 without weights); when it differs from the
    checkpoint's, the backbone is loaded and a fresh classifier is made (fine-tuning); 0 builds no classifier.
    ``width`` defaults to the checkpoint's (a published name's, or the one our format records), else 1.0.
    ``options`` are the architecture's own (e.g. ``dropout``). An unknown name, width, option or ``num_classes``
    raises ``ModelArgumentError`` (a ``MobilenetsError``, and a ``ValueError`` as before); a ``weights`` that is
    not a name or a path, ``WeightsError``.
    """
    if weights is None:
        architecture = get_architecture(name, 1.0 if width is None else width, **options)
        return MobileNet(architecture, 1000 if num_classes is None else num_classes)
    from mobilenets.models.weights import load_model

    return load_model(weights, name=name, width=width, num_classes=num_classes, **options)
