"""``mobilenets predict``: top-K labels for image files and folders."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mobilenets.cli.commands._deploy_args import add_model_arguments, source_from_args
from mobilenets.deployment.engines import ENGINES


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict", help="classify images (files or folders) with a trained run, weights or an exported .onnx"
    )
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE_OR_FOLDER")
    add_model_arguments(parser, run_dir=False)
    for action in parser._actions:  # --weights is this command's one way to name the model
        if action.dest == "weights":
            action.required = True
            action.help = "run directory, weights file (ours, torchvision or timm), exported .onnx, or a published name"
    parser.add_argument("--top", type=int, default=5, help="how many labels per image (default 5)")
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        default="auto",
        help="onnxruntime (fastest fp32 on CPU; exported once and cached), int8 (mobilenets' int8 engine, for a "
        "run calibrated by `mobilenets quantize`), torch, or auto (default): ONNX Runtime "
        "when an exported copy of these weights exists or there are enough images to pay back the export",
    )
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from mobilenets.deployment.predict import predict_files

    result = predict_files(
        inputs=args.images,
        source=source_from_args(args),
        top_k=args.top,
        engine=args.engine,
        report=lambda line: print(line, file=sys.stderr),
    )
    for skipped in result.skipped:
        print(f"warning: skipped {skipped.path}: {skipped.reason}", file=sys.stderr)
    print(result.engine_line(), file=sys.stderr)
    if args.json:
        print(json.dumps([p.to_dict() for p in result.predictions], indent=2))
        return 0
    for prediction in result.predictions:
        print(prediction.image)
        for label, index, probability in prediction.top:
            print(f"  {probability:7.4f}  {label} ({index})")
    if result.skipped:
        print(f"{len(result.skipped)} file(s) skipped (listed above on stderr)", file=sys.stderr)
    return 0
