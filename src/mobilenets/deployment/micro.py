"""Microcontroller ``.tflite`` files: fully integer int8, run in TensorFlow Lite Micro's reference kernels.

- The fp32 graph comes from ``litert_torch`` (NHWC input), then ``ai_edge_quantizer``'s static int8
  recipe quantizes every operator, hard-swish included (TFLM has int8 HARD_SWISH; there is no XNNPACK
  partitioning to protect here). Input and output are int8; their scale and zero point are in the file's
  ``mobilenets`` metadata entry (``real = scale * (q - zero_point)``).
- Verification runs the ``tflite-micro`` Python interpreter (the same C++ kernels and memory planner as
  on a microcontroller). An operator TFLM lacks fails there, named in one line.
- The tensor arena (RAM) is exact: the smallest arena the interpreter accepts, found by bisection (an
  arena one byte smaller fails). Flash is the file size.
- ``micro_budget`` checks ``ram_kb``/``flash_kb`` and explains a miss: the largest activation tensors
  (what the arena must hold at once) or the parameter bytes, and what to change.

MLPerf Tiny's visual-wake-words model (MobileNet v1 α=0.25, 96×96 int8, 250 KB budget):
https://github.com/mlcommons/tiny; TFLM: https://github.com/tensorflow/tflite-micro
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from mobilenets.core.errors import MobilenetsError
from mobilenets.deployment.device_files import (
    DeviceFile,
    check_images,
    compare,
    median_ms,
    model_metadata,
    reference_logits,
    require,
    write_device_file,
)
from mobilenets.deployment.litert import (
    convert_fp32,
    dequantize_output,
    io_description,
    packed,
    quantize_input,
    quantize_int8,
    unpacked,
    with_metadata,
)

RUNTIME = "tflite-micro (reference kernels)"
MAX_ARENA = 64 << 20


def export_micro(
    model: nn.Module,
    out_path: Path | str,
    *,
    calibration: np.ndarray,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write a fully integer int8 ``.tflite`` for TFLite Micro, calibrated on ``calibration``.

    ``calibration``: float32 NCHW images normalized like the model's inputs; their size is the file's
    input resolution. The file is checked to load in TFLM (every operator implemented) before it is kept.
    """
    require("tflite_micro.python.tflite_micro.runtime", "TFLite Micro export")
    calibration = check_images(calibration, "TFLite Micro calibration")
    size = int(calibration.shape[-1])
    content = quantize_int8(
        convert_fp32(model, size), np.ascontiguousarray(calibration.transpose(0, 2, 3, 1)), float_ops=()
    )
    content = without_bias_quantization(content)
    _check_micro_operators(content)
    description = {**model_metadata(model, metadata, size), "input": io_description(content)}
    description.update(format="tflite-micro", precision="int8")
    return write_device_file(out_path, with_metadata(content, description))


def without_bias_quantization(content: bytes) -> bytes:
    """``content`` without the per-channel scale and zero-point arrays of its int32 bias tensors.

    TFLM derives a bias's scale from the input and filter scales and never reads the bias tensor's own
    arrays (its bias check is disabled: ``PopulateConvolutionQuantizationParams`` in tflite-micro), yet
    they cost 12 bytes per output channel (a float32 scale and an int64 zero point): 33 KB of MobileNet
    v1 α=0.25's 304 KB file. Outputs are bit-identical without them (tests/test_device_exports.py).
    """
    from ai_edge_litert import schema_py_generated as schema

    model = unpacked(content)
    for subgraph in model.subgraphs or []:
        for tensor in subgraph.tensors or []:
            quantization = tensor.quantization
            if tensor.type == schema.TensorType.INT32 and quantization is not None and quantization.scale is not None:
                tensor.quantization = None
    return packed(model, len(content))


def _check_micro_operators(content: bytes) -> None:
    """Refuse float operators (a microcontroller build has int8 kernels) and those TFLM lacks."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(content), 0)
    names = {value: name for name, value in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    subgraph = model.subgraphs[0]
    for op in subgraph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        name = names.get(max(code.builtinCode, code.deprecatedBuiltinCode), str(code.builtinCode))
        if name in ("QUANTIZE", "DEQUANTIZE"):
            continue
        types = {subgraph.tensors[t].type for t in (*op.inputs, *op.outputs) if t >= 0}
        if schema.TensorType.FLOAT32 in types and name not in ("QUANTIZE", "DEQUANTIZE"):
            raise MobilenetsError(
                f"TFLite Micro: operator {name} stayed in float32 after int8 quantization; "
                "a microcontroller build runs integer kernels only"
            )
    _interpreter(content, MAX_ARENA)


@contextlib.contextmanager
def _captured_stderr() -> Iterator[Callable[[], str]]:
    """TFLM prints to fd 2 (every failed allocation, which the arena bisection makes on purpose, and the
    operator it has no kernel for); captured, so a user sees one line, and readable for that operator."""
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        try:
            os.dup2(captured.fileno(), 2)
            yield lambda: (captured.seek(0), captured.read().decode(errors="replace"))[1]
        finally:
            os.dup2(saved, 2)
            os.close(saved)


_MISSING_KERNEL = re.compile(r"find op for builtin opcode '?(\w+)'?|registration from op code (\w+)")


def _interpreter(content: bytes, arena: int):
    runtime = require("tflite_micro.python.tflite_micro.runtime", "Running a TFLite Micro file")
    with _captured_stderr() as printed:
        try:
            return runtime.Interpreter.from_bytes(content, arena_size=arena)
        except (RuntimeError, ValueError) as error:
            # An operator without a TFLM kernel is named in the error (ValueError) or only in TFLM's own
            # output, with a bare "failed to allocate tensors" error (RuntimeError).
            match = _MISSING_KERNEL.search(f"{error}\n{printed()}")
            if match and arena >= MAX_ARENA:
                raise MobilenetsError(
                    f"TFLite Micro has no kernel for operator {match.group(1) or match.group(2)}; "
                    "replace it in the model or export another format"
                ) from None
            raise


_PROBE = """
import sys
import numpy as np
from tflite_micro.python.tflite_micro import runtime
path, arena = sys.argv[1], int(sys.argv[2])
shape = tuple(int(v) for v in sys.argv[3].split(","))
try:
    interpreter = runtime.Interpreter.from_file(path, arena_size=arena)
    interpreter.set_input(np.zeros(shape, np.int8), 0)
    interpreter.invoke()
except Exception:
    sys.exit(1)
"""


def _runs(path: Path, arena: int, shape: tuple[int, ...]) -> bool:
    """Whether TFLM allocates and runs the file in ``arena`` bytes, probed in a child process.

    In a child because TFLM (tflite-micro 0.dev20261023) crashes the process (segmentation fault) on some
    arenas just too small for a model, instead of failing the allocation (seen on trained V3-Small-minimal
    and v1 at 96 px); a crash counts as "does not fit".
    """
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, str(path), str(arena), ",".join(map(str, shape))],
        capture_output=True,
        timeout=120,
        check=False,
    )
    return result.returncode == 0


def exact_arena(path: Path | str) -> int:
    """The smallest tensor arena (bytes) in which TFLM allocates and runs the file (bisection, exact).

    About 20 probes, each a child process (~0.5 s): a microcontroller file is small, the probes are quick.
    """
    path = Path(path)
    shape = tuple(int(v) for v in _interpreter(path.read_bytes(), MAX_ARENA).get_input_details(0)["shape"])
    low, high = 0, 1 << 14  # low fails (or is 0), high works
    while not _runs(path, high, shape):
        low, high = high, high * 2
        if high > MAX_ARENA:
            raise MobilenetsError(
                f"{Path(path).name}: does not run in TFLite Micro even with a {MAX_ARENA >> 20} MB arena"
            )
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if _runs(path, middle, shape) else (middle, high)
    return high


def run_micro(path: Path | str, images_nchw: np.ndarray, arena: int) -> np.ndarray:
    """Float logits of NCHW float images through TFLM (int8 I/O quantized with the file's parameters)."""
    interpreter = _interpreter(Path(path).read_bytes(), arena)
    inp, out = interpreter.get_input_details(0), interpreter.get_output_details(0)
    inp = {"dtype": inp["dtype"], "quantization": _scale_zero(inp)}
    out = {"dtype": out["dtype"], "quantization": _scale_zero(out)}
    outputs = []
    for image in images_nchw:
        interpreter.set_input(quantize_input(image.transpose(1, 2, 0)[None], inp), 0)
        interpreter.invoke()
        outputs.append(dequantize_output(interpreter.get_output(0), out)[0])
    return np.stack(outputs)


def _scale_zero(detail: dict) -> tuple[float, int]:
    parameters = detail["quantization_parameters"]
    return float(parameters["scales"][0]), int(parameters["zero_points"][0])


@dataclass
class MicroBudget:
    """Whether a microcontroller file fits ``ram_kb``/``flash_kb``, and what to change when it does not."""

    fits: bool
    arena_bytes: int
    flash_bytes: int
    ram_kb: float | None
    flash_kb: float | None
    verdict: str

    def raise_if_over(self) -> None:
        if not self.fits:
            raise MobilenetsError(self.verdict)


def largest_tensors(path: Path | str, count: int = 3) -> tuple[list[tuple[str, list[int], int]], int]:
    """The ``count`` largest activation tensors (name, shape, bytes) and the parameter bytes of a file."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(Path(path).read_bytes()), 0)
    subgraph = model.subgraphs[0]
    sizes = {schema.TensorType.INT8: 1, schema.TensorType.UINT8: 1, schema.TensorType.INT16: 2,
             schema.TensorType.INT32: 4, schema.TensorType.FLOAT32: 4, schema.TensorType.INT64: 8}  # fmt: skip
    activations, parameters = [], 0
    for tensor in subgraph.tensors:
        shape = [int(v) for v in (tensor.shape if tensor.shape is not None else [])]
        nbytes = int(np.prod(shape or [1])) * sizes.get(tensor.type, 4)
        buffer = model.buffers[tensor.buffer] if tensor.buffer < len(model.buffers) else None
        constant = buffer is not None and ((buffer.data is not None and len(buffer.data) > 0) or buffer.size > 0)
        if constant:
            parameters += nbytes
        else:
            name = tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)
            activations.append((name, shape, nbytes))
    activations.sort(key=lambda item: -item[2])
    return activations[:count], parameters


def input_resolution(path: Path | str) -> int | None:
    """The input size (pixels) of a file's NHWC image input, or None when it does not say."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(Path(path).read_bytes()), 0)
    subgraph = model.subgraphs[0]
    if subgraph.inputs is None or len(subgraph.inputs) == 0:
        return None
    shape = subgraph.tensors[int(subgraph.inputs[0])].shape
    return int(shape[1]) if shape is not None and len(shape) == 4 else None


def activation_advice(resolution: int | None) -> str:
    """How to shrink activation memory, from the model's own resolution (never below the models' minimum)."""
    from mobilenets.models.preprocessing import MIN_RESOLUTION

    if resolution is None:
        return "Activation memory scales with pixels and channels: lower the resolution or the width"
    if resolution <= MIN_RESOLUTION:
        return (
            f"Activation memory scales with pixels and channels; {resolution} px is already the smallest input a "
            "MobileNet takes: lower the width, or use mobilenet_v1 width 0.25"
        )
    lower = max(MIN_RESOLUTION, 32 * round(resolution * 2 / 3 / 32))
    if lower >= resolution:
        lower = MIN_RESOLUTION
    return (
        "Activation memory scales with pixels and channels: lower the resolution "
        f"({resolution} → {lower} px needs ~{(resolution / lower) ** 2:.2f}× less) or the width, "
        "or use mobilenet_v1 width 0.25"
    )


def micro_budget(path: Path | str, *, arena_bytes: int, ram_kb: float | None, flash_kb: float | None) -> MicroBudget:
    """Check the exact arena against ``ram_kb`` and the file size against ``flash_kb`` (KB = 1024 bytes)."""
    path = Path(path)
    flash = path.stat().st_size
    problems = []
    tensors, parameters = largest_tensors(path)
    if ram_kb is not None and arena_bytes > ram_kb * 1024:
        listed = ", ".join(
            f"{name} {'×'.join(map(str, shape))} ({size / 1024:.1f} KB)" for name, shape, size in tensors
        )
        problems.append(
            f"tensor arena {arena_bytes / 1024:.1f} KB > RAM budget {ram_kb:g} KB; largest activations: {listed}. "
            + activation_advice(input_resolution(path))
        )
    if flash_kb is not None and flash > flash_kb * 1024:
        problems.append(
            f"file {flash / 1024:.1f} KB > flash budget {flash_kb:g} KB ({parameters / 1024:.1f} KB of parameters): "
            "lower the width, fewer classes, or a smaller model (mobilenet_v1 width 0.25 is ~0.2 M parameters)"
        )
    if problems:
        verdict = f"{path.name} does not fit: " + "; ".join(problems)
    else:
        budget = [f"arena {arena_bytes / 1024:.1f} KB" + (f" ≤ {ram_kb:g} KB RAM" if ram_kb is not None else "")]
        budget.append(f"flash {flash / 1024:.1f} KB" + (f" ≤ {flash_kb:g} KB" if flash_kb is not None else ""))
        verdict = f"{path.name} fits: " + ", ".join(budget)
    return MicroBudget(not problems, arena_bytes, flash, ram_kb, flash_kb, verdict)


def verify_micro(
    path: Path | str,
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray | None = None,
) -> DeviceFile:
    """Run a microcontroller file in TFLM on ``images`` against PyTorch fp32; measure the exact arena."""
    path = Path(path)
    images = check_images(images, f"verifying {path.name}")
    arena = exact_arena(path)
    record = DeviceFile(
        format="tflite-micro",
        path=path,
        bytes=path.stat().st_size,
        runtime=RUNTIME,
        precision="int8",
        arena_bytes=arena,
        input=io_description(path.read_bytes()),
    )
    compare(record, run_micro(path, images, arena), reference_logits(model, images), labels, exact=False)
    interpreter = _interpreter(path.read_bytes(), arena)
    shape = tuple(int(v) for v in interpreter.get_input_details(0)["shape"])
    sample = np.zeros(shape, np.int8)

    def invoke() -> None:
        interpreter.set_input(sample, 0)
        interpreter.invoke()

    record.latency_ms = median_ms(invoke, repeats=5, warmup=1)
    record.notes.append("latency: TFLM reference kernels on this x86 host, not a microcontroller figure")
    return record
