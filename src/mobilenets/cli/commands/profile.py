"""``mobilenets profile``: parameters, MACs, sizes and the v1 paper's Table 2 / Tables 6–7 views."""

from __future__ import annotations

import argparse
import json

from rich.table import Table

from mobilenets.core.console import stdout_console
from mobilenets.core.errors import MobilenetsError
from mobilenets.models.factory import create_model
from mobilenets.models.preprocessing import check_resolution
from mobilenets.models.profiling import LAYER_TYPES, MAX_NUM_CLASSES, check_width, profile_grid, profile_model
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
    parser.add_argument("--width", type=float, help="width multiplier α (default 1.0); with --grid use --widths")
    parser.add_argument(
        "--resolution",
        type=int,
        help="input size, the resolution multiplier ρ×224 (default 224); with --grid use --resolutions",
    )
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument(
        "--convention", choices=("tf", "torchvision"), default=None, help="V3 width convention below 1.0 (default tf)"
    )
    parser.add_argument("--grid", action="store_true", help="α ∈ {1, .75, .5, .25} × resolution ∈ {224, 192, 160, 128}")
    parser.add_argument("--widths", help="with --grid: comma-separated widths instead of the paper's")
    parser.add_argument("--resolutions", help="with --grid: comma-separated input sizes instead of the paper's")
    parser.add_argument(
        "--latency",
        choices=("onnx", "tflite", "executorch", "tflite-micro"),
        help="also measure batch-1 latency and file size in this runtime on this machine (random weights)",
    )
    parser.add_argument(
        "--int8", action="store_true", help="with --latency: measure the int8 file (tflite-micro always is)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(run=run)


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse, in one line, values that cannot be meant and options that the chosen mode would ignore."""
    if args.width is not None:
        check_width(args.width)
    if args.resolution is not None:
        check_resolution(args.resolution)
    if args.num_classes < 1:
        raise MobilenetsError(f"--num-classes {args.num_classes}: a classifier needs at least 1 output")
    if args.num_classes > MAX_NUM_CLASSES:
        raise MobilenetsError(
            f"--num-classes {args.num_classes:,}: give at most {MAX_NUM_CLASSES:,} (ImageNet-21k has 21,841 classes); "
            "the classifier of far more would not fit in memory"
        )
    if args.grid:
        for single, plural in (("--width", "--widths"), ("--resolution", "--resolutions")):
            if getattr(args, single[2:]) is not None:
                value = getattr(args, single[2:])
                raise MobilenetsError(
                    f"{single} {value:g} with --grid: the grid takes {plural} (e.g. {plural} {value:g}); "
                    f"without --grid, {single} profiles one model"
                )
    else:
        for plural in ("--widths", "--resolutions"):
            if getattr(args, plural[2:]) is not None:
                raise MobilenetsError(
                    f"{plural} applies with --grid: add --grid for a table over them, or use "
                    f"{plural[:-1]} for one model"
                )
    if args.int8 and not args.latency:
        raise MobilenetsError(
            "--int8 measures the int8 file's latency: add --latency onnx (or another runtime); "
            "the int8 size estimate is printed without it"
        )
    if args.convention and not args.model.startswith("mobilenet_v3"):
        raise MobilenetsError("--convention applies to mobilenet_v3_* models only")


def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    options = {"convention": args.convention} if args.convention else {}
    if args.grid:
        from mobilenets.search.candidates import parse_list

        grid = {}
        if args.widths is not None:
            grid["widths"] = tuple(parse_list(args.widths, float, "--widths"))
            for width in grid["widths"]:
                check_width(width, "--widths")
        if args.resolutions is not None:
            grid["resolutions"] = tuple(parse_list(args.resolutions, int, "--resolutions"))
            for resolution in grid["resolutions"]:
                check_resolution(resolution, "--resolutions")
        profiles = profile_grid(args.model, num_classes=args.num_classes, **grid, **options)
        latency = measured_latency(args, profiles, options)
        if args.json:
            print(json.dumps([{**p.to_dict(), **latency.get((p.width, p.resolution), {})} for p in profiles], indent=2))
            return 0
        table = Table(title=f"{args.model}: width × resolution (paper Tables 6/7)")
        columns = ["width α", "resolution", "MACs (M)", "params (M)"]
        columns += [f"{runtime_label(args)} ms (batch 1)", "file KB"] if latency else []
        for column in columns:
            table.add_column(column, justify="right")
        for p in profiles:
            row = [f"{p.width:g}", str(p.resolution), f"{p.macs / 1e6:.0f}", f"{p.params / 1e6:.2f}"]
            if latency:
                found = latency[(p.width, p.resolution)]
                row += [f"{found['latency_ms']:.2f}", f"{found['file_bytes'] / 1024:,.0f}"]
            table.add_row(*row)
        stdout_console().print(table)
        return 0
    args.width = 1.0 if args.width is None else args.width
    args.resolution = 224 if args.resolution is None else args.resolution
    model = create_model(args.model, num_classes=args.num_classes, width=args.width, **options)
    profile = profile_model(model, args.resolution)
    latency = measured_latency(args, [profile], options).get((profile.width, profile.resolution), {})
    if args.json:
        print(json.dumps({**profile.to_dict(), **latency}, indent=2))
        return 0
    console = stdout_console()
    console.print(
        f"[bold]{args.model}[/] width {args.width:g} @ {args.resolution}px, {args.num_classes} classes\n"
        f"  parameters  {profile.params:,}\n  MACs        {profile.macs:,} ({profile.macs / 1e6:.1f} M)\n"
        f"  fp32 size   {profile.fp32_bytes / 1e6:.2f} MB\n  int8 size   ≈{profile.int8_bytes / 1e6:.2f} MB (weights int8, BN folded)"
    )
    if latency:
        console.print(
            f"  latency     {latency['latency_ms']:.2f} ms batch 1 in {runtime_label(args)} "
            f"on this machine (file {latency['file_bytes'] / 1024:,.0f} KB)"
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


def measured_latency(args: argparse.Namespace, profiles, options: dict) -> dict[tuple[float, int], dict]:
    """(width, resolution) → {latency_ms, file_bytes} measured in ``--latency``'s runtime; {} without it."""
    if not args.latency:
        return {}
    from mobilenets.search.measure import measure_grid

    measured = measure_grid(
        model_name=args.model,
        widths=sorted({p.width for p in profiles}, reverse=True),
        resolutions=sorted({p.resolution for p in profiles}, reverse=True),
        num_classes=args.num_classes,
        target=args.latency,
        int8=args.int8,
        model_options=options,
    )
    int8 = measured_int8(args)
    return {
        key: {
            "latency_ms": round(m.latency_ms, 3),
            "file_bytes": m.flash_bytes,
            "latency_runtime": args.latency,
            "latency_int8": int8,
        }
        for key, m in measured.items()
    }


def measured_int8(args: argparse.Namespace) -> bool:
    """Whether the measured file is int8: with --int8, and always for tflite-micro (integer-only)."""
    return bool(args.int8 or args.latency == "tflite-micro")


def runtime_label(args: argparse.Namespace) -> str:
    return f"{args.latency}{' int8' if measured_int8(args) else ''}"
