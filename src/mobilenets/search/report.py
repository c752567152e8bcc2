"""The search's HTML report: Pareto fronts (accuracy vs latency, accuracy vs size) with the budget drawn in."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mobilenets.core.files import atomic_write_text
from mobilenets.search.candidates import Candidate, pareto_front

if TYPE_CHECKING:
    from mobilenets.search.result import SearchResult


def pareto_png(
    candidates: Sequence[Candidate],
    *,
    cost: str,
    label: str,
    scale: float,
    limit: float | None,
    recommended: Candidate | None,
) -> str:
    """A scatter of accuracy against one cost, its Pareto front and the budget line, as base64 PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trained = [c for c in candidates if c.accuracy is not None and getattr(c, cost) is not None]
    figure, axes = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    families = sorted({c.model for c in trained})
    colours = plt.get_cmap("tab10")
    for index, family in enumerate(families):
        points = [c for c in trained if c.model == family]
        axes.scatter(
            [getattr(c, cost) / scale for c in points],
            [100 * c.accuracy for c in points],
            label=family,
            color=colours(index % 10),
            s=[18 + 10 * (c.epochs or 1) ** 0.5 for c in points],  # longer-trained points drawn larger
            alpha=0.85,
        )
    front = [trained[i] for i in pareto_front([(getattr(c, cost), c.accuracy) for c in trained])]
    if front:
        axes.step(
            [getattr(c, cost) / scale for c in front],
            [100 * c.accuracy for c in front],
            where="post",
            color="black",
            linewidth=1,
            label="Pareto front",
        )
    if limit is not None:
        axes.axvline(limit / scale, color="red", linestyle="--", linewidth=1, label="budget")
    if recommended is not None and getattr(recommended, cost) is not None:
        axes.scatter(
            [getattr(recommended, cost) / scale],
            [100 * recommended.accuracy],
            marker="*",
            s=260,
            facecolor="none",
            edgecolor="black",
            label="recommended",
        )
    if trained and max(getattr(c, cost) for c in trained) / max(min(getattr(c, cost) for c in trained), 1e-9) > 20:
        axes.set_xscale("log")
    axes.set_xlabel(label)
    axes.set_ylabel("validation accuracy (%)")
    axes.grid(alpha=0.3)
    if trained:
        axes.legend(fontsize=7, loc="lower right")
    else:
        axes.text(0.5, 0.5, "no trained candidate", ha="center", transform=axes.transAxes)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


def _cell(value, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def write_report(result: SearchResult, path: Path) -> Path:
    settings, budget = result.settings, result.settings.budget
    recommended = result.recommended
    runtime = result.to_dict()["measurement"]["latency_ms"]
    latency_png = pareto_png(
        result.candidates,
        cost="latency_ms",
        label="latency, batch 1 (ms)",
        scale=1.0,
        limit=budget.max_latency_ms,
        recommended=recommended,
    )
    size_png = pareto_png(
        result.candidates,
        cost="flash_bytes",
        label="file size (KB)" + (" int8" if settings.int8 else " fp32"),
        scale=1024.0,
        limit=budget.max_flash_bytes,
        recommended=recommended,
    )
    rows = []
    ordered = sorted(result.candidates, key=lambda c: (c.accuracy is None, -(c.accuracy or 0.0), c.latency_ms or 0.0))
    for c in ordered:
        mark = " ★" if recommended is not None and c.key == recommended.key else ""
        rows.append(
            "<tr>"
            f"<td>{html.escape(c.model)}{mark}</td><td>{c.width:g}</td><td>{c.resolution}</td>"
            f"<td>{_cell(None if c.accuracy is None else 100 * c.accuracy, '.1f')}</td>"
            f"<td>{_cell(c.epochs, 'd')}</td>"
            f"<td>{_cell(c.latency_ms, '.2f')}</td>"
            f"<td>{_cell(None if c.flash_bytes is None else c.flash_bytes / 1024, ',.0f')}</td>"
            f"<td>{_cell(None if c.ram_bytes is None else c.ram_bytes / 1024, ',.0f')}</td>"
            f"<td>{c.macs / 1e6:.1f}</td><td>{c.params / 1e6:.2f}</td>"
            f"<td>{html.escape(c.weights or 'scratch')}</td>"
            f"<td>{'yes' if c.within_budget else ('no' if c.within_budget is False else '?')}</td>"
            f"<td>{html.escape(c.status)}</td>"
            "</tr>"
        )
    if recommended is not None:
        verdict = (
            f"<p><b>Recommended: {html.escape(recommended.key)}</b> — {100 * recommended.accuracy:.1f}% validation "
            f"accuracy ({recommended.epochs} epochs), {recommended.latency_ms:.2f} ms, "
            f"{recommended.flash_bytes / 1024:,.0f} KB. Rule: {html.escape(result.to_dict()['rule'])}.</p>"
            "<p>Train it and export it (the same command, data and seed as its measured run, so it reproduces the "
            "accuracy above; with <code>--int8</code> the run also reports its int8 accuracy):</p>"
            f"<pre>{html.escape(result.command or '')}</pre>"
        )
    else:
        verdict = "<p><b>No recommendation</b>: no in-budget candidate finished training.</p>"
    plan = result.plan
    plan_text = (
        f"{len(plan.pool)} candidates trained in rungs of {plan.rung_sizes} × {plan.rung_epochs} epochs "
        "(successive halving: the better half of each rung is trained twice as long)"
        if plan and plan.rung_epochs
        else "no training plan"
    )
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in result.notes)
    machine = result.to_dict()["machine"]
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>mobilenets search</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse;font-size:13px}}td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}}
td:first-child,td:last-child{{text-align:left}}pre{{background:#f4f4f4;padding:8px;white-space:pre-wrap}}</style>
</head><body>
<h1>Right-sized model search</h1>
<p>Data: {html.escape(str(settings.data))} ({result.data.classes} classes, ~{result.data.images:,} training images).
Target: {html.escape(settings.target)}{" int8" if settings.int8 else ""}. Budget: {html.escape(budget.describe())}.
Time: {result.elapsed_s / 60:.1f} of {settings.time_budget_s / 60:.0f} min. {html.escape(plan_text)}.</p>
<p>Latency: {html.escape(runtime)} ({html.escape(str(machine["cpu"]))}, {machine["cores"]} cores, load average
{machine["load_average"]}). RAM: {html.escape(result.to_dict()["measurement"]["ram_bytes"])}.</p>
{verdict}
<h2>Pareto fronts</h2>
<img alt="accuracy vs latency" src="data:image/png;base64,{latency_png}">
<img alt="accuracy vs size" src="data:image/png;base64,{size_png}">
<h2>Candidates</h2>
<table><tr><th>model</th><th>width</th><th>px</th><th>accuracy %</th><th>epochs</th><th>latency ms</th>
<th>file KB</th><th>RAM KB</th><th>MMACs</th><th>M params</th><th>weights</th><th>in budget</th><th>status</th></tr>
{"".join(rows)}</table>
<h2>Notes</h2><ul>{notes or "<li>none</li>"}</ul>
</body></html>
"""
    atomic_write_text(path, page)
    return path
