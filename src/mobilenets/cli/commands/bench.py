"""``mobilenets bench``: fp32 PyTorch eager, fp32 and int8 ONNX Runtime, mobilenets' int8 engine, side by side.

For a run directory, the device files it holds (``export --format tflite|executorch|tflite-micro``) are
timed in their own runtimes in the same rounds (``deployment.device_runners``).

All engines at one batch size are timed in the same interleaved rounds (``deployment.timing``, the
harness ``quantize`` uses), so machine noise hits each alike: ``--warmup`` rounds, then ``--repeats``
timed ones; we report the median, the spread (min and max) and the throughput at the median. All
engines use the same thread count.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mobilenets.core.errors import MobilenetsError, check_number, split_items
from mobilenets.core.settings import usable_cpu_count
from mobilenets.deployment.timing import Timing, time_engines

__all__ = ["Timing", "measure", "parse_batches"]


def measure(run: Callable[[], object], engine: str, batch: int, warmup: int = 3, repeats: int = 20) -> Timing:
    """One engine alone, through the package's one timing harness (``deployment.timing``)."""
    return time_engines({engine: run}, batch, repeats=repeats, warmup=warmup)[0]


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="latency/throughput: fp32 PyTorch, fp32 and int8 ONNX Runtime, mobilenets int8, a run's device files",
        description="Median latency and throughput of fp32 PyTorch eager, fp32 ONNX Runtime, int8 ONNX Runtime "
        "and mobilenets' int8 engine on the same batch, after warm-up, with the spread of the repeated runs. "
        "For a run directory, every device file it holds (.tflite, .pte, the microcontroller file) is timed in "
        "its own runtime in the same interleaved rounds.",
    )
    parser.add_argument(
        "target",
        metavar="MODEL_OR_FILE",
        help="a run directory, a model name (random weights), a published weights name, a weights file, or an .onnx file",
    )
    parser.add_argument("--model", metavar="NAME", help="architecture of a weights file that does not say it")
    parser.add_argument(
        "--width",
        type=float,
        help="width α of a model name (default 1.0), or of a bare checkpoint whose tensors do not settle it",
    )
    parser.add_argument(
        "--resolution", type=int, help="input size to time at (default: the weights' own; a model name: 224)"
    )
    parser.add_argument("--batch", default="1,32", help="comma-separated batch sizes (default 1,32)")
    parser.add_argument("--threads", type=int, default=None, help="threads for every engine (default: all cores)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--int8", type=Path, help="int8 .onnx to time (default: RUN_DIR/model_int8.onnx or a PTQ)")
    parser.add_argument("--data", type=Path, help="calibration images for the PTQ made when no int8 file exists")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(run=run)


def parse_batches(text: str) -> list[int]:
    parts = split_items(text, "--batch", what="positive integers", example="1,32")
    try:
        batches = [int(part) for part in parts]
    except ValueError:
        raise MobilenetsError(f"--batch {text!r}: give comma-separated positive integers, e.g. 1,32") from None
    if not batches or min(batches) < 1:
        raise MobilenetsError(f"--batch {text!r}: give comma-separated positive integers, e.g. 1,32")
    return batches


def run(args: argparse.Namespace) -> int:
    import torch

    from mobilenets.deployment.onnx_runtime import create_session

    batches = parse_batches(args.batch)
    check_number("--repeats", args.repeats, at_least=1, whole=True)
    check_number("--warmup", args.warmup, at_least=0, whole=True)
    check_number("--threads", args.threads, at_least=1, whole=True, example=2)  # 0 would silently mean "all cores"
    check_target_options(args)
    cores = usable_cpu_count()  # the affinity mask's, as a container or cpuset gives them
    threads = args.threads or cores
    if threads > cores:
        # Oversubscribed threads wait on each other: the figures would time the scheduler, not the model.
        print(
            f"warning: --threads {threads} is more than this machine's {cores} cores; the timings will be slower "
            f"than any deployment would see (use --threads {cores} or fewer)",
            file=sys.stderr,
        )
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="mobilenets-bench-") as work:
        model, fp32_onnx, int8_onnx, size, notes = resolve_engines(args, Path(work))
        native = native_int8_engine(model, args, size, notes) if model is not None else None
        sessions = {
            name: create_session(path, threads)
            for name, path in (("onnxruntime fp32", fp32_onnx), ("onnxruntime int8", int8_onnx))
            if path is not None
        }
        results = []
        for batch in batches:
            images = np.random.default_rng(0).standard_normal((batch, 3, size, size), dtype=np.float32)
            tensor = torch.from_numpy(images)
            runs: dict[str, Callable[[], object]] = {}
            if model is not None:
                runs["pytorch fp32 eager"] = lambda t=tensor: _eager(model, t)
            for name, session in sessions.items():
                feed = {session.get_inputs()[0].name: images}
                runs[name] = lambda s=session, f=feed: s.run(None, f)
            if native is not None:
                runs["mobilenets int8"] = lambda t=tensor: native(t)
            if Path(args.target).is_dir():  # a run's device files, when it has them (export --format ...)
                from mobilenets.deployment.device_runners import device_runners

                runs.update(device_runners(Path(args.target), images, threads=threads, notes=notes))
            results += time_engines(runs, batch, repeats=args.repeats, warmup=args.warmup)
    notes = list(dict.fromkeys(notes))  # one note per file, not one per batch size
    if args.json:
        print(json.dumps({"threads": threads, "notes": notes, "results": [r.to_dict() for r in results]}, indent=2))
        return 0
    print_table(results, threads, notes)
    return 0


def check_target_options(args: argparse.Namespace) -> None:
    """Options that MODEL_OR_FILE fixes itself, and --resolution/--int8 values, refused before any work."""
    from mobilenets.models.preprocessing import check_resolution
    from mobilenets.models.profiling import check_width

    target = Path(args.target)
    if args.resolution is not None:
        check_resolution(args.resolution)
    if args.width is not None:
        check_width(args.width)
    if not target.exists() and len(target.parts) == 1 and target.suffix not in (".onnx", ".safetensors", ".pth", ".pt"):
        check_name(args.target)
    if target.suffix == ".onnx":
        for flag, value in (("--width", args.width), ("--resolution", args.resolution), ("--model", args.model)):
            if value is not None:
                raise MobilenetsError(
                    f"{flag}: {target} is an ONNX file with its own architecture and input size; drop {flag} "
                    "or bench the weights it was exported from"
                )
    elif target.is_dir():
        for flag, value in (("--width", args.width), ("--model", args.model)):
            if value is not None:
                raise MobilenetsError(
                    f"{flag}: the run directory {target} fixes its model's architecture and width; drop {flag}, "
                    "or bench a model name (e.g. mobilenet_v3_small --width 0.5)"
                )
    if args.int8 is not None:
        check_int8_file(args.int8)


def check_name(name: str) -> None:
    """A bare MODEL_OR_FILE that is no file must be an architecture or a published name; a typo gets the closest."""
    import difflib

    from mobilenets.models.registry import list_models
    from mobilenets.models.weights import list_weights

    names = [*list_models(), *list_weights()]
    if name in names:
        return
    close = difflib.get_close_matches(name, names, n=1)
    raise MobilenetsError(
        f"{name}: no such file, architecture or published weights"
        + (f"; did you mean {close[0]}?" if close else f"; architectures: {', '.join(list_models())}")
    )


INT8_OPS = ("QuantizeLinear", "DequantizeLinear", "QLinearConv", "ConvInteger", "MatMulInteger", "QLinearMatMul")


def check_int8_file(path: Path) -> None:
    import onnx

    if not path.is_file():
        raise MobilenetsError(
            f"--int8 {path}: {'a folder' if path.is_dir() else 'not found'}; pass an int8 .onnx file "
            "(from `mobilenets quantize` or `export --int8`)"
        )
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # protobuf's DecodeError, onnx's own errors: not a model file
        raise MobilenetsError(
            f"--int8 {path}: not an ONNX model ({type(error).__name__}); pass an int8 .onnx file "
            "(from `mobilenets quantize` or `export --int8`)"
        ) from None
    # An int8 ONNX model (QDQ or QOperator form) holds quantize nodes; without them its row would be fp32's.
    if not any(node.op_type in INT8_OPS for node in model.graph.node):
        raise MobilenetsError(
            f"--int8 {path}: an fp32 ONNX model (no quantized operators); pass an int8 .onnx file "
            "(from `mobilenets quantize` or `export --int8`)"
        )


def onnx_input_size(path: Path) -> int | None:
    """The fixed spatial size of an ONNX file's image input, or None when it takes any."""
    import onnx

    dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    sizes = [d.dim_value for d in dims[2:4] if d.HasField("dim_value")]
    return sizes[0] if len(sizes) == 2 and sizes[0] == sizes[1] else None


def check_run_files_size(target: Path, int8: Path | None, given: bool, size: int, own: int) -> None:
    """A run's int8 and device files take the run's input size: --resolution cannot time them at another."""
    if int8 is not None:
        fixed = onnx_input_size(int8)
        if fixed is not None and fixed != size:
            where = f"--int8 {int8}" if given else f"{int8} (the run's int8 file)"
            raise MobilenetsError(
                f"--resolution {size}: {where} takes {fixed}-px inputs; time at {fixed} (drop --resolution) "
                f"or pass --int8 FILE made at {size} px"
            )
    if target.is_dir() and size != own:
        from mobilenets.deployment.device_export import DEVICE_FORMATS

        names = [
            name
            for spec in DEVICE_FORMATS.values()
            for name in (spec.fp32_name, spec.int8_name)
            if name is not None and (target / name).exists()
        ]
        if names:
            raise MobilenetsError(
                f"--resolution {size}: the run's device files ({', '.join(names)}) take {own}-px inputs; drop "
                f"--resolution to time them, or bench {target / 'model.safetensors'} --resolution {size}"
            )


def _eager(model, tensor):
    import torch

    with torch.inference_mode():
        return model(tensor)


def resolve_engines(args: argparse.Namespace, work: Path):
    """(torch model or None, fp32 onnx or None, int8 onnx or None, input size, notes) for MODEL_OR_FILE."""
    from mobilenets.deployment.onnx import export_onnx, read_metadata
    from mobilenets.models.factory import create_model
    from mobilenets.models.preprocessing import Preprocessing
    from mobilenets.models.registry import list_models
    from mobilenets.models.weights import load_model

    notes: list[str] = []
    target = Path(args.target)
    if target.suffix == ".onnx":
        if not target.exists():
            raise MobilenetsError(f"{target}: not found")
        size = json.loads(read_metadata(target).get("preprocessing", '{"input_size": 224}'))["input_size"]
        is_int8 = "quantization" in read_metadata(target)
        if args.int8 is not None and not is_int8:
            check_run_files_size(target, args.int8, True, size, size)
        return None, None if is_int8 else target, target if is_int8 else args.int8, size, notes
    if target.is_dir():
        if not (target / "model.safetensors").exists():
            raise MobilenetsError(f"{target}: no model.safetensors; pass a run directory, weights, or a model name")
        model = load_model(target / "model.safetensors")
        int8 = args.int8 or (target / "model_int8.onnx" if (target / "model_int8.onnx").exists() else None)
    elif args.target in list_models():
        model = create_model(args.target, width=args.width or 1.0).eval()
        model.weights_metadata = {}
        int8 = args.int8
        notes.append("random weights: timing only")
    else:  # a weights file or published name; a bare checkpoint's width is read from its tensors
        from mobilenets.deployment.loading import load_source_model, model_source

        model = load_source_model(
            model_source(weights=args.target, model_name=args.model, width=args.width), report=notes.append
        )
        int8 = args.int8
    own = Preprocessing.from_dict(model.weights_metadata.get("preprocessing", {})).input_size
    if getattr(args, "resolution", None) is not None:
        # Time at another input size (the resolution multiplier ρ): the export takes its size from here.
        preprocessing = Preprocessing.from_dict(model.weights_metadata.get("preprocessing", {})).to_dict()
        preprocessing.update(input_size=args.resolution, resize_size=round(args.resolution * 256 / 224))
        model.weights_metadata = {**model.weights_metadata, "preprocessing": preprocessing}
    size = Preprocessing.from_dict(model.weights_metadata.get("preprocessing", {})).input_size
    check_run_files_size(target, int8, args.int8 is not None, size, own)
    fp32 = export_onnx(model, work / "fp32.onnx")
    if int8 is None:
        int8 = quantize_for_timing(model, fp32, work / "int8.onnx", args.data, size)
        notes.append(
            "int8: PTQ calibrated on "
            + (str(args.data) if args.data else "random inputs (timing only; accuracy: quantize)")
        )
    return model.eval(), fp32, int8, size, notes


def calibration_for_timing(model, data: Path | None, size: int) -> np.ndarray:
    from mobilenets.data.folders import folder_images
    from mobilenets.deployment.quantization import load_images, sample
    from mobilenets.models.preprocessing import Preprocessing

    if data is not None:
        paths, _, _ = folder_images(data)
        preprocessing = Preprocessing.from_dict(model.weights_metadata.get("preprocessing", {}))
        return load_images(sample(paths, 64), None, preprocessing, str(data)).images
    return np.random.default_rng(1).standard_normal((16, 3, size, size), dtype=np.float32)


def quantize_for_timing(model, fp32: Path, out: Path, data: Path | None, size: int) -> Path:
    from mobilenets.deployment.quantization import quantize_ptq

    return quantize_ptq(fp32, out, calibration_for_timing(model, data, size), "minmax")


def native_int8_engine(model, args: argparse.Namespace, size: int, notes: list[str]):
    """mobilenets' int8 engine: the run's calibration when it has one, else calibrated like the PTQ above."""
    from mobilenets import kernels
    from mobilenets.deployment.int8_engine import CALIBRATION_FILE, Int8Engine, batches_of, load_for_run

    if not kernels.int8_available():
        notes.append("mobilenets int8: not timed (the compiled CPU kernels are unavailable)")
        return None
    target = Path(args.target)
    try:
        if target.is_dir() and (target / CALIBRATION_FILE).exists():
            return load_for_run(model, target)
        return Int8Engine(model, batches_of(calibration_for_timing(model, args.data, size)))
    except MobilenetsError as error:
        notes.append(f"mobilenets int8: not timed ({error})")
        return None


def print_table(results: list[Timing], threads: int, notes: list[str]) -> None:
    print(f"threads {threads}; engines timed in alternation, median of repeated runs after warm-up; spread = min..max")
    for note in notes:
        print(f"note: {note}")
    print(f"{'engine':<20} {'batch':>5} {'median ms':>10} {'min..max ms':>17} {'images/s':>9} {'speed-up':>9}")
    baselines = {r.batch: r for r in results if r.engine == "onnxruntime fp32"}
    for r in results:
        base = baselines.get(r.batch)
        ratio = f"{base.median_ms / r.median_ms:8.2f}x" if base else ""
        spread = f"{r.min_ms:.1f}..{r.max_ms:.1f}"
        print(f"{r.engine:<20} {r.batch:>5} {r.median_ms:>10.2f} {spread:>17} {r.images_per_second:>9.1f} {ratio:>9}")
    if baselines:
        print("speed-up: against onnxruntime fp32 at the same batch size")
