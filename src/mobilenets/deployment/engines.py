"""Running a trained model on images by the fastest engine this machine has: ONNX Runtime or PyTorch.

Measured on the 2-core reference CPU (BENCHMARKS.md, issue 7), MobileNetV3-Small at batch 32 and
224 px: ONNX Runtime 33 ms, PyTorch with Conv+BN fused and channels_last 61 ms, the same compiled 44 ms.
So ONNX Runtime is the default engine. Its one cost is the export (about 9 s for V3-Small), paid once
per set of weights: the file is kept in the cache (``$MOBILENETS_HOME/onnx``), and a run directory's own
``model.onnx`` is used when it was exported from exactly these weights (its ``weights_sha256``
metadata says so). Like ``torch.compile`` in training, the export is only started automatically when
the job is big enough to pay it back; a small job on a model never exported runs in PyTorch.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Literal, Protocol

import torch
from torch import nn

from mobilenets.core.errors import MobilenetsError
from mobilenets.core.files import cache_dir
from mobilenets.kernels.acceleration import prepare_for_inference
from mobilenets.models.weights import weights_fingerprint

Engine = Literal["auto", "onnxruntime", "torch", "int8"]
# int8: mobilenets' own int8 engine (mobilenets.int8_engine), for a run that `mobilenets quantize` calibrated.
ENGINES: tuple[str, ...] = ("auto", "onnxruntime", "torch", "int8")

# V3-Small at 224 px: export ≈ 9 s, ONNX Runtime saves ≈ 0.9 ms per image at batch 32 and ≈ 3 ms at
# batch 1 over PyTorch's fused path, so an export pays back after a few thousand images.
EXPORT_PAYS_BACK_IMAGES = 3000


class InferenceEngine(Protocol):
    """Normalized NCHW float batch in, logits out (a torch tensor on the CPU)."""

    name: str
    num_classes: int
    path: Path | None  # the ONNX file it runs, if any

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


class OnnxRuntimeEngine:
    name = "onnxruntime"

    def __init__(self, path: Path, num_classes: int, threads: int | None = None) -> None:
        from mobilenets.deployment.onnx_runtime import create_session

        self.path = path
        self.num_classes = num_classes
        # ORT sizes its own pool (one thread per core; threads spin briefly between ops).
        self.session = create_session(path, threads)
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        array = images.detach().float().contiguous().numpy()  # ORT takes NCHW; a no-op for NCHW batches
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])


class TorchEngine:
    name = "torch"

    def __init__(self, model: nn.Module, planned_batches: int | None = None) -> None:
        self.model = prepare_for_inference(model, planned_batches=planned_batches)
        self.num_classes = model.num_classes
        self.path = None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images).float()


def onnx_cache_dir() -> Path:
    return cache_dir().parent / "onnx"


def exported_copy(model: nn.Module, run_dir: Path | str | None = None) -> Path | None:
    """An ONNX file exported from exactly ``model``'s weights, if one exists (run dir first, then cache)."""
    from mobilenets.deployment.onnx import read_metadata

    fingerprint = weights_fingerprint(model)
    candidates = [Path(run_dir) / "model.onnx"] if run_dir is not None else []
    candidates.append(onnx_cache_dir() / f"{fingerprint}.onnx")
    for path in candidates:
        try:
            if path.is_file() and read_metadata(path).get("weights_sha256") == fingerprint:
                return path
        except Exception:  # a truncated or foreign file is simply not a copy of this model
            continue
    return None


def export_to_cache(model: nn.Module) -> Path:
    from mobilenets.deployment.onnx import export_onnx

    path = onnx_cache_dir() / f"{weights_fingerprint(model)}.onnx"
    print(f"exporting to ONNX once for fast inference (kept in {path})", file=sys.stderr)
    return export_onnx(model, path)  # written to a temporary name, then renamed: never half a file


def load_engine(
    model: nn.Module,
    engine: Engine = "auto",
    *,
    planned_images: int | None = None,
    batch_size: int = 32,
    run_dir: Path | str | None = None,
    threads: int | None = None,
) -> InferenceEngine:
    """The engine that will run ``model``.

    ``auto``: ONNX Runtime when an exported copy of these exact weights exists, or when
    ``planned_images`` is at least ``EXPORT_PAYS_BACK_IMAGES`` (then it is exported once and cached);
    PyTorch otherwise, and also when the export fails (with a warning naming the error).
    ``onnxruntime`` exports if needed and fails loudly; ``torch`` never exports. ``int8`` is mobilenets'
    own int8 engine, with the ranges ``mobilenets quantize`` measured for the run in ``run_dir``.
    """
    if engine not in ENGINES:
        raise MobilenetsError(f"unknown inference engine {engine!r}; choose one of {', '.join(ENGINES)}")
    planned_batches = None if planned_images is None else -(-planned_images // max(1, batch_size))
    if engine == "int8":
        from mobilenets.deployment.int8_engine import load_for_run

        if run_dir is None:
            raise MobilenetsError("--engine int8 needs a run directory that `mobilenets quantize` has calibrated")
        return load_for_run(model, run_dir)
    if engine == "torch":
        return TorchEngine(model, planned_batches)
    path = exported_copy(model, run_dir)
    if path is None and engine == "auto" and (planned_images or 0) < EXPORT_PAYS_BACK_IMAGES:
        return TorchEngine(model, planned_batches)
    if path is None:
        try:
            path = export_to_cache(model)
        except Exception as error:  # the exporter's failures are many and verbose; the fallback is exact
            if engine == "onnxruntime":
                raise MobilenetsError(
                    f"could not export the model to ONNX for ONNX Runtime ({type(error).__name__}: {error}); "
                    "run with --engine torch"
                ) from None
            # The logger, not stderr directly: a Python user's logging settings apply (the CLI prints it alike).
            logging.getLogger("mobilenets").warning(f"ONNX export failed ({type(error).__name__}); running in PyTorch")
            return TorchEngine(model, planned_batches)
    return OnnxRuntimeEngine(path, model.num_classes, threads)
