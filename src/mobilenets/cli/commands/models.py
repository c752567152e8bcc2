"""``mobilenets models``: the architectures and the published weights."""

from __future__ import annotations

import argparse
import json

from mobilenets.models.published import PUBLISHED_WEIGHTS
from mobilenets.models.registry import list_models


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("models", help="list architectures and published weights")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    weights = {
        name: {"architecture": w.architecture, "width": w.width, "layout": w.layout, "top1": w.top1, "url": w.url}
        for name, w in PUBLISHED_WEIGHTS.items()
    }
    if args.json:
        print(json.dumps({"models": list_models(), "weights": weights}, indent=2))
        return 0
    print("Architectures:", ", ".join(list_models()))
    print("Published weights (--weights NAME; downloaded into the cache, sha256 checked):")
    for name, info in weights.items():
        print(f"  {name:38s} width {info['width']:<4g} {info['layout']:12s} top-1 {info['top1']}")
    return 0
