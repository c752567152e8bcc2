"""``mobilenets quantize``: int8 ONNX (PTQ, mixed precision or QAT), evaluated next to fp32."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mobilenets.cli.commands._deploy_args import add_model_arguments, source_from_args
from mobilenets.core.errors import MobilenetsError, check_number
from mobilenets.deployment.loading import run_split


def add_parser(subparsers) -> None:
    from mobilenets.deployment.quantization import CALIBRATION_METHODS, DEFAULT_CALIBRATION_METHOD, DEFAULT_THRESHOLD

    parser = subparsers.add_parser(
        "quantize",
        help="int8 ONNX model (auto: PTQ, then mixed precision, then QAT), evaluated against fp32",
        description="Quantize to an int8 ONNX Runtime model (QDQ, per-channel int8 weights, calibrated uint8 "
        "activations) and evaluate it next to fp32 on images not used for calibration: top-1 of both, agreement, "
        "size, latency. By default (--method auto) each attempt is reported as it finishes and the next is tried "
        "only while int8 loses more than --threshold points: min-max, percentile, then the stem and first block in "
        "float with GPTQ weights, then QAT. --method ptq is the one-attempt fast path. A run directory's metrics.json "
        "and report.html get the figures.",
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--method",
        choices=["auto", "ptq", "mixed", "qat"],
        default="auto",
        help="auto (default): PTQ min-max, then percentile calibration, then mixed precision (stem and first "
        "block in float, GPTQ weights), then QAT, stopping at the first within --threshold and keeping the best; "
        "ptq: one attempt (min-max: seconds), with the diagnosis if it falls short; mixed: auto without QAT; "
        "qat: quantization-aware fine-tune only",
    )
    parser.add_argument(
        "--calibration",
        type=int,
        default=256,
        metavar="N",
        help="calibration images (default 256; fewer, said in one line, when percentile calibration of N "
        "would not fit in available memory)",
    )
    parser.add_argument(
        "--calibration-method",
        choices=list(CALIBRATION_METHODS),
        default=DEFAULT_CALIBRATION_METHOD,
        help=f"activation ranges of the first attempt (default {DEFAULT_CALIBRATION_METHOD}; auto and mixed then "
        "try percentile)",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help=f"accuracy points int8 may lose before the warning and the fixes (default {DEFAULT_THRESHOLD:g})",
    )
    parser.add_argument(
        "--qat-epochs", type=int, default=None, help="QAT fine-tuning epochs (default 2; --method auto or qat only)"
    )
    parser.add_argument("--max-val", type=int, default=2000, help="evaluation images at most (default 2000)")
    parser.add_argument("--out", type=Path, help="int8 file (default RUN_DIR/model_int8.onnx or ./NAME_int8.onnx)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from mobilenets.deployment.quantization import int8_out_path, quantize_folder, quantize_run

    check_number("--calibration", args.calibration, at_least=1, whole=True)
    check_number("--threshold", args.threshold, at_least=0, example=1)
    if args.qat_epochs is not None and args.method not in ("auto", "qat"):
        raise MobilenetsError(
            f"--qat-epochs {args.qat_epochs}: QAT runs only with --method auto or qat; drop --qat-epochs for "
            f"--method {args.method}"
        )
    args.qat_epochs = 2 if args.qat_epochs is None else args.qat_epochs
    check_number("--qat-epochs", args.qat_epochs, at_least=1, whole=True)
    check_number("--max-val", args.max_val, at_least=1, whole=True)
    if args.out is not None:
        int8_out_path(args.out)  # the library's own check of --out, said before the model is read
    report = (lambda line: print(line, file=sys.stderr)) if args.json else print
    source = source_from_args(args)
    common = {
        "method": args.method,
        "threshold": args.threshold,
        "calibration_images": args.calibration,
        "calibration_method": args.calibration_method,
        "qat_epochs": args.qat_epochs,
        "out": args.out,
        "report": report,
    }
    if source.run_dir is not None and (args.model is not None or args.width is not None or args.classes is not None):
        raise MobilenetsError(
            "--model, --width and --classes are for --weights; the run directory "
            f"{source.run_dir} carries its own architecture, width and classes"
        )
    if args.data is None and run_split(source.run_dir) is not None:
        from mobilenets.reporting.run_report import check_report

        check_report(source.run_dir)  # the report is refreshed after the work: a damaged run file is said first
        result = quantize_run(source.run_dir, max_val_images=args.max_val, **common)
        from mobilenets.api import Run

        Run(source.run_dir).report()  # report.html shows the int8 figures just merged into metrics.json
    elif args.data is None:
        raise MobilenetsError("no images: pass --data DIR (a class folder, or a flat folder for calibration)")
    else:
        result = quantize_folder(source=source, data=args.data, max_val_images=args.max_val, **common)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print(f"wrote {result['int8_path']} ({result['int8_method']}, {result['int8_size_bytes'] / 1e6:.2f} MB)")
    return 0
