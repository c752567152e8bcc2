"""``export``'s work as a library call: a model → deployable file(s), checked against PyTorch.

``FORMATS`` is the table of export formats: each entry takes the loaded model and an ``ExportRequest``
and returns an ``ExportResult``; device formats are added as further entries.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from mobilenets.core.errors import MobilenetsError
from mobilenets.deployment.loading import ModelSource, check_writable, load_source_model, source_images

INT8_SUFFIX = "_int8"


@dataclass(frozen=True)
class ExportRequest:
    out: Path | None = None
    int8: bool = False
    data: Path | None = None
    check_images: int = 32
    calibration_images: int = 256


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


def refuse_replacing_chosen_int8(source: ModelSource, int8_path: Path | None) -> None:
    """``quantize`` chose the run's ``model_int8.onnx`` (by accuracy, with fallbacks) and ``metrics.json`` and
    ``quantization.json`` describe it; a plain PTQ from ``export --int8`` must not silently take its place."""
    if int8_path is None or source.run_dir is None:
        return
    chosen = source.run_dir / "model_int8.onnx"
    record = source.run_dir / "quantization.json"
    if record.exists() and int8_path.resolve() == chosen.resolve():
        try:
            method = json.loads(record.read_text()).get("method", "?")
        except (OSError, json.JSONDecodeError):
            method = "?"
        raise MobilenetsError(
            f"{chosen}: already the run's int8 model ({method}, chosen and evaluated by `mobilenets quantize`, "
            f"described by {record.name} and metrics.json); deploy that file as it is, re-run `mobilenets quantize "
            f"{source.run_dir}` to replace it, or pass --out OTHER.onnx to write a separate export"
        )


def export_model(
    *,
    source: ModelSource,
    format: str = "onnx",
    out: Path | None = None,
    int8: bool = False,
    data: Path | None = None,
    check_images: int = 32,
    calibration_images: int = 256,
    report: Callable[[str], None] = print,
) -> ExportResult:
    """Export ``source``'s model in ``format`` (a key of ``FORMATS``)."""
    if format not in FORMATS:
        raise MobilenetsError(f"--format {format}: choose one of {', '.join(FORMATS)}")
    if check_images < 1 or calibration_images < 1:
        raise MobilenetsError("--check-images and --calibration must be at least 1")
    request = ExportRequest(
        out=out, int8=int8, data=data, check_images=check_images, calibration_images=calibration_images
    )
    return FORMATS[format](source, request, report)


def export_onnx_files(source: ModelSource, request: ExportRequest, report: Callable[[str], None]) -> ExportResult:
    from mobilenets.deployment.onnx import OPSET, check_export, export_onnx
    from mobilenets.deployment.quantization import ImageSet, compare, load_images, quantize_ptq, sample
    from mobilenets.models.preprocessing import Preprocessing

    model = load_source_model(source, report=report)
    fp32_path, int8_path = onnx_paths(source, model, request.out, request.int8)
    refuse_replacing_chosen_int8(source, int8_path)
    check_writable(fp32_path.parent)
    result = ExportResult()
    export_onnx(model, fp32_path)
    result.files.append(ExportedFile(fp32_path, "fp32", fp32_path.stat().st_size))
    report(f"wrote {fp32_path} (fp32, opset {OPSET}, {fp32_path.stat().st_size / 1e6:.2f} MB)")
    preprocessing = Preprocessing.from_dict(model.weights_metadata.get("preprocessing", {}))
    try:
        paths, _ = source_images(source, request.data, "val")
        check = load_images(sample(paths, request.check_images), None, preprocessing, "check").images
        result.check_source = f"{len(check)} real images"
    except MobilenetsError:
        if request.data is not None:
            raise  # the user named the images: their problem is theirs to see, not a silent switch to noise
        size = preprocessing.input_size
        check = torch.randn(request.check_images, 3, size, size).numpy()
        result.check_source = f"{request.check_images} random inputs (pass --data DIR to check on real images)"
    check_result = check_export(model, fp32_path, torch.from_numpy(check))
    result.max_abs_diff, result.top1_agreement = check_result.max_abs_diff, check_result.top1_agreement
    report(
        f"check vs PyTorch on {result.check_source}: max abs diff {result.max_abs_diff:.2e}, "
        f"top-1 agreement {100 * result.top1_agreement:.1f}%"
    )
    if int8_path is not None:
        calibration_paths, _ = source_images(source, request.data, "train")
        calibration = load_images(
            sample(calibration_paths, request.calibration_images), None, preprocessing, "calibration"
        )
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


# The export formats: name → exporter. Device formats (TFLite, ExecuTorch, …) register further entries.
FORMATS: dict[str, Callable[[ModelSource, ExportRequest, Callable[[str], None]], ExportResult]] = {
    "onnx": export_onnx_files,
}
