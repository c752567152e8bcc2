"""A run directory's report: training curves and confusion matrix as PNG, and one self-contained HTML page.

The HTML embeds its images as base64 so it can be mailed or attached as one file. It reads only what
the run directory holds (``metrics.json``, ``epochs.csv``, ``evaluation.json``, ``config.json``,
``skipped.json``, ``leakage.json``; robustness.html is linked, not read), so any tool that merges keys into
``metrics.json`` (quantization, robustness) can call ``write_report`` again and see its numbers appear.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import html
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mobilenets.core.errors import MobilenetsError
from mobilenets.core.files import atomic_path
from mobilenets.core.run_directory import RunDirectory, damaged_file, json_kind
from mobilenets.training.options import DEFAULT_WEIGHT_DECAY

# What a damaged file does to the report (every file is read through RunDirectory, the one reader of a run's
# files, whose line names the file and its fix):
# - metrics.json and config.json refuse it (one line, exit 2): they are what the report is about, nothing
#   rebuilds them, and a report without them would look complete while saying nothing.
# - evaluation.json, skipped.json, leakage.json and epochs.csv are only shown here: a damaged one is left
#   out with a warning (and a note on the page) naming it and its fix. The report is refreshed at the end of
#   train, quantize, export and robustness; refusing there would throw away minutes of work for a section
#   that no other stage reads.
REQUIRED = (RunDirectory.METRICS, RunDirectory.CONFIG)
OPTIONAL = (RunDirectory.EVALUATION, RunDirectory.SKIPPED, RunDirectory.LEAKAGE, RunDirectory.EPOCHS)
# What the report writes; each is rewritten whole (atomically), so any of them may be deleted.
OUTPUTS = ("curves.png", "confusion.png", RunDirectory.REPORT)
# The columns the curves plot; training writes these and more (lr, images_per_second, seconds).
EPOCH_COLUMNS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy")
UNVALIDATED_COLUMNS = ("val_loss", "val_accuracy")  # empty in the epochs `train --val-every` skipped


@dataclass
class ReportInputs:
    """What the report shows, read and checked before anything is drawn or written."""

    metrics: dict
    config: dict
    evaluation: dict | None = None
    skipped: list = field(default_factory=list)
    leakage: dict = field(default_factory=lambda: {"exact": [], "near": []})
    epochs: list[dict] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)  # one line per damaged optional file


def check_report(run_dir: Path | str) -> None:
    """Everything that would make ``write_report`` refuse, checked without writing or warning: for a command
    that refreshes the report after minutes of work (robustness) to refuse before that work."""
    run = RunDirectory(run_dir)
    run.check_readable(*REQUIRED)
    check_outputs(run)


def check_outputs(run: RunDirectory) -> None:
    """A folder where the report writes a file would fail the write (and only after the others were written)."""
    for name in OUTPUTS:
        path = run / name
        if path.is_dir():
            raise MobilenetsError(
                f"{path}: a folder, where the report writes its {name}; move or delete the folder, then run "
                f"`mobilenets report {run.path}`"
            )


def read_inputs(run_dir: Path | str) -> ReportInputs:
    """The run's files the report shows; see ``REQUIRED`` and ``OPTIONAL`` for what a damaged one does."""
    run = RunDirectory(run_dir)
    inputs = ReportInputs(metrics=run.read_json(RunDirectory.METRICS, {}), config=run.read_json(RunDirectory.CONFIG, {}))
    readers = {
        "evaluation": lambda: _checked_evaluation(run),
        "skipped": lambda: run.read_json(RunDirectory.SKIPPED, []),
        "leakage": lambda: _checked_leakage(run),
        "epochs": lambda: read_epochs(run.path),
    }
    for attribute, read in readers.items():
        try:
            setattr(inputs, attribute, read())
        except MobilenetsError as error:
            inputs.left_out.append(str(error))
    return inputs


def _checked_evaluation(run: RunDirectory) -> dict | None:
    """evaluation.json with the fields the per-class table and the confusion matrix use, of their types."""
    evaluation = run.read_json(RunDirectory.EVALUATION)
    if evaluation is None:
        return None
    problem = evaluation_problem(evaluation)
    if problem:
        raise damaged_file(run / RunDirectory.EVALUATION, problem)
    return evaluation


def evaluation_problem(evaluation: dict) -> str | None:
    """What keeps ``evaluation`` from being shown (None when nothing does)."""

    def is_number(value: object) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool)

    for key in ("count", "accuracy"):
        if not is_number(evaluation.get(key)):
            return f"no number under {key!r}"
    rows = evaluation.get("per_class")
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        return "'per_class' is not a list of objects"
    for row in rows:
        if not all(is_number(row.get(key)) for key in ("precision", "recall", "f1")) or "class" not in row:
            return "a 'per_class' row without its class, precision, recall and f1"
    classes, matrix = evaluation.get("classes"), evaluation.get("confusion_matrix")
    if not isinstance(classes, list) or not all(isinstance(name, str) for name in classes):
        return "'classes' is not a list of class names"
    square = isinstance(matrix, list) and len(matrix) == len(classes)
    if not square or not all(isinstance(row, list) and len(row) == len(classes) for row in matrix):
        return f"'confusion_matrix' is not {len(classes)}×{len(classes)}, one row and column per class"
    if not all(is_number(value) for row in matrix for value in row):
        return "'confusion_matrix' holds a value that is not a number"
    return None


def _checked_leakage(run: RunDirectory) -> dict:
    """leakage.json's lists of duplicate pairs (a list it does not have: none found)."""
    leakage = run.read_json(RunDirectory.LEAKAGE, {})
    for key in ("exact", "near"):
        leakage.setdefault(key, [])
        if not isinstance(leakage[key], list):
            raise damaged_file(run / RunDirectory.LEAKAGE, f"{key!r} is {json_kind(leakage[key])}, not a list")
    return leakage


def read_epochs(run_dir: Path) -> list[dict]:
    """epochs.csv as one dict of numbers per epoch ([] when there is none); a damaged file raises the one line
    of ``damaged_file`` (a row of another length, a value that is not a number, a plotted column missing)."""
    path = Path(run_dir) / RunDirectory.EPOCHS
    if not path.exists():
        return []
    rows: list[tuple[int, list[str]]] = []
    try:
        with open(path, newline="", encoding="utf-8") as file:
            reader = csv.reader(file)
            rows = [(reader.line_num, row) for row in reader if row]
    except UnicodeDecodeError:
        raise damaged_file(path, "not UTF-8 text") from None
    except OSError as error:
        raise damaged_file(path, error) from None
    except csv.Error as error:
        raise damaged_file(path, f"not CSV: {error}") from None
    if not rows:
        raise damaged_file(path, "empty")
    (_, header), body = rows[0], rows[1:]
    missing = [column for column in EPOCH_COLUMNS if column not in header]
    if missing:
        raise damaged_file(path, f"no {missing[0]!r} column in its header line")
    epochs = []
    for line, row in body:
        if len(row) != len(header):
            raise damaged_file(path, f"line {line} has {len(row)} values for {len(header)} columns")
        epoch = {}
        for column, value in zip(header, row, strict=True):
            if value == "" and column in UNVALIDATED_COLUMNS:
                epoch[column] = None  # an epoch `train --val-every` did not validate
                continue
            try:
                epoch[column] = float(value)
            except ValueError:
                raise damaged_file(path, f"line {line}: {column} {value!r} is not a number") from None
        epochs.append(epoch)
    return epochs


@contextlib.contextmanager
def _writing(path: Path, run_dir: Path) -> Iterator[Path]:
    """``path``'s temporary twin (``atomic_path``): a write that fails is one line naming the file, and the
    file keeps its previous content; a full disk is ``atomic_path``'s own line."""
    try:
        with atomic_path(path) as temporary:
            yield temporary
    except OSError as error:
        reason = error.strerror or str(error)
        raise MobilenetsError(
            f"{path}: cannot write it ({reason}); make it (and {run_dir}) writable, or delete it (the report "
            f"writes it anew), then run `mobilenets report {run_dir}`"
        ) from None


def plot_curves(epochs: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [row["epoch"] for row in epochs]
    validated = [row for row in epochs if row["val_accuracy"] is not None]  # with val_loss, or neither
    x_val = [row["epoch"] for row in validated]
    marker = "o" if len(validated) < len(epochs) else None  # sparse validations (--val-every) as points
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 3.6))
    loss_axis.plot(x, [r["train_loss"] for r in epochs], label="train")
    loss_axis.plot(x_val, [r["val_loss"] for r in validated], label="val", marker=marker)
    loss_axis.set(title="loss", xlabel="epoch")
    accuracy_axis.plot(x, [r["train_accuracy"] for r in epochs], label="train (augmented)")
    accuracy_axis.plot(x_val, [r["val_accuracy"] for r in validated], label="val", marker=marker)
    accuracy_axis.set(title="accuracy", xlabel="epoch", ylim=(0, 1))
    for axis in (loss_axis, accuracy_axis):
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    _save(figure, path)
    return path


def _save(figure, path: Path) -> None:
    """A figure as PNG, written whole or not at all (its write failing is one line naming the file)."""
    import matplotlib.pyplot as plt

    try:
        with _writing(path, path.parent) as temporary:
            figure.savefig(temporary, dpi=110, format="png")
    finally:
        plt.close(figure)


def plot_confusion(confusion: np.ndarray, classes: list[str], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    confusion = np.asarray(confusion)
    size = max(4.0, 0.45 * len(classes) + 2)
    figure, axis = plt.subplots(figsize=(size + 1, size))
    rows = confusion.sum(1, keepdims=True)
    normalized = np.divide(confusion, rows, out=np.zeros(confusion.shape), where=rows > 0)
    image = axis.imshow(normalized, cmap="Blues", vmin=0, vmax=1)
    if len(classes) <= 20:
        for (i, j), value in np.ndenumerate(confusion):
            if value:
                axis.text(
                    j,
                    i,
                    str(value),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if normalized[i, j] > 0.5 else "black",
                )
    axis.set_xticks(range(len(classes)), classes, rotation=60, ha="right", fontsize=8)
    axis.set_yticks(range(len(classes)), classes, fontsize=8)
    axis.set(xlabel="predicted", ylabel="true", title="confusion matrix (validation)")
    figure.colorbar(image, ax=axis, fraction=0.046, label="share of the true class")
    figure.tight_layout()
    _save(figure, path)
    return path


def _embed(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def _table(rows: list[list], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _format(value, key: str = "") -> str:
    """A metric or setting as a reader wants it: accuracies in %, sizes in MB, epochs whole, lr in e-notation."""
    if isinstance(value, bool) or value is None:
        return {True: "yes", False: "no", None: "—"}[value]
    if isinstance(value, (int, float)):
        if key.endswith("accuracy") or key.endswith("agreement"):
            return f"{100 * value:.2f}%"
        if key.endswith("_bytes"):
            return f"{value / 1e6:.2f} MB"
        if key.endswith("_ms"):
            return f"{value:.2f} ms"
        if key in ("epoch", "best_epoch", "epochs") or key.endswith("_images") or key.endswith("_epochs"):
            return f"{int(value):,}"
        if key in ("lr", "min_lr", "weight_decay") or (isinstance(value, float) and 0 < abs(value) < 1e-3):
            return f"{value:.2e}"
        if isinstance(value, float):
            return f"{value:.4f}" if abs(value) < 10 else f"{value:,.1f}"
        return f"{value:,}"
    return str(value)


def display_path(value: str, run_dir: Path) -> str:
    """A path as seen from the run directory: its own files by name, others as given (issue 17: paths in the
    report were relative to wherever `train` happened to be started)."""
    path = Path(value)
    try:
        if path.resolve().is_relative_to(run_dir.resolve()):
            return str(path.resolve().relative_to(run_dir.resolve())) or "."
    except (OSError, ValueError):
        pass
    if not path.is_absolute() and run_dir.name in path.parts:  # "runs/x/model_int8.onnx" stored from another cwd
        tail = Path(*path.parts[len(path.parts) - path.parts[::-1].index(run_dir.name) :])
        if (run_dir / tail).exists():
            return str(tail) or "."
    return value


# What a setting left at None means: the value the training loop used.
SETTING_DEFAULTS = {
    "weight_decay": lambda c: DEFAULT_WEIGHT_DECAY.get(c.get("optimizer", "adamw"), "the optimizer's default"),
    "ema_decay": lambda c: "auto (an averaging horizon of a tenth of the run)" if c.get("ema", True) else "off",
    "dropout": lambda c: "the architecture's default",
    "crop_scale": lambda c: "the augmentation level's",
    "weights": lambda c: "none (trained from scratch)",
    "initial_weights": lambda c: "none (trained from scratch)",
    "teacher": lambda c: "none",
    "unlabelled": lambda c: "none",
    "early_stopping": lambda c: "off",
    "val": lambda c: f"a stratified {c.get('val_fraction', 0.2):g} split of the data",
    "recipe": lambda c: "none (defaults)",
    "cache_dir": lambda c: "the system's temporary folder",
}
PATH_KEYS = ("data", "val", "out", "int8_path", "path", "weights", "teacher", "unlabelled", "cache_dir")


def settings_rows(config: dict, run_dir: Path) -> list[list[str]]:
    rows = []
    for key, value in config.items():
        if value is None and key in SETTING_DEFAULTS:
            value = SETTING_DEFAULTS[key](config)
        elif isinstance(value, str) and key in PATH_KEYS:
            value = display_path(value, run_dir)
        elif isinstance(value, list) and key in PATH_KEYS:  # an ensemble of teachers
            value = ", ".join(display_path(str(item), run_dir) for item in value)
        rows.append([key, _format(value, key)])
    return rows


def deployment_section(entries: list[dict]) -> str:
    """The device files, each verified in its own runtime (``mobilenets export --format …``)."""
    from mobilenets.deployment.device_files import NEAR_TIE  # deployment imports torch; reports need it only here

    def percent(value) -> str:
        return "—" if value is None else f"{100 * value:.1f}%"

    rows = [
        [
            e.get("format", ""),
            e.get("path", ""),
            e.get("precision", ""),
            f"{e.get('bytes', 0) / 1e6:.2f}",
            e.get("runtime", ""),
            percent(e.get("agreement")) if e.get("ran", True) else "not run",
            percent(e.get("decided_agreement")) if e.get("ran", True) else "not run",
            percent(e.get("accuracy")),
            "—" if e.get("latency_ms") is None else f"{e['latency_ms']:.2f}",
            "—" if e.get("partitions") is None else str(e["partitions"]),
            "—" if e.get("arena_bytes") is None else f"{e['arena_bytes'] / 1024:.1f}",
        ]
        for e in entries
    ]
    header = [
        "format",
        "file",
        "precision",
        "MB",
        "runtime",
        "agreement",
        "decided",
        "accuracy",
        "batch-1 ms",
        "partitions",
        "arena KB",
    ]
    return (
        "<h2>Deployment files</h2><p>Each file was run in its own runtime on this machine and compared with the "
        "PyTorch model on validation images (agreement: same top-1 class; decided: the same, on the images where "
        f"fp32's top class leads the second by at least {100 * NEAR_TIE:.0f} points of probability).</p>"
        + _table(rows, header)
    )


def robustness_section(figures: dict, run_dir: Path) -> str:
    """What ``mobilenets robustness`` recorded in metrics.json, each figure named for the corruptions and
    severities it averages, with a link to the full robustness report when it sits in the run directory."""
    rows = [["images evaluated", _format(figures.get("images"), "images")]]
    rows += [["clean accuracy", _format(figures.get("clean_accuracy"), "accuracy")]]
    rows += _robustness_rows(figures)
    quick = " (a --quick first look)" if figures.get("quick") else ""
    intro = f"Measured by <code>mobilenets robustness</code>{quick}.{_robustness_link(figures, run_dir)}"
    return f"<h2>Robustness</h2><p>{intro}</p>" + _table(rows, ["measure", "value"])


def _robustness_rows(figures: dict) -> list[list[str]]:
    """Mean corrupted accuracy, CE/mCE against the baseline and the BN-adapted figures, labelled by scope."""
    from mobilenets.robustness.labels import ce_label, scope_text

    names, severities = figures.get("corruptions"), figures.get("severities")
    if not names or not severities:  # recorded before the scope was: the figures cannot be named for it
        label = "mean corrupted accuracy (corruptions and severities not recorded; rerun `mobilenets robustness`)"
        return [[label, _format(figures.get("mean_corrupted_accuracy"), "accuracy")]]
    scope = scope_text(names, severities)
    rows = [[f"mean corrupted accuracy over {scope}", _format(figures.get("mean_corrupted_accuracy"), "accuracy")]]
    if figures.get("held_out_mean_corrupted_accuracy") is not None:
        held_out = f"mean corrupted accuracy over {scope_text(names, severities, held_out=True)}"
        rows.append([held_out, _format(figures["held_out_mean_corrupted_accuracy"], "accuracy")])
    rows.append(["corrupted / clean", _format(figures.get("clean_vs_corrupt_ratio"))])
    baseline = figures.get("baseline_run")
    if baseline and figures.get("mean_ce") is not None:
        against = f"vs baseline {baseline}"
        rows.append([f"{ce_label(names, severities)} {against}", f"{figures['mean_ce']:.1f}"])
        if figures.get("relative_mean_ce") is not None:
            label = f"{ce_label(names, severities, relative=True)} {against}"
            rows.append([label, f"{figures['relative_mean_ce']:.1f}"])
    if figures.get("bn_adapt_mean_corrupted_accuracy") is not None:
        samples = figures.get("bn_adapt_samples")
        adapted = f"BN-adapted ({samples} images per re-estimation)" if samples else "BN-adapted"
        label = f"{adapted} mean corrupted accuracy over {scope}"
        rows.append([label, _format(figures["bn_adapt_mean_corrupted_accuracy"], "accuracy")])
        if baseline and figures.get("bn_adapt_mean_ce") is not None:
            label = f"{adapted} {ce_label(names, severities)} vs the unadapted baseline {baseline}"
            rows.append([label, f"{figures['bn_adapt_mean_ce']:.1f}"])
    return rows


def _robustness_link(figures: dict, run_dir: Path) -> str:
    """A link to robustness.html, recorded relative to the run directory when it is in it (so that the link
    survives moving the run); a report written elsewhere (--out) is named, not linked."""
    report = figures.get("report")
    if not isinstance(report, str):
        return ""
    if not Path(report).is_absolute():  # relative to the run directory, never to where the command runs
        exists = (run_dir / report).exists()
        return f' Full report: <a href="{html.escape(report)}">{html.escape(report)}</a>.' if exists else ""
    return f" Full report (outside the run directory): {html.escape(report)}." if Path(report).exists() else ""


def deploy_choice(metrics: dict, run_dir: Path) -> str:
    """Which file to put on a device, and why, from what ``quantize`` measured."""
    int8 = run_dir / "model_int8.onnx"
    if int8.exists() and metrics.get("int8_within_threshold") is not False:
        if metrics.get("int8_slower_than_fp32"):
            return "model.onnx (int8 is slower than fp32 on this machine; model_int8.onnx is the smaller file)"
        return "model_int8.onnx (int8, within the accuracy threshold of fp32)"
    if (run_dir / "model.onnx").exists():
        reason = " (int8 lost too much accuracy)" if int8.exists() else ""
        return f"model.onnx (fp32 ONNX){reason}"
    return "model.safetensors (run `mobilenets export` or `mobilenets quantize` for a device file)"


def summary_lines(metrics: dict, run_dir: Path, skipped: list, leakage: dict, left_out: int = 0) -> list[str]:
    """The five lines a reader needs first: accuracy, int8 accuracy, size, what to deploy, warnings."""
    best, final = metrics.get("best_val_accuracy"), metrics.get("final_val_accuracy")
    accuracy = "—" if best is None else f"{100 * best:.2f}% best" + (f", {100 * final:.2f}% final" if final is not None else "")
    if metrics.get("best_epoch") is not None:
        accuracy += f" (best at epoch {int(metrics['best_epoch'])})"
    int8_accuracy = metrics.get("int8_val_accuracy")
    int8 = (
        "not quantized (`mobilenets quantize RUN`)"
        if int8_accuracy is None
        else f"{100 * int8_accuracy:.2f}% ({metrics.get('int8_method', '?')}; fp32 {_format(metrics.get('fp32_val_accuracy'), 'accuracy')})"
    )
    sizes = [f"{name} {(run_dir / name).stat().st_size / 1e6:.2f} MB" for name in ("model.safetensors", "model.onnx", "model_int8.onnx") if (run_dir / name).exists()]
    warnings = []
    if metrics.get("int8_within_threshold") is False:
        warnings.append(f"int8 loses {metrics.get('int8_drop_points', '?')} points")
    if metrics.get("int8_slower_than_fp32"):
        warnings.append("int8 is slower than fp32 here")
    if skipped:
        warnings.append(f"{len(skipped)} files skipped")
    if leakage.get("exact") or leakage.get("near"):
        warnings.append(f"{len(leakage.get('exact', [])) + len(leakage.get('near', []))} train/val duplicates")
    diagnosis = metrics.get("diagnosis")
    if isinstance(diagnosis, list) and diagnosis:
        warnings.append(f"{len(diagnosis)} training finding(s) below")
    if left_out:
        warnings.append(f"{left_out} damaged file(s) left out (listed at the end)")
    return [
        f"Validation accuracy: {accuracy}",
        f"int8 accuracy: {int8}",
        f"Size: {', '.join(sizes) or '—'}",
        f"Deploy: {deploy_choice(metrics, run_dir)}",
        f"Warnings: {'; '.join(warnings) or 'none'}",
    ]


def write_report(run_dir: Path | str) -> Path:
    """Write ``curves.png``, ``confusion.png`` and ``report.html`` for a run directory.

    Every file is read and checked before anything is written: a damaged metrics.json or config.json
    refuses the report in one line, a damaged file it only shows is left out with a warning (``REQUIRED``,
    ``OPTIONAL``); a file that cannot be written is one line naming it, and keeps its previous content.
    """
    from mobilenets.core.console import warn
    from mobilenets.core.files import check_writable

    run_dir = Path(run_dir)
    check_writable(run_dir, "RUN_DIR", create=False)  # one line, not an OSError from the first figure saved
    inputs = read_inputs(run_dir)
    check_outputs(RunDirectory(run_dir))
    for line in inputs.left_out:
        warn(line)
    metrics, config, evaluation = inputs.metrics, inputs.config, inputs.evaluation
    skipped, leakage, epochs = inputs.skipped, inputs.leakage, inputs.epochs
    data = display_path(str(config.get("data", "")), run_dir)
    sections = [f"<h1>{html.escape(str(config.get('model', 'model')))} on {html.escape(data)}</h1>"]

    summary = summary_lines(metrics, run_dir, skipped, leakage, left_out=len(inputs.left_out))
    sections.append("<h2>Summary</h2><ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in summary) + "</ul>")
    headline = {k: v for k, v in metrics.items() if not isinstance(v, (list, dict))}
    rows = [
        [k.replace("_", " "), display_path(v, run_dir) if k in PATH_KEYS and isinstance(v, str) else _format(v, k)]
        for k, v in headline.items()
    ]
    sections.append("<h2>All metrics</h2>" + _table(rows, ["metric", "value"]))
    if metrics.get("deployment"):
        sections.append(deployment_section(metrics["deployment"]))
    if isinstance(metrics.get("robustness"), dict):  # a dict, so not among the headline metrics above
        sections.append(robustness_section(metrics["robustness"], run_dir))
    if "diagnosis" in metrics:  # training.diagnosis: the product's advice for what went wrong, if anything
        from mobilenets.training.diagnosis import findings_html

        sections.append(findings_html(metrics["diagnosis"]))
    if epochs:
        sections.append("<h2>Training curves</h2>" + _embed(plot_curves(epochs, run_dir / "curves.png")))
        sections.append(
            "<h2>Epochs</h2>" + _table([[_format(row[k], k) for k in row] for row in epochs], list(epochs[0].keys()))
        )
    if evaluation:
        sections.append(
            f"<h2>Per class (validation, {evaluation['count']} images, accuracy {evaluation['accuracy']:.4f})</h2>"
            + _table(
                [
                    [r["class"], f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}", r.get("support", "")]
                    for r in evaluation["per_class"]
                ],
                ["class", "precision", "recall", "f1", "support"],
            )
        )
        confusion_png = plot_confusion(
            np.array(evaluation["confusion_matrix"]), evaluation["classes"], run_dir / "confusion.png"
        )
        sections.append("<h2>Confusion matrix</h2>" + _embed(confusion_png))
    sections.append(
        f"<h2>Data</h2><p>{len(skipped)} files skipped"
        + (
            ":</p><ul>" + "".join(f"<li>{html.escape(str(s))}</li>" for s in skipped[:200]) + "</ul>"
            if skipped
            else ".</p>"
        )
        + f"<p>Train/val leakage: {len(leakage['exact'])} exact and {len(leakage['near'])} near duplicates.</p>"
    )
    sections.append("<h2>Settings used</h2>" + _table(settings_rows(config, run_dir), ["setting", "value"]))
    if inputs.left_out:
        sections.append(
            "<h2>Left out: damaged files</h2><ul>"
            + "".join(f"<li>{html.escape(line)}</li>" for line in inputs.left_out)
            + "</ul>"
        )
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "th{background:#f3f3f3}img{max-width:100%}"
    )
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>mobilenets run report</title><style>{style}</style></head><body>{''.join(sections)}</body></html>"
    path = run_dir / RunDirectory.REPORT
    with _writing(path, run_dir) as temporary:
        temporary.write_text(page, encoding="utf-8")
    return path
