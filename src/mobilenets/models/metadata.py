"""What a model carries beside its tensors: classes (labels), preprocessing, where its weights came from.

``ModelMetadata`` travels on every ``MobileNet`` (``model.metadata``), is saved beside the weights
(``model.json``) and baked into every exported file, so that a model always says which labels its
outputs mean and which pixels it expects.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from functools import cache
from importlib import resources
from typing import Any

from mobilenets.models.preprocessing import Preprocessing

IMAGENET = "imagenet"  # ``classes`` of a checkpoint assumed to be ImageNet's 1,000-way head


@cache
def imagenet_classes() -> list[str]:
    text = resources.files("mobilenets.models").joinpath("imagenet_classes.txt").read_text()
    return text.splitlines()


@dataclass
class ModelMetadata:
    """Labels, preprocessing and provenance of a model's weights."""

    classes: list[str] | str | None = None  # names in output order; "imagenet"; None when unknown
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    architecture: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    path: str | None = None  # the file the weights were read from
    layout: str | None = None  # mobilenets, torchvision or timm
    published: str | None = None  # a published checkpoint's name
    top1: float | None = None  # its published ImageNet accuracy
    training: dict[str, Any] | None = None  # what the training run recorded (epoch, val accuracy)
    extra: dict[str, Any] = field(default_factory=dict)  # any other key found in a metadata file

    def labels(self, num_classes: int) -> list[str]:
        """Class names for ``num_classes`` outputs: the model's own, ImageNet's for a 1,000-way head of
        unknown classes, else ``class_0…``: never another model's names for these outputs."""
        if num_classes == 1000 and self.classes in (IMAGENET, None):
            return imagenet_classes()
        if isinstance(self.classes, list) and len(self.classes) == num_classes:
            return list(self.classes)
        return [f"class_{i}" for i in range(num_classes)]

    def with_classes(self, classes: list[str] | str | None) -> ModelMetadata:
        return replace(self, classes=classes)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> ModelMetadata:
        data = dict(data or {})
        known = {f.name for f in fields(cls)} - {"extra", "preprocessing"}
        values = {key: data.pop(key) for key in list(data) if key in known}
        preprocessing = Preprocessing.from_dict(data.pop("preprocessing", None) or {})
        extra = {**data.pop("extra", {}), **data}
        return cls(preprocessing=preprocessing, extra=extra, **values)

    def to_dict(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("extra", "preprocessing")}
        return {**self.extra, **values, "preprocessing": self.preprocessing.to_dict()}


def class_names(metadata: dict | ModelMetadata, num_classes: int) -> list[str]:
    """``ModelMetadata.labels`` for either form (plain dicts come from files and older callers)."""
    if not isinstance(metadata, ModelMetadata):
        metadata = ModelMetadata.from_dict(metadata)
    return metadata.labels(num_classes)
