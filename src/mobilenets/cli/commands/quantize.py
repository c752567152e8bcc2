"""``mobilenets quantize``: int8 ONNX (PTQ, mixed precision or QAT), evaluated next to fp32."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mobilenets.cli.commands._deploy_args import add_model_arguments, load_model_from_args, run_split
from mobilenets.core.errors import MobilenetsError


def add_parser(subparsers) -> None:
    from mobilenets.deployment.quantization import CALIBRATION_METHODS, DEFAULT_CALIBRATION_METHOD, DEFAULT_THRESHOLD

    parser = subparsers.add_parser(
        "quantize",
        help="int8 ONNX model (PTQ / mixed precision / QAT), evaluated against fp32",
        description="Quantize to an int8 ONNX Runtime model (QDQ, per-channel int8 weights, calibrated uint8 "
        "activations) and evaluate it next to fp32: top-1 of both, agreement, size, latency. When int8 loses more "
        "than --threshold points it says so, names the layers with the largest quantization error, and (method "
        "auto) keeps them in float or runs QAT.",
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--method",
        choices=["ptq", "mixed", "qat", "auto"],
        default="ptq",
        help="ptq: post-training; mixed: PTQ, then worst layers in float if needed; qat: quantization-aware "
        "fine-tune; auto: ptq → mixed → qat until within --threshold (default ptq)",
    )
    parser.add_argument("--calibration", type=int, default=256, metavar="N", help="calibration images (default 256)")
    parser.add_argument("--calibration-method", choices=list(CALIBRATION_METHODS), default=DEFAULT_CALIBRATION_METHOD)
    parser.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help=f"accuracy points int8 may lose before the warning and the fixes (default {DEFAULT_THRESHOLD:g})",
    )
    parser.add_argument("--qat-epochs", type=int, default=2, help="QAT fine-tuning epochs (default 2)")
    parser.add_argument("--max-val", type=int, default=2000, help="evaluation images at most (default 2000)")
    parser.add_argument("--out", type=Path, help="int8 file (default RUN_DIR/model_int8.onnx or ./NAME_int8.onnx)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from mobilenets.deployment.quantization import quantize_run

    if args.calibration < 1:
        raise MobilenetsError("--calibration must be at least 1")
    if args.threshold < 0:
        raise MobilenetsError("--threshold must be ≥ 0 (accuracy points)")
    if args.out is not None and args.out.suffix != ".onnx":
        raise MobilenetsError(f"--out {args.out}: name the file *.onnx")
    report = (lambda line: print(line, file=sys.stderr)) if args.json else print
    if args.data is None and run_split(args) is not None:
        result = quantize_run(
            args.run_dir,
            method=args.method,
            threshold=args.threshold,
            calibration_images=args.calibration,
            calibration_method=args.calibration_method,
            qat_epochs=args.qat_epochs,
            max_val_images=args.max_val,
            out=args.out,
            report=report,
        )
    else:
        result = quantize_with_folder(args, report)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print(f"wrote {result['int8_path']} ({result['int8_method']}, {result['int8_size_bytes'] / 1e6:.2f} MB)")
    return 0


def quantize_with_folder(args: argparse.Namespace, report) -> dict:
    """Weights + --data DIR: calibrate on a sample of the folder, evaluate on the rest."""
    from mobilenets.deployment.quantization import folder_images, load_images, quantize_model, sample
    from mobilenets.models.preprocessing import Preprocessing

    if args.data is None:
        raise MobilenetsError("no images: pass --data DIR (a class folder, or a flat folder for calibration)")
    model = load_model_from_args(args)
    preprocessing = Preprocessing.from_dict(model.weights_metadata.get("preprocessing", {}))
    paths, labels, classes = folder_images(args.data)
    if classes is not None and classes != model.weights_metadata.get("classes") and len(classes) != model.num_classes:
        raise MobilenetsError(
            f"{args.data}: has {len(classes)} class folders but the model has {model.num_classes} classes; "
            "pass the model's own validation folder, or a flat folder (agreement with fp32 is measured)"
        )
    items = list(zip(paths, labels if labels is not None else [None] * len(paths), strict=True))
    calibration_items = sample(items, args.calibration)
    held_out = [item for item in items if item not in calibration_items]
    evaluation_items = sample(held_out if len(held_out) >= 20 else items, args.max_val, seed=1)
    labelled = labels is not None
    calibration = load_images([p for p, _ in calibration_items], None, preprocessing, str(args.data))
    evaluation = load_images(
        [p for p, _ in evaluation_items], [y for _, y in evaluation_items] if labelled else None, preprocessing, "eval"
    )
    train = None
    if args.method in ("qat", "auto") and labelled:
        train = load_images([p for p, _ in calibration_items], [y for _, y in calibration_items], preprocessing, "qat")
    name = Path(str(args.weights)).stem if args.weights else model.architecture.name
    out = args.out or Path(f"{name}_int8.onnx")
    result = quantize_model(
        model,
        out,
        calibration,
        evaluation,
        method=args.method,
        calibration_method=args.calibration_method,
        threshold=args.threshold,
        train=train,
        qat_epochs=args.qat_epochs,
        report=report,
    )
    return {**result.figures(), "attempts": result.attempts}
