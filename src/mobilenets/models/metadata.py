"""What a model carries beside its tensors: classes (labels), preprocessing, where its weights came from.

``ModelMetadata`` travels on every ``MobileNet`` (``model.metadata``), is saved beside the weights
(``model.json``) and baked into every exported file, so that a model always says which labels its
outputs mean and which pixels it expects.
"""

from __future__ import annotations

import reprlib
from collections.abc import Collection
from dataclasses import dataclass, field, fields, replace
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from mobilenets.core.errors import MobilenetsError
from mobilenets.core.run_directory import json_kind
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


# The interpolations ``Preprocessing`` knows (its __call__ maps each to PIL's filter).
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


def metadata_problems(record: object, architectures: Collection[str] = ()) -> list[str]:
    """What keeps ``record`` (a ``model.json`` or the copy inside a .safetensors file) from describing the
    weights ``load_model`` builds: each problem in a few words, none for good metadata. ``architectures``,
    when given, are the known model names (the registry imports this module, so it is passed in)."""
    if not isinstance(record, dict):
        return [f"{json_kind(record)}, not an object"]
    problems = []
    architecture = record.get("architecture")
    if "architecture" not in record:
        problems.append("no 'architecture'")
    elif not isinstance(architecture, str) or (architectures and architecture not in architectures):
        problems.append(f"'architecture' is {_shown(architecture)}, not a model name")
    options = record.get("options", {})
    if not isinstance(options, dict):
        problems.append(f"'options' is {_shown(options)}, not an object")
    elif "width" in options and not (_is_number(options["width"]) and options["width"] > 0):
        problems.append(f"'options' width is {_shown(options['width'])}, not a number > 0")
    classes = record.get("classes")
    count = record.get("num_classes")
    if not (classes is None or classes == IMAGENET or _is_list_of(classes, str)):
        problems.append(f"'classes' is {_shown(classes)}, not a list of class names")
    elif isinstance(classes, list) and isinstance(count, int) and len(classes) != count:
        problems.append(f"{len(classes)} 'classes' for 'num_classes' {count}")
    preprocessing = record.get("preprocessing")
    if preprocessing is not None:
        problems += _preprocessing_problems(preprocessing)
    return problems


def _preprocessing_problems(preprocessing: object) -> list[str]:
    if not isinstance(preprocessing, dict):
        return [f"'preprocessing' is {_shown(preprocessing)}, not an object"]
    problems = []
    for key in ("input_size", "resize_size"):
        value = preprocessing.get(key, 1)
        if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            problems.append(f"preprocessing {key} is {_shown(value)}, not a whole number of pixels")
    if preprocessing.get("interpolation", INTERPOLATIONS[0]) not in INTERPOLATIONS:
        problems.append(f"preprocessing interpolation is {_shown(preprocessing['interpolation'])}")
    for key in ("mean", "std"):
        value = preprocessing.get(key, [0.5] * 3)
        if not (_is_list_of(value, int | float) and len(value) == 3):
            problems.append(f"preprocessing {key} is {_shown(value)}, not 3 numbers")
    return problems


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_list_of(value: object, kind) -> bool:
    return isinstance(value, list) and all(isinstance(item, kind) and not isinstance(item, bool) for item in value)


def _shown(value: object) -> str:
    return reprlib.repr(value)


def check_metadata(
    record: object,
    weights: Path | str,
    architectures: Collection[str] = (),
    error: type[MobilenetsError] = MobilenetsError,
) -> None:
    """Refuse, in one line naming the file and the fix, metadata of ``weights`` that ``load_model`` cannot
    use (``metadata_problems``): the ``.json`` beside the weights when there is one, else the copy inside.
    ``error`` is the exception raised (``read_checkpoint`` raises its ``WeightsError``)."""
    problems = metadata_problems(record, architectures)
    if not problems:
        return
    weights = Path(weights)
    beside = weights.with_suffix(".json")
    if beside.exists():
        raise error(
            f"{beside}: damaged model metadata ({'; '.join(problems)}); restore it from the run's copy, or delete "
            f"{beside.name} to use the metadata inside {weights.name}"
        )
    raise error(
        f"{weights}: its embedded model metadata is damaged ({'; '.join(problems)}); copy the file again from "
        "where it was trained"
    )


def class_names(metadata: dict | ModelMetadata, num_classes: int) -> list[str]:
    """``ModelMetadata.labels`` for either form (plain dicts come from files and older callers)."""
    if not isinstance(metadata, ModelMetadata):
        metadata = ModelMetadata.from_dict(metadata)
    return metadata.labels(num_classes)
