"""Writes a robustness result (``robustness.run_robustness``) as JSON, Markdown and HTML with plots."""

from __future__ import annotations

import base64
import html
import json
import warnings
from pathlib import Path

import numpy as np

from mobilenets.core.files import atomic_write_text
from mobilenets.robustness.corruptions import CORRUPTIONS
from mobilenets.robustness.labels import ce_column, ce_label, scope_text


def write_report(result: dict, out_dir: Path | str, title: str = "Robustness report") -> dict[str, Path]:
    """Write ``robustness.json``, ``robustness.md``, ``robustness.html`` and the PNG plots into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = _plots(result, out)
    paths = {"json": out / "robustness.json", "markdown": out / "robustness.md", "html": out / "robustness.html"}
    atomic_write_text(paths["json"], json.dumps(result, indent=2) + "\n")
    sections = _sections(result)
    atomic_write_text(paths["markdown"], _markdown(title, result, sections, plots))
    atomic_write_text(paths["html"], _html(title, result, sections, plots))
    return {**paths, **{f"plot_{k}": v for k, v in plots.items()}}


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def _num(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


# A section: (heading, intro line, header row, rows)
Section = tuple[str, str, list[str], list[list[str]]]


def _sections(r: dict) -> list[Section]:
    sections: list[Section] = []
    baseline_note = (
        f" Baseline: {r['baseline_run']}." if r.get("baseline_run") else " No baseline run given: no CE/mCE."
    )
    sections.append(
        (
            "Summary",
            f"Run {r.get('run', '')}; data {r.get('data', '')}; seed {r['seed']}.{baseline_note}",
            ["measure", "value"],
            _summary_rows(r),
        )
    )
    sections.append(_accuracy_section(r))
    if "shifts" in r:
        shifts = r["shifts"]
        rows = [["clean", "—", _pct(r["clean_accuracy"])]]
        rows += [["resolution", f"×{s['factor']} then back", _pct(s["accuracy"])] for s in shifts["resolution"]]
        rows += [["exposure", f"{s['stops']:+.0f} EV", _pct(s["accuracy"])] for s in shifts["exposure"]]
        rows += [["gamma", f"{s['gamma']}", _pct(s["accuracy"])] for s in shifts["gamma"]]
        rows += [["JPEG", f"quality {s['quality']}", _pct(s["accuracy"])] for s in shifts["jpeg"]]
        sections.append(("Shift sweeps", "Accuracy (%) under each shift.", ["shift", "setting", "accuracy"], rows))

    if "adversarial" in r:
        adv = r["adversarial"]
        s = adv["settings"]
        intro = (
            f"{adv['images']} images; {s['norm']} attacks in {s['space']}; FGSM one step of ε; PGD {s['pgd_steps']} steps "
            f"of {s['pgd_step_size']}, random start {'yes' if s['pgd_random_start'] else 'no'}; {s['loss']}; model {s['model_mode']}."
        )
        rows = [["clean", "—", _pct(adv["clean_accuracy"])]]
        rows += [["FGSM", f"{e}/255", _pct(a)] for e, a in adv["fgsm"].items()]
        rows += [["PGD", f"{e}/255", _pct(a)] for e, a in adv["pgd"].items()]
        sections.append(("Adversarial accuracy", intro, ["attack", "ε", "accuracy"], rows))

    if "latency" in r:
        lat = r["latency"]
        intro = (
            f"Batch 1, {lat['resolution']}×{lat['resolution']}, {lat['threads']} threads, {lat['method']}; "
            f"{lat['se_blocks']} SE blocks, {lat['hardswish']} hard-swish modules; load average {', '.join(f'{v:.2f}' for v in r['load_average'])}."
        )
        rows = [
            [
                v["variant"],
                f"{v['median_ms']:.3f}",
                f"{v['p25_ms']:.3f}–{v['p75_ms']:.3f}",
                f"{v['saving_vs_full_ms']:+.3f} ({v['saving_vs_full_percent']:+.1f}%)",
            ]
            for v in lat["variants"]
        ]
        sections.append(("Latency attribution", intro, ["variant", "median ms", "p25–p75 ms", "saved vs full"], rows))
    if "device_latency" in r:
        device = r["device_latency"]
        intro = (
            f"Batch 1, {device['resolution']}×{device['resolution']}, {device['method']}; each variant exported "
            "to the runtime (int8 calibrated on the evaluation images)."
        )
        rows = [
            [
                f"{table['runtime']} {table['precision']}",
                v["variant"],
                f"{v['median_ms']:.3f}",
                f"{v['saving_vs_full_ms']:+.3f} ({v['saving_vs_full_percent']:+.1f}%)",
            ]
            for table in device["tables"]
            for v in table["variants"]
        ]
        sections.append(
            (
                "Latency attribution in the device runtimes",
                intro,
                ["runtime", "variant", "median ms", "saved vs full"],
                rows,
            )
        )
    if "hardswish_int8_error" in r:
        h = r["hardswish_int8_error"]
        intro = (
            f"LiteRT int8 against PyTorch fp32 on {h['images']} images not used to calibrate "
            f"({h['calibration_images']}); the exported file keeps hard-swish in float (one XNNPACK partition)."
        )
        rows = [
            [name.replace("_", " "), _pct(h[name]["disagreement"]), f"{h[name]['mean_abs_logit_error']:.4f}"]
            for name in ("hardswish_float", "hardswish_int8")
        ]
        rows.append(
            [
                "hard-swish's share of the int8 error",
                _share(h["share_of_disagreement"]),
                _share(h["share_of_logit_error"]),
            ]
        )
        sections.append(
            (
                "Hard-swish and the int8 error",
                intro,
                ["LiteRT int8 file", "top-1 disagreement (%)", "mean absolute logit error"],
                rows,
            )
        )
    return sections


def _accuracy_section(r: dict) -> Section:
    """Accuracy per corruption × severity, with CE against the baseline, BN-adapted and int8 means."""
    severities = [str(s) for s in r["severities"]]
    header = ["corruption", *[f"s{s}" for s in severities], "mean"]
    if "corruption_error" in r:
        header.append(ce_column(severities))
    if "bn_adapt" in r:
        header.append("BN-adapted mean")
    if "int8" in r:
        header.append("int8 mean")
    rows = []
    for name, by_severity in r["corruption_accuracy"].items():
        label = name if name in CORRUPTIONS else f"{name} (held out)"
        row = [label, *[_pct(by_severity[s]) for s in severities], _pct(r["per_corruption_mean"][name])]
        if "corruption_error" in r:
            ce = r["corruption_error"].get(name)
            row.append(_num(None if ce is None else 100 * ce))
        if "bn_adapt" in r:
            row.append(_pct(r["bn_adapt"]["per_corruption_mean"][name]))
        if "int8" in r:
            row.append(_pct(r["int8"]["per_corruption_mean"][name]))
        rows.append(row)
    return (
        "Accuracy (%) per corruption and severity",
        "Corrupted at the model's input resolution, before normalization.",
        header,
        rows,
    )


def _summary_rows(r: dict) -> list[list[str]]:
    """The headline figures, each labelled with the corruptions and severities it averages."""
    names, severities = r["corruptions"], r["severities"]
    common, held_out = scope_text(names, severities), scope_text(names, severities, held_out=True)
    rows = [
        ["images evaluated", f"{r['images']} of {r['images_available']}"],
        ["input size / severity table", f"{r['input_size']}×{r['input_size']} / {r['severity_table']}"],
        ["clean accuracy (%)", _pct(r["clean_accuracy"])],
        [f"mean corrupted accuracy over {common} (%)", _pct(r.get("mean_corrupted_accuracy"))],
        ["corrupted / clean", _num(r.get("clean_vs_corrupt_ratio"), 3)],
    ]
    any_held_out = r.get("held_out_mean_corrupted_accuracy") is not None
    if any_held_out:  # reported apart, as in the paper
        rows.insert(4, [f"mean corrupted accuracy over {held_out} (%)", _pct(r["held_out_mean_corrupted_accuracy"])])
    if "baseline" in r:
        rows += [
            [f"{ce_label(names, severities)} vs baseline", _num(r.get("mean_ce"))],
            [f"{ce_label(names, severities, relative=True)} vs baseline", _num(r.get("relative_mean_ce"))],
        ]
        if any_held_out:
            rows.append([f"{ce_label(names, severities, held_out=True)} vs baseline", _num(r.get("held_out_mean_ce"))])
        rows += [
            [
                f"baseline clean / mean corrupted accuracy over {common} (%)",
                f"{_pct(r['baseline']['clean_accuracy'])} / {_pct(r['baseline']['mean_corrupted_accuracy'])}",
            ],
        ]
    if "bn_adapt" in r:
        bn = r["bn_adapt"]
        rows += [
            [
                f"BN-adapted ({bn['samples']} images) mean corrupted accuracy over {common} (%)",
                _pct(bn.get("mean_corrupted_accuracy")),
            ],
            ["BN-adapted clean accuracy (%)", _pct(bn.get("clean_accuracy"))],
        ]
        if "mean_ce" in bn:
            rows.append([f"BN-adapted {ce_label(names, severities)} vs unadapted baseline", _num(bn.get("mean_ce"))])
    if "int8" in r:
        rows += [
            ["int8 clean accuracy (%)", _pct(r["int8"]["clean_accuracy"])],
            [f"int8 mean corrupted accuracy over {common} (%)", _pct(r["int8"]["mean_corrupted_accuracy"])],
        ]
    return rows


def _share(value: float | None) -> str:
    return "—" if value is None else f"{round(100 * value)}%"


def _markdown(title: str, r: dict, sections: list[Section], plots: dict[str, Path]) -> str:
    lines = [f"# {title}", ""]
    for heading, intro, header, rows in sections:
        lines += [f"## {heading}", "", intro, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines.append("")
    for name, path in plots.items():
        lines += [f"![{name}]({path.name})", ""]
    lines.append(f"Measured in {r['elapsed_s']:.0f} s.")
    return "\n".join(lines) + "\n"


def _html(title: str, r: dict, sections: list[Section], plots: dict[str, Path]) -> str:
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
        "table{border-collapse:collapse;margin-bottom:1em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "td:first-child,th:first-child{text-align:left}img{max-width:100%}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for heading, intro, header, rows in sections:
        parts += [f"<h2>{html.escape(heading)}</h2>", f"<p>{html.escape(intro)}</p>", "<table><tr>"]
        parts += [f"<th>{html.escape(h)}</th>" for h in header]
        parts.append("</tr>")
        for row in rows:
            parts.append("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>")
        parts.append("</table>")
    for name, path in plots.items():
        encoded = base64.b64encode(path.read_bytes()).decode()
        parts.append(
            f"<h3>{html.escape(name)}</h3><img alt='{html.escape(name)}' src='data:image/png;base64,{encoded}'>"
        )
    parts.append(f"<p>Measured in {r['elapsed_s']:.0f} s.</p></body></html>")
    return "\n".join(parts) + "\n"


def _plots(r: dict, out: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots: dict[str, Path] = {}
    names = list(r["corruption_accuracy"])
    severities = [str(s) for s in r["severities"]]
    grid = np.array([[r["corruption_accuracy"][n][s] for s in severities] for n in names]) * 100
    # Room for the corruption names and the colour bar whatever the number of severities: with one
    # severity the old 2.1-inch figure clipped both (and matplotlib warned "Tight layout not applied").
    fig, ax = plt.subplots(figsize=(max(5.0, 3.2 + 0.9 * len(severities)), 0.35 * len(names) + 1.2))
    image = ax.imshow(grid, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(severities)), severities)
    ax.set_xlabel("severity")
    ax.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(severities)):
            ax.text(
                j,
                i,
                f"{grid[i, j]:.0f}",
                ha="center",
                va="center",
                color="white" if grid[i, j] < 60 else "black",
                fontsize=8,
            )
    fig.colorbar(image, ax=ax, label="accuracy (%)")
    ax.set_title(f"Accuracy under corruption (clean {100 * r['clean_accuracy']:.1f}%)")
    plots["accuracy_heatmap"] = _save(fig, out / "accuracy_heatmap.png")

    series = {"model": r["per_corruption_mean"]}
    if "baseline" in r:
        series["baseline"] = r["baseline"]["per_corruption_mean"]
    if "bn_adapt" in r:
        series["BN-adapted"] = r["bn_adapt"]["per_corruption_mean"]
    if "int8" in r:
        series["int8"] = r["int8"]["per_corruption_mean"]
    if len(series) > 1:
        fig, ax = plt.subplots(figsize=(max(6, 0.55 * len(names)), 4))
        width = 0.8 / len(series)
        for k, (label, values) in enumerate(series.items()):
            ax.bar(np.arange(len(names)) + k * width, [100 * values[n] for n in names], width, label=label)
        ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=60, ha="right")
        ax.set_ylabel("mean accuracy over severities (%)")
        ax.legend()
        plots["per_corruption"] = _save(fig, out / "per_corruption.png")

    if "shifts" in r:
        shifts = r["shifts"]
        fig, axes = plt.subplots(1, 4, figsize=(14, 3.2), sharey=True)
        for ax, (key, x_key, label) in zip(
            axes,
            (
                ("resolution", "factor", "scale factor"),
                ("exposure", "stops", "EV"),
                ("gamma", "gamma", "gamma"),
                ("jpeg", "quality", "JPEG quality"),
            ),
            strict=True,
        ):
            xs = [s[x_key] for s in shifts[key]]
            ax.plot(xs, [100 * s["accuracy"] for s in shifts[key]], "o-")
            ax.axhline(100 * r["clean_accuracy"], color="gray", ls="--", lw=1)
            ax.set_xlabel(label)
        axes[0].set_ylabel("accuracy (%)")
        plots["shifts"] = _save(fig, out / "shifts.png")

    if "adversarial" in r:
        adv = r["adversarial"]
        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        eps = [0, *[int(e) for e in adv["fgsm"]]]
        for attack in ("fgsm", "pgd"):
            ax.plot(
                eps, [100 * adv["clean_accuracy"], *[100 * a for a in adv[attack].values()]], "o-", label=attack.upper()
            )
        ax.set_xlabel("ε (/255)")
        ax.set_ylabel("accuracy (%)")
        ax.legend()
        plots["adversarial"] = _save(fig, out / "adversarial.png")

    if "latency" in r:
        rows = r["latency"]["variants"]
        fig, ax = plt.subplots(figsize=(5.5, 3.2))
        medians = [v["median_ms"] for v in rows]
        errors = [[v["median_ms"] - v["p25_ms"] for v in rows], [v["p75_ms"] - v["median_ms"] for v in rows]]
        ax.bar([v["variant"] for v in rows], medians, yerr=errors, capsize=4)
        ax.set_ylabel("batch-1 latency, median (ms)")
        ax.tick_params(axis="x", rotation=20)
        plots["latency"] = _save(fig, out / "latency.png")
    return plots


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Tight layout not applied": the figure is still complete
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
