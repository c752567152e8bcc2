"""``mobilenets export``: ONNX and device files with their labels and preprocessing inside, each checked in
its own runtime against PyTorch."""

from __future__ import annotations

import argparse
from pathlib import Path

from mobilenets.cli.commands._deploy_args import add_model_arguments, source_from_args


def add_parser(subparsers) -> None:
    from mobilenets.deployment.formats import CHECK_IMAGES, EXPORT_FORMATS

    parser = subparsers.add_parser(
        "export",
        help="export to ONNX and device formats, each checked in its own runtime",
        description="Export a run or weights to ONNX (opset 18, dynamic batch), LiteRT .tflite (XNNPACK, one delegate "
        "partition), ExecuTorch .pte, TensorFlow Lite Micro (int8, exact tensor arena) or Core ML .mlpackage; labels "
        "and preprocessing travel inside each file. Every file is run in its runtime and compared with PyTorch on the "
        "run's validation images (max abs diff, top-1 agreement, accuracy, batch-1 latency); a run directory's "
        "metrics.json gets the device files' results as its `deployment` table. Device formats need `pip install 'mobilenets[edge]'`.",
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--format",
        choices=EXPORT_FORMATS,
        default="onnx",
        help="onnx (default), tflite, executorch, tflite-micro (int8 only), coreml, or all",
    )
    parser.add_argument(
        "--int8",
        action="store_true",
        help="also write an int8 PTQ beside the fp32 file (NAME_int8.onnx); a run's own model_int8.onnx, chosen "
        "by `mobilenets quantize`, is never replaced (pass --out elsewhere)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="onnx: the fp32 file (default RUN_DIR/model.onnx or ./NAME.onnx; with --int8 the int8 one is "
        "NAME_int8.onnx); device formats: a folder (default the run directory)",
    )
    parser.add_argument("--ram-kb", type=float, help="tflite-micro: the device's RAM for the tensor arena, in KB")
    parser.add_argument("--flash-kb", type=float, help="tflite-micro: the device's flash for the model file, in KB")
    parser.add_argument(
        "--check-images",
        type=int,
        default=None,
        help=f"validation images for the PyTorch check (default {CHECK_IMAGES}, or all there are; not Core ML)",
    )
    parser.add_argument(
        "--calibration",
        type=int,
        default=None,
        help="calibration images for --int8 and tflite-micro (default 256; not Core ML, whose int8 is weights only)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from mobilenets.core.files import check_writable
    from mobilenets.deployment.export import check_export_options, export_model

    check_export_options(args.format, args.int8, args.check_images, args.calibration, args.ram_kb, args.flash_kb)
    source = source_from_args(args)
    if source.run_dir is not None:  # its metrics.json and report.html record the export, wherever --out is
        from mobilenets.reporting.run_report import check_report

        check_writable(source.run_dir, "RUN_DIR", create=False)
        check_report(source.run_dir)
    export_model(
        source=source,
        format=args.format,
        out=args.out,
        int8=args.int8,
        data=args.data,
        check_images=args.check_images,
        calibration_images=args.calibration,
        ram_kb=args.ram_kb,
        flash_kb=args.flash_kb,
    )
    if source.run_dir is not None:
        from mobilenets.api import Run

        Run(source.run_dir).report()  # report.html shows the new files
    return 0
