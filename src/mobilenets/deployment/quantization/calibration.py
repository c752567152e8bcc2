"""Calibration images: loaded and sampled reproducibly, fed to ORT's calibrator in slices, and cut to
what histogram calibration can hold in memory."""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader

from mobilenets.core.errors import MobilenetsError
from mobilenets.data.images import ImageLoadError, load_image
from mobilenets.deployment.onnx import INPUT_NAME
from mobilenets.models.preprocessing import Preprocessing


@dataclass
class ImageSet:
    """Preprocessed images (N×3×H×W float32) and their labels (None for an unlabelled folder)."""

    images: np.ndarray
    labels: np.ndarray | None
    source: str

    def __len__(self) -> int:
        return len(self.images)


def load_images(
    paths: Sequence[Path | str], labels: Sequence[int] | None, preprocessing: Preprocessing, source: str
) -> ImageSet:
    """The images preprocessed for the model. One that cannot be read is skipped with a warning, as
    ``evaluate`` and ``train`` skip it; none readable is an error."""
    from mobilenets.deployment.loading import summarize_skipped

    arrays, kept, skipped = [], [], []
    for index, path in enumerate(paths):
        try:
            arrays.append(preprocessing(load_image(path)).numpy())
        except ImageLoadError as error:
            skipped.append((str(path), error.reason))
            continue
        kept.append(index)
    for line in summarize_skipped(skipped):
        logging.getLogger("mobilenets").warning(line)
    if not arrays:
        raise MobilenetsError(f"{source}: none of its {len(paths)} image(s) could be read; pass a folder of readable images")
    kept_labels = None if labels is None else np.asarray([labels[i] for i in kept], dtype=np.int64)
    return ImageSet(np.stack(arrays).astype(np.float32), kept_labels, source)


def sample(items: list, count: int, seed: int = 0) -> list:
    """A reproducible random subset (all of them when there are fewer than ``count``)."""
    if count <= 0 or count >= len(items):
        return list(items)
    return random.Random(seed).sample(items, count)


class ArrayReader(CalibrationDataReader):
    """Feeds ORT's calibrator (and its loss debugger) batches from an array."""

    def __init__(self, images: np.ndarray, batch_size: int = 16) -> None:
        self.batches = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
        self.start, self.end = 0, len(self.batches)
        self.position = 0

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        """ORT's strided calibration reads the batches in slices (``calibration_stride``)."""
        self.start, self.end = start_index, min(end_index, len(self.batches))
        self.position = self.start

    def get_next(self) -> dict | None:
        if self.position >= self.end:
            return None
        self.position += 1
        return {INPUT_NAME: self.batches[self.position - 1]}

    def rewind(self) -> None:
        self.start, self.end = 0, len(self.batches)
        self.position = 0


def calibration_stride(batches: int, at_most: int = 4) -> int:
    """Batches ORT's calibrator holds at once: the largest divisor of ``batches`` up to ``at_most``.

    ORT keeps every calibrated tensor of every image it has been fed until it computes ranges: for
    torchvision's V2 at 224 px, 256 calibration images took a 17 GB peak. Fed 4 batches of 16 at a time,
    min-max calibration stays near one slice's worth (measured: 6 GB peak for the whole V2 benchmark).
    """
    return max(d for d in range(1, max(1, min(at_most, batches)) + 1) if batches % d == 0)


# ORT's histogram calibrators (percentile, entropy) keep every calibrated tensor of every image until they
# bin them (min-max is fed in slices, ``calibration_stride``): V2 at 224 px holds 52.6 MB of activations per
# image, and 256 images peaked at 17 GB, i.e. 1.15x the activations plus the process. 1.25x, against at most
# 75% of the memory available now (other processes may grow), is the estimate the guard uses.
HISTOGRAM_MEMORY_FACTOR = 1.25
HISTOGRAM_MEMORY_SHARE = 0.75


def activation_bytes_per_image(onnx_path: Path | str) -> int:
    """float32 bytes of all the model's tensors for one image (ONNX shape inference at batch 1)."""
    import math

    model = onnx.load(str(onnx_path))
    del model.graph.value_info[:]
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].dim_value = 1
    inferred = onnx.shape_inference.infer_shapes(model)
    total = 0
    for value in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        tensor = value.type.tensor_type
        dims = [d.dim_value for d in tensor.shape.dim]
        if tensor.elem_type == onnx.TensorProto.FLOAT and dims and all(d > 0 for d in dims):
            total += 4 * math.prod(dims)
    return total


def available_memory_bytes() -> int | None:
    """Memory this process may still take: MemAvailable, capped by a cgroup v2 limit; None where unknown."""
    found = []
    with contextlib.suppress(OSError, ValueError, StopIteration):
        lines = Path("/proc/meminfo").read_text().splitlines()
        found.append(1024 * int(next(line for line in lines if line.startswith("MemAvailable:")).split()[1]))
    with contextlib.suppress(OSError, ValueError):
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            found.append(int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    return min(found) if found else None


def images_that_fit(
    images: np.ndarray,
    fp32_onnx: Path | str,
    calibration_method: str,
    report=print,
    available: int | None = None,
) -> np.ndarray:
    """``images``, or as many of them as histogram calibration can hold in memory, saying so in one line.

    ``available`` (bytes) defaults to ``available_memory_bytes()``; where it cannot be known, all images.
    """
    available = available_memory_bytes() if available is None else available
    if calibration_method == "minmax" or available is None:
        return images
    per_image = HISTOGRAM_MEMORY_FACTOR * activation_bytes_per_image(fp32_onnx)
    fit = int(HISTOGRAM_MEMORY_SHARE * available // per_image)
    if fit >= len(images):
        return images
    fit = max(fit, 1)
    report(
        f"memory: {calibration_method} calibration holds every activation of every image, about "
        f"{len(images) * per_image / 1e9:.1f} GB for {len(images)} images, and {available / 1e9:.1f} GB is "
        f"available; calibrating on {fit} of them (--calibration {fit} or fewer does so without this line)"
    )
    return images[:fit]
