"""What a model carries beside its tensors: classes (labels) and preprocessing."""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def imagenet_classes() -> list[str]:
    text = resources.files("mobilenets.models").joinpath("imagenet_classes.txt").read_text()
    return text.splitlines()


def class_names(metadata: dict, num_classes: int) -> list[str]:
    classes = metadata.get("classes")
    if classes == "imagenet" or (classes is None and num_classes == 1000):
        return imagenet_classes()
    if isinstance(classes, list) and len(classes) == num_classes:
        return classes
    return [f"class_{i}" for i in range(num_classes)]
