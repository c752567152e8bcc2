"""Why is int8 MobileNetV3-Small not faster than fp32 in ONNX Runtime? Quantization variants side by side.

Exports an (untrained: speed does not depend on the weights) V3-Small at 224 px, or a trained run's model
at its resolution (``--run``), quantizes it with ONNX Runtime in several forms and times all of them
interleaved in one process, 2 threads: the product's int8 form (hard-swish, hard-sigmoid and SE pooling
rewritten so ORT runs them in int8, ``quantization.int8_friendly_form``), and the earlier forms on the
graph as exported: all ops QDQ, convolutions/classifier only, QOperator format, depthwise convs in float.
Prints medians and ratios against fp32 ONNX Runtime measured in the same run.

    python benchmarks/deploy_v3_int8_variants.py [--repeats 20] [--model NAME [--resolution 224] | --run RUN_DIR]
        [--batches 1,32] [--no-spinning]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

from mobilenets import create_model
from mobilenets.deployment.onnx import export_onnx
from mobilenets.deployment.quantization import (
    ArrayReader,
    constant_scale_nodes,
    float_logits,
    fold_constant_scales,
    prepare_for_quantization,
    quantize_ptq,
)
from mobilenets.models.preprocessing import Preprocessing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--model", default="mobilenet_v3_small")
    parser.add_argument("--run", help="a trained run directory (its model, at its resolution) instead of --model")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--resolution", type=int, default=224, help="input size for --model (a run uses its own)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--no-spinning",
        action="store_true",
        help="intra-op threads sleep between runs: interleaved sessions otherwise spin against each other",
    )
    args = parser.parse_args()
    print(f"onnxruntime {ort.__version__}, {os.cpu_count()} cores, load average {os.getloadavg()}")
    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix="v3-int8-"))
    if args.run:
        from mobilenets.models.weights import load_model

        model = load_model(args.run)
        size = model.weights_metadata["preprocessing"]["input_size"]
    else:
        model, size = create_model(args.model).eval(), args.resolution
        model.weights_metadata = {"preprocessing": Preprocessing.for_resolution(size).to_dict()}  # the export's size
    fp32 = export_onnx(model, work / "fp32.onnx")
    prepared = prepare_for_quantization(fp32, work / "prepared.onnx", int8_form=False)  # the graph as exported
    calibration = np.random.default_rng(0).standard_normal((32, 3, size, size)).astype(np.float32)
    depthwise = [
        node.name
        for node in onnx.load(str(prepared)).graph.node
        if node.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in node.attribute)
    ]

    def quantize(name: str, quant_format=QuantFormat.QDQ, **options) -> Path:
        quantize_static(str(prepared), str(work / name), ArrayReader(calibration), quant_format=quant_format,
                        per_channel=True, reduce_range=False, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax, **options)  # fmt: skip
        return work / name

    form = prepare_for_quantization(fp32, work / "form_prepared.onnx")  # the product's int8 graph form

    def quantize_form(name: str, activation_type=QuantType.QUInt8, **extra_options) -> Path:
        """The product's form with other ORT quantizer options (same scale folding and float logits)."""
        quantize_static(str(form), str(work / name), ArrayReader(calibration), quant_format=QuantFormat.QDQ,
                        per_channel=True, reduce_range=False, activation_type=activation_type,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                        nodes_to_exclude=constant_scale_nodes(onnx.load(str(form))), extra_options=extra_options)  # fmt: skip
        onnx.save(float_logits(fold_constant_scales(onnx.load(str(work / name)))), str(work / name))
        return work / name

    models = {
        "fp32 (baseline)": fp32,
        "int8 QDQ, int8 graph form (the product's)": quantize_ptq(fp32, work / "form.onnx", calibration),
        "  form, int8 activations, symmetric": quantize_form("form_s8.onnx", QuantType.QInt8, ActivationSymmetric=True),
        "  form, QDQKeepRemovableActivations": quantize_form("form_keep.onnx", QDQKeepRemovableActivations=True),
        "  form, QuantizeBias=False (float bias)": quantize_form("form_fbias.onnx", QuantizeBias=False),
        "int8 QDQ, all ops, as exported": quantize("all.onnx"),
        "int8 QDQ, Conv/Gemm only": quantize("conv.onnx", op_types_to_quantize=["Conv", "Gemm", "MatMul"]),
        "int8 QOperator": quantize("qoperator.onnx", quant_format=QuantFormat.QOperator),
        "int8 QDQ, depthwise in float": quantize("depthwise_float.onnx", nodes_to_exclude=depthwise),
    }
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    if args.no_spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sessions = {k: ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for k, p in models.items()}
    for batch in map(int, args.batches.split(",")):
        inputs = {"image": calibration[:batch]}
        times: dict[str, list[float]] = {k: [] for k in sessions}
        for repeat in range(args.repeats + 3):
            for name, session in sessions.items():  # interleaved: every candidate sees the same conditions
                started = time.perf_counter()
                session.run(None, inputs)
                if repeat >= 3:
                    times[name].append(time.perf_counter() - started)
        baseline = statistics.median(times["fp32 (baseline)"])
        print(f"batch {batch}:")
        for name, values in times.items():
            median = statistics.median(values)
            print(f"  {name:42s} {1000 * median:8.2f} ms [{1000 * min(values):.2f}–{1000 * max(values):.2f}]  "
                  f"{baseline / median:.2f}× fp32, {models[name].stat().st_size / 1e6:.2f} MB")  # fmt: skip
    print(f"load average after {os.getloadavg()}")


if __name__ == "__main__":
    main()
