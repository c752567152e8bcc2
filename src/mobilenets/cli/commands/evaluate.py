"""``mobilenets evaluate RUN_DIR --data DIR``: accuracy, per-class precision/recall and confusion matrix."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mobilenets.deployment.engines import ENGINES


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
    from mobilenets.deployment.evaluate import evaluate_folder

    outcome = evaluate_folder(
        run_dir=args.run_dir, data=args.data, bn_adapt=args.bn_adapt, batch_size=args.batch_size, engine=args.engine
    )
    print(f"engine: {outcome.engine}" + (f" ({outcome.engine_path})" if outcome.engine_path else ""), file=sys.stderr)
    if args.json:
        print(
            json.dumps(
                {"run": str(args.run_dir), "data": str(args.data), "bn_adapt": args.bn_adapt, **outcome.to_dict()},
                indent=2,
            )
        )
    else:
        print(outcome.result.table())
    return 0
