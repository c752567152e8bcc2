"""Top-K prediction on image files, with each model's own classes and preprocessing."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from mobilenets.inference import Engine, load_engine
from mobilenets.preprocessing import Preprocessing, load_image


@cache
def imagenet_classes() -> list[str]:
    text = resources.files("mobilenets").joinpath("data/imagenet_classes.txt").read_text()
    return text.splitlines()


def class_names(metadata: dict, num_classes: int) -> list[str]:
    classes = metadata.get("classes")
    if classes == "imagenet" or (classes is None and num_classes == 1000):
        return imagenet_classes()
    if isinstance(classes, list) and len(classes) == num_classes:
        return classes
    return [f"class_{i}" for i in range(num_classes)]


@dataclass
class Prediction:
    image: str
    top: list[tuple[str, int, float]]  # (label, index, probability)

    def to_dict(self) -> dict:
        return {"image": self.image, "top": [{"label": c, "index": i, "probability": p} for c, i, p in self.top]}


@torch.no_grad()
def predict_images(
    model: nn.Module,
    images: list[Path | str],
    top_k: int = 5,
    metadata: dict | None = None,
    engine: Engine = "auto",
    run_dir: Path | str | None = None,
    batch_size: int = 32,
) -> list[Prediction]:
    """Classify image files; preprocessing and labels come from the weights' metadata.

    ``engine`` picks ONNX Runtime or PyTorch (mobilenets.inference); both give the same top-K.
    """
    metadata = metadata if metadata is not None else getattr(model, "weights_metadata", {}) or {}
    preprocessing = Preprocessing.from_dict(metadata.get("preprocessing", {}))
    labels = class_names(metadata, model.num_classes)
    runner = load_engine(model, engine, planned_images=len(images), batch_size=batch_size, run_dir=run_dir)
    results = []
    for start in range(0, len(images), batch_size):
        paths = images[start : start + batch_size]
        batch = torch.stack([preprocessing(load_image(path)) for path in paths])
        for path, probabilities in zip(paths, runner(batch).softmax(dim=1), strict=True):
            values, indices = probabilities.topk(min(top_k, probabilities.numel()))
            results.append(
                Prediction(str(path), [(labels[i], int(i), float(v)) for v, i in zip(values, indices, strict=True)])
            )
    return results
