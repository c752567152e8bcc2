"""Top-K prediction on image files, with each model's own classes and preprocessing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mobilenets.data.images import load_image
from mobilenets.deployment.engines import Engine, load_engine
from mobilenets.models.metadata import class_names
from mobilenets.models.preprocessing import Preprocessing


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

    ``engine`` picks ONNX Runtime or PyTorch (mobilenets.deployment.engines); both give the same top-K.
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
