"""``mobilenets profile``: parameters, MACs, sizes and the v1 paper's Table 2 / Tables 6–7 views."""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.table import Table

from mobilenets.core.errors import MobilenetsError
from mobilenets.models.factory import create_model
from mobilenets.models.profiling import LAYER_TYPES, profile_grid, profile_model
from mobilenets.models.registry import list_models

TYPE_LABELS = {
    "conv_1x1": "Conv 1×1",
    "depthwise": "Conv DW 3×3 (k×k)",
    "full_conv": "Conv 3×3 (full)",
    "fully_connected": "Fully connected",
}


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("profile", help="parameters, multiply-adds, sizes, breakdown by layer type")
    parser.add_argument("model", choices=list_models(), metavar="MODEL", help=", ".join(list_models()))
    parser.add_argument("--width", type=float, default=1.0, help="width multiplier α (default 1.0)")
    parser.add_argument(
        "--resolution", type=int, default=224, help="input size, the resolution multiplier ρ×224 (default 224)"
    )
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument(
        "--convention", choices=("tf", "torchvision"), default=None, help="V3 width convention below 1.0 (default tf)"
    )
    parser.add_argument("--grid", action="store_true", help="α ∈ {1, .75, .5, .25} × resolution ∈ {224, 192, 160, 128}")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.resolution < 32:
        raise MobilenetsError(f"--resolution {args.resolution} is too small: MobileNets downsample 32×; use ≥ 32")
    options = {"convention": args.convention} if args.convention else {}
    if args.convention and not args.model.startswith("mobilenet_v3"):
        raise MobilenetsError("--convention applies to mobilenet_v3_* models only")
    if args.grid:
        profiles = profile_grid(args.model, num_classes=args.num_classes, **options)
        if args.json:
            print(json.dumps([p.to_dict() for p in profiles], indent=2))
            return 0
        table = Table(title=f"{args.model}: width × resolution (paper Tables 6/7)")
        for column in ("width α", "resolution", "MACs (M)", "params (M)"):
            table.add_column(column, justify="right")
        for p in profiles:
            table.add_row(f"{p.width:g}", str(p.resolution), f"{p.macs / 1e6:.0f}", f"{p.params / 1e6:.2f}")
        Console().print(table)
        return 0
    model = create_model(args.model, num_classes=args.num_classes, width=args.width, **options)
    profile = profile_model(model, args.resolution)
    if args.json:
        print(json.dumps(profile.to_dict(), indent=2))
        return 0
    console = Console()
    console.print(
        f"[bold]{args.model}[/] width {args.width:g} @ {args.resolution}px, {args.num_classes} classes\n"
        f"  parameters  {profile.params:,}\n  MACs        {profile.macs:,} ({profile.macs / 1e6:.1f} M)\n"
        f"  fp32 size   {profile.fp32_bytes / 1e6:.2f} MB\n  int8 size   ≈{profile.int8_bytes / 1e6:.2f} MB (weights int8, BN folded)"
    )
    table = Table(title="Resources per layer type (v1 paper Table 2)")
    for column in ("type", "MACs", "share of MACs", "weights", "share of weights"):
        table.add_column(column, justify="right")
    for kind in LAYER_TYPES:
        macs_share, weights_share = profile.share(kind)
        table.add_row(
            TYPE_LABELS[kind],
            f"{profile.macs_by_type[kind]:,}",
            f"{100 * macs_share:.2f}%",
            f"{profile.weights_by_type[kind]:,}",
            f"{100 * weights_share:.2f}%",
        )
    console.print(table)
    return 0
