"""Every device format (issue 18), fp32 and int8, verified in its own runtime on real Fashion-MNIST images.

For each model: a brief training on Fashion-MNIST (so that agreement means something), then the exports
of ``mobilenets.deployment`` (LiteRT fp32/int8, ExecuTorch fp32/int8, TFLite Micro int8, Core ML
validated only), each run in its runtime on held-out test images against PyTorch fp32: size, top-1
agreement, accuracy, delegate partitions, micro arena/flash. Batch-1 latency of every runnable format is
timed interleaved (``mobilenets.deployment.timing.interleaved_times``) next to ONNX Runtime fp32 of the
same weights, in the same process.

    .venv/bin/python benchmarks/device_formats.py                       # V3-Small and v1 α=0.25, 96 px
    .venv/bin/python benchmarks/device_formats.py --models mobilenet_v3_small:1.0:minimal --no-litert

``--run RUN_DIR --test-folder DIR``: a run trained with ``mobilenets train`` instead. Its LiteRT and
ExecuTorch files (fp32 and int8) are written exactly as ``mobilenets export RUN_DIR --format ... --int8``
writes them (calibrated on the run's training images), then judged on ``--test-images`` images of a
held-out class folder that neither training nor calibration saw:

    .venv/bin/python benchmarks/device_formats.py --run runs/v3s --test-folder test10 --test-images 1000

Needs Debian's Fashion-MNIST (`apt install dataset-fashion-mnist`) and the edge extra.
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_average, machine_info

from mobilenets import create_model

FASHION = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["t-shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot"]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def read_idx(path: Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes())
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def fashion(split: str, count: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    prefix = {"train": "train", "test": "t10k"}[split]
    images, labels = (
        read_idx(FASHION / f"{prefix}-images-idx3-ubyte.gz"),
        read_idx(FASHION / f"{prefix}-labels-idx1-ubyte.gz"),
    )
    pick = np.random.default_rng(seed).permutation(len(images))[:count]
    x = torch.from_numpy(images[pick].astype(np.float32) / 255)[:, None].expand(-1, 3, -1, -1)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    return x.numpy().astype(np.float32), labels[pick].astype(np.int64)


def train(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, epochs: int) -> float:
    start = time.perf_counter()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * (len(x) // 64)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
    model.train()
    generator = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for i in range(0, len(x) - 63, 64):
            index = order[i : i + 64]
            loss = F.cross_entropy(model(torch.from_numpy(x[index])), torch.from_numpy(y[index]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return time.perf_counter() - start


CHILD = """
import sys, json, torch
from mobilenets import create_model
from mobilenets.deployment import coreml
name, options, folder, size = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], int(sys.argv[4])
model = create_model(name, num_classes=10, **options)
model.load_state_dict(torch.load(folder + "/state.pt", weights_only=True))
model.eval()
path = coreml.export_coreml(model, folder + "/model.mlpackage", input_size=size)
print(json.dumps(coreml.verify_coreml(path, model).to_dict()))
"""


def coreml_in_child(model, name: str, options: dict, folder: Path, size: int):
    import json
    import subprocess

    from mobilenets.deployment.device_files import DeviceFile

    torch.save(model.state_dict(), folder / "state.pt")
    result = subprocess.run(
        [sys.executable, "-c", CHILD, name, json.dumps(options), str(folder), str(size)],
        capture_output=True,
        text=True,
        check=True,
    )
    data = json.loads(result.stdout.strip().splitlines()[-1])
    data["path"] = Path(data["path"])
    return DeviceFile(**data)


def parse_model(spec: str) -> tuple[str, dict]:
    name, *rest = spec.split(":")
    options = {"width": float(rest[0])} if rest else {}
    if len(rest) > 1 and rest[1] == "minimal":
        name = name.replace("mobilenet_v3_small", "mobilenet_v3_small_minimal")
    return name, options


def held_out(run: Path, folder: Path, count: int) -> tuple[torch.nn.Module, np.ndarray, np.ndarray]:
    """A run's model and ``count`` images of a held-out class folder (labels matched by class name)."""
    from mobilenets.data.folders import folder_images
    from mobilenets.deployment.loading import labels_for_model, load_source_model, model_source, named_classes
    from mobilenets.deployment.quantization import load_images, sample

    model = load_source_model(model_source(run_dir=run))
    paths, labels, classes = folder_images(folder)
    labels = labels_for_model(folder, classes, labels, named_classes(model))
    chosen = sample(list(zip(paths, labels, strict=True)), count, seed=1)
    images = load_images([p for p, _ in chosen], [y for _, y in chosen], model.metadata.preprocessing, "test")
    # C order: load_images keeps the decoder's channels-last strides, and executorch.runtime reads a strided
    # tensor's memory as if it were contiguous (wrong logits, no error).
    return model, np.ascontiguousarray(images.images), images.labels


def run_exports(run: Path, folder: Path, count: int, repeats: int) -> tuple[list, list]:
    """The CLI's own exports of a run (``export --format tflite|executorch --int8``), judged on held-out images."""
    from executorch.runtime import Runtime

    from mobilenets.deployment import executorch, litert
    from mobilenets.deployment.device_export import DeviceBudget, export_device_format
    from mobilenets.deployment.loading import model_source
    from mobilenets.deployment.onnx import export_onnx
    from mobilenets.deployment.onnx_runtime import create_session
    from mobilenets.deployment.timing import interleaved_times

    model, x_test, y_test = held_out(run, folder, count)
    label = f"{model.architecture.name} {run.name}"
    print(f"{label}: {len(x_test)} held-out images from {folder}", flush=True)
    source = model_source(run_dir=run)
    for format in ("tflite", "executorch"):
        start = time.perf_counter()
        export_device_format(
            source,
            format=format,
            out=None,
            int8=True,
            data=None,
            check_images=32,
            calibration_images=256,
            budget=DeviceBudget(),
            report=lambda line: print(f"  export: {line}", flush=True),
        )
        print(f"  {format} export + check: {time.perf_counter() - start:.0f} s", flush=True)
    one = x_test[:1]
    session = create_session(export_onnx(model, Path(tempfile.mkdtemp(prefix="device-formats-")) / "model.onnx"))
    runners = {"ONNX Runtime fp32": lambda: session.run(None, {"image": one})}
    records = []
    for name in ("model.tflite", "model_int8.tflite"):
        records.append(litert.verify_litert(run / name, model, x_test, y_test))
        interpreter = litert._interpreter((run / name).read_bytes())
        runners[f"LiteRT {records[-1].precision}"] = lambda i=interpreter: litert.run_nhwc(i, one)
    for name in ("model.pte", "model_int8.pte"):
        records.append(executorch.verify_executorch(run / name, model, x_test, y_test))
        method = Runtime.get().load_program(run / name).load_method("forward")
        runners[f"ExecuTorch {records[-1].precision}"] = lambda m=method: m.execute([torch.from_numpy(one)])
    found = interleaved_times(list(runners.values()), repeats=repeats)
    medians = {name: statistics.median(times) for name, times in zip(runners, found, strict=True)}
    timings = [(label, engine, ms, medians["ONNX Runtime fp32"] / ms) for engine, ms in medians.items()]
    return [(label, record) for record in records], timings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["mobilenet_v3_small:1.0", "mobilenet_v1:0.25"])
    parser.add_argument("--resolution", type=int, default=96)
    parser.add_argument("--train-images", type=int, default=3000)
    parser.add_argument("--test-images", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--micro-only", action="store_true", help="only the microcontroller file (arena/flash)")
    parser.add_argument("--run", type=Path, action="append", help="a `mobilenets train` run directory (repeatable)")
    parser.add_argument("--test-folder", type=Path, help="with --run: held-out class folder to judge on")
    args = parser.parse_args(argv)
    if args.run:
        if args.test_folder is None:
            parser.error("--run needs --test-folder (held-out images; the run's own are used for calibration)")
        torch.set_num_threads(2)
        info = machine_info()
        print(f"machine: {info.get('cpu', info)}; load before: {load_average()}")
        print(f"command: {' '.join(sys.argv)}")
        rows, timings = [], []
        for run in args.run:
            found_rows, found_timings = run_exports(run, args.test_folder, args.test_images, args.repeats)
            rows += found_rows
            timings += found_timings
        print(f"\nload after: {load_average()}\n")
        print_tables(rows, timings)
        return 0

    from mobilenets.deployment import executorch, litert, micro
    from mobilenets.deployment.onnx import export_onnx
    from mobilenets.deployment.onnx_runtime import create_session
    from mobilenets.deployment.timing import interleaved_times

    torch.set_num_threads(2)
    info = machine_info()
    print(f"machine: {info.get('cpu', info)}; load before: {load_average()}")
    print(f"command: {' '.join(sys.argv)}")
    x_train, y_train = fashion("train", args.train_images, args.resolution, seed=0)
    x_test, y_test = fashion("test", args.test_images, args.resolution, seed=1)
    calibration = x_train[:200]
    rows, timings = [], []
    for spec in args.models:
        name, options = parse_model(spec)
        torch.manual_seed(0)
        model = create_model(name, num_classes=10, **options)
        model.weights_metadata = {
            "classes": CLASSES,
            "preprocessing": {"input_size": args.resolution, "resize_size": args.resolution, "mean": MEAN, "std": STD},
        }
        seconds = train(model, x_train, y_train, args.epochs)
        model.eval()
        label = f"{name} {options.get('width', 1.0)}"
        print(f"{label}: trained {args.epochs} epochs on {args.train_images} images in {seconds:.0f} s", flush=True)
        folder = Path(tempfile.mkdtemp(prefix="device-formats-"))
        records, runners = [], {}
        if not args.micro_only:
            onnx_path = export_onnx(model, folder / "model.onnx")
            session = create_session(onnx_path)
            one = x_test[:1]
            runners["ONNX Runtime fp32"] = lambda s=session, one=one: s.run(None, {"image": one})
            for int8 in (False, True):
                path = litert.export_litert(
                    model, folder / f"model{'_int8' if int8 else ''}.tflite", calibration=calibration, int8=int8
                )
                records.append(litert.verify_litert(path, model, x_test, y_test))
                interpreter = litert._interpreter(path.read_bytes())
                runners[f"LiteRT {'int8' if int8 else 'fp32'}"] = lambda i=interpreter, one=one: litert.run_nhwc(i, one)
                path = executorch.export_executorch(
                    model, folder / f"model{'_int8' if int8 else ''}.pte", calibration=calibration, int8=int8
                )
                records.append(executorch.verify_executorch(path, model, x_test, y_test))
                from executorch.runtime import Runtime

                method = Runtime.get().load_program(path).load_method("forward")
                runners[f"ExecuTorch {'int8' if int8 else 'fp32'}"] = lambda m=method, one=one: m.execute(
                    [torch.from_numpy(one)]
                )
        path = micro.export_micro(model, folder / "model_micro_int8.tflite", calibration=calibration)
        record = micro.verify_micro(path, model, x_test, y_test)
        budget = micro.micro_budget(path, arena_bytes=record.arena_bytes, ram_kb=150, flash_kb=300)
        record.notes.append(budget.verdict)
        records.append(record)
        if not args.micro_only:
            # In a child process: converting V3-Small to Core ML after the LiteRT/ExecuTorch work in this process
            # crashed it once (segmentation fault, not reproduced on a small v1).
            records.append(coreml_in_child(model, name, options, folder, args.resolution))
        for record in records:
            rows.append((label, record))
        if runners:
            found = interleaved_times(list(runners.values()), repeats=args.repeats)
            medians = {name: statistics.median(times) for name, times in zip(runners, found, strict=True)}
            for engine, ms in medians.items():
                timings.append((label, engine, ms, medians["ONNX Runtime fp32"] / ms))
    print(f"\nload after: {load_average()}\n")
    print_tables(rows, timings)
    return 0


def print_tables(rows: list, timings: list) -> None:
    print(
        "| model | file | runtime | bytes | agreement | accuracy (fp32) | max abs diff | partitions | arena | batch-1 ms (alone) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, r in rows:
        accuracy = f"{r.accuracy:.1%} ({r.reference_accuracy:.1%})" if r.accuracy is not None else "—"
        print(
            f"| {label} | {r.path.name} | {r.runtime} | {r.bytes:,} | "
            f"{f'{r.agreement:.1%}' if r.agreement is not None else 'not run'} | {accuracy} | "
            f"{f'{r.max_abs_diff:.1e}' if r.max_abs_diff is not None else '—'} | {r.partitions or '—'} | "
            f"{f'{r.arena_bytes:,}' if r.arena_bytes else '—'} | {f'{r.latency_ms:.2f}' if r.latency_ms else '—'} |"
        )
    for label, r in rows:
        if r.format == "tflite-micro":
            print(f"\n{label}: {r.notes[-1]}")
    if timings:
        print("\n| model | engine | batch-1 ms (interleaved median) | speed vs ORT fp32 |")
        print("|---|---|---|---|")
        for label, engine, ms, ratio in timings:
            print(f"| {label} | {engine} | {ms:.2f} | {ratio:.2f}× |")


if __name__ == "__main__":
    raise SystemExit(main())
