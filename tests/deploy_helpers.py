"""Shared by the deployment tests: models exported once per test session (export takes seconds)."""

from __future__ import annotations

import json
import tempfile
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

from mobilenets.models.factory import create_model
from mobilenets.models.preprocessing import Preprocessing
from mobilenets.models.weights import save_weights

WORK = Path(tempfile.mkdtemp(prefix="mobilenets-deploy-tests-"))
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "cat", "immunohistochemistry", "retina", "hubble_deep_field")


@cache
def photos() -> tuple[tuple[str, Image.Image], ...]:
    """scikit-image's real colour photographs (plus the motorcycle of its stereo pair)."""
    from skimage import data

    found = [(name, Image.fromarray(getattr(data, name)()).convert("RGB")) for name in PHOTOS]
    found.append(("motorcycle", Image.fromarray(data.stereo_motorcycle()[0]).convert("RGB")))
    return tuple(found)


def random_crops(count: int, seed: int, size: int = 224) -> list[Image.Image]:
    """Random crops (25–100% of the area, aspect 3/4–4/3, random flip) of the photos."""
    rng = np.random.default_rng(seed)
    crops = []
    for index in range(count):
        image = photos()[index % len(photos())][1]
        width, height = image.size
        area = rng.uniform(0.25, 1.0) * width * height
        ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        w = min(width, round(np.sqrt(area * ratio)))
        h = min(height, round(np.sqrt(area / ratio)))
        x, y = rng.integers(0, width - w + 1), rng.integers(0, height - h + 1)
        crop = image.crop((x, y, x + w, y + h)).resize((size, size), Image.BILINEAR)
        crops.append(crop.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else crop)
    return crops


def write_class_folder(folder: Path, classes: int = 3, per_class: int = 8, size: int = 48, seed: int = 0) -> Path:
    """A tiny labelled folder of photo crops: class k is crops of photo k."""
    rng = np.random.default_rng(seed)
    for label in range(classes):
        name, image = photos()[label]
        (folder / name).mkdir(parents=True, exist_ok=True)
        width, height = image.size
        for index in range(per_class):
            side = int(rng.integers(min(width, height) // 3, min(width, height)))
            x, y = rng.integers(0, width - side + 1), rng.integers(0, height - side + 1)
            image.crop((x, y, x + side, y + side)).resize((size, size)).save(folder / name / f"{index}.png")
    return folder


def tiny_run_dir(folder: Path, data: Path, model: str = "mobilenet_v3_small", width: float = 0.5) -> Path:
    """A run directory following the training contract, with an untrained tiny model."""
    classes = sorted(p.name for p in data.iterdir() if p.is_dir())
    items = [[str(p), label] for label, name in enumerate(classes) for p in sorted((data / name).glob("*.png"))]
    net = create_model(model, num_classes=len(classes), width=width)
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(net, folder / "model.safetensors", classes=classes, preprocessing=Preprocessing.for_resolution(48))
    split = {"root": str(data), "classes": classes, "train": items[::2] + items[1::4], "val": items[1::2]}
    (folder / "split.json").write_text(json.dumps(split))
    (folder / "metrics.json").write_text(json.dumps({"best_val_accuracy": 0.5, "final_val_accuracy": 0.5}))
    return folder


@cache
def exported_v2(weights: str) -> Path:
    """torchvision's ImageNet MobileNetV2 exported to ONNX once per session."""
    from mobilenets.deployment.onnx import export_onnx
    from mobilenets.models.weights import load_model

    return export_onnx(load_model(weights), WORK / "mobilenet_v2.onnx")
