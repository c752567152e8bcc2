"""``mobilenets export``: an ONNX model with its deployment metadata, checked against PyTorch."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from mobilenets.cli.commands._deploy_args import add_model_arguments, image_items, load_model_from_args
from mobilenets.core.errors import MobilenetsError


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export to ONNX (fp32, or int8 with --int8), checked against PyTorch",
        description="Export a run or weights to ONNX (opset 18, dynamic batch, labels and preprocessing in the "
        "metadata). The fp32 file is checked against PyTorch on real images: max abs diff and top-1 agreement.",
    )
    add_model_arguments(parser)
    parser.add_argument("--format", choices=["onnx"], default="onnx")
    parser.add_argument("--int8", action="store_true", help="also quantize (PTQ, see `mobilenets quantize`)")
    parser.add_argument("--out", type=Path, help="output file (default RUN_DIR/model.onnx or ./MODEL.onnx)")
    parser.add_argument("--check-images", type=int, default=32, help="images for the PyTorch check (default 32)")
    parser.add_argument("--calibration", type=int, default=256, help="calibration images for --int8 (default 256)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from mobilenets.deployment.onnx import OPSET, check_export, export_onnx
    from mobilenets.deployment.quantization import load_images, sample
    from mobilenets.models.preprocessing import Preprocessing

    model = load_model_from_args(args)
    out = args.out or default_path(args, model, ".onnx")
    if out.suffix != ".onnx":
        raise MobilenetsError(f"--out {out}: name the file *.onnx")
    fp32_path = out
    if args.int8:  # the fp32 file is written beside the int8 one: model_int8.onnx → model.onnx
        fp32_path = out.with_name(out.name.replace("_int8", ""))
        fp32_path = fp32_path if fp32_path != out else out.with_name(out.stem + "_fp32.onnx")
    export_onnx(model, fp32_path)
    print(f"wrote {fp32_path} (fp32, opset {OPSET}, {fp32_path.stat().st_size / 1e6:.2f} MB)")
    preprocessing = Preprocessing.from_dict(model.weights_metadata.get("preprocessing", {}))
    try:
        paths, _ = image_items(args, "val")
        check = load_images(sample(paths, args.check_images), None, preprocessing, "check").images
        source = f"{len(check)} real images"
    except MobilenetsError:
        check = torch.randn(8, 3, preprocessing.input_size, preprocessing.input_size).numpy()
        source = "8 random inputs (pass --data DIR to check on real images)"
    result = check_export(model, fp32_path, torch.from_numpy(check))
    print(
        f"check vs PyTorch on {source}: max abs diff {result.max_abs_diff:.2e}, "
        f"top-1 agreement {100 * result.top1_agreement:.1f}%"
    )
    if args.int8:
        from mobilenets.deployment.quantization import ImageSet, compare, quantize_ptq

        calibration_paths, _ = image_items(args, "train")
        calibration = load_images(sample(calibration_paths, args.calibration), None, preprocessing, "calibration")
        quantize_ptq(fp32_path, out, calibration.images)
        agreement = compare(fp32_path, out, ImageSet(check, None, source), latency_batch=None).agreement
        print(
            f"wrote {out} (int8 QDQ, {out.stat().st_size / 1e6:.2f} MB): top-1 agreement with fp32 "
            f"{100 * agreement:.1f}% on {source}; `mobilenets quantize` evaluates accuracy and falls back when it drops"
        )
    return 0


def default_path(args: argparse.Namespace, model, suffix: str) -> Path:
    if args.run_dir is not None and Path(args.run_dir).is_dir():
        return Path(args.run_dir) / f"model{'_int8' if getattr(args, 'int8', False) else ''}{suffix}"
    name = Path(str(args.weights)).stem if args.weights else model.architecture.name
    return Path(f"{name}{'_int8' if getattr(args, 'int8', False) else ''}{suffix}")
