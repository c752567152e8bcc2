"""``mobilenets export``: an ONNX model with its deployment metadata, checked against PyTorch."""

from __future__ import annotations

import argparse
from pathlib import Path

from mobilenets.cli.commands._deploy_args import add_model_arguments, source_from_args


def add_parser(subparsers) -> None:
    from mobilenets.deployment.export import FORMATS

    parser = subparsers.add_parser(
        "export",
        help="export to ONNX (fp32, or int8 with --int8), checked against PyTorch",
        description="Export a run or weights to ONNX (opset 18, dynamic batch, labels and preprocessing in the "
        "metadata). The fp32 file is checked against PyTorch on real images: max abs diff and top-1 agreement.",
    )
    add_model_arguments(parser)
    parser.add_argument("--format", choices=list(FORMATS), default="onnx")
    parser.add_argument(
        "--int8",
        action="store_true",
        help="also write an int8 PTQ beside the fp32 file (NAME_int8.onnx); a run's own model_int8.onnx, chosen "
        "by `mobilenets quantize`, is never replaced (pass --out elsewhere)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="the fp32 file (default RUN_DIR/model.onnx or ./NAME.onnx); with --int8 the int8 one is NAME_int8.onnx",
    )
    parser.add_argument("--check-images", type=int, default=32, help="images for the PyTorch check (default 32)")
    parser.add_argument("--calibration", type=int, default=256, help="calibration images for --int8 (default 256)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from mobilenets.deployment.export import export_model

    export_model(
        source=source_from_args(args),
        format=args.format,
        out=args.out,
        int8=args.int8,
        data=args.data,
        check_images=args.check_images,
        calibration_images=args.calibration,
    )
    return 0
