"""``mobilenets predict``: top-K labels for image files."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mobilenets.core.errors import MobilenetsError
from mobilenets.deployment.engines import ENGINES
from mobilenets.deployment.predict import predict_images
from mobilenets.models.factory import create_model
from mobilenets.models.registry import list_models
from mobilenets.models.weights import list_weights


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("predict", help="classify images with a trained run or published weights")
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    parser.add_argument(
        "--model", choices=list_models(), metavar="NAME", help="architecture (read from the weights when they say)"
    )
    parser.add_argument(
        "--weights",
        required=True,
        help=f"run directory, weights file (ours, torchvision or timm), or a published name: {', '.join(list_weights())}",
    )
    parser.add_argument("--width", type=float, default=None)
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
    if args.top < 1:
        raise MobilenetsError("--top must be at least 1")
    weights = Path(args.weights)
    run_dir = None
    if weights.is_dir() and (weights / "model.safetensors").exists():
        run_dir, weights = weights, weights / "model.safetensors"
    options = {"width": args.width} if args.width else {}
    model = (
        create_model(args.model, weights=str(weights), **options)
        if args.model
        else _from_weights(str(weights), options)
    )
    predictions = predict_images(model, args.images, args.top, engine=args.engine, run_dir=run_dir)
    if args.json:
        print(json.dumps([p.to_dict() for p in predictions], indent=2))
        return 0
    for prediction in predictions:
        print(prediction.image)
        for label, index, probability in prediction.top:
            print(f"  {probability:7.4f}  {label} ({index})")
    return 0


def _from_weights(weights: str, options: dict):
    from mobilenets.models.weights import load_model

    return load_model(weights, **options)
