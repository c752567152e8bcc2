"""Arguments shared by ``predict``, ``export``, ``quantize`` and ``bench``: which model, and which images."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_model_arguments(parser: argparse.ArgumentParser, run_dir: bool = True) -> None:
    from mobilenets.models.published import list_weights
    from mobilenets.models.registry import list_models

    if run_dir:
        parser.add_argument(
            "run_dir", nargs="?", type=Path, metavar="RUN_DIR", help="a training run directory (or use --weights)"
        )
        parser.add_argument(
            "--data",
            type=Path,
            metavar="DIR",
            help="images: a class folder (accuracy) or a flat folder (agreement with fp32); default: the run's split",
        )
    parser.add_argument(
        "--model", choices=list_models(), metavar="NAME", help="architecture, when --weights does not say"
    )
    parser.add_argument(
        "--weights",
        help=f"weights file (ours, torchvision or timm) or a published name: {', '.join(list_weights())}",
    )
    parser.add_argument(
        "--width",
        type=float,
        default=None,
        help="width multiplier, only for a bare checkpoint whose width its tensors do not settle (normally read from them)",
    )
    parser.add_argument(
        "--classes",
        type=Path,
        metavar="FILE",
        help="class names, one per line in output order, for weights that do not carry them "
        "(default: their own; ImageNet's for a 1,000-output checkpoint; else class_0, class_1, …)",
    )


def source_from_args(args: argparse.Namespace):
    from mobilenets.deployment.loading import model_source

    return model_source(
        run_dir=getattr(args, "run_dir", None),
        weights=args.weights,
        model_name=args.model,
        width=args.width,
        classes_file=args.classes,
    )


def load_model_from_args(args: argparse.Namespace):
    """The model named by RUN_DIR or --model/--weights, with its metadata."""
    from mobilenets.deployment.loading import load_source_model

    return load_source_model(source_from_args(args), report=print)
