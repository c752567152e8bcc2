"""LiteRT (TensorFlow Lite) ``.tflite`` files for phones, each run and checked in ``ai_edge_litert``.

- fp32: ``litert_torch.convert`` of the PyTorch model (no TensorFlow), with NHWC input
  (``litert_torch.to_channel_last_io``): a device feeds an HWC image with a batch axis, no transpose.
  One program per batch size (batch 1, what a device runs).
- int8: ``ai_edge_quantizer``'s static recipe (int8 weights per channel, int8 activations calibrated on
  the given images: min and max over all of them, ``calibrated_ranges``) on the fp32 file, with HARD_SWISH
  left in float: LiteRT's XNNPACK delegate does not take int8 hard-swish, and every int8 hard-swish would
  split a V3 graph into another partition (11–29 of them, making int8 slower than fp32). The int8 file
  takes and returns int8 tensors; their scale and zero point are in the tensor details and in the
  embedded metadata (``real = scale * (q - zero_point)``).
- Metadata: one flatbuffer ``metadata`` entry named ``mobilenets`` holding JSON (labels, preprocessing,
  architecture, input layout/dtype/quantization), readable on a device with ``ai_edge_litert``'s own
  flatbuffer schema (see ``read_metadata`` and the README snippet); TFLite runtimes ignore it.
- Delegation is checked at export: the interpreter's node list holds one ``DELEGATE`` node per XNNPACK
  partition; a file is accepted only when one partition covers the whole graph.

https://ai.google.dev/edge/litert/conversion/pytorch/overview,
https://github.com/google-ai-edge/ai-edge-quantizer
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mobilenets.core.console import native_output_silenced
from mobilenets.core.errors import MobilenetsError
from mobilenets.deployment.device_files import (
    DeviceFile,
    check_images,
    compare,
    exportable,
    median_ms,
    model_metadata,
    reference_logits,
    require,
    write_device_file,
)

METADATA_NAME = "mobilenets"
RUNTIME = "ai_edge_litert (XNNPACK)"


def _conversion_error(runtime: str, error: Exception) -> MobilenetsError:
    """One line naming the operator a converter could not take (when its message names one)."""
    text = str(error)
    match = re.search(r"(aten\.[\w.]+|torch\.ops\.[\w.]+|'tfl\.[\w.]+'|\b[A-Z][A-Z0-9_]{2,}\b(?= op| operator))", text)
    operator = match.group(1).strip("'") if match else None
    first_line = next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)
    if operator:
        return MobilenetsError(f"{runtime} cannot convert operator {operator}: {first_line[:300]}")
    return MobilenetsError(f"{runtime} conversion failed: {first_line[:300]}")


def convert_fp32(model: nn.Module, size: int) -> bytes:
    """The fp32 ``.tflite`` bytes of ``model`` for one NHWC image of ``size``×``size`` (no metadata)."""
    litert_torch = require("litert_torch", "LiteRT export")
    module = litert_torch.to_channel_last_io(exportable(model), args=[0]).eval()
    sample = (torch.zeros(1, size, size, 3),)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.tflite"
        try:
            with native_output_silenced():
                litert_torch.convert(module, sample).export(str(path))
        except MobilenetsError:
            raise
        except Exception as error:
            raise _conversion_error("LiteRT (litert-torch)", error) from None
        return path.read_bytes()


def quantize_int8(fp32: bytes, calibration_nhwc: np.ndarray, *, float_ops: tuple[str, ...] = ("HARD_SWISH",)) -> bytes:
    """Static int8 (weights per channel + activations) of a fp32 ``.tflite``; ``float_ops`` stay in float."""
    quantizer = require("ai_edge_quantizer.quantizer", "LiteRT int8 export")
    from ai_edge_quantizer import qtyping, recipe_manager
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    recipe = recipe_manager.RecipeManager()
    recipe.add_static_config(
        regex=".*",
        operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
        activation_num_bits=8,
        weight_num_bits=8,
    )
    for op in float_ops:  # added after ALL_SUPPORTED in the same scope, so it wins for these ops
        recipe.add_quantization_config(
            regex=".*", operation_name=qtyping.TFLOperationName(op), algorithm_key=AlgorithmName.NO_QUANTIZE
        )
    engine = quantizer.Quantizer(bytearray(fp32), recipe.get_quantization_recipe())
    try:
        with native_output_silenced():
            ranges = calibrated_ranges(fp32, calibration_nhwc, recipe)
            result = engine.quantize(ranges, enable_progress_report=False)
    except MobilenetsError:  # an operator LiteRT's interpreter lacks, already named in one line
        raise
    except Exception as error:
        raise _conversion_error("LiteRT int8 (ai-edge-quantizer)", error) from None
    return bytes(result.quantized_model)


def calibrated_ranges(fp32: bytes, calibration_nhwc: np.ndarray, recipe) -> dict:
    """Each activation's min and max over every calibration image (ai-edge-quantizer's QSVs).

    ``Quantizer.calibrate`` merges the images' ranges with a moving average (0.95 × the range so far +
    0.05 × the next image's), which forgets the extremes of early images: on a trained V3-Small the
    logits' range came out [-1.75, 2.0] where the images' logits spanned [-3.1, 4.5], and the LiteRT
    int8 file agreed with PyTorch on 77% of images instead of ONNX min-max's 95%. The quantizer's own
    ``min_max_update`` keeps the union of the ranges, as ONNX Runtime's min-max calibration does.
    """
    from ai_edge_quantizer import calibrator
    from ai_edge_quantizer.utils import qsv_utils

    signature, input_name = _signature_input(fp32)
    samples = [{input_name: calibration_nhwc[i : i + 1]} for i in range(len(calibration_nhwc))]
    calibration = calibrator.Calibrator(bytearray(fp32), qsv_update_func=qsv_utils.min_max_update)
    calibration.calibrate({signature: samples}, recipe)
    return calibration.get_model_qsvs()


def _signature_input(content: bytes) -> tuple[str, str]:
    interpreter = _interpreter(content)
    signatures = interpreter.get_signature_list()
    key = next(iter(signatures))
    return key, signatures[key]["inputs"][0]


def _interpreter(content: bytes, threads: int | None = None):
    litert = require("ai_edge_litert.interpreter", "Running a .tflite file")
    try:
        with native_output_silenced():
            interpreter = litert.Interpreter(model_content=content, num_threads=threads)
            interpreter.allocate_tensors()
    except (RuntimeError, ValueError) as error:
        match = re.search(r"find op for builtin opcode '?(\w+)'?", str(error))
        if match:
            raise MobilenetsError(
                f"LiteRT has no kernel for operator {match.group(1)}; replace it in the model or export another format"
            ) from None
        raise
    return interpreter


def with_metadata(content: bytes, metadata: dict) -> bytes:
    """``content`` with a ``mobilenets`` metadata entry (JSON) added or replaced."""
    from ai_edge_litert import schema_py_generated as schema

    model = unpacked(content)
    model.buffers = model.buffers or []
    for subgraph in model.subgraphs or []:
        for tensor in subgraph.tensors or []:
            tensor.name = short_name(tensor.name)
    model.metadata = [entry for entry in (model.metadata or []) if _name(entry.name) != METADATA_NAME]
    model.buffers.append(schema.BufferT(data=np.frombuffer(json.dumps(metadata).encode(), dtype=np.uint8)))
    model.metadata.append(schema.MetadataT(name=METADATA_NAME, buffer=len(model.buffers) - 1))
    return packed(model, len(content) + 4096)


def unpacked(content: bytes):
    """The ``.tflite`` flatbuffer ``content`` as an editable ``ModelT``, every constant buffer inline.

    Converters store the constants of a large model after the flatbuffer (litert-torch; ai-edge-quantizer
    once its buffers pass 256 KB), each buffer holding only an offset and size from the file's start.
    ``packed`` writes the flatbuffer alone, so those buffers must be brought inline first, or the repacked
    file points past its own end (TFLM: "Constant buffer 2 specified an out of range offset"). Inline is
    fine below the 2 GB flatbuffer limit.
    """
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(content), 0)
    for buffer in model.buffers or []:
        if buffer.offset > 1:  # 1 is the schema's placeholder for "offset not set yet", not data
            buffer.data = np.frombuffer(content, dtype=np.uint8, count=buffer.size, offset=buffer.offset)
            buffer.offset, buffer.size = 0, 0
    return model


def packed(model, size_hint: int) -> bytes:
    """The ``.tflite`` bytes of a ``ModelT`` made by ``unpacked`` (``size_hint``: the builder's first size)."""
    import flatbuffers

    builder = flatbuffers.Builder(size_hint)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def short_name(name: str | bytes | None) -> str:
    """A tensor name without the converter's full module paths (they were 60 KB of a 350 KB micro file).

    ``.../mobilenets.models.layers.DepthwiseSeparable_1/.../torch.nn.modules.conv.Conv2d_conv;...`` becomes
    ``DepthwiseSeparable_1/Conv2d_conv``: the model's own block and the layer, enough to name a tensor.
    """
    text = (_name(name) or "").split(";")[0]
    parts = [part.rsplit(".", 1)[-1] for part in text.split("/") if part]
    kept = [part for part in parts if not part.startswith(("ChannelLastIOWrapper", "PooledHead", "Sequential"))]
    return "/".join(kept[-3:]) or text[-40:]


def _name(value: str | bytes | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def read_metadata(path: Path | str) -> dict:
    """The ``mobilenets`` metadata of a ``.tflite`` file (labels, preprocessing, input...), {} if none."""
    from ai_edge_litert import schema_py_generated as schema

    content = Path(path).read_bytes()
    model = schema.Model.GetRootAs(content, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if _name(entry.Name()) == METADATA_NAME:
            return json.loads(model.Buffers(entry.Buffer()).DataAsNumpy().tobytes())
    return {}


def io_description(content: bytes) -> dict:
    """Input layout and dtype, and for int8 files the input/output scale and zero point."""
    interpreter = _interpreter(content)
    description = {"layout": "NHWC", "channels": "RGB", "scale": "pixel / 255, then (x - mean) / std"}
    for key, detail in (("input", interpreter.get_input_details()[0]), ("output", interpreter.get_output_details()[0])):
        description[f"{key}_dtype"] = np.dtype(detail["dtype"]).name
        description[f"{key}_shape"] = [int(v) for v in detail["shape"]]
        if detail["dtype"] in (np.int8, np.uint8):
            scale, zero_point = detail["quantization"]
            description[f"{key}_quantization"] = {"scale": float(scale), "zero_point": int(zero_point)}
    return description


def delegate_partitions(content: bytes) -> tuple[int, list[str]]:
    """XNNPACK partitions of a ``.tflite`` in ai_edge_litert, and the operators left outside them.

    After ``allocate_tensors`` the interpreter's node list holds the original operators followed by one
    ``DELEGATE`` node per partition; an operator runs outside the delegate when its output is produced
    by no delegate node.
    """
    interpreter = _interpreter(content)
    nodes = interpreter._get_ops_details()  # the only Python view of the delegated node list
    delegates = [node for node in nodes if node["op_name"] == "DELEGATE"]
    delegated_outputs = {int(t) for node in delegates for t in node["outputs"]}
    graph_outputs = {int(detail["index"]) for detail in interpreter.get_output_details()}
    outside = []
    if delegates:
        first = nodes.index(delegates[0])
        covered = _covered_tensors(nodes[:first], delegated_outputs, delegates)
        outside = [node["op_name"] for node in nodes[:first] if not set(map(int, node["outputs"])) <= covered]
    else:
        outside = [node["op_name"] for node in nodes]
    if delegates and not graph_outputs <= delegated_outputs and not outside:
        outside = ["(graph output not produced by the delegate)"]
    return len(delegates), outside


def _covered_tensors(original: list[dict], delegated_outputs: set[int], delegates: list[dict]) -> set[int]:
    """Tensors computed inside a delegate: every intermediate between a delegate's inputs and outputs."""
    produced_by = {int(t): node for node in original for t in node["outputs"]}
    covered: set[int] = set()
    for delegate in delegates:
        boundary = {int(t) for t in delegate["inputs"]}
        stack = [int(t) for t in delegate["outputs"]]
        while stack:
            tensor = stack.pop()
            if tensor in covered or tensor in boundary or tensor not in produced_by:
                continue
            covered.add(tensor)
            stack.extend(int(t) for t in produced_by[tensor]["inputs"] if int(t) >= 0)
    return covered


def export_litert(
    model: nn.Module,
    out_path: Path | str,
    *,
    calibration: np.ndarray | None = None,
    int8: bool = False,
    metadata: dict[str, str] | None = None,
    input_size: int | None = None,
    single_partition: bool = True,
) -> Path:
    """Write ``model`` as a LiteRT ``.tflite`` (fp32, or int8 calibrated on ``calibration``) to ``out_path``.

    ``calibration``: float32 NCHW images normalized like the model's inputs (required for int8; 100–500
    training images are typical). ``metadata``: extra entries (JSON strings) beside labels/preprocessing.
    ``input_size``: the square resolution (default: the calibration images', else the model's preprocessing).
    ``single_partition``: refuse a file XNNPACK would not run as one delegate partition.
    """
    out_path = Path(out_path)
    size = input_size or _size(model, calibration)
    content = convert_fp32(model, size)
    if int8:
        if calibration is None:
            raise MobilenetsError("LiteRT int8 export needs calibration images (float32 NCHW, normalized)")
        calibration = check_images(calibration, "LiteRT int8 calibration")
        content = quantize_int8(content, np.ascontiguousarray(calibration.transpose(0, 2, 3, 1)))
    partitions, outside = delegate_partitions(content)
    if single_partition and (partitions != 1 or outside):
        raise MobilenetsError(
            f"{out_path.name}: XNNPACK delegates the graph in {partitions} partitions; operators left to the "
            f"LiteRT CPU kernels: {', '.join(sorted(set(outside))) or 'none'} "
            "(pass single_partition=False to write it anyway)"
        )
    description = {**model_metadata(model, metadata, size), "input": io_description(content), "format": "litert"}
    description["precision"] = "int8" if int8 else "fp32"
    return write_device_file(out_path, with_metadata(content, description))


def _size(model: nn.Module, calibration: np.ndarray | None) -> int:
    if calibration is not None:
        return int(np.asarray(calibration).shape[-1])
    preprocessing = (getattr(model, "weights_metadata", None) or {}).get("preprocessing", {})
    return int(preprocessing.get("input_size", 224))


def run_nhwc(interpreter, images_nchw: np.ndarray) -> np.ndarray:
    """Float logits of NCHW float images through a batch-1 interpreter, quantizing int8 I/O as needed."""
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    outputs = []
    for image in images_nchw:
        x = image.transpose(1, 2, 0)[None]
        interpreter.set_tensor(inp["index"], quantize_input(x, inp))
        interpreter.invoke()
        outputs.append(dequantize_output(interpreter.get_tensor(out["index"]), out)[0])
    return np.stack(outputs)


def quantize_input(x: np.ndarray, detail: dict) -> np.ndarray:
    if detail["dtype"] not in (np.int8, np.uint8):
        return x.astype(detail["dtype"])
    scale, zero_point = detail["quantization"]
    info = np.iinfo(detail["dtype"])
    return np.clip(np.round(x / scale) + zero_point, info.min, info.max).astype(detail["dtype"])


def dequantize_output(y: np.ndarray, detail: dict) -> np.ndarray:
    if detail["dtype"] not in (np.int8, np.uint8):
        return y.astype(np.float32)
    scale, zero_point = detail["quantization"]
    return (y.astype(np.float32) - zero_point) * np.float32(scale)


def verify_litert(
    path: Path | str,
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    threads: int | None = None,
) -> DeviceFile:
    """Run a ``.tflite`` in ai_edge_litert on ``images`` (float32 NCHW, normalized) against PyTorch fp32."""
    path = Path(path)
    images = check_images(images, f"verifying {path.name}")
    content = path.read_bytes()
    interpreter = _interpreter(content, threads)
    int8 = interpreter.get_input_details()[0]["dtype"] == np.int8
    outputs = run_nhwc(interpreter, images)
    partitions, outside = delegate_partitions(content)
    record = DeviceFile(
        format="litert",
        path=path,
        bytes=len(content),
        runtime=RUNTIME,
        precision="int8" if int8 else "fp32",
        partitions=partitions,
        input=read_metadata(path).get("input", {}),
    )
    if outside:
        record.notes.append(f"operators outside XNNPACK: {', '.join(outside)}")
    compare(record, outputs, reference_logits(model, images), labels, exact=not int8)
    record.latency_ms = median_ms(lambda: run_nhwc(interpreter, images[:1]))
    return record
