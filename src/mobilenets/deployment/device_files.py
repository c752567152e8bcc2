"""What every device export shares: the verified-file record, atomic writes, comparison with PyTorch, timing.

Each device format (``litert``, ``executorch``, ``micro``, ``coreml``) writes its file through
``write_device_file`` or, for a folder package, ``atomic_output`` (a temporary name renamed at the end, so
a failed export leaves nothing behind and a full disk is one line) and is
checked in its own runtime against the PyTorch fp32 model on the same images by ``compare``; the result
is one ``DeviceFile`` per file, the row of the ``deployment`` table.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import shutil
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from torch import nn

from mobilenets.core.errors import MobilenetsError
from mobilenets.core.files import (
    DiskFullError,
    atomic_write_bytes,
    disk_full_message,
    is_disk_full,
    remove_path,
)

EDGE_INSTALL = "pip install 'mobilenets[edge]'"


def require(module: str, purpose: str) -> ModuleType:
    """Import an optional device toolchain module, or say in one line which command installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MobilenetsError(
            f"{purpose} needs the optional device toolchain ({module} is not importable: {error}); "
            f"install it with: {EDGE_INSTALL}"
        ) from None


@dataclass
class DeviceFile:
    """One exported device file and how it did in its own runtime (a row of the ``deployment`` table).

    ``agreement``: share of images whose top-1 class equals PyTorch fp32's; ``decided_agreement``: the
    same share over the ``decided_images`` where fp32's top class leads the second by at least
    ``NEAR_TIE`` of probability (on a near-tie any rounding may flip the answer, and no format can be
    blamed for it: two classes of the same photographs tie on every such image); ``max_abs_diff``: largest
    logit difference (fp32 files only; int8 logits are on another grid); ``accuracy`` and
    ``reference_accuracy`` (PyTorch fp32) when labels were given; ``latency_ms``: median batch-1 time on
    this machine; ``partitions``: delegate partitions (LiteRT/ExecuTorch, 1 = the whole graph on XNNPACK);
    ``arena_bytes``: the exact TFLite Micro tensor arena. ``ran`` is False for a file validated but not
    executed (Core ML off macOS); ``notes`` say what was not verified and why.
    """

    format: str
    path: Path
    bytes: int
    runtime: str
    precision: str
    images: int = 0
    agreement: float | None = None
    decided_images: int | None = None
    decided_agreement: float | None = None
    max_abs_diff: float | None = None
    accuracy: float | None = None
    reference_accuracy: float | None = None
    latency_ms: float | None = None
    partitions: int | None = None
    arena_bytes: int | None = None
    input: dict = field(default_factory=dict)
    ran: bool = True
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["path"] = str(self.path)
        return data


def file_bytes(path: Path) -> int:
    """Size of a file, or of a directory package (``.mlpackage``) summed over its files."""
    if path.is_dir():
        return sum(child.stat().st_size for child in path.rglob("*") if child.is_file())
    return path.stat().st_size


def write_device_file(path: Path | str, content: bytes) -> Path:
    """Write ``content`` to ``path`` through a temporary file beside it (``core.files.atomic_write_bytes``):
    a failure leaves any earlier file as it was, and a full disk is one line (``DiskFullError``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_bytes(path, content)


@contextlib.contextmanager
def atomic_output(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for a writer that makes a file or a folder package (Core ML's
    ``.mlpackage``); it replaces ``path`` only if the block succeeds. A full disk is one line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.partial{path.suffix}")
    remove_path(temporary)
    try:
        yield temporary
        if not temporary.exists():
            raise MobilenetsError(f"{path}: the exporter wrote nothing")
        replace_path(temporary, path)
    except OSError as error:
        if is_disk_full(error):
            raise DiskFullError(disk_full_message(path.parent, None)) from None
        raise
    finally:
        remove_path(temporary)


def pending_path(path: Path | str) -> Path:
    """Where a new device file is written and verified before it replaces ``path`` (the name ``quantize``
    gives its pending ``model_int8.onnx``): hidden, beside it, same suffix (Core ML requires it)."""
    path = Path(path)
    return path.with_name(f".{path.stem}.pending{path.suffix}")


def replace_path(new: Path, path: Path) -> None:
    """Put ``new`` (a file or a folder) in the place of ``path``, as atomically as the filesystem allows.

    A file is one ``os.replace``. A folder cannot replace a non-empty folder in one rename, so the old one is
    renamed away first, the new one renamed in, then the old one removed: at every moment one complete
    package exists under either name, and a failed rename puts the old one back.
    """
    if not (path.is_dir() and not path.is_symlink()):
        os.replace(new, path)
        return
    old = path.with_name(f".{path.stem}.old{path.suffix}")
    remove_path(old)
    moved = False
    try:
        os.replace(path, old)
        moved = True
        os.replace(new, path)
    except BaseException:  # Ctrl-C included: the old package goes back
        if moved and not path.exists():
            os.replace(old, path)
        raise
    # The new package is in place: removing the old one is housekeeping (the next swap retries it), and
    # must not turn a finished replacement into a failed one.
    shutil.rmtree(old, ignore_errors=True)


def check_images(images: np.ndarray | torch.Tensor, purpose: str) -> np.ndarray:
    """Images as float32 NCHW (already normalized with the model's mean/std), or one clear error."""
    array = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if array.ndim != 4 or array.shape[1] != 3 or len(array) == 0:
        raise MobilenetsError(
            f"{purpose}: expected normalized images as a float32 array (N, 3, H, W) with N ≥ 1, got shape {array.shape}"
        )
    return np.ascontiguousarray(array, dtype=np.float32)


@torch.no_grad()
def reference_logits(model: nn.Module, images: np.ndarray) -> np.ndarray:
    """PyTorch fp32 logits of ``images`` (NCHW), in batches of 32."""
    model = model.eval()
    return np.concatenate(
        [model(torch.from_numpy(images[i : i + 32])).float().numpy() for i in range(0, len(images), 32)]
    )


# fp32 probabilities of the top two classes this close: the float model itself has not decided.
NEAR_TIE = 0.05


def top2_gap(logits: np.ndarray) -> np.ndarray:
    """Softmax probability of each row's top class minus its second's."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities = shifted / shifted.sum(axis=1, keepdims=True)
    if probabilities.shape[1] < 2:
        return np.ones(len(probabilities))
    top2 = np.sort(probabilities, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def compare(
    record: DeviceFile,
    outputs: np.ndarray,
    reference: np.ndarray,
    labels: np.ndarray | None,
    *,
    exact: bool,
) -> DeviceFile:
    """Fill agreement (and max abs diff for fp32 files, accuracy when labels are known) into ``record``."""
    record.images = len(outputs)
    same = outputs.argmax(1) == reference.argmax(1)
    record.agreement = float(same.mean())
    decided = top2_gap(reference) >= NEAR_TIE
    record.decided_images = int(decided.sum())
    record.decided_agreement = float(same[decided].mean()) if decided.any() else None
    if exact:
        record.max_abs_diff = float(np.abs(outputs - reference).max())
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        if len(labels) != len(outputs):
            raise MobilenetsError(f"{len(labels)} labels for {len(outputs)} images: give one label per image")
        record.accuracy = float((outputs.argmax(1) == labels).mean())
        record.reference_accuracy = float((reference.argmax(1) == labels).mean())
    return record


def median_ms(run: Callable[[], object], repeats: int = 20, warmup: int = 3) -> float:
    """Median wall time of ``run`` in ms after ``warmup`` untimed calls (a quick figure; benchmarks/ interleave)."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


class PooledHead(nn.Module):
    """The model's forward with the pooling written ``flatten(mean((2, 3), keepdim=True), 1)``.

    Identical numbers; ExecuTorch's XNNPACK partitioner takes the ``keepdim`` form but not
    ``mean((2, 3))``, which would split the graph in two. Works for any module with the timm-style
    ``forward_features`` + head modules of ``mobilenets.MobileNet``; other modules are used as they are.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        model = self.model
        x = torch.flatten(model.forward_features(x).mean((2, 3), keepdim=True), 1)
        x = model.head_activation(model.head_hidden(x))
        return model.classifier(model.dropout(x))


def exportable(model: nn.Module) -> nn.Module:
    """``model`` in eval mode, with its pooling head in the form every device exporter delegates."""
    model = model.eval()
    parts = ("forward_features", "head_hidden", "head_activation", "dropout", "classifier")
    return PooledHead(model).eval() if all(hasattr(model, part) for part in parts) else model


def input_size(model: nn.Module, images: np.ndarray | None = None) -> int:
    """The square input resolution: from the images if given, else the model's preprocessing metadata."""
    if images is not None:
        return int(images.shape[-1])
    preprocessing = (getattr(model, "weights_metadata", None) or {}).get("preprocessing", {})
    return int(preprocessing.get("input_size", 224))


def model_metadata(model: nn.Module, extra: dict[str, str] | None = None, size: int | None = None) -> dict[str, object]:
    """Labels, preprocessing and architecture as plain JSON values (what a device needs besides the file).

    ``size``: the file's input resolution; when it differs from the weights' preprocessing, the crop is
    set to it and the resize scaled alike (a fixed-shape file takes nothing else).
    """
    from mobilenets.deployment.onnx import deployment_metadata

    metadata: dict[str, object] = {}
    for key, value in {**deployment_metadata(model), **(extra or {})}.items():
        try:
            metadata[key] = json.loads(value)
        except (TypeError, ValueError):
            metadata[key] = value
    metadata.pop("opset", None)
    preprocessing = metadata.get("preprocessing")
    if size and isinstance(preprocessing, dict) and preprocessing.get("input_size") != size:
        ratio = preprocessing.get("resize_size", size) / preprocessing.get("input_size", size)
        metadata["preprocessing"] = {**preprocessing, "input_size": size, "resize_size": round(size * ratio)}
    return metadata
