"""ONNX export: one self-describing file a deployer runs with ONNX Runtime and nothing else.

- Exporter: ``torch.onnx.export(..., dynamo=True)`` (the torch.export-based exporter, the default
  since torch 2.9). The TorchScript path still works in torch 2.13 but warns that it "will be
  removed"; both produce the same numbers here, and the dynamo graph is cleaner (no Constant/Identity/
  Flatten nodes). BatchNorm is folded into the convolutions by the exporter's optimizer.
- Opset 18: hard-swish and hard-sigmoid are single ``HardSwish``/``HardSigmoid`` ops (opset ≥ 14),
  not the slow Add/Clip/Div decompositions that also break converters' pattern matching.
- Dynamic batch: input ``image`` is ``[batch, 3, H, W]`` float32, output ``logits`` is ``[batch, classes]``.
- Metadata (``metadata_props``, plain JSON strings): class labels, preprocessing (input size, resize size,
  interpolation, mean, std), architecture. ``runtime.py`` classifies images from these alone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from mobilenets.core.errors import MobilenetsError
from mobilenets.core.files import atomic_write
from mobilenets.models.metadata import class_names
from mobilenets.models.preprocessing import Preprocessing
from mobilenets.models.weights import weights_fingerprint

OPSET = 18
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
METADATA_PREFIX = "mobilenets."


@dataclass
class ExportCheck:
    """How closely the ONNX Runtime model reproduces PyTorch on the same inputs."""

    images: int
    max_abs_diff: float
    top1_agreement: float

    def to_dict(self) -> dict:
        return asdict(self)


def deployment_metadata(model: nn.Module) -> dict[str, str]:
    """The ``metadata_props`` a deployer needs: labels, preprocessing, architecture (values are JSON)."""
    metadata = getattr(model, "weights_metadata", None) or {}
    preprocessing = Preprocessing.from_dict(metadata.get("preprocessing", {}))
    architecture = getattr(model, "architecture", None)
    return {
        "labels": json.dumps(class_names(metadata, model.num_classes)),
        "preprocessing": json.dumps(preprocessing.to_dict()),
        "architecture": json.dumps(
            {"name": architecture.name, "options": architecture.options} if architecture is not None else None
        ),
        "input": json.dumps(
            {
                "name": INPUT_NAME,
                "layout": "NCHW",
                "dtype": "float32",
                "channels": "RGB",
                "scale": "pixel / 255, then (x - mean) / std",
            }
        ),
        "opset": str(OPSET),
        # Lets the inference engine reuse this file only for exactly these weights (mobilenets.deployment.engines).
        "weights_sha256": weights_fingerprint(model),
    }


def export_onnx(model: nn.Module, path: Path | str, metadata: dict[str, str] | None = None) -> Path:
    """Export ``model`` (fp32, eval mode) to ``path`` with a dynamic batch and deployment metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    size = Preprocessing.from_dict((getattr(model, "weights_metadata", None) or {}).get("preprocessing", {})).input_size
    example = torch.randn(2, 3, size, size)
    with warnings.catch_warnings(), torch.no_grad(), exporter_logs_quieted():
        warnings.simplefilter("ignore")  # the exporter's deprecation chatter about pytree internals
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            verbose=False,
        )
    proto = program.model_proto
    _strip_debug_info(proto)
    write_metadata(proto, metadata if metadata is not None else deployment_metadata(model))
    return atomic_write(path, lambda temporary: onnx.save_model(proto, temporary), needed_bytes=proto.ByteSize())


# The exporter's graph passes log each step at INFO ("Removed 308 unused nodes"); a program that logs at INFO
# would get dozens of lines per export that say nothing to a deployer.
EXPORTER_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx")


@contextlib.contextmanager
def exporter_logs_quieted() -> Iterator[None]:
    """The exporter's loggers at WARNING or above while it runs, then as they were."""
    loggers = [logging.getLogger(name) for name in EXPORTER_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _strip_debug_info(proto: onnx.ModelProto) -> None:
    """Drop the exporter's per-node stack traces and source names: they are ~200 kB of noise for a deployer."""
    for node in proto.graph.node:
        node.doc_string = ""
        del node.metadata_props[:]


def write_metadata(proto: onnx.ModelProto, metadata: dict[str, str]) -> None:
    onnx.helper.set_model_props(
        proto,
        {
            **{entry.key: entry.value for entry in proto.metadata_props},
            **{METADATA_PREFIX + key: value for key, value in metadata.items()},
        },
    )
    proto.producer_name = "mobilenets"


def read_metadata(path: Path | str) -> dict[str, str]:
    """The ``mobilenets.*`` metadata of an exported file, prefix removed (values are JSON strings)."""
    path = Path(path)
    if not path.is_file():
        raise MobilenetsError(f"{path}: does not exist; pass an .onnx file written by `mobilenets export`")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # protobuf's DecodeError and friends: the file is cut short or not ONNX at all
        raise MobilenetsError(
            f"{path}: not a readable ONNX file (truncated or another format); export it again with `mobilenets export`"
        ) from None
    return {
        entry.key.removeprefix(METADATA_PREFIX): entry.value
        for entry in proto.metadata_props
        if entry.key.startswith(METADATA_PREFIX)
    }


def copy_metadata(source: Path | str, destination: Path | str, **extra: str) -> None:
    """Carry the deployment metadata over to a derived model (e.g. the int8 one ORT's quantizer writes)."""
    proto = onnx.load(str(destination))
    write_metadata(proto, {**read_metadata(source), **extra})
    onnx.save_model(proto, str(destination))


@torch.no_grad()
def check_export(model: nn.Module, onnx_path: Path | str, images: torch.Tensor) -> ExportCheck:
    """Run the same preprocessed ``images`` through PyTorch and ONNX Runtime and compare the logits."""
    from mobilenets.deployment.onnx_runtime import create_session

    if len(images) == 0:
        raise MobilenetsError("no images to check the export with")
    reference = model.eval()(images).numpy()
    session = create_session(onnx_path)
    exported = np.concatenate(
        [session.run(None, {INPUT_NAME: images[i : i + 32].numpy()})[0] for i in range(0, len(images), 32)]
    )
    return ExportCheck(
        images=len(images),
        max_abs_diff=float(np.abs(exported - reference).max()),
        top1_agreement=float((exported.argmax(1) == reference.argmax(1)).mean()),
    )
