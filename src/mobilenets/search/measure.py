"""Cost of a candidate on the target: batch-1 latency in the target runtime here, file size, memory.

Latency and size do not depend on the trained weights, so they are measured on untrained models before
any training: a candidate that already breaks the budget is never trained. One export per (model, width)
serves all resolutions: the exported graph has a fixed input size, which we relax to symbolic height and
width (convolutions and the global average pool work at any size), so ONNX Runtime runs it at each.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mobilenets.core.errors import MobilenetsError

TARGETS = ("onnx", "tflite", "executorch", "tflite-micro")
# The deployment module each target needs (written under issue 18; a target whose module is absent
# is refused with one line).
TARGET_MODULES = {
    "tflite": "mobilenets.deployment.litert",
    "executorch": "mobilenets.deployment.executorch",
    "tflite-micro": "mobilenets.deployment.micro",
}


@dataclass(frozen=True)
class Measurement:
    latency_ms: float
    flash_bytes: int
    ram_bytes: int


# The runtime package each device target runs its files in (an optional extra).
TARGET_RUNTIMES = {
    "tflite": "ai_edge_litert",
    "executorch": "executorch",
    "tflite-micro": "tflite_micro",
}


def check_target(target: str) -> None:
    """Refuse, in one line, a target this installation cannot measure."""
    if target not in TARGETS:
        raise MobilenetsError(f"--target {target!r}: choose one of {', '.join(TARGETS)}")
    module = TARGET_MODULES.get(target)
    if module is None:
        return
    if importlib.util.find_spec(module) is None:
        raise MobilenetsError(
            f"--target {target}: not available yet ({module} is not in this installation, so neither its "
            "latency nor its " + ("TFLM arena" if target == "tflite-micro" else "file size") + " can be measured); "
            "use --target onnx"
        )
    runtime = TARGET_RUNTIMES[target]
    if importlib.util.find_spec(runtime) is None:
        raise MobilenetsError(
            f"--target {target}: its runtime ({runtime}) is not installed, so its latency cannot be measured; "
            "install the device extras (docs/deployment.md) or use --target onnx"
        )


def measurer_for(target: str):
    """The function that measures one (model, width) at several resolutions on ``target``."""
    return measure_onnx_group if target == "onnx" else measure_device_group


def activation_bytes(model, resolution: int, bytes_per_value: int) -> int:
    """Peak activation memory estimate: the largest input + output of one layer, at batch 1.

    This is the lower bound a planner like TFLM's reaches for a chain of layers (it can free a layer's
    input once its output exists); residual branches add a little more. An estimate, labelled as such.
    """
    import torch

    peak = 0

    def hook(_module, inputs, output) -> None:
        nonlocal peak
        values = sum(t.numel() for t in inputs if isinstance(t, torch.Tensor))
        if isinstance(output, torch.Tensor):
            values += output.numel()
        peak = max(peak, values)

    hooks = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, resolution, resolution))
    finally:
        for handle in hooks:
            handle.remove()
    return peak * bytes_per_value


def any_size_onnx(path: Path) -> Path:
    """Rewrite an exported file so its input height and width are symbolic (one file for all resolutions)."""
    import onnx

    proto = onnx.load(str(path))
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    for index, name in ((2, "height"), (3, "width")):
        dims[index].Clear()
        dims[index].dim_param = name
    del proto.graph.value_info[:]  # shapes inferred at the export size would contradict other sizes
    onnx.save(proto, str(path))
    return path


def as_trained(model: nn.Module) -> nn.Module:
    """``model`` in eval mode with biases (and BatchNorm shifts) of a trained model's scale, so that its files
    are sized as a trained one's. At initialisation they are all zero: BN folding then gives convolutions
    without a bias, and the int8 file lacks the int32 biases and their scales (13% smaller for V3-Small α=0.5)."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            bias = getattr(module, "bias", None)
            if isinstance(bias, nn.Parameter):
                bias.copy_(0.1 * torch.randn(bias.shape, generator=generator))
    return model.eval()


def measure_onnx_group(
    *,
    model_name: str,
    width: float,
    resolutions: Sequence[int],
    num_classes: int,
    int8: bool,
    work: Path,
    repeats: int = 7,
    model_options: dict | None = None,
) -> dict[int, Measurement]:
    """Latency (batch 1, ONNX Runtime), file size and activation memory of one (model, width) per resolution."""
    from mobilenets.deployment.onnx import INPUT_NAME, export_onnx
    from mobilenets.deployment.onnx_runtime import create_session
    from mobilenets.deployment.timing import interleaved_medians
    from mobilenets.models.factory import create_model

    work.mkdir(parents=True, exist_ok=True)
    model = as_trained(create_model(model_name, num_classes=num_classes, width=width, **(model_options or {})))
    first = max(resolutions)
    model.weights_metadata = {"preprocessing": {"input_size": first, "resize_size": first}}
    stem = f"{model_name}-w{width:g}"
    path = any_size_onnx(export_onnx(model, work / f"{stem}.onnx"))
    if int8:
        from mobilenets.deployment.quantization import quantize_ptq

        # Random calibration: the file's size and speed do not depend on the ranges it learns.
        calibration = np.random.default_rng(1).standard_normal((8, 3, first, first), dtype=np.float32)
        path = quantize_ptq(path, work / f"{stem}_int8.onnx", calibration, "minmax")
    flash = path.stat().st_size
    session = create_session(path)
    results = {}
    for resolution in resolutions:
        feed = {INPUT_NAME: np.random.default_rng(0).standard_normal((1, 3, resolution, resolution), dtype=np.float32)}
        (latency,) = interleaved_medians([lambda f=feed: session.run(None, f)], repeats=repeats)
        results[resolution] = Measurement(
            latency_ms=latency,
            flash_bytes=flash,
            ram_bytes=activation_bytes(model, resolution=resolution, bytes_per_value=1 if int8 else 4),
        )
    return results


def measure_device_group(
    *,
    model_name: str,
    width: float,
    resolutions: Sequence[int],
    num_classes: int,
    int8: bool,
    work: Path,
    target: str,
    model_options: dict | None = None,
) -> dict[int, Measurement]:
    """Export one file per resolution for a device runtime and time it there (one file per size: these
    converters fix the input size). tflite-micro is always int8 and reports the exact TFLM arena as RAM."""
    from mobilenets.deployment.device_export import import_toolchain_quietly
    from mobilenets.models.factory import create_model

    import_toolchain_quietly(target)
    work.mkdir(parents=True, exist_ok=True)
    model = as_trained(create_model(model_name, num_classes=num_classes, width=width, **(model_options or {})))
    results = {}
    for resolution in resolutions:
        model.weights_metadata = {"preprocessing": {"input_size": resolution, "resize_size": resolution}}
        # Random calibration: size, speed and arena do not depend on the ranges learnt from it.
        images = np.random.default_rng(1).standard_normal((8, 3, resolution, resolution), dtype=np.float32)
        stem = work / f"{model_name}-w{width:g}-r{resolution}{'-int8' if int8 else ''}"
        if target == "tflite-micro":
            from mobilenets.deployment.micro import export_micro, verify_micro

            record = verify_micro(export_micro(model, stem.with_suffix(".micro.tflite"), calibration=images), model, images[:2])
            ram = record.arena_bytes
        elif target == "tflite":
            from mobilenets.deployment.litert import export_litert, verify_litert

            path = export_litert(
                model, stem.with_suffix(".tflite"), calibration=images, int8=int8, input_size=resolution,
                single_partition=False,
            )  # fmt: skip
            record = verify_litert(path, model, images[:2])
            ram = activation_bytes(model, resolution=resolution, bytes_per_value=1 if int8 else 4)
        else:
            from mobilenets.deployment.executorch import export_executorch, verify_executorch

            path = export_executorch(
                model, stem.with_suffix(".pte"), calibration=images, int8=int8, input_size=resolution,
                single_partition=False,
            )  # fmt: skip
            record = verify_executorch(path, model, images[:2])
            ram = activation_bytes(model, resolution=resolution, bytes_per_value=1 if int8 else 4)
        results[resolution] = Measurement(latency_ms=float(record.latency_ms), flash_bytes=record.bytes, ram_bytes=int(ram))
    return results


def measure_grid(
    *,
    model_name: str,
    widths: Sequence[float],
    resolutions: Sequence[int],
    num_classes: int,
    target: str = "onnx",
    int8: bool = False,
    model_options: dict | None = None,
) -> dict[tuple[float, int], Measurement]:
    """Batch-1 latency, file size and memory of every (width, resolution) of one model on ``target``."""
    import tempfile

    check_target(target)
    int8 = int8 or target == "tflite-micro"
    results = {}
    with tempfile.TemporaryDirectory(prefix="mobilenets-latency-") as work:
        for width in widths:
            options = dict(
                model_name=model_name, width=width, resolutions=list(resolutions), num_classes=num_classes,
                int8=int8, work=Path(work), model_options=model_options,
            )  # fmt: skip
            measured = (
                measure_onnx_group(**options) if target == "onnx" else measure_device_group(**options, target=target)
            )
            results.update({(width, r): m for r, m in measured.items()})
    return results
