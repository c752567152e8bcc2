"""``mobilenets search``: the right-sized model for a device, measured on the user's data under a budget."""

from __future__ import annotations

import argparse
from pathlib import Path

from mobilenets.core.errors import MobilenetsError, check_number


def add_parser(subparsers) -> None:
    from mobilenets.search.candidates import FAMILIES
    from mobilenets.search.measure import TARGETS

    parser = subparsers.add_parser(
        "search",
        help="which model (family × width × resolution) to ship to a device under a latency/size budget",
        description="Measure candidates (V3-Small/Large, their minimal variants, V2, v1 × width × resolution) on "
        "the target runtime here, train the in-budget ones by successive halving within --time-budget, and "
        "recommend one: writes OUT/search.json, OUT/report.html (Pareto fronts) and the command that trains it.",
    )
    parser.add_argument("--data", type=Path, required=True, help="folder with one subfolder of images per class")
    parser.add_argument("--val", type=Path, help="separate validation folder (default: a split of --data)")
    parser.add_argument("--target", choices=TARGETS, default="onnx", help="runtime to measure latency in (default onnx)")
    parser.add_argument("--int8", action="store_true", help="deploy int8: size and latency of the int8 file")
    parser.add_argument("--max-latency-ms", type=float, help="batch-1 latency limit on this machine")
    parser.add_argument("--max-flash-kb", type=float, help="limit of the deployed file's size, KB (1024 bytes)")
    parser.add_argument("--max-ram-kb", type=float, help="limit of activation memory (tflite-micro: the arena), KB")
    parser.add_argument(
        "--time-budget",
        default="30m",
        help="wall time for the whole search, with a unit: 30m, 1h, 90s, 1h30m (default 30m)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("runs/search"),
        help="search folder: a new or empty one, or an earlier search's to resume it",
    )
    parser.add_argument("--models", help=f"comma-separated families (default: {', '.join(FAMILIES)})")
    parser.add_argument("--widths", help="comma-separated widths (default: the widths each family's paper reports)")
    parser.add_argument("--resolutions", help="comma-separated input sizes (default: from the images' size)")
    parser.add_argument("--max-candidates", type=int, default=12, help="candidates trained in the first rung (default 12)")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(run=run)


def settings_from(args: argparse.Namespace):
    """Every argument checked (one line each, before anything is written), as the search's settings."""
    from mobilenets.models.registry import list_models
    from mobilenets.search.candidates import FAMILIES, Budget, check_grid, parse_duration, parse_list, parse_names
    from mobilenets.search.runner import SearchSettings, check_data_folder, check_out_folder
    from mobilenets.training.options import check_seed

    for flag, value, example in (("--max-latency-ms", args.max_latency_ms, 10), ("--max-flash-kb", args.max_flash_kb, 1500),
                                 ("--max-ram-kb", args.max_ram_kb, 256)):  # fmt: skip
        check_number(flag, value, above=0, example=example)
    for flag, value in (("--max-flash-kb", args.max_flash_kb), ("--max-ram-kb", args.max_ram_kb)):
        if value is not None and value * 1024 < 1:
            raise MobilenetsError(
                f"{flag} {value:g}: less than one byte; give a size in KB (1024 bytes), e.g. {flag} 256"
            )
    check_number("--max-candidates", args.max_candidates, at_least=1, whole=True)
    check_seed(args.seed)  # train's bounds, before any candidate is measured (train would refuse it later)
    budget = Budget(
        max_latency_ms=args.max_latency_ms,
        max_flash_bytes=None if args.max_flash_kb is None else int(args.max_flash_kb * 1024),
        max_ram_bytes=None if args.max_ram_kb is None else int(args.max_ram_kb * 1024),
    )
    models = parse_names(args.models, "--models", list_models()) or list(FAMILIES)
    widths = parse_list(args.widths, float, "--widths")
    resolutions = parse_list(args.resolutions, int, "--resolutions")
    check_grid(models=models, widths=widths, resolutions=resolutions)
    time_budget_s = parse_duration(args.time_budget)
    check_data_folder(args.data, "--data")
    if args.val is not None:
        check_data_folder(args.val, "--val")
    check_out_folder(args.out)
    return SearchSettings(
        data=args.data,
        val=args.val,
        out=args.out,
        target=args.target,
        int8=args.int8,
        budget=budget,
        time_budget_s=time_budget_s,
        models=models,
        widths=widths,
        resolutions=resolutions,
        max_candidates=args.max_candidates,
        seed=args.seed,
    )


def run(args: argparse.Namespace) -> int:
    from mobilenets.search.runner import run_search

    result = run_search(settings_from(args))
    trained = [c for c in result.candidates if c.accuracy is not None]
    print(
        f"{len(trained)} candidates trained, {sum(1 for c in result.candidates if c.latency_ms is not None)} measured, "
        f"in {result.elapsed_s / 60:.1f} min"
    )
    for note in result.notes:
        print(f"note: {note}")
    best = result.recommended
    if best is None:
        print(f"no recommendation: no in-budget candidate finished training; see {args.out / 'report.html'}")
        return 1
    print(
        f"recommended: {best.model} width {best.width:g} at {best.resolution}px — {100 * best.accuracy:.1f}% validation "
        f"accuracy ({best.epochs} epochs), {best.latency_ms:.2f} ms batch 1, {best.flash_bytes / 1024:,.0f} KB"
    )
    print(f"train and export it:\n  {result.command}")
    print(f"wrote {args.out / 'search.json'} and {args.out / 'report.html'}")
    return 0
