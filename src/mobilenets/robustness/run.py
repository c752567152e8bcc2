"""``robustness``'s work as one library call: a run directory in, the report written, the result returned."""

from __future__ import annotations

import inspect
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mobilenets.core.errors import MobilenetsError
from mobilenets.core.run_directory import RunDirectory
from mobilenets.models.preprocessing import Preprocessing

if TYPE_CHECKING:  # torch is imported when a model is loaded, not with the module
    from torch import nn

# BatchNorm re-estimation images when --bn-adapt is given without --bn-samples (Schneider et al.: 32 suffice).
BN_SAMPLES = 32

# What an option not given means: a full run by default (CE/mCE are defined over all five severities), and with
# `--quick` a first look in about a tenth of the time (one mid severity, the 15 common corruptions, 200 images,
# 50 attacked, no latency attribution). `--quick` only fills in the options not given: a value the user gave wins.
DEFAULTS = {
    "severities": "1-5",
    "corruptions": None,  # all: the 15 common + 4 held out
    "max_images": 1000,
    "adversarial_images": 200,
    "latency": True,
    "device_latency": True,
}
QUICK = {
    "severities": "3",
    "corruptions": ["common"],
    "max_images": 200,
    "adversarial_images": 50,
    "latency": False,
    "device_latency": False,
}


@dataclass
class RobustnessRun:
    result: dict
    paths: dict[str, Path]

    def summary_line(self) -> str:
        from mobilenets.robustness.labels import ce_short, scope_text

        r = self.result
        parts = [f"{r['images']} images", f"clean {100 * r['clean_accuracy']:.1f}%"]
        if r.get("mean_corrupted_accuracy") is not None:
            scope = scope_text(r["corruptions"], r["severities"])
            parts.append(f"mean corrupted {100 * r['mean_corrupted_accuracy']:.1f}% ({scope})")
        if r.get("mean_ce") is not None:
            name, scope = ce_short(r["corruptions"], r["severities"])
            parts.append(f"{name} {r['mean_ce']:.1f} vs baseline ({scope})")
        if "bn_adapt" in r and r["bn_adapt"].get("mean_corrupted_accuracy") is not None:
            parts.append(f"BN-adapted {100 * r['bn_adapt']['mean_corrupted_accuracy']:.1f}%")
        return "robustness: " + ", ".join(parts)


def robustness_report(
    *,
    run_dir: Path,
    data: Path | None = None,
    severities: str | int | list[int] | None = None,
    corruptions: str | list[str] | None = None,
    baseline: Path | None = None,
    bn_adapt: bool = False,
    bn_samples: int | None = None,
    max_images: int | None = None,
    adversarial_images: int | None = None,
    shifts: bool = True,
    adversarial: bool = True,
    latency: bool | None = None,
    device_latency: bool | None = None,
    seed: int = 0,
    out: Path | None = None,
    quick: bool = False,
    log: Callable[[str], None] | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    **unknown: Any,
) -> RobustnessRun:
    """Corruptions, shifts, attacks and SE/hard-swish latency of ``run_dir``'s model, written to ``out``
    (default ``RUN_DIR/robustness``) as JSON, Markdown and HTML; the headline figures go into metrics.json.

    An option left at ``None`` takes its value from ``DEFAULTS``, or from ``QUICK`` with ``quick=True``; a value
    given is used as given, with or without ``quick``, and checked the same way."""
    from mobilenets.core.files import check_writable
    from mobilenets.data.folders import scan_folder
    from mobilenets.deployment.loading import summarize_skipped
    from mobilenets.robustness.corruptions import parse_corruptions, parse_severities
    from mobilenets.robustness.evaluate import (
        RobustnessOptions,
        find_int8_model,
        load_eval_images,
        run_robustness,
        validation_samples,
    )
    from mobilenets.robustness.report import write_report

    if unknown:
        raise MobilenetsError(f"unknown robustness option(s) {', '.join(sorted(unknown))}; known: {', '.join(OPTIONS)}")
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    check_flags(bn_adapt=bn_adapt, shifts=shifts, adversarial=adversarial, quick=quick)
    check_applies(
        bn_adapt=bn_adapt, bn_samples=bn_samples, adversarial=adversarial, adversarial_images=adversarial_images
    )
    given_adversarial_images = adversarial_images
    bn_samples = BN_SAMPLES if bn_samples is None else bn_samples
    unset = QUICK if quick else DEFAULTS
    severities = unset["severities"] if severities is None else severities
    corruptions = unset["corruptions"] if corruptions is None else corruptions
    max_images = unset["max_images"] if max_images is None else max_images
    adversarial_images = unset["adversarial_images"] if adversarial_images is None else adversarial_images
    latency = unset["latency"] if latency is None else latency
    device_latency = unset["device_latency"] if device_latency is None else device_latency
    parsed_severities = parse_severities(severities)
    parsed_corruptions = parse_corruptions(corruptions)
    check_flags(latency=latency, device_latency=device_latency)
    check_count("--max-images", max_images, 0, "0 (all images) or more")
    check_count("--bn-samples", bn_samples, 1, "1 or more")
    check_count("--adversarial-images", adversarial_images, 1, "1 or more (--no-adversarial skips the attacks)")
    check_count("--seed", seed, 0, "0 or more")
    run_dir = as_path(run_dir, "RUN_DIR")
    data = as_path(data, "--data") if data is not None else None
    baseline = as_path(baseline, "--baseline") if baseline is not None else None
    model, classes, preprocessing = load_run_model(run_dir, "RUN_DIR")
    # metrics.json gets the headline figures at the end: a damaged one is refused now, before minutes of
    # measuring (split.json is read below, also before the work).
    RunDirectory(run_dir).check_readable(RunDirectory.METRICS)
    out = as_path(out, "--out") if out is not None else run_dir / "robustness"
    # Before minutes of measuring, not after; not created yet (the report creates it), so that a refusal
    # below (a damaged split.json, --data without the model's classes) leaves no empty folder behind.
    check_writable(out, create=False)
    check_writable(run_dir, "RUN_DIR")  # metrics.json gets the headline figures
    baseline_model = None
    if baseline is not None:
        baseline_model, base_classes, base_preprocessing = load_run_model(baseline, "--baseline")
        if base_classes != classes:
            raise MobilenetsError(
                f"{baseline}: its classes differ from {run_dir}'s; a baseline must solve the same task"
            )
        if base_preprocessing != preprocessing:
            raise MobilenetsError(
                f"{baseline}: its preprocessing ({base_preprocessing.input_size} px) differs from {run_dir}'s "
                f"({preprocessing.input_size} px); CE compares models on the same corrupted pixels"
            )
    if data is not None:
        scan = scan_folder(data, classes=classes)
        if not scan.samples:
            raise MobilenetsError(
                f"{data}: no images of the model's classes ({', '.join(classes[:5])}{', …' if len(classes) > 5 else ''})"
            )
        for line in summarize_skipped([(str(s.path), s.reason) for s in scan.skipped]):
            log(f"warning: {line}")
        samples, source = [(s.path, s.label) for s in scan.samples], str(data)
    else:
        samples, source = validation_samples(run_dir, classes)
    images = load_eval_images(samples, preprocessing, max_images or None, seed)
    for line in summarize_skipped([(str(item), "") for item in images.skipped]):
        log(f"warning: {line}")
    note_capped(
        log,
        images=len(images.labels),
        bn_samples=bn_samples if bn_adapt else None,
        adversarial_images=given_adversarial_images if adversarial else None,
    )
    options = RobustnessOptions(
        corruptions=parsed_corruptions,
        severities=parsed_severities,
        seed=seed,
        bn_adapt=bn_adapt,
        bn_samples=bn_samples,
        shifts=shifts,
        adversarial=adversarial,
        adversarial_images=adversarial_images,
        latency=latency,
        device_latency=device_latency,
    )
    result = run_robustness(
        model,
        preprocessing,
        images,
        options,
        baseline=baseline_model,
        int8_model=find_int8_model(run_dir),
        log=log,
        progress=progress,
    )
    result = {
        "run": str(run_dir),
        "data": source,
        "baseline_run": str(baseline) if baseline else None,
        "quick": quick,
        **result,
    }
    paths = write_report(result, out, title=f"Robustness of {run_dir.name} ({model.architecture.name})")
    record_robustness(run_dir, result, report=paths["html"])
    return RobustnessRun(result, paths)


# The options ``robustness_report`` takes from a caller (``mobilenets.robustness(run, **options)``).
OPTIONS = tuple(
    sorted(
        name for name in inspect.signature(robustness_report).parameters if name not in {"run_dir", "log", "unknown"}
    )
)


def check_flags(**flags: object) -> None:
    """On/off options from Python: only True or False (quick="no" is truthy: it would not be what was meant)."""
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise MobilenetsError(f"{name} must be True or False, got {value!r}")


def check_applies(*, bn_adapt: bool, bn_samples: int | None, adversarial: bool, adversarial_images: int | None) -> None:
    """A value given for a part that does not run would be silently ignored: refuse it in one line instead."""
    if bn_samples is not None and not bn_adapt:
        raise MobilenetsError("--bn-samples applies to --bn-adapt; add --bn-adapt or drop --bn-samples")
    if adversarial_images is not None and not adversarial:
        raise MobilenetsError(
            "--adversarial-images applies to the attacks, which --no-adversarial skips; "
            "drop --no-adversarial or drop --adversarial-images"
        )


def note_capped(
    log: Callable[[str], None], *, images: int, bn_samples: int | None, adversarial_images: int | None
) -> None:
    """Say when a count the user gave is more than the images there are (all of them are used instead)."""
    for option, value in (("--bn-samples", bn_samples), ("--adversarial-images", adversarial_images)):
        if value is not None and value > images:
            log(f"note: {option} {value}: only {images} images are evaluated; using all {images}")


def check_count(option: str, value: object, minimum: int, wanted: str) -> None:
    """A whole-number option given by the user: at least ``minimum``, else one clear line."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise MobilenetsError(f"{option} {value!r}: give a whole number, {wanted}")


def as_path(value: object, option: str) -> Path:
    """A folder given by the user (from Python it may be anything): a non-empty str or path-like."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value.strip():
        raise MobilenetsError(f"{option} {value!r}: give a folder path (a string or pathlib.Path)")
    return Path(value)


def load_run_model(run_dir: Path, option: str) -> tuple[nn.Module, list[str], Preprocessing]:
    """The model of a run directory given as ``option`` (RUN_DIR or --baseline), with its classes and
    preprocessing; robustness needs the directory, not a file in it (its classes, its validation split)."""
    from mobilenets.models.weights import load_model, run_directory_hint

    named = run_dir if option == "RUN_DIR" else f"{option} {run_dir}"
    if not run_dir.exists():
        raise MobilenetsError(f"{named}: does not exist; pass a training run directory (mobilenets train --out DIR)")
    if not run_dir.is_dir():
        hint = run_directory_hint(run_dir, otherwise="pass a training run directory (mobilenets train --out DIR)")
        raise MobilenetsError(f"{named}: a file, not a run directory; {hint}")
    if not (run_dir / "model.safetensors").exists():
        raise MobilenetsError(
            f"{named}: no model.safetensors; pass a training run directory (mobilenets train --out DIR)"
        )
    model = load_model(run_dir)
    metadata = getattr(model, "weights_metadata", None) or {}
    classes = metadata.get("classes")
    if not isinstance(classes, list):
        raise MobilenetsError(f"{run_dir}/model.json: no class list; robustness needs a run trained on named classes")
    preprocessing = Preprocessing.from_dict(metadata.get("preprocessing") or {})
    return model.eval(), classes, preprocessing


def record_robustness(run_dir: Path, r: dict, report: Path | None = None) -> None:
    """Add the headline numbers to the run's metrics.json as its ``robustness`` group (other keys are kept),
    with what they were measured on (corruptions, severities, baseline) and where the full report is."""
    robustness = {
        key: r.get(key)
        for key in (
            "images",
            "clean_accuracy",
            "mean_corrupted_accuracy",
            "held_out_mean_corrupted_accuracy",
            "clean_vs_corrupt_ratio",
            "mce",
            "relative_mce",
            "mean_ce",
            "relative_mean_ce",
            "baseline_run",
            "corruptions",
            "severities",
            "quick",
        )
    }
    if "bn_adapt" in r:
        bn = r["bn_adapt"]
        robustness["bn_adapt_mean_corrupted_accuracy"] = bn.get("mean_corrupted_accuracy")
        robustness["bn_adapt_samples"] = bn.get("samples")
        robustness["bn_adapt_mce"] = bn.get("mce")
        robustness["bn_adapt_mean_ce"] = bn.get("mean_ce")
    robustness["report"] = None if report is None else report_path(run_dir, report)
    RunDirectory(run_dir).merge_metrics({"robustness": robustness})


def report_path(run_dir: Path, report: Path) -> str:
    """Where the robustness report is, as report.html links it: relative to the run directory when inside it
    (the link survives moving the run), else absolute (``--out`` elsewhere)."""
    report = Path(report).resolve()
    try:
        return report.relative_to(Path(run_dir).resolve()).as_posix()
    except ValueError:
        return str(report)


class ProgressLine:
    """A one-line progress bar with an ETA on a terminal's stderr; silent when stderr is a file or pipe."""

    def __init__(self, label: str, stream=None) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.started = time.perf_counter()
        self.active = hasattr(self.stream, "isatty") and self.stream.isatty()

    def __call__(self, done: int, total: int, what: str = "") -> None:
        if not self.active or total <= 0:
            return
        elapsed = time.perf_counter() - self.started
        eta = f", ~{elapsed / done * (total - done):.0f} s left" if done else ""
        filled = round(24 * done / total)
        self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (24 - filled)}] {done}/{total}{eta} {what[:30]:<30}")
        self.stream.flush()

    def close(self) -> None:
        if self.active:
            self.stream.write("\r" + " " * 100 + "\r")
            self.stream.flush()
