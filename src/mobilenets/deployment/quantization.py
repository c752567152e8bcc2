"""int8 models that are checked, never silently broken: PTQ, mixed precision and QAT, all to one ONNX form.

The deployed form is always an ONNX Runtime QDQ model: int8 weights quantized per output channel
(per-tensor weights collapse MobileNets' depthwise layers: Krishnamoorthi 2018, https://arxiv.org/abs/1806.08342), uint8 activations calibrated on training
images, BatchNorm already folded into the convolutions by the exporter. Before quantizing, hard-swish,
hard-sigmoid and spatial means are rewritten in a form ORT runs in int8 (``int8_friendly_form``: no float
islands in MobileNetV3), and the classifier keeps float logits (``float_logits``).

- **PTQ**: ``onnxruntime.quantization.quantize_static`` with min-max, percentile or entropy calibration.
- **Mixed precision**: when PTQ loses more than the threshold, the layers whose activations carry the
  largest quantization error (ORT's ``qdq_loss_debug``) are kept in float (``nodes_to_exclude``), and so
  are the stem and the classifier: the first and last layers are where int8 hurts most.
- **QAT**: a short fine-tune of the BN-folded network in PyTorch with fake-quantized weights (the same
  per-channel symmetric int8 grid ORT will use) and fake-quantized activations, whose learned weights then
  go through the very same ORT QDQ path. See docs/deployment.md for why not ``torch.ao`` or PT2E.

After every conversion the int8 model is evaluated next to fp32 on held-out images (``compare``).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from torch import nn

from mobilenets.core.errors import MobilenetsError, check_number
from mobilenets.core.files import atomic_write, atomic_write_text
from mobilenets.core.run_directory import RunDirectory
from mobilenets.data.folders import folder_images
from mobilenets.data.images import ImageLoadError, load_image
from mobilenets.deployment.loading import labels_for_model, named_classes
from mobilenets.deployment.onnx import INPUT_NAME, copy_metadata, export_onnx
from mobilenets.deployment.onnx_runtime import onnx_logits
from mobilenets.deployment.timing import SpeedCheck, median_latency_ms, speed_check, speed_verdict
from mobilenets.models.fusion import fold_batchnorm
from mobilenets.models.preprocessing import Preprocessing

CALIBRATION_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "percentile": CalibrationMethod.Percentile,
    "entropy": CalibrationMethod.Entropy,
}
# min-max: seconds to calibrate; percentile (minutes with ORT's histograms) is the first fallback.
DEFAULT_CALIBRATION_METHOD = "minmax"
DEFAULT_THRESHOLD = 1.0  # accuracy points int8 may lose before we say so and try the fixes
METHODS = ("auto", "ptq", "mixed", "qat")
ACTIVATION_OPS = {"Relu", "Clip", "HardSwish", "HardSigmoid"}


# --------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Post-training quantization
# --------------------------------------------------------------------------------------------------


def prepare_for_quantization(fp32_onnx: Path, out: Path, int8_form: bool = True) -> Path:
    """ORT's recommended pre-processing (BN and constant folding, shapes), on the graph form ORT runs in int8.

    ``int8_form``: hard-swish, hard-sigmoid and spatial means rewritten as ops with int8 kernels
    (``int8_friendly_form``); ``quantize_ptq`` then folds their constant scales away. Off only to
    reproduce the earlier form in benchmarks.
    """
    source = Path(fp32_onnx)
    if int8_form:
        source = out.with_name(out.stem + ".form.onnx")
        onnx.save(int8_friendly_form(onnx.load(str(fp32_onnx))), str(source))
    quant_pre_process(str(source), str(out), skip_symbolic_shape=True)
    return out


# --------------------------------------------------------------------------------------------------
# The graph form ONNX Runtime runs entirely in int8
# --------------------------------------------------------------------------------------------------
#
# ORT's CPU provider has no int8 kernel for HardSigmoid (nor for HardSwish, which the quantizer inlines
# as x·HardSigmoid(x)) and quantizes no ReduceMean: in MobileNetV3 every hard-swish, every SE gate and
# every SE pooling became a float island, DequantizeLinear → op → QuantizeLinear, 39 of each in
# V3-Small, costing more than the int8 convolutions saved (benchmarks/deploy_v3_profile.py). Written as
# the V3 paper defines them (§5.2), hard-swish x·ReLU6(x+3)/6 and hard-sigmoid ReLU6(x+3)/6 need only
# Add and Mul, which ORT runs as QLinearAdd/QLinearMul, and Clip(0, 6), which the quantizer absorbs into
# the uint8 range of the Add. The remaining multiplication by the constant 1/6 is exact on a quantized
# tensor: it is a change of scale, so it is folded into the scale of the DequantizeLinear that reads it.
# A mean over H×W is GlobalAveragePool, which ORT runs as QLinearGlobalAveragePool.

CONSTANT_SCALE_PREFIX = "int8_form_scale/"


def graph_index(graph: onnx.GraphProto) -> tuple[dict, dict, dict[str, list]]:
    """Initializers by name, the node producing each tensor, and the nodes reading each tensor."""
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    producers = {output: node for node in graph.node for output in node.output}
    return {i.name: i for i in graph.initializer}, producers, readers


def int8_friendly_form(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same function with hard-swish/hard-sigmoid as Add/Clip/Mul and spatial ReduceMean as GlobalAveragePool."""
    from onnx import helper, numpy_helper

    graph = model.graph
    initializers, producers, readers = graph_index(graph)
    nodes, constants = [], []

    def constant(name: str, value: float) -> str:
        constants.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        return name

    def attributes(node) -> dict:
        return {a.name: helper.get_attribute_value(a) for a in node.attribute}

    for node in graph.node:
        prefix = node.name or node.output[0]
        if node.op_type == "HardSwish":  # x · ReLU6(x + 3) / 6
            (x,), (y,) = node.input, node.output
            nodes += [
                helper.make_node("Add", [x, constant(f"{prefix}/three", 3.0)], [f"{prefix}/x+3"], name=f"{prefix}/add"),
                helper.make_node(
                    "Clip",
                    [f"{prefix}/x+3", constant(f"{prefix}/zero", 0.0), constant(f"{prefix}/six", 6.0)],
                    [f"{prefix}/relu6"],
                    name=f"{prefix}/relu6",
                ),
                helper.make_node("Mul", [x, f"{prefix}/relu6"], [f"{prefix}/6y"], name=f"{prefix}/mul"),
                helper.make_node(
                    "Mul",
                    [f"{prefix}/6y", constant(f"{prefix}/sixth", 1 / 6)],
                    [y],
                    name=CONSTANT_SCALE_PREFIX + prefix,
                ),
            ]
        elif node.op_type == "HardSigmoid":  # clip(αz + β, 0, 1) = α · clip(z + β/α, 0, 1/α)
            found = attributes(node)
            alpha, beta = float(found.get("alpha", 0.2)), float(found.get("beta", 0.5))
            (z,), (y,) = node.input, node.output
            conv = producers.get(z)
            bias = initializers.get(conv.input[2]) if conv is not None and len(conv.input) == 3 else None
            if (
                bias is not None
                and conv.op_type == "Conv"
                and len(readers.get(z, ())) == 1
                and len(readers.get(bias.name, ())) == 1
            ):
                # The SE's second conv alone reads z: the shift goes into its bias, no Add at all.
                bias.CopyFrom(
                    numpy_helper.from_array(numpy_helper.to_array(bias) + np.float32(beta / alpha), bias.name)
                )
                shifted = z
            else:
                shifted = f"{prefix}/shifted"
                nodes.append(
                    helper.make_node(
                        "Add", [z, constant(f"{prefix}/shift", beta / alpha)], [shifted], name=f"{prefix}/add"
                    )
                )
            nodes += [
                helper.make_node(
                    "Clip",
                    [shifted, constant(f"{prefix}/zero", 0.0), constant(f"{prefix}/top", 1 / alpha)],
                    [f"{prefix}/clipped"],
                    name=f"{prefix}/clip",
                ),
                helper.make_node(
                    "Mul",
                    [f"{prefix}/clipped", constant(f"{prefix}/alpha", alpha)],
                    [y],
                    name=CONSTANT_SCALE_PREFIX + prefix,
                ),
            ]
        elif node.op_type == "ReduceMean" and is_spatial_mean(node, initializers):
            (y,) = node.output
            if attributes(node).get("keepdims", 1):
                nodes.append(helper.make_node("GlobalAveragePool", [node.input[0]], [y], name=f"{prefix}/pool"))
            else:
                nodes += [
                    helper.make_node("GlobalAveragePool", [node.input[0]], [f"{prefix}/pooled"], name=f"{prefix}/pool"),
                    helper.make_node("Flatten", [f"{prefix}/pooled"], [y], name=f"{prefix}/flatten", axis=1),
                ]
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    read = {name for node in nodes for name in node.input}
    kept = [i for i in graph.initializer if i.name in read]  # the means' axes (ORT would warn about them)
    del graph.initializer[:]
    graph.initializer.extend([*kept, *constants])
    return model


def float_logits(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop the QuantizeLinear → DequantizeLinear pair on the model's outputs: the classifier writes float logits.

    Rounding 1000 logits to 256 levels (a step of ~0.15 on ImageNet V2) decides between near-tied classes
    by that rounding alone; ORT's QGemm computes the float output directly at no cost, and the file is
    unchanged (the classifier's weights stay int8). On real-photo crops this alone took V2's top-1 agreement
    with fp32 from 89.3% to 90.9% (BENCHMARKS.md).
    """
    graph = model.graph
    _, producers, readers = graph_index(graph)
    removed: set[int] = set()
    for output in graph.output:
        dequantize = producers.get(output.name)
        quantize = producers.get(dequantize.input[0]) if dequantize is not None else None
        if dequantize is None or dequantize.op_type != "DequantizeLinear" or quantize is None:
            continue
        source = producers.get(quantize.input[0])
        if quantize.op_type != "QuantizeLinear" or source is None or len(readers.get(quantize.output[0], ())) != 1:
            continue
        if len(readers.get(quantize.input[0], ())) != 1:
            continue
        source.output[list(source.output).index(quantize.input[0])] = output.name
        removed |= {id(quantize), id(dequantize)}
    kept = [node for node in graph.node if id(node) not in removed]
    del graph.node[:]
    graph.node.extend(kept)
    return model


def is_spatial_mean(node, initializers: dict) -> bool:
    """A ReduceMean over exactly the two spatial axes of an NCHW tensor (axes as an input, opset ≥ 18)."""
    from onnx import numpy_helper

    if len(node.input) != 2 or node.input[1] not in initializers:
        return False
    return sorted(numpy_helper.to_array(initializers[node.input[1]]).tolist()) in ([2, 3], [-2, -1])


def constant_scale_nodes(model: onnx.ModelProto) -> list[str]:
    """The multiplications by a constant that ``fold_constant_scales`` removes (kept out of quantization)."""
    return [node.name for node in model.graph.node if node.name.startswith(CONSTANT_SCALE_PREFIX)]


def fold_constant_scales(model: onnx.ModelProto) -> onnx.ModelProto:
    """Remove each float ``DequantizeLinear → Mul(c > 0) → QuantizeLinear``: its readers dequantize with scale·c.

    A uint8 tensor q with scale s and zero point z means s·(q − z); multiplied by c it is (s·c)·(q − z),
    so the multiplication needs no op, and no second rounding, at all.
    """
    from onnx import numpy_helper

    graph = model.graph
    initializers, producers, readers = graph_index(graph)
    outputs = {o.name for o in graph.output}
    removed: set[int] = set()
    for node in graph.node:
        if node.op_type != "Mul" or not node.name.startswith(CONSTANT_SCALE_PREFIX):
            continue
        dequantize = producers.get(node.input[0])
        factor = initializers.get(node.input[1])
        quantizes = readers.get(node.output[0], [])
        if (
            dequantize is None
            or dequantize.op_type != "DequantizeLinear"
            or factor is None
            or numpy_helper.to_array(factor).size != 1
            or float(numpy_helper.to_array(factor)) <= 0
            or not quantizes
            or any(q.op_type != "QuantizeLinear" or q.output[0] in outputs for q in quantizes)
            or node.output[0] in outputs
        ):
            continue
        scale = numpy_helper.to_array(initializers[dequantize.input[1]])
        folded = f"{node.name}/folded_scale"
        graph.initializer.append(
            numpy_helper.from_array((scale * numpy_helper.to_array(factor)).astype(scale.dtype), folded)
        )
        for quantize in quantizes:
            for reader in readers.get(quantize.output[0], []):
                reader.input[0], reader.input[1] = dequantize.input[0], folded
                if len(dequantize.input) > 2:
                    if len(reader.input) > 2:
                        reader.input[2] = dequantize.input[2]
                    else:
                        reader.input.append(dequantize.input[2])
            removed.add(id(quantize))
        removed.add(id(node))
        if len(readers.get(dequantize.output[0], [])) == 1:
            removed.add(id(dequantize))
    kept = [node for node in graph.node if id(node) not in removed]
    del graph.node[:]
    graph.node.extend(kept)
    return model


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


# --------------------------------------------------------------------------------------------------
# GPTQ weight rounding
# --------------------------------------------------------------------------------------------------
#
# On torchvision's ImageNet V2, rounding only the weights to int8 (nearest, per channel) already moves
# the top-1 of 10% of real-photo crops: the weights, not the activations, are most of V2's int8 error
# (BENCHMARKS.md, issue 4). GPTQ (Frantar et al. 2022; OBQ, Frantar & Alistarh 2022) rounds one input
# column of a layer at a time and moves each column's rounding error onto the columns not yet rounded,
# weighted by the inverse Hessian H = Σ xxᵀ of the layer's inputs on calibration images, so that the
# layer's *outputs* change least. The scales stay ORT's, so the file, its size and its speed are unchanged.

WEIGHT_ROUNDINGS = ("nearest", "gptq")


def layer_input_hessians(
    graph_model: onnx.ModelProto, layers: Sequence, images: np.ndarray, batch_size: int = 4
) -> list[torch.Tensor]:
    """H = Σ xxᵀ of each Conv/Gemm's input over ``images`` (one k²×k² per channel for a depthwise conv)."""
    import onnxruntime as ort

    augmented = copy.deepcopy(graph_model)
    present = {o.name for o in augmented.graph.output}
    for name in dict.fromkeys(node.input[0] for node in layers):
        if name not in present:
            augmented.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor
    options.enable_mem_pattern = False  # a memory plan for ~100 graph outputs costs more than it saves
    session = ort.InferenceSession(augmented.SerializeToString(), options, providers=["CPUExecutionProvider"])
    wanted = [node.input[0] for node in layers]
    hessians: list = [None] * len(layers)
    for start in range(0, len(images), batch_size):
        values = dict(zip(wanted, session.run(wanted, {INPUT_NAME: images[start : start + batch_size]}), strict=True))
        for index, node in enumerate(layers):
            x = torch.from_numpy(values[node.input[0]])
            if node.op_type == "Gemm":
                h = (x.T @ x)[None]
            else:
                found = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
                patches = nn.functional.unfold(
                    x,
                    found["kernel_shape"],
                    dilation=found.get("dilations", [1, 1]),
                    padding=found.get("pads", [0, 0, 0, 0])[:2],
                    stride=found.get("strides", [1, 1]),
                )
                if found.get("group", 1) == 1:
                    columns = patches.transpose(1, 2).reshape(-1, patches.shape[1])
                    h = (columns.T @ columns)[None]
                else:
                    per_channel = patches.view(x.shape[0], x.shape[1], -1, patches.shape[-1])
                    h = torch.einsum("ncil,ncjl->cij", per_channel, per_channel)
            h = h.double()
            hessians[index] = h if hessians[index] is None else hessians[index] + h
        del values
    return hessians


def gptq_round(weight: torch.Tensor, hessian: torch.Tensor, scale: torch.Tensor, damping: float = 0.01) -> torch.Tensor:
    """int8 values of ``weight`` (rows: output channels, per-row ``scale``), rounded column by column.

    ``hessian`` is (1, K, K) shared by all rows, or (rows, K, K) for a depthwise layer. A 1% damping of the
    diagonal keeps the inverse stable where an input is constant on the calibration images.
    """
    w, h = weight.double().clone(), hessian.double().clone()
    diagonal = torch.diagonal(h, dim1=1, dim2=2)
    diagonal[diagonal == 0] = 1.0
    diagonal += damping * diagonal.mean(dim=1, keepdim=True)
    upper = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    s, q = scale.double(), torch.zeros_like(w)
    for j in range(w.shape[1]):
        q[:, j] = torch.clamp(torch.round(w[:, j] / s), -127, 127)
        error = (w[:, j] - q[:, j] * s) / upper[:, j, j]
        w[:, j + 1 :] -= error[:, None] * upper[:, j, j + 1 :]
    return q.to(torch.int8)


def gptq_round_weights(prepared: onnx.ModelProto, quantized: onnx.ModelProto, calibration: np.ndarray) -> int:
    """Re-round, in place, every per-channel int8 weight of ``quantized`` (ORT's QDQ model of ``prepared``)
    with GPTQ, from the fp32 layer inputs of ``prepared`` on ``calibration``. Returns the layers changed."""
    floats = {i.name: i for i in prepared.graph.initializer}
    ints = {i.name: i for i in quantized.graph.initializer}
    layers, names = [], []
    for node in prepared.graph.node:
        weight = node.input[1] if node.op_type in ("Conv", "Gemm") and len(node.input) > 1 else ""
        scale = ints.get(f"{weight}_scale")
        if f"{weight}_quantized" in ints and weight in floats and scale is not None and len(scale.dims) == 1:
            layers.append(node)
            names.append(weight)
    write_gptq_weights(floats, ints, names, layer_input_hessians(prepared, layers, calibration))
    return len(names)


def write_gptq_weights(floats: dict, ints: dict, names: Sequence[str], hessians: Sequence[torch.Tensor]) -> None:
    """Replace each ``NAME_quantized`` initializer in ``ints`` by GPTQ's rounding of the float ``NAME``."""
    from onnx import numpy_helper

    for name, hessian in zip(names, hessians, strict=True):
        w = torch.from_numpy(numpy_helper.to_array(floats[name]).copy())
        scale = torch.from_numpy(numpy_helper.to_array(ints[f"{name}_scale"]).astype(np.float64))
        values = gptq_round(w.reshape(w.shape[0], -1), hessian, scale).reshape(w.shape).numpy()
        ints[f"{name}_quantized"].CopyFrom(numpy_helper.from_array(values, f"{name}_quantized"))


# --------------------------------------------------------------------------------------------------
# Evaluation: int8 next to fp32
# --------------------------------------------------------------------------------------------------


@dataclass
class Comparison:
    """int8 against fp32 on the same images; accuracies are fractions (None without labels)."""

    images: int
    fp32_accuracy: float | None
    int8_accuracy: float | None
    agreement: float
    fp32_size_bytes: int
    int8_size_bytes: int
    fp32_latency_ms: float | None = None
    int8_latency_ms: float | None = None
    latency_batch: int | None = None

    @property
    def drop_points(self) -> float:
        """Accuracy points lost (agreement with fp32 stands in for accuracy on unlabelled images).

        Rounded to 1e-9 points: accuracies are counts over a finite set, and 0.84 − 0.83 must compare as
        exactly 1 point against a 1-point threshold ("exceeds" means more than), not 1.0000000000000009.
        """
        if self.fp32_accuracy is not None and self.int8_accuracy is not None:
            return round(100.0 * (self.fp32_accuracy - self.int8_accuracy), 9)
        return round(100.0 * (1.0 - self.agreement), 9)

    def to_dict(self) -> dict:
        return {**asdict(self), "drop_points": round(self.drop_points, 3)}






def compare(
    fp32_onnx: Path | str, int8_onnx: Path | str, evaluation: ImageSet, latency_batch: int | None = 1
) -> Comparison:
    fp32 = onnx_logits(fp32_onnx, evaluation.images).argmax(1)
    int8 = onnx_logits(int8_onnx, evaluation.images).argmax(1)
    labels = evaluation.labels
    comparison = Comparison(
        images=len(evaluation),
        fp32_accuracy=None if labels is None else float((fp32 == labels).mean()),
        int8_accuracy=None if labels is None else float((int8 == labels).mean()),
        agreement=float((fp32 == int8).mean()),
        fp32_size_bytes=Path(fp32_onnx).stat().st_size,
        int8_size_bytes=Path(int8_onnx).stat().st_size,
    )
    if latency_batch:
        comparison.latency_batch = latency_batch
        comparison.fp32_latency_ms = median_latency_ms(fp32_onnx, evaluation.images, latency_batch)
        comparison.int8_latency_ms = median_latency_ms(int8_onnx, evaluation.images, latency_batch)
    return comparison










# --------------------------------------------------------------------------------------------------
# Where the error comes from, and keeping those layers in float
# --------------------------------------------------------------------------------------------------


@dataclass
class LayerError:
    """Signal-to-quantization-noise ratio (dB, higher is better) of one activation tensor."""

    tensor: str
    node: str
    op_type: str
    sqnr_db: float  # int8 model's activation vs fp32 model's: error accumulated up to this layer
    local_sqnr_db: float  # the tensor against its own quantize→dequantize (clipping by ReLU/clip included)
    loss_db: float  # SQNR vs fp32 lost in this layer: its input's sqnr_db minus its own
    layer: str = ""  # the model's module path (``blocks.3.expand.conv``), which ``node`` (``node_Conv_809``) is not

    @property
    def where(self) -> str:
        return f"{self.layer} ({self.op_type}, ONNX node {self.node})" if self.layer else f"{self.node} ({self.op_type})"

    def to_dict(self) -> dict:
        return asdict(self)


def layer_errors(fp32_onnx: Path | str, int8_onnx: Path | str, images: np.ndarray) -> list[LayerError]:
    """Per-tensor quantization error (ORT ``qdq_loss_debug``), the layers that lose the most SQNR first."""
    from onnxruntime.quantization import qdq_loss_debug as debug

    with tempfile.TemporaryDirectory(prefix="mobilenets-qdebug-") as work:
        prepared = prepare_for_quantization(Path(fp32_onnx), Path(work) / "fp32.onnx")
        float_aug, int8_aug = Path(work) / "fp32_aug.onnx", Path(work) / "int8_aug.onnx"
        debug.modify_model_output_intermediate_tensors(str(prepared), str(float_aug))
        debug.modify_model_output_intermediate_tensors(str(int8_onnx), str(int8_aug))
        float_acts = debug.collect_activations(str(float_aug), ArrayReader(images))
        int8_acts = debug.collect_activations(str(int8_aug), ArrayReader(images))
        errors = debug.compute_activation_error(debug.create_activation_matching(int8_acts, float_acts))
        graph = onnx.load(str(prepared)).graph
        producers = {output: node for node in graph.node for output in node.output}
        weights = {initializer.name for initializer in graph.initializer}
    accumulated = {tensor: float(error["xmodel_err"]) for tensor, error in errors.items() if "xmodel_err" in error}
    found = []
    for tensor, sqnr in accumulated.items():
        node = producers.get(tensor)
        if node is None:
            continue
        before = min((accumulated[i] for i in node.input if i in accumulated), default=sqnr)
        local = float(errors[tensor].get("qdq_err", np.inf))
        found.append(
            LayerError(tensor, node.name, node.op_type, sqnr, local, before - sqnr, model_layer(node, producers, weights))
        )
    return sorted(found, key=lambda e: -e.loss_db)


def model_layer(node, producers: dict, weights: set[str], depth: int = 3) -> str:
    """The module path of the layer an ONNX node computes, read from its weight's name (the exporter keeps
    parameter names: ``blocks.3.expand.conv.weight``); an activation or pooling takes its producer's."""
    for name in node.input[1:]:
        if name in weights and name.endswith(".weight"):
            return name.removesuffix(".weight")
    if depth and node.input and node.input[0] in producers:
        return model_layer(producers[node.input[0]], producers, weights, depth - 1)
    return ""


def float_nodes_for(
    fp32_onnx: Path | str, early_convs: int, errors: Sequence[LayerError] = (), worst: int = 0
) -> list[str]:
    """Nodes to keep in float: the first ``early_convs`` convolutions, and the producers of the ``worst`` tensors.

    Quantization noise entering the first layers is carried and amplified by all the rest, so keeping
    the stem and the first block(s) in float recovers the most accuracy per float MAC.
    An activation (ReLU, clip, hard-swish) goes with the convolution feeding it: ORT fuses the pair.
    """
    with tempfile.TemporaryDirectory(prefix="mobilenets-mixed-") as work:
        graph = onnx.load(str(prepare_for_quantization(Path(fp32_onnx), Path(work) / "fp32.onnx"))).graph
    producers = {output: node for node in graph.node for output in node.output}
    chosen, convs = [], 0
    for node in graph.node:
        if node.op_type == "Conv":
            if convs == early_convs:
                break
            convs += 1
        chosen.append(node.name)
    for error in errors[:worst]:
        chosen.append(error.node)
        node = producers.get(error.tensor)
        if node is not None and node.op_type in ACTIVATION_OPS and node.input[0] in producers:
            chosen.append(producers[node.input[0]].name)
    return list(dict.fromkeys(chosen))


# --------------------------------------------------------------------------------------------------
# Quantization-aware training: fake-quantized fine-tuning of the BN-folded network
# --------------------------------------------------------------------------------------------------


class FakeQuantizeWeight(nn.Module):
    """Per-output-channel symmetric int8 fake quantization: the grid ORT's per-channel QDQ weights use."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        reduce = tuple(range(1, weight.dim()))
        scale = (weight.detach().abs().amax(dim=reduce) / 127.0).clamp_min(1e-8)
        zero_point = torch.zeros(weight.shape[0], dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(weight, scale, zero_point, 0, -127, 127)


class FakeQuantizeActivation(nn.Module):
    """Per-tensor uint8 fake quantization with a moving-average min/max (the straight-through estimator)."""

    def __init__(self, momentum: float = 0.01) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("low", torch.tensor(float("inf")))
        self.register_buffer("high", torch.tensor(float("-inf")))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            low, high = x.detach().min().clamp(max=0.0), x.detach().max().clamp(min=0.0)
            if torch.isinf(self.low):
                self.low.copy_(low), self.high.copy_(high)
            else:
                self.low.lerp_(low, self.momentum), self.high.lerp_(high, self.momentum)
        scale = float((self.high - self.low).clamp_min(1e-8) / 255.0)
        zero_point = int(torch.clamp(torch.round(-self.low / scale), 0, 255))
        return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, 0, 255)




def attach_fake_quantization(model: nn.Module) -> list[torch.utils.hooks.RemovableHandle]:
    """Fake-quantize every conv/linear weight and the outputs of the ops ORT quantizes (conv blocks, adds, SE)."""
    from torch.nn.utils import parametrize

    from mobilenets.models.layers import ConvBNAct, InvertedResidual, SqueezeExcitation

    handles = []
    for module in list(model.modules()):
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            parametrize.register_parametrization(module, "weight", FakeQuantizeWeight())
        if isinstance(module, (ConvBNAct, InvertedResidual, SqueezeExcitation)):
            module.output_quantizer = FakeQuantizeActivation()
            handles.append(module.register_forward_hook(lambda m, _inputs, output: m.output_quantizer(output)))
    return handles


def detach_fake_quantization(model: nn.Module, handles: list) -> nn.Module:
    """Back to a plain float network holding the QAT-learned weights (ORT re-quantizes them identically)."""
    from torch.nn.utils import parametrize

    for handle in handles:
        handle.remove()
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
        if hasattr(module, "output_quantizer"):
            del module.output_quantizer
    return model


def qat_finetune(
    model: nn.Module,
    train: ImageSet,
    epochs: int = 2,
    learning_rate: float = 1e-4,
    batch_size: int = 32,
    seed: int = 0,
    progress=None,
) -> nn.Module:
    """Fine-tune a BN-folded copy of ``model`` under fake quantization; returns a float model to export.

    BatchNorm is folded before training (its statistics are frozen, as torchvision's QAT recipe does after
    a few epochs), so the weights that are fake-quantized are exactly the folded weights ORT quantizes.
    With labels the loss is cross-entropy; without (a flat folder) the fp32 model is the teacher and the
    loss is the KL divergence to its predictions, so QAT needs no labels.
    """
    torch.manual_seed(seed)
    teacher = model.eval() if train.labels is None else None
    qat_model = fold_batchnorm(model)
    handles = attach_fake_quantization(qat_model)
    optimizer = torch.optim.AdamW(qat_model.parameters(), lr=learning_rate, weight_decay=0.0)
    images = torch.from_numpy(train.images)
    labels = torch.from_numpy(train.labels) if train.labels is not None else None
    steps = epochs * max(1, len(images) // batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    generator = torch.Generator().manual_seed(seed)
    qat_model.train()
    step = 0
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(order) - batch_size + 1 if len(order) >= batch_size else 1, batch_size):
            index = order[start : start + batch_size]
            batch = images[index]
            flip = torch.rand(len(batch), generator=generator) < 0.5
            batch = torch.where(flip.view(-1, 1, 1, 1), batch.flip(3), batch)
            logits = qat_model(batch)
            if teacher is None:
                loss = nn.functional.cross_entropy(logits, labels[index])
            else:
                with torch.no_grad():
                    target = teacher(batch).log_softmax(1)
                loss = nn.functional.kl_div(logits.log_softmax(1), target, log_target=True, reduction="batchmean")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            if progress is not None:
                progress(step, steps, float(loss.detach()))
    qat_model.eval()
    return detach_fake_quantization(qat_model, handles)


# --------------------------------------------------------------------------------------------------
# The whole decision, for a model and its data
# --------------------------------------------------------------------------------------------------


@dataclass
class QuantizationResult:
    """The chosen int8 model and every attempt that led to it."""

    path: Path
    method: str
    comparison: Comparison
    threshold: float
    attempts: list[dict] = field(default_factory=list)
    worst_layers: list[LayerError] = field(default_factory=list)
    speed: list[SpeedCheck] = field(default_factory=list)

    @property
    def within_threshold(self) -> bool:
        return self.comparison.drop_points <= self.threshold

    def figures(self) -> dict:
        """The headline numbers, as ``metrics.json`` keys (accuracies are fractions; None when unlabelled)."""
        c = self.comparison
        return {
            "fp32_val_accuracy": c.fp32_accuracy,
            "int8_val_accuracy": c.int8_accuracy,
            "int8_agreement": c.agreement,
            "int8_drop_points": round(c.drop_points, 3),
            "int8_within_threshold": self.within_threshold,
            "int8_method": self.method,
            "int8_path": str(self.path),
            "int8_size_bytes": c.int8_size_bytes,
            "fp32_onnx_size_bytes": c.fp32_size_bytes,
            "fp32_onnx_latency_ms": c.fp32_latency_ms,
            "int8_latency_ms": c.int8_latency_ms,
            "latency_batch": c.latency_batch,
            "int8_eval_images": c.images,
            **{f"int8_speedup_batch{check.batch}": round(check.speedup, 3) for check in self.speed},
            **{
                f"int8_speedup_band_batch{check.batch}": [round(check.low, 3), round(check.high, 3)]
                for check in self.speed
                if check.low is not None
            },
            # Slower beyond the noise band of the repeated runs: a verdict the next run would not reverse.
            "int8_slower_than_fp32": any(check.clearly_slower for check in self.speed) if self.speed else None,
        }

    def to_dict(self) -> dict:
        return {
            "path": str(self.path),
            "method": self.method,
            "threshold_points": self.threshold,
            "within_threshold": self.within_threshold,
            **self.comparison.to_dict(),
            "attempts": self.attempts,
            "worst_layers": [e.to_dict() for e in self.worst_layers[:10]],
            "speed": [check.to_dict() for check in self.speed],
        }


def quantize_model(
    model: nn.Module,
    out: Path | str,
    calibration: ImageSet,
    evaluation: ImageSet,
    method: str = "auto",
    calibration_method: str = DEFAULT_CALIBRATION_METHOD,
    threshold: float = DEFAULT_THRESHOLD,
    train: ImageSet | Callable[[], ImageSet] | None = None,
    qat_epochs: int = 2,
    fp32_onnx: Path | str | None = None,
    report=print,
    speed_batches: Sequence[int] = (1, 32),
) -> QuantizationResult:
    """PTQ; if it loses more than ``threshold`` points: mixed precision, then QAT (``auto``), best kept.

    ``method``: ``ptq`` (PTQ only, with the diagnosis when it falls short), ``mixed`` (PTQ then mixed
    precision), ``qat`` (QAT only), ``auto`` (PTQ → mixed precision → QAT until one is within threshold).
    """
    check_methods(method, calibration_method)
    out = Path(out)
    work = Path(tempfile.mkdtemp(prefix="mobilenets-quantize-"))
    try:
        if fp32_onnx is None:
            fp32_onnx = export_onnx(model, work / "fp32.onnx")
        candidates: list[tuple[str, Path, Comparison]] = []

        def attempt(name: str, path: Path) -> Comparison:
            comparison = compare(fp32_onnx, path, evaluation)
            candidates.append((name, path, comparison))
            report(describe(name, comparison))
            return comparison

        fitted: dict[str, np.ndarray] = {}

        def images_for(calibration_method: str) -> np.ndarray:  # histograms: what fits in memory, said once
            if calibration_method == "minmax":
                return calibration.images
            if "histogram" not in fitted:
                fitted["histogram"] = images_that_fit(calibration.images, fp32_onnx, calibration_method, report)
            return fitted["histogram"]

        worst: list[LayerError] = []
        labelled = not (train is None and calibration.labels is None)  # without labels auto stops before QAT
        if method in ("auto", "ptq", "mixed"):
            ptq = quantize_ptq(fp32_onnx, work / "ptq.onnx", images_for(calibration_method), calibration_method)
            if attempt(f"ptq ({calibration_method})", ptq).drop_points > threshold:
                worst = layer_errors(fp32_onnx, ptq, calibration.images[:32])
                report(warn_drop(candidates[-1][2], threshold, worst, method, labelled=labelled))
            if method in ("auto", "mixed") and candidates[-1][2].drop_points > threshold:
                best_calibration = calibration_method
                for name, options in fallbacks(calibration_method, worst):
                    if name.startswith("ptq"):
                        candidate = quantize_ptq(
                            fp32_onnx, work / "retry.onnx", images_for(options["calibration_method"]), **options
                        )
                        if attempt(name, candidate).drop_points < candidates[0][2].drop_points:
                            best_calibration = options["calibration_method"]  # mixed precision builds on the better one
                        if candidates[-1][2].drop_points <= threshold:
                            break
                        continue
                    float_nodes = float_nodes_for(fp32_onnx, **options)
                    candidate = quantize_ptq(
                        fp32_onnx,
                        work / f"mixed{len(candidates)}.onnx",
                        images_for(best_calibration),
                        best_calibration,
                        nodes_to_exclude=float_nodes,
                        description=f"ptq ({best_calibration}, GPTQ weights), {len(float_nodes)} nodes kept in float",
                        # Where rounding to nearest lost too much, the weights are most of the error (V2).
                        weight_rounding="gptq",
                    )
                    if (
                        attempt(
                            f"{name}, {best_calibration}, GPTQ weights: {len(float_nodes)} nodes in float", candidate
                        ).drop_points
                        <= threshold
                    ):
                        break
        if method == "auto" and not labelled and min(c.drop_points for _, _, c in candidates) > threshold:
            # Distilling fp32 without labels lost to PTQ on MobileNetV2 (63% against 92.5% agreement on
            # held-out crops, BENCHMARKS.md) and took most of the command's time: auto stops here.
            report("QAT skipped: the images have no labels to fine-tune on; pass --method qat to run it anyway")
        elif method == "qat" or (method == "auto" and min(c.drop_points for _, _, c in candidates) > threshold):
            qat_data = (train() if callable(train) else train) or calibration
            how = (
                "cross-entropy on labels"
                if qat_data.labels is not None
                else "distilling fp32's predictions (no labels)"
            )
            report(
                f"QAT: fine-tuning {qat_epochs} epoch(s) on {len(qat_data)} images with fake quantization, {how} ..."
            )
            per_epoch = max(1, len(qat_data) // 32)  # qat_finetune's steps per epoch at its batch of 32

            def progress(step: int, steps: int, loss: float) -> None:
                if step % per_epoch == 0:
                    report(f"QAT: epoch {step // per_epoch}/{qat_epochs} done (loss {loss:.4f})")

            tuned = qat_finetune(model, qat_data, epochs=qat_epochs, progress=progress)
            qat_fp32 = export_onnx(tuned, work / "qat_fp32.onnx")
            copy_metadata(fp32_onnx, qat_fp32)
            qat = quantize_ptq(
                qat_fp32, work / "qat.onnx", images_for(calibration_method), calibration_method, description="qat"
            )
            attempt("qat", qat)
        if not candidates:
            raise MobilenetsError("nothing was quantized")
        # The most accurate int8 model; among equals, the one with the fewest float layers (listed first).
        # Float layers cost size: an attempt more than 25% larger than the plain int8 file (V2's "worst
        # layers in float" made 5.15 MB against 3.92) is kept only if nothing smaller was made.
        smallest = min(c[2].int8_size_bytes for c in candidates)
        compact = [c for c in candidates if c[2].int8_size_bytes <= 1.25 * smallest]
        name, path, comparison = min(compact, key=lambda c: round(c[2].drop_points, 6))
        if comparison.drop_points > threshold:
            report(
                f"WARNING: no int8 model is within {threshold:g} points of fp32; keeping the best ({name}, "
                f"{comparison.drop_points:.2f} points lost)"
            )
        speed = []
        if comparison.latency_batch:  # the verdict at batch 1 and 32, measured on the chosen model
            speed = speed_check(fp32_onnx, path, evaluation.images, speed_batches)
            architecture = getattr(getattr(model, "architecture", None), "name", None)
            report(speed_verdict(speed, architecture))
        out.parent.mkdir(parents=True, exist_ok=True)
        # Never a partial file under the final name (Ctrl-C, a full disk): the previous int8 model stays.
        atomic_write(out, lambda temporary: shutil.copyfile(path, temporary), needed_bytes=path.stat().st_size)
        return QuantizationResult(
            out,
            name,
            comparison,
            threshold,
            attempts=[{"method": n, **c.to_dict()} for n, _, c in candidates],
            worst_layers=worst,
            speed=speed,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def fallbacks(calibration_method: str, worst: Sequence[LayerError]) -> list[tuple[str, dict]]:
    """What to try, cheapest first, when PTQ loses too much: another calibration, then float layers."""
    tries = []
    if calibration_method != "percentile":
        tries.append(("ptq (percentile)", {"calibration_method": "percentile"}))
    tries.append(("mixed precision (stem and first block)", {"early_convs": 3}))
    tries.append(
        ("mixed precision (first blocks and worst layers)", {"early_convs": 6, "errors": list(worst), "worst": 4})
    )
    return tries


def describe(name: str, c: Comparison) -> str:
    if c.fp32_accuracy is not None:
        accuracy = f"top-1 fp32 {100 * c.fp32_accuracy:.2f}% int8 {100 * c.int8_accuracy:.2f}% "
    else:
        accuracy = "(unlabelled: accuracy = agreement) "
    latency = ""
    if c.fp32_latency_ms is not None:
        latency = f", batch {c.latency_batch} latency fp32 {c.fp32_latency_ms:.1f} ms int8 {c.int8_latency_ms:.1f} ms"
    return (
        f"{name}: {accuracy}agreement {100 * c.agreement:.2f}% on {c.images} images, "
        f"size {c.fp32_size_bytes / 1e6:.2f} MB -> {c.int8_size_bytes / 1e6:.2f} MB{latency}"
    )


def warn_drop(
    c: Comparison, threshold: float, worst: Sequence[LayerError], method: str = "ptq", *, labelled: bool = True
) -> str:
    """The warning after a first attempt that loses too much; ``method`` says whether the fixes come next, and
    ``labelled`` whether ``auto`` goes on to QAT (without labels it stops before it)."""
    layers = "\n".join(
        f"    {e.where}: loses {e.loss_db:.1f} dB of SQNR vs fp32 (down to {e.sqnr_db:.1f} dB)"
        for e in worst[:5]
    )
    if labelled:
        auto = "  Trying the fixes next: another calibration, layers in float (mixed precision), then QAT."
        other = (
            "  Fixes: keep those layers in float (--method mixed), or quantization-aware training (--method qat); "
            "--method auto (the default) tries both."
        )
    else:
        auto = (
            "  Trying the fixes next: another calibration, then layers in float (mixed precision); QAT is left "
            "out: these images have no labels (--method qat runs it anyway, distilling fp32)."
        )
        other = (
            "  Fixes: keep those layers in float (--method mixed, or auto, the default, which tries that), or "
            "quantization-aware training (--method qat; without labels it distils fp32's predictions)."
        )
    fixes = {
        "auto": auto,
        "mixed": "  Trying the fixes next: another calibration, then layers in float (mixed precision).",
    }.get(method, other)
    return (
        f"WARNING: int8 loses {c.drop_points:.2f} points (threshold {threshold:g}). "
        f"Layers with the largest quantization error:\n{layers}\n{fixes}"
    )


# --------------------------------------------------------------------------------------------------
# Run directories (the training command calls this for `mobilenets train --quantize`)
# --------------------------------------------------------------------------------------------------


def read_split(run_dir: Path) -> dict:
    path = Path(run_dir) / "split.json"
    if not path.exists():
        raise MobilenetsError(
            f"{path}: not found; quantize a run directory written by `mobilenets train`, or pass --data DIR"
        )
    return RunDirectory(run_dir).split_record()


def quantize_run(
    run_dir: Path,
    method: str = "auto",
    threshold: float = DEFAULT_THRESHOLD,
    calibration_images: int = 256,
    calibration_method: str = DEFAULT_CALIBRATION_METHOD,
    qat_epochs: int = 2,
    max_val_images: int = 2000,
    max_qat_images: int = 1024,
    out: Path | None = None,
    report=print,
) -> dict:
    """Quantize a training run to ``out`` (default ``RUN_DIR/model_int8.onnx``) and merge the figures into
    ``metrics.json``; ``quantization.json`` records which file it wrote (``export --int8`` keeps that one).

    Calibration images come from the run's training split, evaluation from its validation split.
    Returns ``fp32_val_accuracy``/``int8_val_accuracy`` (fractions), ``int8_size_bytes``, ``int8_method``,
    latencies and the attempts made.
    """
    from mobilenets.core.files import check_writable
    from mobilenets.deployment.device_files import pending_path
    from mobilenets.models.weights import load_model

    # The command line checks its flags; Python callers reach here directly, and no value is replaced.
    check_methods(method, calibration_method)
    check_number("threshold", threshold, at_least=0)
    for name, count in (
        ("calibration_images", calibration_images),
        ("qat_epochs", qat_epochs),
        ("max_val_images", max_val_images),
        ("max_qat_images", max_qat_images),
    ):
        check_number(name, count, at_least=1, whole=True)
    run = RunDirectory(run_dir)
    run_dir = run.path
    run.require(RunDirectory.MODEL, needed_by="quantize")
    out = run.onnx_int8 if out is None else int8_out_path(out, fp32=run.onnx)
    split = read_split(run_dir)
    # Both are written after minutes of work: a read-only place must be found out first, without making
    # anything; quantize_model makes out's folder when the chosen file is written.
    check_writable(run_dir, "RUN_DIR", create=False)
    check_writable(out.parent, create=False)
    model = load_model(run.model)
    preprocessing = Preprocessing.from_dict(model.weights_metadata.get("preprocessing", {}))
    train_items = [tuple(item) for item in split["train"]]
    val_items = sample([tuple(item) for item in split["val"]], max_val_images, seed=1)
    if not val_items:
        raise MobilenetsError(f"{run_dir}/split.json: empty validation split; int8 cannot be checked")
    calibration_items = sample(train_items, calibration_images)
    calibration = load_images([p for p, _ in calibration_items], None, preprocessing, "train split")
    evaluation = load_images([p for p, _ in val_items], [y for _, y in val_items], preprocessing, "val split")
    qat_items = sample(train_items, max_qat_images, seed=2)

    def train() -> ImageSet:  # loaded only if QAT runs: a whole split at 224 px would not fit in memory
        return load_images([p for p, _ in qat_items], [y for _, y in qat_items], preprocessing, "train split")

    fp32_onnx = export_onnx(model, run.onnx)
    # The chosen file takes its name only beside its records (quantization.json, metrics.json), after the
    # int8 engine's calibration: a Ctrl-C before then leaves the previous int8 model and its records as
    # they were, never a new file described by the old ones.
    pending = pending_path(out)
    result = quantize_model(
        model,
        pending,
        calibration,
        evaluation,
        method=method,
        calibration_method=calibration_method,
        threshold=threshold,
        train=train,
        qat_epochs=qat_epochs,
        fp32_onnx=fp32_onnx,
        report=report,
    )
    try:
        engine_figures = calibrate_int8_engine(model, run_dir, calibration, evaluation, fp32_onnx, threshold, report)
        # Absolute in the records: a relative --out read from another working folder would name another file.
        result.path = Path(os.path.abspath(out))
        figures = result.figures()
        figures["int8_val_images"] = figures.pop("int8_eval_images")
        figures.update(engine_figures)
        os.replace(pending, out)
    finally:
        pending.unlink(missing_ok=True)
    atomic_write_text(run_dir / "quantization.json", json.dumps(result.to_dict(), indent=2))
    RunDirectory(run_dir).merge_metrics(figures)
    return figures


def quantize_folder(
    *,
    source,
    data: Path,
    out: Path | None = None,
    method: str = "auto",
    calibration_images: int = 256,
    calibration_method: str = DEFAULT_CALIBRATION_METHOD,
    threshold: float = DEFAULT_THRESHOLD,
    qat_epochs: int = 2,
    max_val_images: int = 2000,
    report=print,
) -> dict:
    """Weights (a ``loading.ModelSource``) + a folder: calibrate on a sample of it, evaluate on the rest.

    A class folder is matched to the model's classes by name (``labels_for_model``); a flat folder
    measures agreement with fp32. The int8 file goes to ``out`` (default ``./NAME_int8.onnx``).
    """
    from mobilenets.core.files import check_writable
    from mobilenets.deployment.loading import load_source_model

    check_methods(method, calibration_method)
    out = None if out is None else int8_out_path(out)
    model = load_source_model(source, report=report)
    out = out if out is not None else Path(f"{source.stem(model)}_int8.onnx")
    check_writable(out.parent, create=False)  # made by quantize_model when the chosen file is written
    preprocessing = Preprocessing.from_dict(model.weights_metadata.get("preprocessing", {}))
    paths, labels, classes = folder_images(data)
    if classes is not None:
        labels = labels_for_model(data, classes, labels, named_classes(model))
    items = list(zip(paths, labels if labels is not None else [None] * len(paths), strict=True))
    calibration_items = sample(items, calibration_images)
    held_out = [item for item in items if item not in calibration_items]
    evaluation_items = sample(held_out if len(held_out) >= 20 else items, max_val_images, seed=1)
    labelled = labels is not None
    calibration = load_images([p for p, _ in calibration_items], None, preprocessing, str(data))
    evaluation = load_images(
        [p for p, _ in evaluation_items], [y for _, y in evaluation_items] if labelled else None, preprocessing, "eval"
    )
    train = None
    if method in ("qat", "auto") and labelled:
        train = load_images([p for p, _ in calibration_items], [y for _, y in calibration_items], preprocessing, "qat")
    result = quantize_model(
        model,
        out,
        calibration,
        evaluation,
        method=method,
        calibration_method=calibration_method,
        threshold=threshold,
        train=train,
        qat_epochs=qat_epochs,
        report=report,
    )
    return {**result.figures(), "attempts": result.attempts}


def calibrate_int8_engine(
    model: nn.Module,
    run_dir: Path,
    calibration: ImageSet,
    evaluation: ImageSet,
    fp32_onnx: Path,
    threshold: float = DEFAULT_THRESHOLD,
    report=print,
) -> dict:
    """mobilenets' own int8 engine (``int8_engine``) for this run, calibrated on the same images as the
    ONNX model, checked on the same validation images, and kept as ``RUN_DIR/int8_engine.json``.
    Skipped (with a line saying why) when the compiled kernels are unavailable or the network has a
    layer the engine does not implement; the ONNX int8 model is unaffected."""
    from mobilenets import kernels
    from mobilenets.deployment.int8_engine import check_engine, save_calibration

    if not kernels.int8_available():
        report("int8 engine: skipped (the compiled CPU kernels are unavailable); the ONNX int8 model is the int8 path")
        return {}
    try:
        engine, figures = check_engine(
            model,
            calibration.images,
            evaluation.images,
            evaluation.labels,
            fp32_onnx,
            report=report,
            threshold=threshold,
        )
    except MobilenetsError as error:
        report(f"int8 engine: skipped ({error})")
        return {}
    save_calibration(engine, model, run_dir)
    return figures


