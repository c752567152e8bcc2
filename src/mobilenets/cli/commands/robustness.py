"""``mobilenets robustness RUN_DIR``: corruptions, shifts, adversarial noise and latency, in one report."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "robustness",
        help="measure accuracy under ImageNet-C corruptions, shifts and adversarial noise; SE/hard-swish latency",
        description=(
            "Writes RUN_DIR/robustness/robustness.{json,md,html} (or --out) with plots, adds the headline figures to "
            "RUN_DIR/metrics.json and refreshes RUN_DIR/report.html. Images are corrupted at the model's input "
            "resolution; the CIFAR-10-C severity table is used up to 64 px, ImageNet-C above."
        ),
    )
    parser.add_argument(
        "run_dir", type=Path, metavar="RUN_DIR", help="a training run directory (model.safetensors + model.json)"
    )
    parser.add_argument(
        "--data", type=Path, help="folder with one subfolder per class (default: the run's validation split)"
    )
    parser.add_argument("--severities", help="e.g. 1-5, 3, 1,3,5 (default 1-5; 3 with --quick)")
    parser.add_argument(
        "--corruptions",
        nargs="+",
        default=None,
        help="names, or groups: all (the default: 15 common + 4 held out; common with --quick), common, held_out, "
        "noise, blur, weather, digital",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="run directory of the model CE is normalized by (mCE: over all five severities; from fewer, the "
        "mean CE is reported under that name)",
    )
    parser.add_argument("--bn-adapt", action="store_true", help="also score with test-time BatchNorm re-estimation")
    parser.add_argument(
        "--bn-samples", type=int, default=None, help="images per BN re-estimation (default 32; with --bn-adapt only)"
    )
    parser.add_argument(
        "--max-images",
        type=int,
        help="evaluate a seeded subset of this many (default 1000, 200 with --quick; 0 = all)",
    )
    parser.add_argument(
        "--adversarial-images",
        type=int,
        help="images attacked (default 200, 50 with --quick; not with --no-adversarial)",
    )
    parser.add_argument("--no-shifts", action="store_true", help="skip the resolution/exposure/gamma/JPEG sweeps")
    parser.add_argument("--no-adversarial", action="store_true", help="skip FGSM/PGD")
    parser.add_argument("--no-latency", action="store_true", help="skip the SE/hard-swish latency attribution")
    parser.add_argument(
        "--no-device-latency",
        action="store_true",
        help="time SE/hard-swish in PyTorch only, not also in LiteRT and ExecuTorch (fp32, int8; a few minutes)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a first look in about a tenth of the time: severity 3 only, the 15 common corruptions, 200 images, "
        "50 attacked, no latency attribution, for each of these options not given (a value given is used as "
        "given; mCE needs all five severities)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the image subset and every random draw (default 0)"
    )
    parser.add_argument("--out", type=Path, help="report folder (default RUN_DIR/robustness)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from mobilenets.reporting.run_report import check_report
    from mobilenets.robustness.run import ProgressLine, robustness_report

    # report.html is refreshed after the measuring: what would make that refresh refuse (a damaged
    # config.json or metrics.json, a folder where it writes) is refused before the measuring instead.
    check_report(args.run_dir)
    progress = ProgressLine("corruptions")

    def log(message: str) -> None:
        progress.close()  # a log line replaces the bar; the next step redraws it
        print(message, file=sys.stderr, flush=True)

    try:
        outcome = robustness_report(
            run_dir=args.run_dir,
            data=args.data,
            severities=args.severities,
            corruptions=args.corruptions,
            baseline=args.baseline,
            bn_adapt=args.bn_adapt,
            bn_samples=args.bn_samples,
            max_images=args.max_images,
            adversarial_images=args.adversarial_images,
            shifts=not args.no_shifts,
            adversarial=not args.no_adversarial,
            latency=False if args.no_latency else None,  # None: the default, or --quick's
            device_latency=False if args.no_device_latency else None,
            seed=args.seed,
            out=args.out,
            quick=args.quick,
            log=log,
            progress=progress,
        )
    finally:
        progress.close()
    from mobilenets.api import Run

    Run(args.run_dir).report()  # report.html shows the figures just recorded in metrics.json
    if args.json:
        print(json.dumps(outcome.result, indent=2))
    else:
        print(outcome.summary_line())
        print(f"report: {outcome.paths['html']} (also .md, .json)")
    return 0
