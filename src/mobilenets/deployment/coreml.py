"""Core ML ``.mlpackage`` for iPhones: converted by coremltools and validated here, not run.

Core ML prediction exists only on macOS (coremltools' ``libcoremlpython`` is not built for Linux), so the
package is checked without running it: the spec loads, the input is ``image`` float32 (1, 3, H, W), the
output ``logits`` is (1, classes), and labels/preprocessing are in ``user_defined_metadata``. The
``DeviceFile`` says plainly that it was not run (``ran=False``). Conversion is fp32 ``mlprogram``
(``compute_precision=FLOAT32``; coremltools' default would be fp16) from ``torch.export``.

int8 (``model_int8.mlpackage``) is Core ML's weight quantization: per-channel symmetric int8 weights
(``constexpr_affine_dequantize``), activations in float. Core ML's activation quantization calibrates by
running the model, which only macOS can do, so it is not offered here. The package is validated to hold
int8 weights (the count of dequantize ops is in the record's notes).

https://apple.github.io/coremltools/docs-guides/source/convert-pytorch.html
https://apple.github.io/coremltools/docs-guides/source/opt-quantization-api.html
"""

from __future__ import annotations

import json
import logging
import platform
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mobilenets.core.errors import MobilenetsError
from mobilenets.deployment.device_files import (
    DeviceFile,
    atomic_output,
    exportable,
    file_bytes,
    model_metadata,
    require,
)

# Weights with fewer elements stay float (coremltools' default is 2048; SE's small 1×1 convs and the
# depthwise filters of a narrow model are worth quantizing too, and a float copy of them is not needed).
WEIGHT_THRESHOLD = 512
NOT_RUN = "not run: Core ML prediction needs macOS; the package was validated (spec, input/output shapes, metadata)"


def export_coreml(
    model: nn.Module,
    out_path: Path | str,
    *,
    metadata: dict[str, str] | None = None,
    input_size: int | None = None,
    int8: bool = False,
) -> Path:
    """Write ``model`` as a Core ML ``mlprogram`` package (a directory): fp32, or int8 weights (``int8``)."""
    ct = require("coremltools", "Core ML export")
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    size = input_size or int(
        (getattr(model, "weights_metadata", None) or {}).get("preprocessing", {}).get("input_size", 224)
    )
    sample = torch.zeros(1, 3, size, size)
    try:
        program = torch.export.export(exportable(model), (sample,)).run_decompositions({})
        converted = ct.convert(
            program,
            inputs=[ct.TensorType(name="image", shape=tuple(sample.shape), dtype=np.float32)],
            outputs=[ct.TensorType(name="logits", dtype=np.float32)],
            convert_to="mlprogram",
            compute_precision=ct.precision.FLOAT32,
            minimum_deployment_target=ct.target.iOS16,
        )
    except Exception as error:
        from mobilenets.deployment.litert import _conversion_error

        raise _conversion_error("Core ML (coremltools)", error) from None
    if int8:
        optimize = ct.optimize.coreml
        config = optimize.OptimizationConfig(
            global_config=optimize.OpLinearQuantizerConfig(
                mode="linear_symmetric", dtype="int8", granularity="per_channel", weight_threshold=WEIGHT_THRESHOLD
            )
        )
        converted = optimize.linear_quantize_weights(converted, config=config)
    precision = "int8" if int8 else "fp32"
    description = {**model_metadata(model, metadata, size), "format": "coreml", "precision": precision}
    description["input"] = {"name": "image", "layout": "NCHW", "dtype": "float32", "shape": [1, 3, size, size]}
    for key, value in description.items():
        converted.user_defined_metadata[f"mobilenets.{key}"] = value if isinstance(value, str) else json.dumps(value)
    with atomic_output(out_path) as temporary:
        converted.save(str(temporary))
    return Path(out_path)


def read_metadata(path: Path | str) -> dict:
    ct = require("coremltools", "Reading a Core ML package")
    spec = ct.utils.load_spec(str(path))
    return {
        key.removeprefix("mobilenets."): _json(value)
        for key, value in spec.description.metadata.userDefined.items()
        if key.startswith("mobilenets.")
    }


def _json(value: str) -> object:
    try:
        return json.loads(value)
    except ValueError:
        return value


def verify_coreml(
    path: Path | str,
    model: nn.Module,
    images: np.ndarray | None = None,
    labels: np.ndarray | None = None,
) -> DeviceFile:
    """Validate a ``.mlpackage`` (spec, shapes, metadata); it is not run (Core ML runs only on macOS)."""
    ct = require("coremltools", "Validating a Core ML package")
    path = Path(path)
    if not (path / "Manifest.json").exists():
        raise MobilenetsError(f"{path}: not a Core ML package (no Manifest.json)")
    spec = ct.utils.load_spec(str(path))
    if spec.WhichOneof("Type") != "mlProgram":
        raise MobilenetsError(f"{path}: expected an mlprogram package, found {spec.WhichOneof('Type')}")
    inputs, outputs = spec.description.input, spec.description.output
    metadata = read_metadata(path)
    expected_in = metadata.get("input", {}).get("shape")
    got_in = [int(v) for v in inputs[0].type.multiArrayType.shape] if inputs else []
    got_out = [int(v) for v in outputs[0].type.multiArrayType.shape] if outputs else []
    classes = getattr(model, "num_classes", None)
    if got_in != expected_in or (classes and got_out != [1, classes]):
        raise MobilenetsError(
            f"{path}: input {got_in} / output {got_out} do not match the model's {expected_in} / [1, {classes}]"
        )
    if images is not None and tuple(np.asarray(images).shape[1:]) != tuple(got_in[1:]):
        raise MobilenetsError(f"{path}: takes images {got_in[1:]}, given {list(np.asarray(images).shape[1:])}")
    precision = str(metadata.get("precision", "fp32"))
    dequantized = _int8_weight_ops(spec)
    if precision == "int8" and dequantized == 0:
        raise MobilenetsError(f"{path}: its metadata says int8 but the program holds no int8 weights")
    record = DeviceFile(
        format="coreml",
        path=path,
        bytes=file_bytes(path),
        runtime=f"coremltools {ct.__version__} (validated only)",
        precision=precision,
        input=metadata.get("input", {}),
        ran=False,
    )
    if precision == "int8":
        record.notes.append(f"{dequantized} int8 weight tensors (per-channel), activations in float")
    record.notes.append(NOT_RUN if platform.system() != "Darwin" else "not run by mobilenets (validation only)")
    return record


def _int8_weight_ops(spec) -> int:
    """How many weight tensors the program stores in int8 (dequantized at load: ``constexpr_*`` ops)."""
    function = spec.mlProgram.functions["main"]
    return sum(
        (op.type.startswith("constexpr_") and "dequantize" in op.type) or op.type == "constexpr_blockwise_shift_scale"
        for block in function.block_specializations.values()
        for op in block.operations
    )
