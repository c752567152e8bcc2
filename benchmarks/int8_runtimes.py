"""The int8 engine against the well-kept int8 runtimes: ONNX Runtime, LiteRT (XNNPACK), ExecuTorch (XNNPACK).

Issue 18's decision: if a well-kept runtime comes within 15% of mobilenets' int8 engine on the work users
run (V3-Small and V2 at 224 px, batch 1 and batch 32), the engine is retired. Every engine runs the same
batch in the same interleaved rounds (``deployment.timing.time_engines``: a 50 ms pause and an untimed
run before each timed one), with the same thread count; ONNX Runtime fp32 is the named baseline.

    python benchmarks/int8_runtimes.py [--models mobilenet_v3_small,mobilenet_v2] [--resolution 224]
        [--batches 1,32] [--repeats 15] [--threads 2] [--fp32-device-files]

Models are untrained with BatchNorm statistics from random batches (speed does not depend on the
weights); int8 files are calibrated on 32 random images (timing only: accuracy is measured elsewhere).
ExecuTorch programs have a fixed batch, so one program is exported per batch size; LiteRT's batch-1
file is resized to the batch.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_average, machine_info, print_machine, table

from mobilenets import kernels
from mobilenets.core.console import native_output_silenced
from mobilenets.deployment.device_runners import executorch_runner, litert_runner
from mobilenets.deployment.executorch import export_executorch
from mobilenets.deployment.int8_engine import Int8Engine
from mobilenets.deployment.litert import export_litert
from mobilenets.deployment.onnx import export_onnx
from mobilenets.deployment.onnx_runtime import create_session
from mobilenets.deployment.quantization import quantize_ptq
from mobilenets.deployment.timing import time_engines
from mobilenets.models.factory import create_model
from mobilenets.models.preprocessing import Preprocessing


def settled(name: str, size: int) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model(name, num_classes=1000)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, size, size))
    model.weights_metadata = {"preprocessing": Preprocessing.for_resolution(size).to_dict()}  # the export size
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mobilenet_v3_small,mobilenet_v2")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--fp32-device-files",
        action="store_true",
        help="also time LiteRT and ExecuTorch fp32 (int8 vs fp32 per runtime)",
    )
    args = parser.parse_args(argv)
    print_machine(machine_info())
    print(f"load average at start: {load_average()}; threads {args.threads}")
    torch.set_num_threads(args.threads)
    size, batches = args.resolution, [int(b) for b in args.batches.split(",")]
    rows = []
    for name in args.models.split(","):
        model = settled(name, size)
        calibration = np.random.default_rng(1).standard_normal((32, 3, size, size), dtype=np.float32)
        with tempfile.TemporaryDirectory() as folder, native_output_silenced(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            work = Path(folder)
            fp32 = export_onnx(model, work / "fp32.onnx")
            int8 = quantize_ptq(fp32, work / "int8.onnx", calibration, "minmax")
            precisions = ("fp32", "int8") if args.fp32_device_files else ("int8",)
            for precision in precisions:
                export_litert(
                    model, work / f"model_{precision}.tflite", int8=precision == "int8", calibration=calibration
                )
            programs = {
                (precision, batch): export_executorch(
                    model,
                    work / f"b{batch}" / f"model_{precision}.pte",
                    int8=precision == "int8",
                    calibration=calibration,
                    batch=batch,
                )
                for precision in precisions
                for batch in batches
            }
            engine = Int8Engine(model, [torch.from_numpy(calibration)]) if kernels.int8_available() else None
            sessions = {
                "onnxruntime fp32": create_session(fp32, args.threads),
                "onnxruntime int8": create_session(int8, args.threads),
            }
            for batch in batches:
                images = np.random.default_rng(0).standard_normal((batch, 3, size, size), dtype=np.float32)
                runs = {}
                for engine_name, session in sessions.items():
                    feed = {session.get_inputs()[0].name: images}
                    runs[engine_name] = lambda s=session, f=feed: s.run(None, f)
                if engine is not None:
                    tensor = torch.from_numpy(images)
                    runs["mobilenets int8"] = lambda t=tensor, e=engine: e(t)
                notes: list[str] = []
                for precision in precisions:
                    litert_name, executorch_name = f"litert {precision}", f"executorch {precision}"
                    runs[litert_name] = litert_runner(
                        work / f"model_{precision}.tflite",
                        images,
                        threads=args.threads,
                        notes=notes,
                        engine=litert_name,
                    )
                    runs[executorch_name] = executorch_runner(
                        programs[precision, batch], images, threads=args.threads, notes=notes, engine=executorch_name
                    )
                timings = time_engines(runs, batch, repeats=args.repeats, warmup=3)
                base = next(t for t in timings if t.engine == "onnxruntime fp32")
                own = next((t for t in timings if t.engine == "mobilenets int8"), None)
                for t in timings:
                    rows.append(
                        [
                            name,
                            str(batch),
                            t.engine,
                            f"{t.median_ms:.2f}",
                            f"{t.min_ms:.2f}..{t.max_ms:.2f}",
                            f"{base.median_ms / t.median_ms:.2f}x",
                            f"{t.median_ms / own.median_ms:.2f}x" if own else "",
                        ]
                    )
    print(
        table(
            rows,
            ["model", "batch", "engine", "median ms", "min..max", "speed vs ORT fp32", "time vs mobilenets int8"],
        )
    )
    print(f"load average at end: {load_average()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
