"""ExecuTorch ``.pte`` programs for PyTorch-native apps, each run and checked in ``executorch.runtime``.

- ``torch.export`` of the model (pooling head as ``flatten(mean((2, 3), keepdim=True), 1)``: the XNNPACK
  partitioner does not take ``mean((2, 3))`` without ``keepdim`` and would split the graph in two).
- int8: PT2E (``prepare_pt2e`` → calibration → ``convert_pt2e``, torchao) with ExecuTorch's
  ``XNNPACKQuantizer`` (symmetric, per-channel weights, static int8 activations). Input and output stay
  float32: the quantize/dequantize at the ends run inside the delegate. The stem and the first block
  stay in float, as ``quantize``'s mixed recipe keeps them for ONNX: on held-out images this took a
  fine-tuned V2's agreement with fp32 from 95.3% to 97.5% (median of 3 calibration draws) at no
  measurable batch-1 cost, still in one delegate call (``benchmarks/executorch_int8_calibration.py``).
- ``to_edge_transform_and_lower`` with the ``XnnpackPartitioner``, then a constant-propagation pass: the
  partitioner lifts hard-swish/hard-sigmoid scalars as constants whose dtype copies would otherwise run
  outside the delegate on every call. One delegate call must remain (checked at export).
- One fixed batch per program (default 1): a program exported with a batch range sized its input buffer
  for one batch and failed on larger ones.
- Labels and preprocessing travel as a constant method ``mobilenets_metadata`` (a JSON string):
  ``program.load_method("mobilenets_metadata").execute([])[0]``.

https://pytorch.org/executorch/stable/backends-xnnpack.html
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import nn

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

METADATA_METHOD = "mobilenets_metadata"
RUNTIME = "executorch.runtime (XNNPACK)"
DELEGATE_CALL = "executorch_call_delegate"


CALIBRATION_BATCH = 32
# Module paths of the exported wrapper (``model.stem``, ``model.blocks.0``) left unquantized.
FLOAT_MODULES = re.compile(r"(^|\.)(stem|blocks\.0)$")


def _quantized(node) -> bool:
    """Whether the quantizer annotates ``node``: not inside the stem or the first block."""
    stack = node.meta.get("nn_module_stack") or {}
    return not any(FLOAT_MODULES.search(str(path)) for path, _ in stack.values())


def _quantize(module: nn.Module, sample: torch.Tensor, calibration: np.ndarray, quantizer=None) -> nn.Module:
    """PT2E static int8 with the XNNPACK quantizer, calibrated in batches of ``CALIBRATION_BATCH``.

    The graph observed during calibration has a dynamic batch dimension: a program's own batch is
    usually 1, and 256 calibration images one at a time cost 5–6× the time of 8 batches of 32
    (HistogramObserver's work is per call). The program itself is exported afterwards at its fixed batch.
    A model whose graph cannot take a dynamic batch is calibrated at the program's batch instead.
    """
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if quantizer is None:  # the product's; benchmarks pass variants of it
        quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
        # set_module_name(name, None) asserts in executorch 1.5.1; a node filter leaves the modules in float.
        quantizer.set_filter_function(_quantized)
    batch = min(CALIBRATION_BATCH, len(calibration))
    try:
        dynamic = ({0: torch.export.Dim("batch", min=1, max=max(2, batch))},)
        graph = torch.export.export(module, (sample[:1].expand(2, *sample.shape[1:]),), dynamic_shapes=dynamic)
        end = len(calibration)  # the last, shorter batch too
    except Exception:  # a shape the exporter must specialize: calibrate at the program's own batch
        graph, batch = torch.export.export(module, (sample,)), len(sample)
        end = len(calibration) - batch + 1
    prepared = prepare_pt2e(graph.module(), quantizer)
    with torch.no_grad():
        for start in range(0, end, batch):
            prepared(torch.from_numpy(np.ascontiguousarray(calibration[start : start + batch])))
    return convert_pt2e(prepared)


def _operators_outside(program) -> list[str]:
    graph = program.exported_program().graph_module.graph
    return [
        str(node.target).split(":")[0].replace("<EdgeOpOverload", "").strip(" '>")
        for node in graph.nodes
        if node.op == "call_function" and DELEGATE_CALL not in str(node.target) and "getitem" not in str(node.target)
    ]


def export_executorch(
    model: nn.Module,
    out_path: Path | str,
    *,
    calibration: np.ndarray | None = None,
    int8: bool = False,
    metadata: dict[str, str] | None = None,
    input_size: int | None = None,
    batch: int = 1,
    single_partition: bool = True,
) -> Path:
    """Write ``model`` as an ExecuTorch ``.pte`` (fp32, or int8 calibrated on ``calibration``) to ``out_path``.

    ``calibration``: float32 NCHW images normalized like the model's inputs (required for int8).
    ``batch``: the program's fixed batch size. ``single_partition``: refuse a program that is not one
    XNNPACK delegate call.
    """
    require("executorch.exir", "ExecuTorch export")
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import EdgeCompileConfig, EdgeProgramManager, to_edge_transform_and_lower
    from executorch.exir.passes.constant_prop_pass import constant_prop_pass

    out_path = Path(out_path)
    if calibration is not None:
        calibration = check_images(calibration, "ExecuTorch calibration")
    size = input_size or (calibration.shape[-1] if calibration is not None else None)
    size = size or int((getattr(model, "weights_metadata", None) or {}).get("preprocessing", {}).get("input_size", 224))
    module = exportable(model)
    sample = torch.zeros(batch, 3, size, size)
    try:
        if int8:
            if calibration is None:
                raise MobilenetsError("ExecuTorch int8 export needs calibration images (float32 NCHW, normalized)")
            if len(calibration) < batch:
                raise MobilenetsError(f"ExecuTorch int8 calibration needs at least {batch} images (one batch)")
            module = _quantize(module, sample, calibration)
        lowered = to_edge_transform_and_lower(
            torch.export.export(module, (sample,)), partitioner=[XnnpackPartitioner()]
        )
        description = {**model_metadata(model, metadata, size), "format": "executorch"}
        description["precision"] = "int8" if int8 else "fp32"
        description["input"] = {"name": "image", "layout": "NCHW", "dtype": "float32", "shape": [batch, 3, size, size]}
        program = EdgeProgramManager(
            {"forward": constant_prop_pass(lowered.exported_program())},
            constant_methods={METADATA_METHOD: json.dumps(description)},
            compile_config=EdgeCompileConfig(_check_ir_validity=False),
        )
    except MobilenetsError:
        raise
    except Exception as error:
        from mobilenets.deployment.litert import _conversion_error

        raise _conversion_error("ExecuTorch", error) from None
    partitions, outside = delegate_count(program), _operators_outside(program)
    if single_partition and (partitions != 1 or outside):
        counts = ", ".join(f"{name} ×{n}" for name, n in Counter(outside).items()) or "none"
        raise MobilenetsError(
            f"{out_path.name}: XNNPACK takes the graph in {partitions} delegate calls; operators left to "
            f"ExecuTorch's portable kernels: {counts} (pass single_partition=False to write it anyway)"
        )
    return write_device_file(out_path, program.to_executorch().buffer)


def delegate_count(program) -> int:
    graph = program.exported_program().graph_module.graph
    return sum(1 for node in graph.nodes if node.op == "call_function" and DELEGATE_CALL in str(node.target))


def read_metadata(path: Path | str) -> dict:
    """The ``mobilenets_metadata`` constant method of a ``.pte`` (labels, preprocessing, input), {} if none."""
    runtime = require("executorch.runtime", "Reading a .pte file")
    program = runtime.Runtime.get().load_program(Path(path))
    if METADATA_METHOD not in program.method_names:
        return {}
    return json.loads(program.load_method(METADATA_METHOD).execute([])[0])


def verify_executorch(
    path: Path | str,
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray | None = None,
) -> DeviceFile:
    """Run a ``.pte`` in ``executorch.runtime`` on ``images`` (float32 NCHW, normalized) against PyTorch fp32."""
    runtime = require("executorch.runtime", "Running a .pte file")
    path = Path(path)
    images = check_images(images, f"verifying {path.name}")
    metadata = read_metadata(path)
    method = runtime.Runtime.get().load_program(path).load_method("forward")
    batch = int(metadata.get("input", {}).get("shape", [1])[0])
    usable = len(images) - len(images) % batch
    if usable == 0:
        raise MobilenetsError(f"{path.name} runs batches of {batch}; give at least {batch} images")
    images = images[:usable]

    def run(chunk: np.ndarray) -> np.ndarray:
        return method.execute([torch.from_numpy(np.ascontiguousarray(chunk))])[0].numpy()

    outputs = np.concatenate([run(images[i : i + batch]) for i in range(0, usable, batch)])
    int8 = metadata.get("precision") == "int8"
    record = DeviceFile(
        format="executorch",
        path=path,
        bytes=path.stat().st_size,
        runtime=RUNTIME,
        precision="int8" if int8 else "fp32",
        partitions=_partitions_in_file(path),
        input=metadata.get("input", {}),
    )
    compare(
        record,
        outputs,
        reference_logits(model, images),
        labels[:usable] if labels is not None else None,
        exact=not int8,
    )
    if batch == 1:
        record.latency_ms = median_ms(lambda: run(images[:1]))
    else:
        record.notes.append(f"latency not measured at batch 1: the program's fixed batch is {batch}")
    return record


def _partitions_in_file(path: Path) -> int | None:
    """Delegate calls in the program's execution plan (``executorch.exir``'s reader of ``.pte`` files)."""
    try:
        from executorch.exir._serialize._program import deserialize_pte_binary
    except ImportError:
        return None
    try:
        program = deserialize_pte_binary(path.read_bytes())
        program = getattr(program, "program", program)
        plan = next(plan for plan in program.execution_plan if plan.name == "forward")
    except Exception:
        return None
    return len(plan.delegates)
