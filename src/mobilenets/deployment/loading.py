"""Which model a deployment command works on: a run directory, a weights file, a published name or an .onnx file.

``predict``, ``export``, ``quantize`` and ``bench`` all load their model here, so that they accept the
same things and refuse bad ones with the same one line: a bare checkpoint's width is read from its
tensors (no ``--width`` needed), ``--classes FILE`` names the outputs of weights that do not, and an
output folder is checked for writability before minutes of work are spent on what goes into it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from mobilenets.core.errors import MobilenetsError
from mobilenets.core.run_directory import RunDirectory
from mobilenets.models.weights import WeightsError

# Widths of the published MobileNets (v1: 0.25–1; V2: 0.35–1.4; V3: 0.75, 1), tried in this order when a
# bare checkpoint does not say its width: its tensors' shapes tell which one it is.
KNOWN_WIDTHS = (1.0, 0.75, 0.5, 0.35, 0.25, 1.25, 1.3, 1.4, 1.5, 2.0)
SHAPE_MISMATCH = "another architecture or width"


@dataclass(frozen=True)
class ModelSource:
    """Where a deployment command's model comes from (exactly one of ``run_dir``/``weights``)."""

    run_dir: Path | None = None
    weights: str | None = None
    model_name: str | None = None
    width: float | None = None
    classes_file: Path | None = None

    @property
    def is_onnx(self) -> bool:
        return self.weights is not None and Path(self.weights).suffix == ".onnx"

    def stem(self, model: nn.Module) -> str:
        """The name files made from this model are given when no run directory holds them."""
        return Path(str(self.weights)).stem if self.weights else model.architecture.name


def model_source(
    *,
    run_dir: Path | str | None = None,
    weights: str | Path | None = None,
    model_name: str | None = None,
    width: float | None = None,
    classes_file: Path | str | None = None,
) -> ModelSource:
    """Validate the user's choice of model; a run directory given as ``weights`` counts as a run directory."""
    if run_dir is not None and weights is not None:
        raise MobilenetsError("pass either RUN_DIR or --weights, not both")
    if width is not None and not width > 0:
        raise MobilenetsError(f"--width {width:g}: the width multiplier must be > 0 (e.g. 0.5, 0.75, 1.0)")
    if weights is not None and Path(str(weights)).is_dir() and (Path(str(weights)) / "model.safetensors").exists():
        run_dir, weights = Path(str(weights)), None
    if run_dir is not None:
        run_dir = Path(run_dir)
        if not run_dir.exists():
            raise MobilenetsError(f"{run_dir}: not found; pass a `mobilenets train` run directory or --weights FILE")
        if not run_dir.is_dir():  # a weights file given where a run directory was expected: take it as weights
            run_dir, weights = None, str(run_dir)
        elif not (run_dir / "model.safetensors").exists():
            raise MobilenetsError(f"{run_dir}: no model.safetensors; is it a `mobilenets train` run directory?")
    if run_dir is None and weights is None:
        raise MobilenetsError("name a model: a RUN_DIR, or --weights FILE_OR_PUBLISHED_NAME [--model NAME]")
    return ModelSource(
        run_dir=run_dir,
        weights=None if weights is None else str(weights),
        model_name=model_name,
        width=width,
        classes_file=None if classes_file is None else Path(classes_file),
    )


def load_source_model(source: ModelSource, report=None) -> nn.Module:
    """The PyTorch model of ``source``, in eval mode, with ``weights_metadata`` (classes, preprocessing)."""
    from mobilenets.models.weights import load_model

    if source.is_onnx:
        raise MobilenetsError(
            f"{source.weights}: an ONNX file has no PyTorch weights; pass the run directory or the "
            ".safetensors/.pth file it was exported from"
        )
    weights = source.run_dir / "model.safetensors" if source.run_dir is not None else source.weights
    if source.width is not None:
        model = load_model(weights, name=source.model_name, width=source.width)
    else:
        model = _load_inferring_width(weights, source.model_name, report)
    if source.classes_file is not None:
        model.weights_metadata = {
            **model.weights_metadata,
            "classes": read_classes_file(source.classes_file, model.num_classes),
        }
    return model.eval()


def _load_inferring_width(weights, name: str | None, report) -> nn.Module:
    """A bare torchvision/timm/our checkpoint does not say its width; its tensors' shapes do."""
    from mobilenets.models.weights import load_model

    try:
        return load_model(weights, name=name)
    except WeightsError as error:
        if SHAPE_MISMATCH not in str(error):
            raise
        first = error
    for width in KNOWN_WIDTHS[1:]:
        try:
            model = load_model(weights, name=name, width=width)
        except WeightsError as error:
            if SHAPE_MISMATCH in str(error):
                continue
            raise
        if report is not None:
            report(f"{weights}: width {width:g} (read from the checkpoint's tensor shapes)")
        return model
    raise first


def read_classes_file(path: Path | str, num_classes: int) -> list[str]:
    """Class names, one per line (blank lines only before the first and after the last) or a JSON list;
    exactly one per model output."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MobilenetsError(f"--classes {path}: does not exist; pass a text file with one class name per line") from None
    except (OSError, UnicodeDecodeError) as error:
        raise MobilenetsError(f"--classes {path}: cannot read it ({error}); pass a UTF-8 text file") from None
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            names = [str(name) for name in json.loads(stripped)]
        except json.JSONDecodeError as error:
            raise MobilenetsError(f"--classes {path}: not a valid JSON list ({error.msg})") from None
    else:
        names = [line.strip() for line in stripped.splitlines()]
        if "" in names:
            # Dropping it would shift every later name onto the next output: each label would be wrong.
            raise MobilenetsError(
                f"--classes {path}: line {names.index('') + 1 + _leading_blank_lines(text)} is blank; give one class "
                "name per line, in output order, with no blank line between names"
            )
    if len(names) != num_classes:
        raise MobilenetsError(
            f"--classes {path}: lists {len(names)} names but the model has {num_classes} outputs; "
            "give one name per line, in output order"
        )
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise MobilenetsError(f"--classes {path}: {', '.join(duplicates[:3])} listed twice; class names must differ")
    return names


def _leading_blank_lines(text: str) -> int:
    lines = text.splitlines()
    return next((index for index, line in enumerate(lines) if line.strip()), len(lines))


def check_output_folder(folder: Path, out: Path | None, run_dir: Path | None) -> Path:
    """``folder`` (where files go) is writable, refused in words naming what the user gave: --out, the run
    directory, or (neither given) the current folder."""
    from mobilenets.core.files import check_writable

    if out is not None:
        return check_writable(folder)
    if run_dir is not None:
        return check_writable(folder, "RUN_DIR")
    try:
        return check_writable(folder, "--out")
    except MobilenetsError:
        raise MobilenetsError(
            f"the current folder {Path(folder).resolve()}: cannot write there; pass --out DIR (a writable folder)"
        ) from None


def run_split(run_dir: Path | None) -> dict | None:
    """A run directory's ``split.json`` (its training and validation images), if it has one."""
    if run_dir is None or not Path(run_dir).is_dir():
        return None
    run = RunDirectory(run_dir)
    return run.split_record() if (run / RunDirectory.SPLIT).exists() else None


def labels_for_model(
    folder: Path, folder_classes: Sequence[str], labels: Sequence[int], model_classes: Sequence[str] | None
) -> list[int]:
    """A class folder's labels as the model's output indices, matched by class name, never by sorted position.

    A folder whose classes the model does not have, or a model that does not name its classes, would
    otherwise give an accuracy that silently measures nothing.
    """
    if model_classes is None:
        raise MobilenetsError(
            f"{folder}: the weights do not name their classes, so class folders cannot be matched to outputs; "
            "pass --classes FILE (one name per line, in output order), or a flat folder of images "
            "(agreement with fp32 is measured)"
        )
    index = {name: i for i, name in enumerate(model_classes)}
    unknown = [name for name in folder_classes if name not in index]
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        known = ", ".join(list(model_classes)[:5]) + (", …" if len(model_classes) > 5 else "")
        raise MobilenetsError(
            f"{folder}: class folder(s) {shown} are not classes of the model ({known}); pass a folder of the "
            "model's own classes, or a flat folder of images (agreement with fp32 is measured)"
        )
    return [index[folder_classes[label]] for label in labels]


def named_classes(model: nn.Module) -> list[str] | None:
    """The model's class names, or None when its weights do not say them (a bare checkpoint)."""
    from mobilenets.models.metadata import class_names

    metadata = getattr(model, "weights_metadata", None) or {}
    classes = metadata.get("classes")
    if isinstance(classes, list) and len(classes) == model.num_classes:
        return list(classes)
    if model.num_classes == 1000 and classes in ("imagenet", None):
        return class_names(metadata, 1000)
    return None


def source_images(
    source: ModelSource, data: Path | None, part: str, *, model: nn.Module | None = None
) -> tuple[list[str], list[int] | None]:
    """(paths, labels) from ``data``, else from the run's ``split.json`` part (``train`` or ``val``).

    With ``model``, the class folders of ``data`` are matched to its classes by name (``labels_for_model``):
    a folder holding some of the classes, or others, must not be scored by sorted position.
    """
    from mobilenets.data.folders import folder_images

    if data is not None:
        paths, labels, classes = folder_images(data)
        if model is not None and classes is not None:
            labels = labels_for_model(data, classes, labels, named_classes(model))
        return [str(p) for p in paths], labels
    split = run_split(source.run_dir)
    if split is None:
        raise MobilenetsError("no images: pass --data DIR (a class folder, or a flat folder of images)")
    items = split[part] or split["train"]
    return [p for p, _ in items], [y for _, y in items]


def summarize_skipped(skipped: list[tuple[str, str]], shown: int = 3) -> list[str]:
    """Skipped files grouped by reason: one line per reason with a few examples, not one line per file."""
    by_reason: dict[str, list[str]] = {}
    for path, reason in skipped:
        by_reason.setdefault(reason, []).append(path)
    lines = []
    for reason, paths in by_reason.items():
        examples = ", ".join(paths[:shown]) + (f" and {len(paths) - shown} more" if len(paths) > shown else "")
        lines.append(f"skipped {len(paths)} file(s){f' ({reason})' if reason else ''}: {examples}")
    return lines
