"""Running an exported model the way a deployer would: ONNX Runtime, NumPy and Pillow, metadata only.

Nothing here imports torch or the rest of the package's model code: preprocessing is re-implemented
from the file's metadata (torchvision's rule: short side to ``resize_size``, center crop ``input_size``,
``(pixel/255 - mean) / std``), so what this module does is exactly what docs/deployment.md tells a
deployer to write, and tests/test_export.py checks it against PyTorch's preprocessing.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

RESAMPLING = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}
# ORT's default logger prints coloured "[W:onnxruntime:…] Removing initializer …" lines from the sessions
# its quantizer makes, which take no SessionOptions: errors only (3) for every session in this process.
ort.set_default_logger_severity(3)


def create_session(path: Path | str, threads: int | None = None) -> ort.InferenceSession:
    """An ORT CPU session with all graph optimizations (constant folding, Conv+activation and QDQ fusions)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@dataclass(frozen=True)
class ImagePreprocessing:
    input_size: int
    resize_size: int
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __call__(self, image: Image.Image) -> np.ndarray:
        """A PIL image → normalized float32 CHW array."""
        image = image.convert("RGB")
        width, height = image.size
        if width <= height:
            size = (self.resize_size, int(self.resize_size * height / width))
        else:
            size = (int(self.resize_size * width / height), self.resize_size)
        image = image.resize(size, RESAMPLING[self.interpolation])
        left = round((size[0] - self.input_size) / 2.0)
        top = round((size[1] - self.input_size) / 2.0)
        image = image.crop((left, top, left + self.input_size, top + self.input_size))
        pixels = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0
        mean = np.asarray(self.mean, dtype=np.float32).reshape(3, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(3, 1, 1)
        return ((pixels - mean) / std).astype(np.float32)


class OnnxClassifier:
    """An exported mobilenets model: ``classify(images)`` → top-k (label, probability) per image."""

    def __init__(self, path: Path | str, threads: int | None = None) -> None:
        self.path = Path(path)
        self.session = create_session(self.path, threads)
        props = self.session.get_modelmeta().custom_metadata_map
        if "mobilenets.labels" not in props or "mobilenets.preprocessing" not in props:
            raise ValueError(f"{self.path}: no mobilenets metadata; export it with `mobilenets export`")
        self.labels: list[str] = json.loads(props["mobilenets.labels"])
        self.preprocessing = ImagePreprocessing(**json.loads(props["mobilenets.preprocessing"]))
        self.input_name = self.session.get_inputs()[0].name

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})[0]

    def classify(self, images: list[Image.Image], top_k: int = 5) -> list[list[tuple[str, float]]]:
        batch = np.stack([self.preprocessing(image) for image in images])
        probabilities = softmax(self.logits(batch))
        results = []
        for row in probabilities:
            best = np.argsort(-row)[:top_k]
            results.append([(self.labels[i], float(row[i])) for i in best])
        return results


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def onnx_logits(path: Path | str, images: np.ndarray, batch_size: int = 32, session=None) -> np.ndarray:
    session = session or create_session(path)
    name = session.get_inputs()[0].name
    return np.concatenate(
        [session.run(None, {name: images[i : i + batch_size]})[0] for i in range(0, len(images), batch_size)]
    )
