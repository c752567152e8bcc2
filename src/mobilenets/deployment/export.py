"""``export``'s work as a library call: a model → deployable file(s), checked against PyTorch.

``FORMATS`` is the table of export formats: each entry takes the loaded model and an ``ExportRequest``
and returns an ``ExportResult``; device formats are added as further entries.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from mobilenets.core.errors import MobilenetsError, check_number
from mobilenets.core.run_directory import RunDirectory
from mobilenets.deployment.formats import CHECK_IMAGES
from mobilenets.deployment.loading import ModelSource, check_output_folder, load_source_model, source_images

INT8_SUFFIX = "_int8"


@dataclass(frozen=True)
class ExportRequest:
    out: Path | None = None
    int8: bool = False
    data: Path | None = None
    check_images: int = CHECK_IMAGES
    calibration_images: int = 256
    ram_kb: float | None = None  # microcontroller budget (tflite-micro)
    flash_kb: float | None = None


@dataclass
class ExportedFile:
    path: Path
    kind: str  # "fp32" or "int8"
    size_bytes: int


@dataclass
class ExportResult:
    files: list[ExportedFile] = field(default_factory=list)
    check_source: str = ""
    max_abs_diff: float | None = None
    top1_agreement: float | None = None
    int8_agreement: float | None = None
    devices: list = field(default_factory=list)  # DeviceFile records of device formats, verified in their runtimes


def onnx_paths(source: ModelSource, model: nn.Module, out: Path | None, int8: bool) -> tuple[Path, Path | None]:
    """(fp32 file, int8 file or None), named like a run directory's: ``NAME.onnx`` and ``NAME_int8.onnx``.

    ``out`` names the fp32 file, or the int8 one when it ends in ``_int8.onnx``; the other goes beside it.
    """
    if out is None:
        folder = source.run_dir if source.run_dir is not None else Path(".")
        out = folder / f"{'model' if source.run_dir is not None else source.stem(model)}.onnx"
    out = Path(out)
    if out.suffix != ".onnx":
        raise MobilenetsError(f"--out {out}: name the file *.onnx")
    if not int8:
        return out, None
    if out.stem.endswith(INT8_SUFFIX):
        return out.with_name(out.stem.removesuffix(INT8_SUFFIX) + ".onnx"), out
    return out, out.with_name(out.stem + INT8_SUFFIX + ".onnx")


def recorded_int8(run_dir: Path) -> tuple[Path, str] | None:
    """(file, method) of the int8 model ``quantize`` chose for the run, as ``quantization.json`` names them;
    None where ``quantize`` has not run.

    The record keeps the path ``quantize`` wrote: its ``out``, or ``RUN_DIR/model_int8.onnx`` as the run
    directory was named then. That default, named from another working folder or before the run was moved
    or copied, is this run's own ``model_int8.onnx``; a record without a path (earlier versions) means it too.
    """
    run = RunDirectory(run_dir)
    record = run / RunDirectory.QUANTIZATION
    if not record.exists():
        return None
    try:
        fields = json.loads(record.read_text())
    except (OSError, json.JSONDecodeError):
        fields = {}
    fields = fields if isinstance(fields, dict) else {}
    method = fields.get("method", "?")
    named = fields.get("path")
    if not isinstance(named, str) or not named.strip():
        return run.onnx_int8, method
    path = Path(named)
    if path.resolve() == run.onnx_int8.resolve():
        return run.onnx_int8, method
    if path.exists():
        return path, method
    if path.name == RunDirectory.ONNX_INT8 and path.parent.name in ("", run.path.resolve().name):
        return run.onnx_int8, method
    return path, method


def keep_chosen_int8(
    source: ModelSource, int8_path: Path | None, *, out: Path | None, report: Callable[[str], None]
) -> Path | None:
    """The int8 file to write: ``None`` where the run's chosen int8 model is kept instead.

    ``quantize`` chose that file (by accuracy, with fallbacks), and ``metrics.json`` and ``quantization.json``
    describe it; a plain PTQ from ``export --int8`` must not silently take its place. Without ``--out`` the
    chosen file is kept, wherever ``quantize`` wrote it, and said to be; an ``--out`` that names it is refused.
    Where the file the records name is gone, nothing is kept: the PTQ is written, except in that file's
    place (the records would then describe a file they never measured).
    """
    if int8_path is None or source.run_dir is None:
        return int8_path
    recorded = recorded_int8(source.run_dir)
    if recorded is None:
        return int8_path
    chosen, method = recorded
    if int8_path.resolve() == chosen.resolve():
        if not chosen.exists():
            raise MobilenetsError(
                f"{chosen}: quantization.json and metrics.json describe it as the run's int8 model ({method}), but "
                f"it is missing; re-run `mobilenets quantize {source.run_dir}` to choose and evaluate it again, or "
                "pass --out OTHER.onnx to write a separate int8 export"
            )
        if out is None:
            report(f"onnx int8: keeping the run's model_int8.onnx ({method}), chosen and evaluated by `mobilenets "
                   "quantize`; pass --out OTHER.onnx for a separate int8 export")
            return None
        raise MobilenetsError(
            f"{chosen}: already the run's int8 model ({method}, chosen and evaluated by `mobilenets quantize`, "
            f"described by {RunDirectory.QUANTIZATION} and metrics.json); deploy that file as it is, re-run "
            f"`mobilenets quantize {source.run_dir}` to replace it, or pass --out OTHER.onnx to write a separate export"
        )
    if out is not None:  # a separate export, asked for by name
        return int8_path
    if chosen.exists():
        report(f"onnx int8: keeping the run's int8 model {chosen} ({method}), where `mobilenets quantize` wrote it "
               "after choosing and evaluating it; pass --out OTHER.onnx for a separate int8 export")
        return None
    report(f"onnx int8: {chosen}, the run's int8 model in {RunDirectory.QUANTIZATION} ({method}), no longer exists; "
           f"writing a plain PTQ to {int8_path} instead")
    return int8_path


def export_model(
    *,
    source: ModelSource,
    format: str = "onnx",
    out: Path | None = None,
    int8: bool = False,
    data: Path | None = None,
    check_images: int | None = None,
    calibration_images: int | None = None,
    ram_kb: float | None = None,
    flash_kb: float | None = None,
    report: Callable[[str], None] = print,
) -> ExportResult:
    """Export ``source``'s model in ``format`` (a key of ``FORMATS``).

    ``check_images`` defaults to ``CHECK_IMAGES`` and ``calibration_images`` to 256; an option given where it
    does not apply (a budget outside tflite-micro, calibration without int8) is refused, not ignored.
    """
    check_export_options(format, int8, check_images, calibration_images, ram_kb, flash_kb)
    if source.run_dir is not None:  # the export is recorded in its metrics.json once the files are written
        RunDirectory(source.run_dir).check_readable(RunDirectory.METRICS)
    request = ExportRequest(
        out=out,
        int8=int8,
        data=data,
        check_images=CHECK_IMAGES if check_images is None else check_images,
        calibration_images=256 if calibration_images is None else calibration_images,
        ram_kb=ram_kb,
        flash_kb=flash_kb,
    )
    return FORMATS[format](source, request, report)


def check_export_options(
    format: str,
    int8: bool,
    check_images: int | None,
    calibration_images: int | None,
    ram_kb: float | None,
    flash_kb: float | None,
) -> None:
    """Each option is valid and applies to ``format``: one line naming the option and when it applies."""
    if format not in FORMATS:
        raise MobilenetsError(f"--format {format}: choose one of {', '.join(FORMATS)}")
    for flag, value in (("--check-images", check_images), ("--calibration", calibration_images)):
        check_number(flag, value, at_least=1, whole=True)
    for flag, value in (("--ram-kb", ram_kb), ("--flash-kb", flash_kb)):
        check_number(flag, value, above=0, example=256)
    micro = format == "tflite-micro" or (format == "all" and int8)
    for flag, value in (("--ram-kb", ram_kb), ("--flash-kb", flash_kb)):
        if value is not None and not micro:
            raise MobilenetsError(
                f"{flag} {value:g}: a microcontroller budget, for --format tflite-micro (or all --int8) only; "
                f"drop it for --format {format}{'' if format != 'all' else ' without --int8'}"
            )
    if format == "coreml":
        if check_images is not None:
            raise MobilenetsError(
                f"--check-images {check_images}: Core ML packages are validated, not run, so no images are "
                "checked; drop --check-images for --format coreml"
            )
        if calibration_images is not None:
            raise MobilenetsError(
                f"--calibration {calibration_images}: Core ML int8 quantizes the weights only, without "
                "calibration images; drop --calibration for --format coreml"
            )
    elif calibration_images is not None and not int8 and format != "tflite-micro":
        raise MobilenetsError(
            f"--calibration {calibration_images}: calibration images are for the int8 file; add --int8 or "
            "drop --calibration"
        )


def export_onnx_files(source: ModelSource, request: ExportRequest, report: Callable[[str], None]) -> ExportResult:
    from mobilenets.deployment.onnx import OPSET, check_export, export_onnx
    from mobilenets.deployment.quantization import ImageSet, compare, load_images, quantize_ptq, sample
    from mobilenets.models.preprocessing import Preprocessing

    model = load_source_model(source, report=report)
    fp32_path, int8_path = onnx_paths(source, model, request.out, request.int8)
    int8_path = keep_chosen_int8(source, int8_path, out=request.out, report=report)
    check_output_folder(fp32_path.parent, request.out, source.run_dir)
    preprocessing = Preprocessing.from_dict(model.weights_metadata.get("preprocessing", {}))
    calibration = None
    if int8_path is not None:  # the images are found (or refused) before any file is written
        try:
            calibration_paths, _ = source_images(source, request.data, "train")
        except MobilenetsError:
            if request.data is not None:
                raise
            raise MobilenetsError(
                "--int8 needs calibration images: export a run directory (its training images) or pass --data DIR"
            ) from None
        calibration = load_images(
            sample(calibration_paths, request.calibration_images), None, preprocessing, "calibration"
        )
    result = ExportResult()
    try:  # before writing anything: a --data folder that cannot be used leaves no file behind
        paths, _ = source_images(source, request.data, "val")
        check = load_images(sample(paths, request.check_images), None, preprocessing, "check").images
        result.check_source = f"{len(check)} real images"
    except MobilenetsError:
        if request.data is not None:
            raise  # the user named the images: their problem is theirs to see, not a silent switch to noise
        size = preprocessing.input_size
        check = torch.randn(request.check_images, 3, size, size).numpy()
        result.check_source = f"{request.check_images} random inputs (pass --data DIR to check on real images)"
    export_onnx(model, fp32_path)
    result.files.append(ExportedFile(fp32_path, "fp32", fp32_path.stat().st_size))
    report(f"wrote {fp32_path} (fp32, opset {OPSET}, {fp32_path.stat().st_size / 1e6:.2f} MB)")
    check_result = check_export(model, fp32_path, torch.from_numpy(check))
    result.max_abs_diff, result.top1_agreement = check_result.max_abs_diff, check_result.top1_agreement
    report(
        f"check vs PyTorch on {result.check_source}: max abs diff {result.max_abs_diff:.2e}, "
        f"top-1 agreement {100 * result.top1_agreement:.1f}%"
    )
    if int8_path is not None:
        quantize_ptq(fp32_path, int8_path, calibration.images)
        result.int8_agreement = compare(
            fp32_path, int8_path, ImageSet(check, None, result.check_source), latency_batch=None
        ).agreement
        result.files.append(ExportedFile(int8_path, "int8", int8_path.stat().st_size))
        report(
            f"wrote {int8_path} (int8 QDQ, {int8_path.stat().st_size / 1e6:.2f} MB): top-1 agreement with fp32 "
            f"{100 * result.int8_agreement:.1f}% on {result.check_source}; `mobilenets quantize` evaluates accuracy "
            "and falls back when it drops"
        )
    return result


def device_exporter(format: str) -> Callable[[ModelSource, ExportRequest, Callable[[str], None]], ExportResult]:
    def export(source: ModelSource, request: ExportRequest, report: Callable[[str], None]) -> ExportResult:
        from mobilenets.deployment.device_export import DeviceBudget, export_device_format

        if request.out is not None and Path(request.out).suffix:
            raise MobilenetsError(f"--out {request.out}: for --format {format} pass a folder (the files get their names)")
        records = export_device_format(
            source,
            format=format,
            out=request.out,
            int8=request.int8,
            data=request.data,
            check_images=request.check_images,
            calibration_images=request.calibration_images,
            budget=DeviceBudget(ram_kb=request.ram_kb, flash_kb=request.flash_kb),
            report=report,
        )
        files = [ExportedFile(r.path, r.precision, r.bytes) for r in records]
        return ExportResult(files=files, check_source=f"{records[0].images} images" if records else "", devices=records)

    return export


def export_all(source: ModelSource, request: ExportRequest, report: Callable[[str], None]) -> ExportResult:
    """Every format: ONNX, then each device format (microcontroller files only with --int8)."""
    if request.out is not None and Path(request.out).suffix:
        raise MobilenetsError(f"--out {request.out}: for --format all pass a folder")
    onnx_request = request if request.out is None else replace(request, out=Path(request.out) / "model.onnx")
    combined = export_onnx_files(source, onnx_request, report)
    for name in ("tflite", "executorch", "tflite-micro", "coreml"):
        if name == "tflite-micro" and not request.int8:
            report("tflite-micro: skipped (microcontrollers run int8 only; add --int8)")
            continue
        result = FORMATS[name](source, request, report)
        combined.files += result.files
        combined.devices += result.devices
    return combined


# The export formats: name → exporter.
FORMATS: dict[str, Callable[[ModelSource, ExportRequest, Callable[[str], None]], ExportResult]] = {
    "onnx": export_onnx_files,
    **{name: device_exporter(name) for name in ("tflite", "executorch", "tflite-micro", "coreml")},
    "all": export_all,
}
