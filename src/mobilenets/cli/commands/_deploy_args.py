"""Arguments shared by ``export``, ``quantize`` and ``bench``: which model, and which images."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mobilenets.core.errors import MobilenetsError


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    from mobilenets.models.registry import list_models
    from mobilenets.models.weights import list_weights

    parser.add_argument(
        "run_dir", nargs="?", type=Path, metavar="RUN_DIR", help="a training run directory (or use --weights)"
    )
    parser.add_argument(
        "--model", choices=list_models(), metavar="NAME", help="architecture, when --weights does not say"
    )
    parser.add_argument(
        "--weights",
        help=f"weights file (ours, torchvision or timm) or a published name: {', '.join(list_weights())}",
    )
    parser.add_argument(
        "--data",
        type=Path,
        metavar="DIR",
        help="images: a class folder (accuracy) or a flat folder (agreement with fp32); default: the run's split",
    )


def load_model_from_args(args: argparse.Namespace):
    """The model named by RUN_DIR or --model/--weights, with its metadata."""
    from mobilenets.models.weights import load_model

    if args.run_dir is not None and args.weights is not None:
        raise MobilenetsError("pass either RUN_DIR or --weights, not both")
    if args.run_dir is not None:
        weights = Path(args.run_dir)
        if not weights.exists():
            raise MobilenetsError(f"{weights}: not found; pass a `mobilenets train` run directory or --weights FILE")
        if weights.is_dir():
            weights = weights / "model.safetensors"
            if not weights.exists():
                raise MobilenetsError(
                    f"{args.run_dir}: no model.safetensors; is it a `mobilenets train` run directory?"
                )
        return load_model(weights, name=args.model)
    if args.weights is None:
        raise MobilenetsError("name a model: a RUN_DIR, or --weights FILE_OR_PUBLISHED_NAME [--model NAME]")
    return load_model(args.weights, name=args.model)


def run_split(args: argparse.Namespace) -> dict | None:
    if args.run_dir is None or not Path(args.run_dir).is_dir():
        return None
    path = Path(args.run_dir) / "split.json"
    return json.loads(path.read_text()) if path.exists() else None


def image_items(args: argparse.Namespace, part: str) -> tuple[list[str], list[int] | None]:
    """(paths, labels) from --data, else from the run's ``split.json`` part (``train`` or ``val``)."""
    from mobilenets.deployment.quantization import folder_images

    if args.data is not None:
        paths, labels, _ = folder_images(args.data)
        return [str(p) for p in paths], labels
    split = run_split(args)
    if split is None:
        raise MobilenetsError("no images: pass --data DIR (a class folder, or a flat folder of images)")
    items = split[part] or split["train"]
    return [p for p, _ in items], [y for _, y in items]
