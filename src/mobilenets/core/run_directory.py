"""The run directory: one type that owns every file name a run holds and how each is written.

A run directory is what ``mobilenets train`` writes and every later stage reads (evaluate, quantize,
export, robustness, report). Paths of training images are stored relative to their data folder, so
a run can be moved or copied to another machine and still be evaluated, quantized and exported.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mobilenets.core.errors import MobilenetsError
from mobilenets.core.files import atomic_write_text


@dataclass(frozen=True)
class LabelledFile:
    path: Path
    label: int


@dataclass
class Split:
    """The images a run was trained and validated on, with absolute paths (as read back)."""

    classes: list[str]
    train: list[LabelledFile] = field(default_factory=list)
    val: list[LabelledFile] = field(default_factory=list)
    train_root: Path | None = None
    val_root: Path | None = None
    # ``train --unlabelled``: images only the teacher labels (their label is -1); empty otherwise.
    unlabelled: list[Path] = field(default_factory=list)
    unlabelled_root: Path | None = None

    def moved(
        self, *, train_root: Path | None = None, val_root: Path | None = None, unlabelled_root: Path | None = None
    ) -> Split:
        """The same files under other folders (``train --resume --data DIR``): each keeps its path relative to
        its folder; a folder not given stays where it is."""

        def rebase(path: Path, *, old: Path | None, new: Path | None) -> Path:
            if new is None or old is None:
                return path
            try:
                return new / path.relative_to(old)
            except ValueError:  # recorded outside its folder (an absolute path in split.json): it stays there
                return path

        old_val_root = self.val_root or self.train_root
        return Split(
            classes=self.classes,
            train=[LabelledFile(rebase(f.path, old=self.train_root, new=train_root), f.label) for f in self.train],
            val=[LabelledFile(rebase(f.path, old=old_val_root, new=val_root), f.label) for f in self.val],
            train_root=train_root or self.train_root,
            val_root=val_root or old_val_root,
            unlabelled=[rebase(path, old=self.unlabelled_root, new=unlabelled_root) for path in self.unlabelled],
            unlabelled_root=unlabelled_root or self.unlabelled_root,
        )


class RunDirectory:
    """A training run's folder. Attributes are the paths of its files; methods read and write them."""

    CONFIG = "config.json"
    SPLIT = "split.json"
    METRICS = "metrics.json"
    CHECKPOINT = "checkpoint.pt"
    MODEL = "model.safetensors"
    LAST = "last.safetensors"
    EPOCHS = "epochs.csv"
    EVALUATION = "evaluation.json"
    SKIPPED = "skipped.json"
    LEAKAGE = "leakage.json"
    REPORT = "report.html"
    ONNX = "model.onnx"
    ONNX_INT8 = "model_int8.onnx"
    QUANTIZATION = "quantization.json"
    INT8_ENGINE = "int8_engine.json"
    ROBUSTNESS = "robustness"

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDirectory({str(self.path)!r})"

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    # ---------------------------------------------------------------------------------------------
    # paths

    @property
    def config(self) -> Path:
        return self.path / self.CONFIG

    @property
    def checkpoint(self) -> Path:
        return self.path / self.CHECKPOINT

    @property
    def model(self) -> Path:
        return self.path / self.MODEL

    @property
    def last(self) -> Path:
        return self.path / self.LAST

    @property
    def metrics_path(self) -> Path:
        return self.path / self.METRICS

    @property
    def report(self) -> Path:
        return self.path / self.REPORT

    @property
    def onnx(self) -> Path:
        return self.path / self.ONNX

    @property
    def onnx_int8(self) -> Path:
        return self.path / self.ONNX_INT8

    # ---------------------------------------------------------------------------------------------
    # state

    def exists(self) -> bool:
        return self.config.exists()

    def is_complete(self) -> bool:
        """Training and every finishing step (evaluation, int8, report) are done.

        Runs written before the ``complete`` key existed count as complete once their checkpoint is gone.
        """
        metrics = self.metrics()
        if "complete" in metrics:
            return bool(metrics["complete"])
        return self.metrics_path.exists() and not self.checkpoint.exists()

    def contents(self) -> list[str]:
        return sorted(p.name for p in self.path.iterdir()) if self.path.is_dir() else []

    def require(self, *names: str, needed_by: str) -> None:
        for name in names:
            if not (self.path / name).exists():
                raise MobilenetsError(
                    f"{self.path}: no {name}; {needed_by} needs a run directory written by `mobilenets train`"
                    + (f" (it holds: {', '.join(self.contents()) or 'nothing'})" if self.path.is_dir() else "")
                )

    # ---------------------------------------------------------------------------------------------
    # JSON files

    def read_json(self, name: str, default: Any = None) -> Any:
        """The run's file ``name`` (``default`` when there is none), as the JSON value its writer wrote: the
        one reader of a run's JSON files, so that a damaged one is always the same line, naming the file and
        the fix that is true for it (``damaged_file``)."""
        path = self.path / name
        if not path.exists():
            return default
        try:
            text = path.read_text(encoding="utf-8-sig")  # a BOM, as Windows editors write one, is no damage
        except UnicodeDecodeError:
            raise damaged_file(path, "not UTF-8 text") from None
        except OSError as error:
            raise damaged_file(path, error) from None
        try:
            value = json.loads(text)
        except json.JSONDecodeError as error:
            where = f" at line {error.lineno} column {error.colno}"
            raise damaged_file(path, "empty" if not text.strip() else f"not valid JSON: {error.msg}{where}") from None
        except ValueError as error:  # a number too long to convert, say
            raise damaged_file(path, f"not valid JSON: {error}") from None
        expected = JSON_TYPES.get(name)
        if expected is not None and not isinstance(value, expected):
            raise damaged_file(path, f"{json_kind(value)} where {json_kind(expected())} belongs")
        return value

    def check_readable(self, *names: str) -> None:
        """Each of ``names`` that exists reads as ``read_json`` reads it: for a command that writes into the
        run after minutes of work (robustness, say) to refuse a damaged file before that work, not after."""
        for name in names:
            self.read_json(name)

    def write_json(self, name: str, data: Any, indent: int | None = 2) -> Path:
        return atomic_write_text(self.path / name, json.dumps(data, indent=indent))

    def metrics(self) -> dict:
        return self.read_json(self.METRICS, {})

    def merge_metrics(self, figures: dict) -> dict:
        """The one policy for ``metrics.json``: the given keys replace theirs (a group of figures, such as
        ``deployment`` or ``robustness``, is replaced whole), every other key is kept."""
        metrics = self.metrics()
        metrics.update(figures)
        self.write_json(self.METRICS, metrics)
        return metrics

    # ---------------------------------------------------------------------------------------------
    # the split

    def write_split(self, split: Split) -> Path:
        """Image paths relative to their data folder; the folder both absolute and relative to the run."""

        def root_record(root: Path | None) -> dict | None:
            if root is None:
                return None
            root = root.resolve()
            return {"absolute": str(root), "relative_to_run": os.path.relpath(root, self.path.resolve())}

        def rows(files: list[LabelledFile], root: Path | None) -> list[list]:
            return [[_relative(f.path, root), f.label] for f in files]

        train_root = split.train_root
        val_root = split.val_root or train_root
        record = {
            "format": 2,
            "classes": split.classes,
            "train_root": root_record(train_root),
            "val_root": root_record(val_root),
            "train": rows(split.train, train_root),
            "val": rows(split.val, val_root),
        }
        if split.unlabelled:  # absent otherwise: split.json of runs without it is unchanged
            record["unlabelled_root"] = root_record(split.unlabelled_root)
            record["unlabelled"] = [_relative(path, split.unlabelled_root) for path in split.unlabelled]
        return self.write_json(self.SPLIT, record, indent=None)

    def read_split(self, data_root: Path | str | None = None, val_root: Path | str | None = None) -> Split:
        """The split with paths resolved where the images are now.

        A data folder is looked for where it was, then at the same place relative to the run (a run and
        its data moved together), then at ``data_root``/``val_root`` when given.
        """
        self.require(self.SPLIT, needed_by="reading the training/validation split")
        record = self.read_json(self.SPLIT)
        if record.get("format") != 2:  # absolute paths (runs written before format 2)
            return Split(
                classes=record["classes"],
                train=[LabelledFile(Path(p), int(label)) for p, label in record["train"]],
                val=[LabelledFile(Path(p), int(label)) for p, label in record["val"]],
                train_root=Path(record["root"]) if record.get("root") else None,
            )
        train_root = self._find_root(record.get("train_root"), data_root, "train")
        found_val_root = self._find_root(record.get("val_root"), val_root or data_root, "validation")
        unlabelled_root = self._find_root(record.get("unlabelled_root"), None, "unlabelled")
        return Split(
            classes=record["classes"],
            train=[LabelledFile(_absolute(p, train_root), int(label)) for p, label in record["train"]],
            val=[LabelledFile(_absolute(p, found_val_root), int(label)) for p, label in record["val"]],
            train_root=train_root,
            val_root=found_val_root,
            unlabelled=[_absolute(p, unlabelled_root) for p in record.get("unlabelled", [])],
            unlabelled_root=unlabelled_root,
        )

    def split_record(self) -> dict:
        """The split as plain data with absolute paths: ``{"classes", "train": [[path, label]], "val": …}``."""
        split = self.read_split()
        return {
            "classes": split.classes,
            "train": [[str(f.path), f.label] for f in split.train],
            "val": [[str(f.path), f.label] for f in split.val],
        }

    def _find_root(self, record: dict | None, given: Path | str | None, what: str) -> Path | None:
        if record is None:
            return None
        candidates = [Path(given)] if given is not None else []
        candidates += [Path(record["absolute"]), self.path / record["relative_to_run"]]
        for candidate in candidates:
            if candidate.is_dir():
                return candidate.resolve()
        # Not found: keep the recorded place; the caller reports missing files with their paths.
        return Path(record["absolute"])


# The JSON value each file of a run holds (files not listed are not checked). A file of another kind is
# damaged: a reader would otherwise fail with an AttributeError far from the file.
JSON_TYPES: dict[str, type] = {
    RunDirectory.CONFIG: dict,
    RunDirectory.METRICS: dict,
    RunDirectory.SPLIT: dict,
    RunDirectory.EVALUATION: dict,
    RunDirectory.SKIPPED: list,
    RunDirectory.LEAKAGE: dict,
}

# What to do about each damaged file of a run: the fix that is true for it. Nothing rebuilds config.json,
# metrics.json or split.json (they are written once, by training), so only a copy restores them; the others
# are only shown by the report, which leaves a damaged one out (reporting/run_report.py says why).
REPAIRS: dict[str, str] = {
    RunDirectory.CONFIG: "restore it from a copy of the run (it holds the training settings; nothing rebuilds it)",
    RunDirectory.METRICS: (
        "restore it from a copy of the run (it holds the run's figures; deleting it loses them)"
    ),
    RunDirectory.SPLIT: (
        "restore it from a copy of the run (it lists the training and validation images), or pass --data DIR "
        "where the command takes it"
    ),
    **dict.fromkeys(
        (RunDirectory.EVALUATION, RunDirectory.SKIPPED, RunDirectory.EPOCHS),
        "the report leaves it out; restore it from a copy of the run, or delete it (only the report shows it)",
    ),
    RunDirectory.LEAKAGE: (
        "the report and the diagnosis leave it out; restore it from a copy of the run, or delete it (only they "
        "use it)"
    ),
}


def damaged_file(path: Path, problem: str | OSError) -> MobilenetsError:
    """The one line for a damaged or unreadable file of a run, ``PATH: PROBLEM; FIX``: ``problem`` says what
    is wrong with the content (or is the OSError that stopped reading it), the fix is the one true for the
    file (``REPAIRS``). A weights file's metadata (``model.json``) is ``read_checkpoint``'s to refuse."""
    path = Path(path)
    if isinstance(problem, IsADirectoryError):
        described = "a folder, not a file"
    elif isinstance(problem, OSError):
        described = f"unreadable ({problem.strerror or problem})"
    else:
        described = f"damaged ({problem})"
    if isinstance(problem, PermissionError):
        fix = "make it readable (chmod u+r), or run as its owner"
    else:
        fix = REPAIRS.get(path.name, "restore it from a copy of the run")
    return MobilenetsError(f"{path}: {described}; {fix}")


def json_kind(value: Any) -> str:
    """``value``'s JSON type, as a reader is told it: "a list", "an object", "a string", "a number"…"""
    if isinstance(value, bool):
        return "true/false"
    kinds = ((dict, "an object"), (list, "a list"), (str, "a string"), (int | float, "a number"))
    return next((name for types, name in kinds if isinstance(value, types)), "null")


def _relative(path: Path, root: Path | None) -> str:
    if root is None:
        return str(path.resolve())
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path.resolve())


def _absolute(stored: str, root: Path | None) -> Path:
    path = Path(stored)
    return path if path.is_absolute() or root is None else root / path
