"""Callables that run a run directory's device files once, for ``bench`` to time beside ONNX Runtime.

Each device file runs in the runtime a device uses (LiteRT's interpreter with XNNPACK, ExecuTorch's
runtime with XNNPACK, the TFLite Micro interpreter), on the same float32 NCHW batch as the other
engines; int8 input quantization and output dequantization are part of the timed call, as they are on a
device. What cannot be timed at a batch size (an ExecuTorch program has one fixed batch; TFLite Micro
runs one image at a time; Core ML runs only on macOS) is said in a note instead of silently skipped.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mobilenets.core.console import native_output_silenced
from mobilenets.deployment.device_export import DEVICE_FORMATS

Runner = Callable[[], object]


def device_runners(directory: Path, images: np.ndarray, *, threads: int, notes: list[str]) -> dict[str, Runner]:
    """``{engine name: run once}`` for each device file in ``directory`` that runs at ``len(images)``."""
    runners: dict[str, Runner] = {}
    for format_name, device_format in DEVICE_FORMATS.items():
        for precision, name in (("fp32", device_format.fp32_name), ("int8", device_format.int8_name)):
            if name is None or not (directory / name).exists():
                continue
            engine = f"{device_format.runtime.lower()} {precision}"
            make = _MAKERS[format_name]
            runner = make(directory / name, images, threads=threads, notes=notes, engine=engine)
            if runner is not None:
                runners[engine] = runner
    return runners


def litert_runner(
    path: Path, images: np.ndarray, *, threads: int | None, notes: list[str], engine: str
) -> Runner | None:
    if importlib.util.find_spec("ai_edge_litert") is None:
        notes.append(f"{engine}: not timed (pip install 'mobilenets[edge]')")
        return None
    from mobilenets.deployment.litert import _interpreter, dequantize_output, quantize_input

    interpreter = _interpreter(path.read_bytes(), threads)
    detail = interpreter.get_input_details()[0]
    batch = len(images)
    if batch != detail["shape"][0]:
        # The file is written for batch 1; LiteRT resizes the input and XNNPACK re-plans for the batch.
        interpreter.resize_tensor_input(detail["index"], [batch, *detail["shape"][1:]])
        interpreter.allocate_tensors()
        detail = interpreter.get_input_details()[0]
    output = interpreter.get_output_details()[0]
    nhwc = np.ascontiguousarray(images.transpose(0, 2, 3, 1))

    def run() -> np.ndarray:
        interpreter.set_tensor(detail["index"], quantize_input(nhwc, detail))
        interpreter.invoke()
        return dequantize_output(interpreter.get_tensor(output["index"]), output)

    return run


def executorch_runner(
    path: Path, images: np.ndarray, *, threads: int | None, notes: list[str], engine: str
) -> Runner | None:
    if importlib.util.find_spec("executorch") is None:
        notes.append(f"{engine}: not timed (pip install 'mobilenets[edge]')")
        return None
    import torch

    from mobilenets.deployment.device_files import require
    from mobilenets.deployment.executorch import read_metadata

    # Importing ExecuTorch (torchao) and its first run (cpuinfo) print lines that are not for users.
    with native_output_silenced():
        runtime = require("executorch.runtime", "Running a .pte file")
        program_batch = int(read_metadata(path).get("input", {}).get("shape", [1])[0])
        if program_batch != len(images):
            notes.append(f"{engine}: timed at batch {program_batch} only ({path.name} has a fixed batch)")
            return None
        method = runtime.Runtime.get().load_program(path).load_method("forward")
        tensor = torch.from_numpy(np.ascontiguousarray(images))
        method.execute([tensor])
    return lambda: method.execute([tensor])[0]


def micro_runner(
    path: Path, images: np.ndarray, *, threads: int | None, notes: list[str], engine: str
) -> Runner | None:
    if importlib.util.find_spec("tflite_micro") is None:
        notes.append(f"{engine}: not timed (pip install 'mobilenets[edge]')")
        return None
    if len(images) != 1:
        notes.append(f"{engine}: timed at batch 1 only (a microcontroller runs one image at a time)")
        return None
    from mobilenets.deployment.litert import dequantize_output, quantize_input
    from mobilenets.deployment.micro import _interpreter, _scale_zero, exact_arena

    interpreter = _interpreter(path.read_bytes(), exact_arena(path))
    detail, output = interpreter.get_input_details(0), interpreter.get_output_details(0)
    detail = {"dtype": detail["dtype"], "quantization": _scale_zero(detail)}
    output = {"dtype": output["dtype"], "quantization": _scale_zero(output)}
    nhwc = np.ascontiguousarray(images.transpose(0, 2, 3, 1))

    def run() -> np.ndarray:
        interpreter.set_input(quantize_input(nhwc, detail), 0)
        interpreter.invoke()
        return dequantize_output(interpreter.get_output(0), output)

    return run


def coreml_runner(
    path: Path, images: np.ndarray, *, threads: int | None, notes: list[str], engine: str
) -> Runner | None:
    reason = "Core ML runs only on macOS" if sys.platform != "darwin" else "Core ML timing is not implemented yet"
    notes.append(f"{engine}: not timed ({reason})")
    return None


_MAKERS = {
    "tflite": litert_runner,
    "executorch": executorch_runner,
    "tflite-micro": micro_runner,
    "coreml": coreml_runner,
}
