"""Inference on CPU in each of our deployment paths, against torchvision's (timm's for v1) model.

Latency at batch 1 and throughput at batch 32, fp32 unless named, in one run with interleaved rounds:

    flock /tmp/mobilenets-bench.lock .venv/bin/python benchmarks/cpu_inference.py --models mobilenet_v3_small mobilenet_v2

Candidates:
  <peer> channels_last eager   the baseline: the peer library's model, eval, no_grad, channels_last
  ours eager NCHW              our model as a user would first run it (model.eval(), no_grad)
  ours default                 the product's default engine (``mobilenets.deployment.engines.load_engine``, as
                               ``predict``/``evaluate`` use it) once an exported copy exists: ONNX Runtime
                               (its one-time export is reported, not in the medians)
  ours torch engine            ``--engine torch``: ``prepare_for_inference(model)``, Conv+BN fused,
                               channels_last, inference_mode
  ours compiled                ``prepare_for_inference(model, compile=True)``: plus torch.compile with freezing
                               (--compile; compile time reported, not in the medians)
  ORT fp32                     ``export_onnx`` → ONNX Runtime, all graph optimizations
  ORT int8                     ``quantize_ptq`` (QDQ, per-channel int8 weights) → ONNX Runtime; calibrated on
                               random images here, so this row measures speed only (accuracy: BENCHMARKS.md's
                               deployment section)
  ours int8 engine             ``--engine int8``: mobilenets' own int8 engine (``mobilenets.int8_engine``),
                               calibrated on the same random images (speed only, like ORT int8)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    Candidate,
    baseline_library,
    build_peer,
    load_average,
    machine_info,
    macs_per_image,
    measure,
    measure_fp32_peak,
    paired_ratio,
    print_machine,
    set_threads,
    table,
)

from mobilenets.kernels.acceleration import prepare_for_inference
from mobilenets.models.factory import create_model

NUM_CLASSES = 1000


def torch_runner(model: torch.nn.Module, images: torch.Tensor):
    def run():
        with torch.inference_mode():
            return model(images)

    return run


def calibration_images(resolution: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((32, 3, resolution, resolution)).astype(np.float32)


def onnx_paths(model: torch.nn.Module, folder: Path, resolution: int) -> tuple[Path, Path]:
    """fp32 and int8 ONNX files of ``model`` made by the deploy path (mobilenets.deployment: onnx, quantization)."""
    from mobilenets.deployment.onnx import export_onnx
    from mobilenets.deployment.quantization import quantize_ptq

    fp32 = export_onnx(model, folder / "model.onnx")
    int8 = quantize_ptq(fp32, folder / "model.int8.onnx", calibration_images(resolution), calibration_method="minmax")
    return fp32, int8


def int8_engine_runner(model: torch.nn.Module, images: torch.Tensor, resolution: int):
    from mobilenets.deployment.int8_engine import Int8Engine, batches_of

    engine = Int8Engine(model, batches_of(calibration_images(resolution)))

    def run():
        return engine(images)

    return run


def ort_runner(path: Path, images: torch.Tensor):
    from mobilenets.deployment.onnx_runtime import create_session

    session = create_session(path, threads=torch.get_num_threads())
    name = session.get_inputs()[0].name
    array = images.numpy()

    def run():
        return session.run(None, {name: array})

    return run


def engine_runner(model: torch.nn.Module, images: torch.Tensor):
    from mobilenets.deployment.engines import load_engine

    start = time.perf_counter()
    engine = load_engine(model, "auto", planned_images=10**6)  # a long job: the export is paid once
    print(f"(ours default: engine {engine.name}, set-up incl. export {time.perf_counter() - start:.1f} s)")

    def run():
        return engine(images)

    return run


def candidates_for(
    model_name: str, batch: int, resolution: int, onnx: tuple[Path, Path], ours: torch.nn.Module, compile: bool
) -> list[Candidate]:
    torch.manual_seed(0)
    images = torch.randn(batch, 3, resolution, resolution)
    nhwc = images.contiguous(memory_format=torch.channels_last)
    macs = macs_per_image(model_name, resolution, NUM_CLASSES)
    peer = baseline_library(model_name)
    runners = [
        (
            f"{peer} channels_last eager",
            torch_runner(build_peer(peer, model_name, NUM_CLASSES).eval().to(memory_format=torch.channels_last), nhwc),
        ),
        ("ours eager NCHW", torch_runner(ours, images)),
        ("ours default", engine_runner(ours, images)),
        ("ours torch engine", torch_runner(prepare_for_inference(ours, compile=False), images)),
    ]
    if compile:
        runners.append(("ours compiled", torch_runner(prepare_for_inference(ours, compile=True), images)))
    runners += [("ORT fp32", ort_runner(onnx[0], images)), ("ORT int8", ort_runner(onnx[1], images))]
    from mobilenets import kernels

    if kernels.available():
        runners.append(("ours int8 engine", int8_engine_runner(ours, images, resolution)))
    candidates = []
    for name, run in runners:
        start = time.perf_counter()
        run()  # first call: oneDNN primitives, ORT arena, and for the compiled path the whole compile
        candidates.append(Candidate(name, run, batch, macs, setup_seconds=time.perf_counter() - start))
    return candidates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--models", nargs="+", default=["mobilenet_v3_small", "mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large"]
    )
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=15, help="interleaved rounds")
    parser.add_argument("--compile", action="store_true", help="also time the compiled path (compiles take minutes)")
    parser.add_argument("--threads", type=int, help="intra-op threads (default: the product's choice)")
    args = parser.parse_args(argv)

    set_threads(args.threads)
    # The default engine caches its exports; keep this run's out of the user's cache.
    os.environ["MOBILENETS_HOME"] = tempfile.mkdtemp(prefix="mobilenets-bench-home-")
    print_machine(machine_info())
    peak = measure_fp32_peak()
    print(f"measured fp32 peak (2048² matmul, {torch.get_num_threads()} threads): {peak:.0f} GFLOP/s")
    for model_name in args.models:
        ours = create_model(model_name, num_classes=NUM_CLASSES).eval()
        with tempfile.TemporaryDirectory(prefix="mobilenets-bench-") as folder:
            onnx = onnx_paths(ours, Path(folder), args.resolution)
            for batch in args.batches:
                candidates = candidates_for(model_name, batch, args.resolution, onnx, ours, args.compile)
                # Batch-1 calls are short: several per timed round keep timer and scheduler noise down.
                # One untimed call first: several engines' thread pools share this process (common.measure).
                measure(candidates, args.repeats, warmup=2, calls_per_repeat=max(1, 8 // batch), settle_calls=1)
                baseline = candidates[0]
                ort_fp32 = next(c for c in candidates if c.name == "ORT fp32")
                rows = [
                    [
                        model_name,
                        str(batch),
                        candidate.name,
                        f"{candidate.median * 1000:.1f} ±{candidate.spread:.0%}",
                        f"{candidate.images_per_second:.0f}",
                        f"{paired_ratio(baseline, candidate):.2f}×",
                        f"{paired_ratio(ort_fp32, candidate):.2f}×",
                        f"{candidate.gflops:.0f} ({candidate.gflops / peak:.1%})",
                    ]
                    for candidate in candidates
                ]
                compiled = [c for c in candidates if c.name == "ours compiled"]
                print(
                    table(
                        rows,
                        [
                            "model",
                            "batch",
                            "candidate",
                            "ms/batch",
                            "images/s",
                            f"vs {baseline.name}",
                            "vs ORT fp32",
                            "GFLOP/s (of peak)",
                        ],
                    )
                )
                if compiled:
                    print(f"(compile + first call of the compiled path: {compiled[0].setup_seconds:.0f} s)")
                sys.stdout.flush()
    print(f"load average at end: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
