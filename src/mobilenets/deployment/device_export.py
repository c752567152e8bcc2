"""``export --format tflite|executorch|tflite-micro|coreml``: device files, each verified in its own runtime.

One exporter for every device format, driven by ``DEVICE_FORMATS`` (Ultralytics' lesson: formats are a
table, not a chain of special cases). Calibration images come from the run's training split, checks
from its validation split (or ``--data``); every file is run in the runtime a device uses (LiteRT's
interpreter with XNNPACK, ExecuTorch's runtime, the TFLite Micro interpreter) and compared with PyTorch.
The results are the run's ``deployment`` table in ``metrics.json``.
"""

from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np

from mobilenets.core.console import ctrl_c_deferred, native_output_silenced
from mobilenets.core.errors import MobilenetsError
from mobilenets.core.files import remove_path
from mobilenets.core.run_directory import RunDirectory
from mobilenets.deployment.device_files import NEAR_TIE, pending_path, replace_path
from mobilenets.deployment.formats import CHECK_IMAGES
from mobilenets.deployment.loading import ModelSource, check_output_folder, load_source_model, source_images


@dataclass(frozen=True)
class DeviceFormat:
    """One device format: its module (export_*/verify_* functions), its file names, what it supports."""

    module: str
    export: str
    verify: str
    fp32_name: str | None  # None: the format has no fp32 file (microcontrollers run int8 only)
    int8_name: str | None  # None: no int8 file
    runtime: str
    int8_calibrated: bool = True  # int8 activations calibrated on images (False: weights only)


DEVICE_FORMATS: dict[str, DeviceFormat] = {
    "tflite": DeviceFormat(
        "mobilenets.deployment.litert", "export_litert", "verify_litert", "model.tflite", "model_int8.tflite", "LiteRT"
    ),
    "executorch": DeviceFormat(
        "mobilenets.deployment.executorch",
        "export_executorch",
        "verify_executorch",
        "model.pte",
        "model_int8.pte",
        "ExecuTorch",
    ),
    "tflite-micro": DeviceFormat(
        "mobilenets.deployment.micro", "export_micro", "verify_micro", None, "model_micro_int8.tflite", "TFLite Micro"
    ),
    "coreml": DeviceFormat(
        "mobilenets.deployment.coreml",
        "export_coreml",
        "verify_coreml",
        "model.mlpackage",
        "model_int8.mlpackage",
        "Core ML",
        int8_calibrated=False,  # weight quantization: no images needed
    ),
}


@dataclass(frozen=True)
class DeviceBudget:
    """A microcontroller's memory: tensor arena (RAM) and file (flash) limits in KB."""

    ram_kb: float | None = None
    flash_kb: float | None = None


def export_device_format(
    source: ModelSource,
    *,
    format: str,
    out: Path | None = None,
    int8: bool = False,
    data: Path | None = None,
    check_images: int = CHECK_IMAGES,
    calibration_images: int = 256,
    budget: DeviceBudget | None = None,
    report: Callable[[str], None] = print,
) -> list:
    """Write and verify ``format``'s files (fp32, and int8 when asked; microcontrollers: int8 only).

    Returns the ``DeviceFile`` records; a run directory's ``metrics.json`` gets them as ``deployment``.
    """
    from mobilenets.deployment.quantization import load_images, sample

    spec = DEVICE_FORMATS[format]
    budget = budget or DeviceBudget()
    module = import_toolchain_quietly(format)
    names = [
        name
        for name, wanted in ((spec.fp32_name, True), (spec.int8_name, int8 or spec.fp32_name is None))
        if name and wanted
    ]
    if not names:
        raise MobilenetsError(
            f"--format {format} --int8: {spec.runtime} int8 is not offered; export fp32 without --int8"
        )
    folder = _output_folder(source, out)
    check_output_folder(folder, out, source.run_dir)
    model = load_source_model(source, report=report)
    preprocessing = model.metadata.preprocessing
    calibration = None
    if spec.int8_calibrated and any(name != spec.fp32_name for name in names):  # before any file is written
        calibration = _images(
            source, data, "train", calibration_images, preprocessing, model=model, load_images=load_images, sample=sample
        )
        if calibration is None:
            raise MobilenetsError(
                f"--format {format}{'' if spec.fp32_name is None else ' --int8'} needs calibration images: export "
                "a run directory (its training images) or pass --data DIR"
            )
    check = _images(
        source, data, "val", check_images, preprocessing, model=model, load_images=load_images, sample=sample
    )
    if check is None:
        report(
            f"warning: {format}: no validation images (pass --data DIR): the files are written and loaded in "
            f"{spec.runtime}, but agreement with PyTorch and accuracy are NOT verified"
        )
    records: list = []
    try:
        for name in names:
            record = _write_verified(
                module, spec, model, folder / name, calibration=calibration, check=check, size=preprocessing.input_size
            )
            record.format = format  # the name users pass to --format
            records.append(record)
            report(describe(record))
            warning = drop_warning(record)
            if warning:
                report(warning)
            if format == "tflite-micro" and (budget.ram_kb is not None or budget.flash_kb is not None):
                verdict = module.micro_budget(
                    record.path, arena_bytes=record.arena_bytes, ram_kb=budget.ram_kb, flash_kb=budget.flash_kb
                )
                if not verdict.fits:  # said once, as the error
                    raise MobilenetsError(verdict.verdict)
                report(verdict.verdict)
    finally:
        # Files already in place are recorded even when a later one fails or is interrupted: the table
        # describes the files on disk, never an earlier file a new one replaced.
        _record(source, records)
    return records


def _write_verified(module, spec: DeviceFormat, model, path: Path, *, calibration, check, size: int):
    """Export to a pending name beside ``path``, run it in its runtime, and only then put it in ``path``'s place.

    Until the new file has been verified, the previous ``path`` (and its row in ``metrics.json``) stays as
    it was: a Ctrl-C, a full disk or a failed check removes the pending file and nothing else, as
    ``quantize`` does for ``model_int8.onnx``.
    """
    is_int8 = path.name != spec.fp32_name
    pending = pending_path(path)
    remove_path(pending)  # left by a process killed outright
    try:
        with ctrl_c_deferred(), native_output_silenced(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # converters' deprecation chatter
            written = _export(
                module, spec, model, pending, calibration=calibration if is_int8 else None, is_int8=is_int8, size=size
            )
        with native_output_silenced():  # runtimes log their CPU probing on load
            record = _verify(module, spec, written, model, check, size=size)
    except BaseException as error:
        remove_path(pending)
        if isinstance(error, MobilenetsError) and pending.name in str(error):
            # The converter and runtime name the file they were given; the user knows it by its own name.
            raise MobilenetsError(str(error).replace(pending.name, path.name)) from None
        raise
    try:
        replace_path(Path(written), path)
    except BaseException:
        remove_path(pending)
        raise
    record.path = path  # in place: its row is recorded whatever follows
    return record


def drop_warning(record, threshold: float | None = None) -> str | None:
    """A ``WARNING:`` line when an int8 file loses more than ``threshold`` (default: ``quantize``'s), else None.

    The loss is ``quantize``'s: top-1 points against PyTorch fp32 on labelled images, 100 − agreement on
    unlabelled ones (``Comparison.drop_points``).
    """
    from mobilenets.deployment.quantization import DEFAULT_THRESHOLD, Comparison  # onnx: imported when needed

    threshold = DEFAULT_THRESHOLD if threshold is None else threshold
    if record.precision != "int8" or record.agreement is None or not record.images:
        return None
    comparison = Comparison(
        images=record.images,
        fp32_accuracy=record.reference_accuracy,
        int8_accuracy=record.accuracy,
        agreement=record.agreement,
        fp32_size_bytes=0,  # sizes play no part in the drop
        int8_size_bytes=record.bytes,
    )
    if comparison.drop_points <= threshold:
        return None
    measure = "points of top-1" if record.accuracy is not None else "points of top-1 agreement"
    return (
        f"WARNING: {record.path.name} loses {comparison.drop_points:.2f} {measure} against PyTorch fp32 on these "
        f"{record.images} images (threshold {threshold:g}; one image is {100 / record.images:.2f} points here); "
        "before shipping it, check more images (--check-images N), calibrate on more (--calibration N) or use "
        "another format's int8 file"
    )


def import_toolchain_quietly(format: str) -> ModuleType:
    """``format``'s exporter module, its converters and runtime imported with their import-time chatter
    (TensorFlow's, absl's, torchao's "Failed to load …" for GPU kernels) kept off the console."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # the converters' TensorFlow Lite logging
    with native_output_silenced(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _import_runtime(format)
        return importlib.import_module(DEVICE_FORMATS[format].module)


def _import_runtime(format: str) -> None:
    """Import the format's toolchain now (quietly), so that a missing extra is one line before any work."""
    from mobilenets.deployment.device_files import require

    purpose = f"--format {format}"
    for name in {
        "tflite": ("litert_torch", "ai_edge_litert", "ai_edge_quantizer"),
        "executorch": ("executorch", "executorch.runtime"),
        "tflite-micro": ("litert_torch", "ai_edge_quantizer", "tflite_micro"),
        "coreml": ("coremltools",),
    }[format]:
        require(name, purpose)


def _output_folder(source: ModelSource, out: Path | None) -> Path:
    if out is not None:
        return Path(out)
    if source.run_dir is not None:
        return Path(source.run_dir)
    return Path(".")


def _images(source, data, part, count, preprocessing, *, model, load_images, sample) -> np.ndarray | None:
    try:
        paths, labels = source_images(source, data, part, model=model)
    except MobilenetsError:
        if data is not None:
            raise
        return None
    chosen = sample(list(zip(paths, labels or [None] * len(paths), strict=True)), count)
    images = load_images(
        [p for p, _ in chosen], None if labels is None else [y for _, y in chosen], preprocessing, part
    )
    return images


def _export(module, spec: DeviceFormat, model, path: Path, *, calibration, is_int8: bool, size: int) -> Path:
    export = getattr(module, spec.export)
    images = None if calibration is None else calibration.images
    if spec.module.endswith(".micro"):
        return export(model, path, calibration=images)
    if spec.module.endswith(".coreml"):
        return export(model, path, input_size=size, int8=is_int8)
    return export(model, path, calibration=images, int8=is_int8, input_size=size)


def _verify(module, spec: DeviceFormat, path: Path, model, check, *, size: int):
    verify = getattr(module, spec.verify)
    if check is None:
        # Loaded and run once on a blank image: the file works in its runtime; nothing is compared.
        blank = np.zeros((1, 3, size, size), dtype=np.float32)
        record = verify(path, model, blank)
        record.agreement = record.max_abs_diff = record.accuracy = record.reference_accuracy = None
        record.decided_images = record.decided_agreement = None
        record.images = 0
        record.notes.append("not verified against PyTorch: no validation images")
        return record
    return verify(path, model, check.images, check.labels)


def describe(record) -> str:
    parts = [f"wrote {record.path} ({record.precision}, {record.bytes / 1e6:.2f} MB) — {record.runtime}:"]
    if not record.ran:
        parts.append("validated, not run (" + "; ".join(record.notes) + ")")
        return " ".join(parts)
    if record.agreement is not None:
        parts.append(f"top-1 agreement with PyTorch {100 * record.agreement:.1f}% on {record.images} images")
        if record.decided_agreement is not None and record.decided_images < record.images:
            parts[-1] += (
                f" ({100 * record.decided_agreement:.1f}% on the {record.decided_images} where fp32's top class leads "
                f"by ≥ {100 * NEAR_TIE:.0f} points of probability)"
            )
    if record.max_abs_diff is not None and record.precision == "fp32":
        parts.append(f"max abs diff {record.max_abs_diff:.1e}")
    if record.accuracy is not None:
        reference = f" (fp32 {100 * record.reference_accuracy:.1f}%)" if record.reference_accuracy is not None else ""
        parts.append(f"accuracy {100 * record.accuracy:.1f}%{reference}")
    if record.latency_ms is not None:
        parts.append(f"batch-1 {record.latency_ms:.2f} ms here")
    if record.partitions is not None:
        parts.append(f"{record.partitions} delegate partition(s)")
    if record.arena_bytes is not None:
        parts.append(f"arena {record.arena_bytes / 1024:.1f} KB")
    return parts[0] + " " + ", ".join(parts[1:])


def _record(source: ModelSource, records: list) -> None:
    """Merge into the run's ``deployment`` table: one entry per file (a new export of a file replaces it)."""
    if source.run_dir is None or not records:
        return
    run = RunDirectory(source.run_dir)
    table = {entry["path"]: entry for entry in run.metrics().get("deployment", [])}
    for record in records:
        entry = record.to_dict()
        entry["path"] = _relative(Path(entry["path"]), run.path)
        table[entry["path"]] = entry
    run.merge_metrics({"deployment": list(table.values())})


def _relative(path: Path, folder: Path) -> str:
    """Inside the run: relative to it (the run may move). Outside: absolute, since the command's working
    folder means nothing to whoever reads metrics.json later."""
    try:
        return path.resolve().relative_to(folder.resolve()).as_posix()
    except ValueError:
        return str(path.resolve())
