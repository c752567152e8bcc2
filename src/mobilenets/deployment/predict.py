"""Top-K prediction on image files, with each model's own classes and preprocessing."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from mobilenets.core.errors import MobilenetsError, check_number
from mobilenets.data.folders import IMAGE_SUFFIXES
from mobilenets.data.images import ImageLoadError, load_image
from mobilenets.deployment.engines import Engine, InferenceEngine, load_engine
from mobilenets.deployment.loading import ModelSource, load_source_model, read_classes_file
from mobilenets.models.metadata import class_names
from mobilenets.models.preprocessing import Preprocessing


@dataclass
class Prediction:
    image: str
    top: list[tuple[str, int, float]]  # (label, index, probability)

    def to_dict(self) -> dict:
        return {"image": self.image, "top": [{"label": c, "index": i, "probability": p} for c, i, p in self.top]}


@dataclass
class SkippedImage:
    path: str
    reason: str


@dataclass
class PredictionReport:
    """What ``predict`` found: the predictions, the files it could not use, and which engine ran."""

    predictions: list[Prediction]
    skipped: list[SkippedImage] = field(default_factory=list)
    engine: str = ""
    engine_path: str | None = None

    def engine_line(self) -> str:
        return f"engine: {self.engine}" + (f" ({self.engine_path})" if self.engine_path else "")


def collect_images(inputs: list[Path | str]) -> tuple[list[Path], list[SkippedImage]]:
    """Files as given, folders expanded to their image files (recursively, sorted); missing paths are skipped."""
    found: list[Path] = []
    skipped: list[SkippedImage] = []
    for item in map(Path, inputs):
        if item.is_dir():
            images = sorted(
                p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
            )
            if not images:
                skipped.append(SkippedImage(str(item), f"folder with no image files ({', '.join(sorted(IMAGE_SUFFIXES))})"))
            found.extend(images)
        elif item.exists():
            found.append(item)
        else:
            skipped.append(SkippedImage(str(item), "does not exist"))
    return found, skipped


@torch.no_grad()
def predict_images(
    model: nn.Module,
    images: list[Path | str],
    top_k: int = 5,
    metadata: dict | None = None,
    engine: Engine = "auto",
    run_dir: Path | str | None = None,
    batch_size: int = 32,
) -> list[Prediction]:
    """Classify image files; preprocessing and labels come from the weights' metadata.

    ``engine`` picks ONNX Runtime or PyTorch (mobilenets.deployment.engines); both give the same top-K.
    An unreadable image raises ``ImageLoadError`` (``predict_files`` skips and lists them instead).
    """
    metadata = metadata if metadata is not None else getattr(model, "weights_metadata", {}) or {}
    preprocessing = Preprocessing.from_dict(metadata.get("preprocessing", {}))
    labels = class_names(metadata, model.num_classes)

    def runner() -> InferenceEngine:
        return load_engine(model, engine, planned_images=len(images), batch_size=batch_size, run_dir=run_dir)

    predictions, skipped, _ = _classify(images, runner, labels, preprocessing, top_k, batch_size)
    if skipped:
        raise ImageLoadError(skipped[0].path, skipped[0].reason)
    return predictions


def predict_files(
    *,
    inputs: list[Path | str],
    source: ModelSource,
    top_k: int = 5,
    engine: Engine = "auto",
    batch_size: int = 32,
    report=None,
) -> PredictionReport:
    """Top-``top_k`` labels for image files and folders; unreadable files are skipped and listed, not fatal.

    ``source`` may be an exported ``.onnx`` file: it then runs in ONNX Runtime with the labels and
    preprocessing in its metadata, exactly as a device would.
    """
    check_number("--top", top_k, at_least=1, whole=True)
    check_number("--batch-size", batch_size, at_least=1, whole=True)
    paths, skipped = collect_images(inputs)
    if source.is_onnx:
        runner, labels, preprocessing = _onnx_runner(source, engine)
    else:
        model = load_source_model(source, report=report)
        metadata = model.weights_metadata or {}
        preprocessing = Preprocessing.from_dict(metadata.get("preprocessing", {}))
        labels = class_names(metadata, model.num_classes)

        def runner() -> InferenceEngine:
            return load_engine(
                model, engine, planned_images=len(paths), batch_size=batch_size, run_dir=source.run_dir
            )

    if top_k > len(labels) and report is not None:
        report(f"--top {top_k}: the model has {len(labels)} classes; showing all {len(labels)}")
    predictions, unreadable, used = _classify(paths, runner, labels, preprocessing, top_k, batch_size)
    skipped += unreadable
    if not predictions:
        if len(skipped) == 1:
            raise MobilenetsError(f"{skipped[0].path}: {skipped[0].reason}")
        first = "; ".join(f"{s.path}: {s.reason}" for s in skipped[:3])
        raise MobilenetsError(f"no readable images among {len(skipped)} inputs ({first}{'; …' if len(skipped) > 3 else ''})")
    return PredictionReport(
        predictions,
        skipped,
        engine=used.name,
        engine_path=None if used.path is None else str(used.path),
    )


def _onnx_runner(source: ModelSource, engine: Engine):
    from mobilenets.deployment.engines import OnnxRuntimeEngine
    from mobilenets.deployment.onnx import read_metadata

    if engine not in ("auto", "onnxruntime"):
        raise MobilenetsError(f"--weights {source.weights} is an ONNX file: it runs with --engine onnxruntime (or auto)")
    path = Path(str(source.weights))
    for flag, value in (("--model", source.model_name), ("--width", source.width)):
        if value is not None:  # the file fixes both: a value that changed nothing would be silently ignored
            raise MobilenetsError(
                f"{flag}: {path} is an ONNX file with its own architecture and width; drop {flag}, or predict with "
                "the weights it was exported from"
            )
    metadata = read_metadata(path)
    if "preprocessing" not in metadata:
        raise MobilenetsError(f"{path}: no mobilenets metadata (labels, preprocessing); export it with `mobilenets export`")
    preprocessing = Preprocessing.from_dict(json.loads(metadata["preprocessing"]))
    labels = json.loads(metadata.get("labels", "[]"))
    runner = OnnxRuntimeEngine(path, len(labels))
    if source.classes_file is not None:
        labels = read_classes_file(source.classes_file, len(labels))
    return (lambda: runner), labels, preprocessing


def _classify(images, make_runner, labels, preprocessing, top_k, batch_size):
    """(predictions, skipped, engine): the engine is made only once a readable image is found."""
    results: list[Prediction] = []
    skipped: list[SkippedImage] = []
    runner = None
    for start in range(0, len(images), batch_size):
        paths, tensors = [], []
        for path in images[start : start + batch_size]:
            try:
                tensors.append(preprocessing(load_image(path)))
                paths.append(path)
            except ImageLoadError as error:
                skipped.append(SkippedImage(str(path), error.reason))
        if not tensors:
            continue
        runner = runner or make_runner()
        for path, probabilities in zip(paths, runner(torch.stack(tensors)).softmax(dim=1), strict=True):
            values, indices = probabilities.topk(min(top_k, probabilities.numel()))
            results.append(
                Prediction(str(path), [(labels[i], int(i), float(v)) for v, i in zip(values, indices, strict=True)])
            )
    return results, skipped, runner
