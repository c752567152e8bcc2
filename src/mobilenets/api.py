"""The Python API: what every command does, as calls. The command line is a thin shell over it.

    import mobilenets

    run = mobilenets.train(data="photos/", model="mobilenet_v3_small", epochs=30, out="runs/flowers")
    run = mobilenets.load_run("runs/flowers")
    evaluation = run.evaluate("test_photos/")      # accuracy, per-class metrics, confusion matrix
    figures = run.quantize(method="auto")          # int8, judged next to fp32
    exported = run.export("onnx", int8=True)       # and the device formats: "tflite", "executorch", …
    predicted = run.predict("photos/")             # top-5 labels; unreadable files skipped and listed
    report = mobilenets.robustness(run)            # corruptions, shifts, attacks, SE/hard-swish cost

Messages go to the ``mobilenets`` logger (INFO for progress, WARNING for what needs attention), as
``logging`` lets any application route them; a progress bar shows where a terminal is attached.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mobilenets.core.errors import MobilenetsError, check_number, split_items
from mobilenets.core.run_directory import RunDirectory
from mobilenets.training.options import TrainOptions

if TYPE_CHECKING:
    from mobilenets.deployment.evaluate import FolderEvaluation
    from mobilenets.deployment.export import ExportResult
    from mobilenets.deployment.predict import PredictionReport
    from mobilenets.models.architectures import MobileNet
    from mobilenets.training.configuration import TrainConfig

log = logging.getLogger("mobilenets")


def train(data: Path | str | None = None, *, out: Path | str | None = None, **options: Any) -> Run:
    """Train (or fine-tune) on a folder of images, one subfolder per class; returns the finished run.

    Every option of ``mobilenets train`` is a keyword here, with the same name and default (for example
    ``epochs=30``, ``weights="none"``, ``quantize=True``, ``export=["tflite"]``, ``resume="runs/x"``; see
    ``TrainOptions``). The same options
    from the command line and from Python write the same run directory.
    """
    unknown = sorted(set(options) - set(TrainOptions.defaults()))
    if unknown:
        raise MobilenetsError(
            f"unknown training option(s) {', '.join(unknown)}; known: {', '.join(sorted(TrainOptions.defaults()))}"
        )
    passed = set(options) | {name for name, value in (("data", data), ("out", out)) if value is not None}
    return train_with_options(TrainOptions(data=data, out=out, **options, passed=frozenset(passed)))


def train_with_options(options: TrainOptions) -> Run:
    """``train`` for a ready ``TrainOptions`` (what ``mobilenets train`` calls)."""
    from mobilenets.training.pipeline import train as train_run

    _ensure_console_output()
    export_formats(options.export)  # a typo is refused before training, not after
    directory = train_run(options)
    run = Run(directory.path)
    if _is_main_process():  # under torchrun the other processes have nothing left to do
        run.finish()
    return run


def load_run(path: Path | str) -> Run:
    """A run directory written by ``train`` (it may have been moved or copied since)."""
    run = Run(as_path(path, "the run directory"))
    if not run.path.exists():
        raise MobilenetsError(f"{run.path}: does not exist; pass a run directory written by `mobilenets train`")
    run.directory.require(RunDirectory.CONFIG, RunDirectory.MODEL, needed_by="this")
    return run


class Run:
    """A training run on disk, and everything that can be done with it."""

    def __init__(self, path: Path | str) -> None:
        self.directory = RunDirectory(as_path(path, "the run directory"))
        if not self.directory.path.is_dir():
            what = "does not exist" if not self.directory.path.exists() else "is a file, not a run directory"
            raise MobilenetsError(f"{self.directory.path}: {what}; pass a run directory written by `mobilenets train`")
        _ensure_console_output()  # a script that only loads runs gets the messages too

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    @property
    def path(self) -> Path:
        return self.directory.path

    @property
    def config(self) -> TrainConfig:
        from mobilenets.training.configuration import TrainConfig

        self.directory.require(RunDirectory.CONFIG, needed_by="Run.config")
        return TrainConfig.from_dict(self.directory.read_json(RunDirectory.CONFIG))

    @property
    def metrics(self) -> dict:
        return self.directory.metrics()

    def model(self) -> MobileNet:
        """The best weights (by validation accuracy), with their classes and preprocessing."""
        from mobilenets.models.weights import load_model

        return load_model(self.directory.model)

    # ---------------------------------------------------------------------------------------------

    def finish(self) -> None:
        """The steps after training: int8 if the run asked for it, then the report. Until they are all
        done the checkpoint stays, so an interrupted finish is completed by ``--resume``."""
        if self.directory.is_complete():
            return
        config = self.config
        if config.quantize:
            self.quantize(method="auto", write_report=False)
        for format in export_formats(config.export):
            self.export(format, int8=config.quantize, write_report=False)
        self.report()
        self.directory.merge_metrics({"complete": True})
        self.directory.checkpoint.unlink(missing_ok=True)
        log.info(f"wrote {self.directory.model} and {self.directory.report}")

    def evaluate(
        self,
        data: Path | str,
        *,
        engine: str = "auto",
        batch_size: int = 128,
        bn_adapt: bool = False,
    ) -> FolderEvaluation:
        """Accuracy, per-class metrics and confusion matrix on a folder (one subfolder per class).

        ``.result`` holds the figures (``.accuracy``, ``.table()``), ``.engine`` says which runtime ran.
        """
        from mobilenets.deployment.evaluate import evaluate_folder

        check_switch(bn_adapt, "bn_adapt")
        return evaluate_folder(
            run_dir=self.path, data=as_path(data, "data"), engine=engine, batch_size=batch_size, bn_adapt=bn_adapt, report=_log_line
        )

    def quantize(self, method: str = "auto", *, write_report: bool = True, **options: Any) -> dict:
        """int8 ONNX (and the int8 engine's calibration), judged on the validation split next to fp32.

        ``options`` are ``quantize_run``'s (threshold, calibration_images, calibration_method, qat_epochs, …).
        The figures are merged into ``metrics.json``; the report is refreshed.
        """
        from mobilenets.deployment.quantization import quantize_run

        check_keywords(options, quantize_run, set_here=("run_dir", "method", "report"), what="Run.quantize")
        check_switch(write_report, "write_report")
        if write_report:
            _check_report(self.path)
        log.info("quantizing to int8 …")
        figures = quantize_run(self.path, method, report=_log_line, **options)
        self.directory.merge_metrics(figures)
        if write_report:
            self.report()
        return figures

    def export(
        self,
        format: str = "onnx",
        *,
        int8: bool = False,
        out: Path | str | None = None,
        write_report: bool = True,
        **options: Any,
    ) -> ExportResult:
        """Write the model in a deployment format (see ``mobilenets export --help``), each file checked in its
        own runtime against PyTorch; ``.files`` lists what was written. ``options`` are ``export_model``'s."""
        from mobilenets.deployment.export import export_model
        from mobilenets.deployment.loading import model_source

        if not isinstance(format, str):  # one file per call, as `mobilenets export FORMAT` writes
            raise MobilenetsError(
                f"format must be one format name such as 'onnx', got {format!r}; for several, call export once per "
                "format (train(export=[...]) writes several at the end of training)"
            )
        check_switch(int8, "int8")  # int8="no" is truthy: it would write the int8 file
        check_switch(write_report, "write_report")
        check_keywords(options, export_model, set_here=("source", "format", "int8", "out", "report"), what="Run.export")
        if options.get("data") is not None:
            options["data"] = as_path(options["data"], "data")
        if write_report:
            _check_report(self.path)
        result = export_model(
            source=model_source(run_dir=self.path),
            format=format,
            int8=int8,
            out=as_path(out, "out") if out is not None else None,
            report=_log_line,
            **options,
        )
        if write_report:
            self.report()
        return result

    def predict(
        self, images: list[Path | str] | Path | str, *, top_k: int = 5, engine: str = "auto", batch_size: int = 32
    ) -> PredictionReport:
        """Top-K labels and probabilities for image files and folders (paths, as ``mobilenets predict`` takes).

        A path given on its own must be a readable image or a folder; inside a folder or a list, unreadable
        files are skipped and listed (``.skipped``). ``.predictions`` holds the rest, ``.engine`` the runtime
        used.
        """
        from mobilenets.deployment.loading import model_source
        from mobilenets.deployment.predict import predict_files

        if isinstance(images, (str, os.PathLike)):
            inputs = [images]
        elif isinstance(images, (list, tuple)) or inspect.isgenerator(images):
            inputs = list(images)
        else:  # a PIL image, an array or a tensor: their pixels would need this run's preprocessing
            raise MobilenetsError(
                f"images must be an image file or folder path, or a list of them, got a {type(images).__name__}; "
                "save the image to a file first, or run run.model() on a tensor preprocessed as "
                "run.model().metadata.preprocessing says"
            )
        inputs = [as_path(image, "images") for image in inputs]
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise MobilenetsError(f"top_k must be a whole number ≥ 1, got {top_k!r}")
        check_number("--batch-size", batch_size, at_least=1, whole=True)  # before the model is read
        return predict_files(
            inputs=inputs,
            source=model_source(run_dir=self.path),
            top_k=top_k,
            engine=engine,
            batch_size=batch_size,
            report=_log_line,
        )

    def report(self) -> Path:
        """Write ``report.html`` from everything the run directory holds now (int8, robustness included)."""
        from mobilenets.reporting.run_report import write_report

        return write_report(self.path)


def robustness(run: Run | Path | str, **options: Any) -> dict:
    """Corruptions, shifts, adversarial noise and SE/hard-swish latency of a run (see ``mobilenets robustness``)."""
    from mobilenets.robustness.run import robustness_report

    reserved = sorted({"run_dir", "log"} & set(options))
    if reserved:  # set here from `run` and the logger
        raise MobilenetsError(f"unknown robustness option(s) {', '.join(reserved)}; pass the run as the first argument")
    run = run if isinstance(run, Run) else load_run(run)
    _check_report(run.path)
    result = robustness_report(run_dir=run.path, log=_log_line, **options)
    run.report()
    return result.result


def _log_line(message: str) -> None:
    """The deployment and robustness stages' lines, to the ``mobilenets`` logger: those that start with
    "warning:" (any case) at WARNING, without the prefix the console adds again; the rest at INFO."""
    head, colon, rest = message.partition(":")
    if colon and head.strip().lower() == "warning":
        log.warning(rest.strip())
    else:
        log.info(message)


def check_switch(value: object, name: str) -> None:
    """A True/False keyword: "no" or 0 would otherwise be read by their truth value."""
    if not isinstance(value, bool):
        raise MobilenetsError(f"{name} must be True or False, got {value!r}")


def check_keywords(options: dict[str, Any], function: Callable[..., Any], *, set_here: Sequence[str], what: str) -> None:
    """Keywords ``function`` takes (less those the caller sets itself), refused in one line otherwise."""
    known = sorted(set(inspect.signature(function).parameters) - set(set_here))
    if unknown := sorted(set(options) - set(known)):
        raise MobilenetsError(f"{what}: unknown option(s) {', '.join(unknown)}; known: {', '.join(known)}")


def export_formats(text: str | None) -> list[str]:
    """``"tflite,executorch"`` → the formats, checked against the export table before any training."""
    if not text:
        return []
    if not isinstance(text, str):
        raise MobilenetsError(f"--export must be format names, comma-separated (\"onnx,tflite\") or a list, got {text!r}")
    from mobilenets.deployment.formats import EXPORT_FORMATS

    formats = split_items(text, "--export", what="format names", example="onnx,tflite")
    unknown = [name for name in formats if name not in EXPORT_FORMATS]
    if unknown:
        raise MobilenetsError(f"--export {text}: unknown format {unknown[0]!r}; choose from {', '.join(EXPORT_FORMATS)}")
    return formats


def _check_report(run_dir: Path) -> None:
    """The report is refreshed after the work: a run file it cannot read is said before that work."""
    from mobilenets.reporting.run_report import check_report

    check_report(run_dir)


def as_path(value: object, what: str) -> Path:
    """A path given to the API: a non-empty string or path-like, else one clear error (not a TypeError)."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise MobilenetsError(f"{what} must be a path (a string or pathlib.Path), got {value!r}")
    if not value.strip():
        raise MobilenetsError(f"{what} is an empty string; give a path (for the current folder: '.')")
    return Path(value)


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _ensure_console_output() -> None:
    """Progress messages for a Python user who has not configured logging (the CLI configures its own).
    A level the user set on the ``mobilenets`` logger is kept."""
    logger = logging.getLogger("mobilenets")
    if not logger.handlers and not logging.getLogger().handlers:
        from mobilenets.core.console import configure_logging

        level = logger.level
        configure_logging()
        if level != logging.NOTSET:
            logger.setLevel(level)
