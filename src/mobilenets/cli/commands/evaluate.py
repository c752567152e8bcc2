"""``mobilenets evaluate RUN_DIR --data DIR``: accuracy, per-class precision/recall and confusion matrix."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mobilenets.core.errors import MobilenetsError
from mobilenets.data.augment import normalize_batch
from mobilenets.data.folders import decode_samples, scan_folder
from mobilenets.deployment.engines import ENGINES, load_engine
from mobilenets.models.preprocessing import Preprocessing
from mobilenets.models.weights import load_model
from mobilenets.training.evaluation import evaluate


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("evaluate", help="accuracy and per-class results of a trained run on a folder")
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="run directory (or weights file)")
    parser.add_argument("--data", type=Path, required=True, help="folder with one subfolder per class")
    parser.add_argument("--json", action="store_true", help="print the full result as JSON")
    parser.add_argument(
        "--bn-adapt",
        action="store_true",
        help="re-estimate BatchNorm statistics on these images first (test-time adaptation)",
    )
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        default="auto",
        help="onnxruntime (fastest fp32 on CPU), int8 (mobilenets' int8 engine, for a run calibrated by "
        "`mobilenets quantize`), torch, or auto (default): ONNX Runtime when the run has a model.onnx "
        "of these weights (or a cached export), or when there are enough images to pay back exporting one",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    model = load_model(args.run_dir)
    metadata = model.weights_metadata
    classes = metadata.get("classes")
    if not isinstance(classes, list):
        raise MobilenetsError(
            f"{args.run_dir}: the weights do not list their class names, so folders cannot be matched to outputs; "
            "evaluate a run directory written by `mobilenets train`"
        )
    preprocessing = Preprocessing.from_dict(metadata.get("preprocessing", {}))
    scan = scan_folder(args.data, classes=classes)
    for skipped in scan.skipped:
        print(f"warning: skipped {skipped}", file=sys.stderr)
    data = decode_samples(scan.samples, preprocessing.input_size, preprocessing=preprocessing)
    for skipped in data.skipped:
        print(f"warning: skipped {skipped}", file=sys.stderr)
    if len(data) == 0:
        raise MobilenetsError(f"{args.data}: no readable images of the classes {', '.join(classes)}")
    if args.bn_adapt:
        model = adapt(model, data.images, preprocessing, args.batch_size)
    run_dir = args.run_dir if args.run_dir.is_dir() else None
    # BN-adapted weights are a one-off: exporting them to the cache would only fill it.
    choice = "torch" if args.bn_adapt and args.engine == "auto" else args.engine
    engine = load_engine(model, choice, planned_images=len(data), batch_size=args.batch_size, run_dir=run_dir)
    print(f"engine: {engine.name}" + (f" ({engine.path})" if engine.path else ""), file=sys.stderr)
    result = evaluate(engine, data.images, data.labels, classes, preprocessing.mean, preprocessing.std, args.batch_size)
    if args.json:
        print(
            json.dumps(
                {
                    "run": str(args.run_dir),
                    "data": str(args.data),
                    "bn_adapt": args.bn_adapt,
                    "engine": engine.name,
                    **result.to_dict(),
                },
                indent=2,
            )
        )
    else:
        print(result.table())
    return 0


def adapt(model, images, preprocessing: Preprocessing, batch_size: int):
    try:
        from mobilenets.robustness.evaluate import adapt_batchnorm
    except ImportError:
        raise MobilenetsError(
            "--bn-adapt needs mobilenets.robustness.evaluate, which this version does not have yet; run without --bn-adapt"
        ) from None
    batches = [
        normalize_batch(images[i : i + batch_size], preprocessing.mean, preprocessing.std)
        for i in range(0, len(images), batch_size)
    ]
    return adapt_batchnorm(model, batches)
