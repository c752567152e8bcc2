"""``mobilenets robustness RUN_DIR``: corruptions, shifts, adversarial noise and latency, in one report."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from mobilenets.core.errors import MobilenetsError
from mobilenets.models.preprocessing import Preprocessing
from mobilenets.robustness.corruptions import parse_corruptions, parse_severities


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "robustness",
        help="measure accuracy under ImageNet-C corruptions, shifts and adversarial noise; SE/hard-swish latency",
        description=(
            "Writes RUN_DIR/robustness/robustness.{json,md,html} (or --out) with plots. Images are corrupted "
            "at the model's input resolution; the CIFAR-10-C severity table is used up to 64 px, ImageNet-C above."
        ),
    )
    parser.add_argument(
        "run_dir", type=Path, metavar="RUN_DIR", help="a training run directory (model.safetensors + model.json)"
    )
    parser.add_argument(
        "--data", type=Path, help="folder with one subfolder per class (default: the run's validation split)"
    )
    parser.add_argument("--severities", default="1-5", help="e.g. 1-5 (default), 3, 1,3,5")
    parser.add_argument(
        "--corruptions",
        nargs="+",
        default=None,
        help="names, or groups: all (default: 15 common + 4 held out), common, held_out, noise, blur, weather, digital",
    )
    parser.add_argument("--baseline", type=Path, help="run directory of the model CE/mCE are normalized by")
    parser.add_argument("--bn-adapt", action="store_true", help="also score with test-time BatchNorm re-estimation")
    parser.add_argument("--bn-samples", type=int, default=32, help="images per BN re-estimation (default 32)")
    parser.add_argument(
        "--max-images", type=int, default=1000, help="evaluate a seeded subset of this many (default 1000; 0 = all)"
    )
    parser.add_argument("--adversarial-images", type=int, default=200, help="images attacked (default 200)")
    parser.add_argument("--no-shifts", action="store_true", help="skip the resolution/exposure/gamma/JPEG sweeps")
    parser.add_argument("--no-adversarial", action="store_true", help="skip FGSM/PGD")
    parser.add_argument("--no-latency", action="store_true", help="skip the SE/hard-swish latency attribution")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="report folder (default RUN_DIR/robustness)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from mobilenets.data.folders import scan_folder
    from mobilenets.robustness.evaluate import (
        RobustnessOptions,
        find_int8_model,
        load_eval_images,
        run_robustness,
        validation_samples,
    )
    from mobilenets.robustness.report import write_report

    severities = parse_severities(args.severities)
    corruptions = parse_corruptions(args.corruptions)
    if args.max_images < 0 or args.bn_samples < 1 or args.adversarial_images < 1:
        raise MobilenetsError("--max-images must be ≥ 0, --bn-samples and --adversarial-images ≥ 1")
    model, classes, preprocessing = _load_run(args.run_dir)
    baseline = None
    if args.baseline is not None:
        baseline, base_classes, base_preprocessing = _load_run(args.baseline)
        if base_classes != classes:
            raise MobilenetsError(
                f"{args.baseline}: its classes differ from {args.run_dir}'s; a baseline must solve the same task"
            )
        if base_preprocessing != preprocessing:
            raise MobilenetsError(
                f"{args.baseline}: its preprocessing ({base_preprocessing.input_size} px) differs from {args.run_dir}'s "
                f"({preprocessing.input_size} px); CE compares models on the same corrupted pixels"
            )
    if args.data is not None:
        scan = scan_folder(args.data, classes=classes)
        for skipped in scan.skipped:
            print(f"warning: skipped {skipped}", file=sys.stderr)
        samples, source = [(s.path, s.label) for s in scan.samples], str(args.data)
    else:
        samples, source = validation_samples(args.run_dir, classes)
    data = load_eval_images(samples, preprocessing, args.max_images or None, args.seed)
    for skipped in data.skipped:
        print(f"warning: skipped {skipped}", file=sys.stderr)
    int8 = find_int8_model(args.run_dir)
    options = RobustnessOptions(
        corruptions=corruptions,
        severities=severities,
        seed=args.seed,
        bn_adapt=args.bn_adapt,
        bn_samples=args.bn_samples,
        shifts=not args.no_shifts,
        adversarial=not args.no_adversarial,
        adversarial_images=args.adversarial_images,
        latency=not args.no_latency,
    )
    result = run_robustness(model, preprocessing, data, options, baseline=baseline, int8_model=int8)
    result = {
        "run": str(args.run_dir),
        "data": source,
        "baseline_run": str(args.baseline) if args.baseline else None,
        **result,
    }
    out = args.out or args.run_dir / "robustness"
    paths = write_report(result, out, title=f"Robustness of {args.run_dir.name} ({model.architecture.name})")
    _merge_metrics(args.run_dir, result)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(_summary_line(result))
        print(f"report: {paths['html']} (also .md, .json)")
    return 0


def _load_run(run_dir: Path):
    from mobilenets.models.weights import load_model

    if not (run_dir / "model.safetensors").exists():
        raise MobilenetsError(
            f"{run_dir}: no model.safetensors; pass a training run directory (mobilenets train --out DIR)"
        )
    model = load_model(run_dir)
    metadata = getattr(model, "weights_metadata", None) or {}
    classes = metadata.get("classes")
    if not isinstance(classes, list):
        raise MobilenetsError(f"{run_dir}/model.json: no class list; robustness needs a run trained on named classes")
    preprocessing = Preprocessing.from_dict(metadata.get("preprocessing") or {})
    return model.eval(), classes, preprocessing


def _summary_line(r: dict) -> str:
    parts = [f"{r['images']} images", f"clean {100 * r['clean_accuracy']:.1f}%"]
    if r.get("mean_corrupted_accuracy") is not None:
        parts.append(f"mean corrupted {100 * r['mean_corrupted_accuracy']:.1f}%")
    if r.get("mce") is not None:
        parts.append(f"mCE {r['mce']:.1f}")
    if "bn_adapt" in r and r["bn_adapt"].get("mean_corrupted_accuracy") is not None:
        parts.append(f"BN-adapted {100 * r['bn_adapt']['mean_corrupted_accuracy']:.1f}%")
    return "robustness: " + ", ".join(parts)


def _merge_metrics(run_dir: Path, r: dict) -> None:
    """Add the headline numbers to the run's metrics.json (other tools' keys are kept)."""
    path = run_dir / "metrics.json"
    try:
        metrics = json.loads(path.read_text()) if path.exists() else {}
    except json.JSONDecodeError:
        return  # never overwrite a file we cannot read
    metrics["robustness"] = {
        key: r.get(key)
        for key in (
            "images",
            "clean_accuracy",
            "mean_corrupted_accuracy",
            "clean_vs_corrupt_ratio",
            "mce",
            "relative_mce",
            "baseline_run",
        )
    }
    if "bn_adapt" in r:
        metrics["robustness"]["bn_adapt_mean_corrupted_accuracy"] = r["bn_adapt"].get("mean_corrupted_accuracy")
    with tempfile.NamedTemporaryFile("w", dir=run_dir, delete=False, suffix=".tmp") as file:
        file.write(json.dumps(metrics, indent=2) + "\n")
    os.replace(file.name, path)
