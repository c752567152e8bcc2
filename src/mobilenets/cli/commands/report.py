"""``mobilenets report RUN_DIR``: write (or refresh) a run's report.html from everything it holds."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "report",
        help="write (or refresh) a run's report.html from everything the run directory holds",
        description="Writes RUN_DIR/report.html from the run's metrics, per-class results, int8, deployment and "
        "robustness figures. quantize, export and robustness refresh it themselves; this is for any other time.",
    )
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run directory written by `mobilenets train`")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from mobilenets.api import load_run

    path = load_run(args.run_dir).report()
    print(path)
    return 0
