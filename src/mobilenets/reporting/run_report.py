"""A run directory's report: training curves and confusion matrix as PNG, and one self-contained HTML page.

The HTML embeds its images as base64 so it can be mailed or attached as one file. It reads only what
the run directory holds (``metrics.json``, ``epochs.csv``, ``evaluation.json``, ``config.json``,
``skipped.json``, ``leakage.json``), so any tool that merges keys into ``metrics.json`` (quantization,
robustness) can call ``write_report`` again and see its numbers appear.
"""

from __future__ import annotations

import base64
import csv
import html
import json
from pathlib import Path

import numpy as np

from mobilenets.core.files import atomic_write_text


def _read_json(path: Path, default):
    return json.loads(path.read_text()) if path.exists() else default


def read_epochs(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "epochs.csv"
    if not path.exists():
        return []
    with open(path, newline="") as file:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(file)]


def plot_curves(epochs: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [row["epoch"] for row in epochs]
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 3.6))
    loss_axis.plot(x, [r["train_loss"] for r in epochs], label="train")
    loss_axis.plot(x, [r["val_loss"] for r in epochs], label="val")
    loss_axis.set(title="loss", xlabel="epoch")
    accuracy_axis.plot(x, [r["train_accuracy"] for r in epochs], label="train (augmented)")
    accuracy_axis.plot(x, [r["val_accuracy"] for r in epochs], label="val")
    accuracy_axis.set(title="accuracy", xlabel="epoch", ylim=(0, 1))
    for axis in (loss_axis, accuracy_axis):
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


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
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _embed(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def _table(rows: list[list], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:,.1f}"
    return str(value)


def write_report(run_dir: Path | str) -> Path:
    """Write ``curves.png``, ``confusion.png`` and ``report.html`` for a run directory."""
    run_dir = Path(run_dir)
    metrics = _read_json(run_dir / "metrics.json", {})
    config = _read_json(run_dir / "config.json", {})
    evaluation = _read_json(run_dir / "evaluation.json", None)
    skipped = _read_json(run_dir / "skipped.json", [])
    leakage = _read_json(run_dir / "leakage.json", {"exact": [], "near": []})
    epochs = read_epochs(run_dir)
    sections = [f"<h1>{html.escape(config.get('model', 'model'))} on {html.escape(str(config.get('data', '')))}</h1>"]

    headline = {k: v for k, v in metrics.items() if not isinstance(v, (list, dict))}
    sections.append("<h2>Metrics</h2>" + _table([[k, _format(v)] for k, v in headline.items()], ["metric", "value"]))
    if epochs:
        sections.append("<h2>Training curves</h2>" + _embed(plot_curves(epochs, run_dir / "curves.png")))
        sections.append(
            "<h2>Epochs</h2>" + _table([[_format(row[k]) for k in row] for row in epochs], list(epochs[0].keys()))
        )
    if evaluation:
        sections.append(
            f"<h2>Per class (validation, {evaluation['count']} images, accuracy {evaluation['accuracy']:.4f})</h2>"
            + _table(
                [
                    [r["class"], f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}", r["support"]]
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
        + (":</p><ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in skipped[:200]) + "</ul>" if skipped else ".</p>")
        + f"<p>Train/val leakage: {len(leakage['exact'])} exact and {len(leakage['near'])} near duplicates.</p>"
    )
    sections.append("<h2>Configuration</h2>" + _table([[k, v] for k, v in config.items()], ["setting", "value"]))
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "th{background:#f3f3f3}img{max-width:100%}"
    )
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>mobilenets run report</title><style>{style}</style></head><body>{''.join(sections)}</body></html>"
    path = run_dir / "report.html"
    atomic_write_text(path, page)
    return path
