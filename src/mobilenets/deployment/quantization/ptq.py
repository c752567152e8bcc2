"""Post-training quantization: ORT's ``quantize_static`` to the int8 graph form, and the checks of the
methods and the int8 file's path that come before any work."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

from mobilenets.core.errors import MobilenetsError
from mobilenets.deployment.onnx import copy_metadata
from mobilenets.deployment.quantization.calibration import ArrayReader, calibration_stride
from mobilenets.deployment.quantization.gptq import WEIGHT_ROUNDINGS, gptq_round_weights
from mobilenets.deployment.quantization.graph_form import (
    constant_scale_nodes,
    float_logits,
    fold_constant_scales,
    prepare_for_quantization,
)

CALIBRATION_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "percentile": CalibrationMethod.Percentile,
    "entropy": CalibrationMethod.Entropy,
}
# min-max: seconds to calibrate; percentile (minutes with ORT's histograms) is the first fallback.
DEFAULT_CALIBRATION_METHOD = "minmax"
DEFAULT_THRESHOLD = 1.0  # accuracy points int8 may lose before we say so and try the fixes
METHODS = ("auto", "ptq", "mixed", "qat")


def check_calibration_method(calibration_method: object) -> None:
    """A name of ``CALIBRATION_METHODS``; a list or other unhashable value is refused too, not a TypeError."""
    if not isinstance(calibration_method, str) or calibration_method not in CALIBRATION_METHODS:
        raise MobilenetsError(
            f"unknown calibration method {calibration_method!r}; choose one of {', '.join(CALIBRATION_METHODS)}"
        )


def check_methods(method: object, calibration_method: object) -> None:
    """``method`` and ``calibration_method`` are known: refused in one line before the ONNX export, the images
    and any folder (a typo found after minutes of work, or after ``--out``'s folder was made, wastes both)."""
    if not isinstance(method, str) or method not in METHODS:
        raise MobilenetsError(f"unknown method {method!r}; choose {', '.join(METHODS[:-1])} or {METHODS[-1]}")
    check_calibration_method(calibration_method)


def int8_out_path(out: object, *, fp32: Path | None = None) -> Path:
    """The int8 file ``out`` names, refused in one line where it cannot be one, before any work.

    From Python ``out`` may be anything: an empty string is refused, never read as "not given" (that is
    None); an existing folder would only fail at the final rename, after calibration, evaluation and timing.
    ``fp32`` is the fp32 model the same command writes (a run's ``model.onnx``), which the int8 file must not
    replace.
    """
    if isinstance(out, os.PathLike):
        out = os.fspath(out)
    if not isinstance(out, str):
        raise MobilenetsError(f"out must be the int8 file's path (a string or pathlib.Path), got {out!r}")
    if not out.strip():
        raise MobilenetsError(
            "out is an empty string: it names no file; name the int8 file (*.onnx), or leave out unset "
            "(None) for the default"
        )
    path = Path(out)
    if path.is_dir():
        raise MobilenetsError(
            f"--out {path}: an existing folder; name the int8 file in it, e.g. {path / 'model_int8.onnx'}"
        )
    if path.suffix != ".onnx":
        raise MobilenetsError(f"--out {path}: name the file *.onnx")
    if fp32 is not None and path.resolve() == fp32.resolve():
        raise MobilenetsError(
            f"--out {path}: the run's fp32 model, which quantize writes too; name the int8 file otherwise, "
            f"e.g. {fp32.with_name('model_int8.onnx')}"
        )
    return path


def quantize_ptq(
    fp32_onnx: Path | str,
    out: Path | str,
    calibration: np.ndarray,
    calibration_method: str = DEFAULT_CALIBRATION_METHOD,
    nodes_to_exclude: Sequence[str] = (),
    description: str = "ptq",
    percentile: float = 99.99,
    weight_rounding: str = "nearest",
) -> Path:
    """int8 QDQ model of ``fp32_onnx``: per-channel int8 weights, uint8 activations calibrated on ``calibration``.

    ``weight_rounding``: ``nearest`` (ORT's), or ``gptq`` (``gptq_round_weights``: same scales, each
    layer's rounding errors compensated through its calibration inputs).
    """
    if weight_rounding not in WEIGHT_ROUNDINGS:
        raise MobilenetsError(
            f"unknown weight rounding {weight_rounding!r}; choose one of {', '.join(WEIGHT_ROUNDINGS)}"
        )
    check_calibration_method(calibration_method)
    if len(calibration) == 0:
        raise MobilenetsError("no calibration images; pass --data DIR or a run directory with training images")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mobilenets-quant-") as work:
        prepared = prepare_for_quantization(Path(fp32_onnx), Path(work) / "prepared.onnx")
        temporary = Path(work) / "int8.onnx"
        # ORT's calibrator prints "Collecting tensor data and making histogram ..." on stdout: not ours to show.
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_static(
                str(prepared),
                str(temporary),
                ArrayReader(calibration),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                # This CPU has AVX-512 VNNI: u8×s8 dot products do not saturate, so the full range is used.
                reduce_range=False,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=[*nodes_to_exclude, *constant_scale_nodes(onnx.load(str(prepared)))],
                calibrate_method=CALIBRATION_METHODS[calibration_method],
                extra_options={
                    "CalibPercentile": percentile,
                    # Min/max merge exactly between slices; histograms are re-binned when merged, which moved
                    # V2's percentile ranges enough to cost 1.6 points of agreement, so they see all images at once.
                    "CalibStridedMinMax": calibration_stride(
                        len(ArrayReader(calibration)), at_most=4 if calibration_method == "minmax" else len(calibration)
                    ),
                },
            )
        quantized = onnx.load(str(temporary))
        if weight_rounding == "gptq":
            gptq_round_weights(onnx.load(str(prepared)), quantized, calibration)
        onnx.save(float_logits(fold_constant_scales(quantized)), str(temporary))
        copy_metadata(
            fp32_onnx,
            temporary,
            quantization=json.dumps(
                {
                    "method": description,
                    "format": "QDQ",
                    "weights": f"int8 per-channel symmetric, {weight_rounding} rounding",
                    "activations": f"uint8 per-tensor, {calibration_method} calibration on {len(calibration)} images",
                    "float_nodes": list(nodes_to_exclude),
                }
            ),
        )
        shutil.move(temporary, out)
    return out
