"""Where does int8 MobileNetV3 spend its time in ONNX Runtime? The optimized graph and per-op-type profile.

For fp32 and int8 (the product's QDQ form) of one model, this saves the graph ORT actually runs
(``SessionOptions.optimized_model_filepath``), counts its nodes by type (QLinearConv, Transpose,
QuantizeLinear/DequantizeLinear left around HardSwish, HardSigmoid, the SE Mul, GlobalAveragePool) and
sums ORT's own per-node profile (``enable_profiling``) by op type at the given batch.

    flock /tmp/mobilenets-bench.lock .venv/bin/python benchmarks/deploy_v3_profile.py [--model mobilenet_v3_small]
        [--run RUN_DIR] [--resolution 224] [--batch 32] [--threads 2] [--int8 FILE] [--nodes 10]

ORT's profiler adds a fixed cost to every node, so with ~130 small nodes the profiled wall time is
several times the unprofiled one: read the shares and the node counts, and time with ``mobilenets bench``.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from mobilenets import create_model
from mobilenets.deployment.onnx import export_onnx
from mobilenets.deployment.quantization import quantize_ptq


def session(path: Path, threads: int, optimized: Path | None = None, profile: bool = False) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.profile_file_prefix = str(path.parent / f"{path.stem}.profile")  # next to the model, not in the cwd
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
    options.enable_profiling = profile
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def node_counts(optimized: Path) -> collections.Counter:
    return collections.Counter(node.op_type for node in onnx.load(str(optimized)).graph.node)


def profile_by_op(
    path: Path, batch: np.ndarray, threads: int, runs: int, nodes: int = 0
) -> tuple[dict[str, float], float]:
    """Mean microseconds per run spent in each op type (ORT's node events), and the mean wall time.

    With ``nodes``, also prints that many of the slowest nodes with their input and output shapes.
    """
    s = session(path, threads, profile=True)
    for _ in range(3):
        s.run(None, {"image": batch})
    started = time.perf_counter()
    for _ in range(runs):
        s.run(None, {"image": batch})
    wall = (time.perf_counter() - started) / runs
    events = json.loads(Path(s.end_profiling()).read_text())
    totals: dict[str, float] = collections.defaultdict(float)
    node_runs = collections.Counter()
    node_times: dict[str, float] = collections.defaultdict(float)
    node_shapes: dict[str, str] = {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            totals[event["args"]["op_name"]] += event["dur"]
            node_runs[event["name"]] += 1
            node_times[event["name"]] += event["dur"]
            shapes = [next(iter(shape.values())) for shape in event["args"].get("input_type_shape", [])]
            outputs = [next(iter(shape.values())) for shape in event["args"].get("output_type_shape", [])]
            node_shapes[event["name"]] = f"{event['args']['op_name']} in {[x for x in shapes if x][:2]} out {outputs}"
    calls = max(node_runs.values()) if node_runs else 1  # warm-up runs are profiled too
    slowest = sorted(node_times.items(), key=lambda item: -item[1])[:nodes]
    for name, us in slowest:
        print(f"    {us / node_runs[name] / 1000:7.2f} ms  {node_shapes[name]}")
    return {op: us / calls for op, us in totals.items()}, 1e6 * wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenet_v3_small")
    parser.add_argument("--run", help="a run directory (its trained model and resolution) instead of --model")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--int8", help="an int8 ONNX file to profile instead of quantizing here")
    parser.add_argument("--nodes", type=int, default=0, help="also print this many of the slowest nodes")
    args = parser.parse_args()
    print(f"onnxruntime {ort.__version__}, {os.cpu_count()} cores, load average {os.getloadavg()}")
    work = Path(tempfile.mkdtemp(prefix="v3-profile-"))
    if args.run:
        from mobilenets.models.weights import load_model

        model = load_model(args.run)
        resolution = model.weights_metadata["preprocessing"]["input_size"]
    else:
        torch.manual_seed(0)
        model, resolution = create_model(args.model).eval(), args.resolution
    fp32 = export_onnx(model, work / "fp32.onnx")
    rng = np.random.default_rng(0)
    calibration = rng.standard_normal((32, 3, resolution, resolution)).astype(np.float32)
    int8 = Path(args.int8) if args.int8 else quantize_ptq(fp32, work / "int8.onnx", calibration)
    batch = np.ascontiguousarray(np.resize(calibration, (args.batch, 3, resolution, resolution)))
    for name, path in (("fp32", fp32), ("int8", int8)):
        optimized = work / f"{name}.optimized.onnx"
        session(path, args.threads, optimized)
        counts = node_counts(optimized)
        print(f"\n{name}: slowest nodes" if args.nodes else "", end="\n" if args.nodes else "")
        by_op, wall = profile_by_op(path, batch, args.threads, args.runs, args.nodes)
        total = sum(by_op.values())
        print(f"\n{name}: {path}  ({resolution} px, batch {args.batch}, {args.threads} threads)")
        print(f"  mean wall {wall / 1000:.2f} ms/run; node time {total / 1000:.2f} ms/run")
        print("  optimized graph: " + ", ".join(f"{op} {n}" for op, n in counts.most_common()))
        for op, us in sorted(by_op.items(), key=lambda item: -item[1]):
            print(f"    {op:28s} {us / 1000:8.2f} ms  {100 * us / total:5.1f}%")
    print(f"\nload average after {os.getloadavg()}; optimized graphs in {work}")


if __name__ == "__main__":
    main()
