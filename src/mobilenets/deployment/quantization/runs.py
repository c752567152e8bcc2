"""Run directories and image folders: a training run quantized beside its model (``mobilenets train
--quantize`` calls ``quantize_run``), weights with a folder, and the int8 engine calibrated for the run."""

from __future__ import annotations

import json
import os
from pathlib import Path

from torch import nn

from mobilenets.core.errors import MobilenetsError, check_number
from mobilenets.core.files import atomic_write_text
from mobilenets.core.run_directory import RunDirectory
from mobilenets.data.folders import folder_images
from mobilenets.deployment.loading import labels_for_model, named_classes
from mobilenets.deployment.onnx import export_onnx
from mobilenets.deployment.quantization.calibration import ImageSet, load_images, sample
from mobilenets.deployment.quantization.methods import quantize_model
from mobilenets.deployment.quantization.ptq import (
    DEFAULT_CALIBRATION_METHOD,
    DEFAULT_THRESHOLD,
    check_methods,
    int8_out_path,
)
from mobilenets.models.preprocessing import Preprocessing


def read_split(run_dir: Path) -> dict:
    path = Path(run_dir) / "split.json"
    if not path.exists():
        raise MobilenetsError(
            f"{path}: not found; quantize a run directory written by `mobilenets train`, or pass --data DIR"
        )
    return RunDirectory(run_dir).split_record()


def quantize_run(
    run_dir: Path,
    method: str = "auto",
    threshold: float = DEFAULT_THRESHOLD,
    calibration_images: int = 256,
    calibration_method: str = DEFAULT_CALIBRATION_METHOD,
    qat_epochs: int = 2,
    max_val_images: int = 2000,
    max_qat_images: int = 1024,
    out: Path | None = None,
    report=print,
) -> dict:
    """Quantize a training run to ``out`` (default ``RUN_DIR/model_int8.onnx``) and merge the figures into
    ``metrics.json``; ``quantization.json`` records which file it wrote (``export --int8`` keeps that one).

    Calibration images come from the run's training split, evaluation from its validation split.
    Returns ``fp32_val_accuracy``/``int8_val_accuracy`` (fractions), ``int8_size_bytes``, ``int8_method``,
    latencies and the attempts made.
    """
    from mobilenets.core.files import check_writable
    from mobilenets.deployment.device_files import pending_path
    from mobilenets.models.weights import load_model

    # The command line checks its flags; Python callers reach here directly, and no value is replaced.
    check_methods(method, calibration_method)
    check_number("threshold", threshold, at_least=0)
    for name, count in (
        ("calibration_images", calibration_images),
        ("qat_epochs", qat_epochs),
        ("max_val_images", max_val_images),
        ("max_qat_images", max_qat_images),
    ):
        check_number(name, count, at_least=1, whole=True)
    run = RunDirectory(run_dir)
    run_dir = run.path
    run.require(RunDirectory.MODEL, needed_by="quantize")
    run.check_readable(RunDirectory.METRICS)  # the figures are merged into it at the end, after minutes of work
    out = run.onnx_int8 if out is None else int8_out_path(out, fp32=run.onnx)
    split = read_split(run_dir)
    # Both are written after minutes of work: a read-only place must be found out first, without making
    # anything; quantize_model makes out's folder when the chosen file is written.
    check_writable(run_dir, "RUN_DIR", create=False)
    check_writable(out.parent, create=False)
    model = load_model(run.model)
    preprocessing = Preprocessing.from_dict(model.weights_metadata.get("preprocessing", {}))
    train_items = [tuple(item) for item in split["train"]]
    val_items = sample([tuple(item) for item in split["val"]], max_val_images, seed=1)
    if not val_items:
        raise MobilenetsError(f"{run_dir}/split.json: empty validation split; int8 cannot be checked")
    calibration_items = sample(train_items, calibration_images)
    calibration = load_images([p for p, _ in calibration_items], None, preprocessing, "train split")
    evaluation = load_images([p for p, _ in val_items], [y for _, y in val_items], preprocessing, "val split")
    qat_items = sample(train_items, max_qat_images, seed=2)

    def train() -> ImageSet:  # loaded only if QAT runs: a whole split at 224 px would not fit in memory
        return load_images([p for p, _ in qat_items], [y for _, y in qat_items], preprocessing, "train split")

    fp32_onnx = export_onnx(model, run.onnx)
    # The chosen file takes its name only beside its records (quantization.json, metrics.json), after the
    # int8 engine's calibration: a Ctrl-C before then leaves the previous int8 model and its records as
    # they were, never a new file described by the old ones.
    pending = pending_path(out)
    result = quantize_model(
        model,
        pending,
        calibration,
        evaluation,
        method=method,
        calibration_method=calibration_method,
        threshold=threshold,
        train=train,
        qat_epochs=qat_epochs,
        fp32_onnx=fp32_onnx,
        report=report,
    )
    try:
        engine_figures = calibrate_int8_engine(model, run_dir, calibration, evaluation, fp32_onnx, threshold, report)
        # Absolute in the records: a relative --out read from another working folder would name another file.
        result.path = Path(os.path.abspath(out))
        figures = result.figures()
        figures["int8_val_images"] = figures.pop("int8_eval_images")
        figures.update(engine_figures)
        os.replace(pending, out)
    finally:
        pending.unlink(missing_ok=True)
    atomic_write_text(run_dir / "quantization.json", json.dumps(result.to_dict(), indent=2))
    RunDirectory(run_dir).merge_metrics(figures)
    return figures


def quantize_folder(
    *,
    source,
    data: Path,
    out: Path | None = None,
    method: str = "auto",
    calibration_images: int = 256,
    calibration_method: str = DEFAULT_CALIBRATION_METHOD,
    threshold: float = DEFAULT_THRESHOLD,
    qat_epochs: int = 2,
    max_val_images: int = 2000,
    report=print,
) -> dict:
    """Weights (a ``loading.ModelSource``) + a folder: calibrate on a sample of it, evaluate on the rest.

    A class folder is matched to the model's classes by name (``labels_for_model``); a flat folder
    measures agreement with fp32. The int8 file goes to ``out`` (default ``./NAME_int8.onnx``).
    """
    from mobilenets.core.files import check_writable
    from mobilenets.deployment.loading import load_source_model

    check_methods(method, calibration_method)
    out = None if out is None else int8_out_path(out)
    model = load_source_model(source, report=report)
    out = out if out is not None else Path(f"{source.stem(model)}_int8.onnx")
    check_writable(out.parent, create=False)  # made by quantize_model when the chosen file is written
    preprocessing = Preprocessing.from_dict(model.weights_metadata.get("preprocessing", {}))
    paths, labels, classes = folder_images(data)
    if classes is not None:
        labels = labels_for_model(data, classes, labels, named_classes(model))
    items = list(zip(paths, labels if labels is not None else [None] * len(paths), strict=True))
    calibration_items = sample(items, calibration_images)
    held_out = [item for item in items if item not in calibration_items]
    evaluation_items = sample(held_out if len(held_out) >= 20 else items, max_val_images, seed=1)
    labelled = labels is not None
    calibration = load_images([p for p, _ in calibration_items], None, preprocessing, str(data))
    evaluation = load_images(
        [p for p, _ in evaluation_items], [y for _, y in evaluation_items] if labelled else None, preprocessing, "eval"
    )
    train = None
    if method in ("qat", "auto") and labelled:
        train = load_images([p for p, _ in calibration_items], [y for _, y in calibration_items], preprocessing, "qat")
    result = quantize_model(
        model,
        out,
        calibration,
        evaluation,
        method=method,
        calibration_method=calibration_method,
        threshold=threshold,
        train=train,
        qat_epochs=qat_epochs,
        report=report,
    )
    return {**result.figures(), "attempts": result.attempts}


def calibrate_int8_engine(
    model: nn.Module,
    run_dir: Path,
    calibration: ImageSet,
    evaluation: ImageSet,
    fp32_onnx: Path,
    threshold: float = DEFAULT_THRESHOLD,
    report=print,
) -> dict:
    """mobilenets' own int8 engine (``int8_engine``) for this run, calibrated on the same images as the
    ONNX model, checked on the same validation images, and kept as ``RUN_DIR/int8_engine.json``.
    Skipped (with a line saying why) when the compiled kernels are unavailable or the network has a
    layer the engine does not implement; the ONNX int8 model is unaffected."""
    from mobilenets import kernels
    from mobilenets.deployment.int8_engine import check_engine, save_calibration

    if not kernels.int8_available():
        report("int8 engine: skipped (the compiled CPU kernels are unavailable); the ONNX int8 model is the int8 path")
        return {}
    try:
        engine, figures = check_engine(
            model,
            calibration.images,
            evaluation.images,
            evaluation.labels,
            fp32_onnx,
            report=report,
            threshold=threshold,
        )
    except MobilenetsError as error:
        report(f"int8 engine: skipped ({error})")
        return {}
    save_calibration(engine, model, run_dir)
    return figures
