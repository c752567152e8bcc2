"""Command line: ``mobilenets COMMAND ...``. One module per command in ``mobilenets/commands/``.

Every command module defines ``add_parser(subparsers)`` and ``run(args) -> int``. Bad input becomes
one line on stderr naming the problem and the fix, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

COMMANDS = (
    "models",
    "profile",
    "predict",
    "datasets",
    "train",
    "evaluate",
    "export",
    "quantize",
    "bench",
    "robustness",
)


def build_parser() -> argparse.ArgumentParser:
    from mobilenets import __version__

    parser = argparse.ArgumentParser(
        prog="mobilenets",
        description="Small, fast, trustworthy image classifiers: MobileNet v1/V2/V3 from a folder of images to an edge device.",
    )
    parser.add_argument("--version", action="version", version=f"mobilenets {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"mobilenets.cli.commands.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"mobilenets.cli.commands.{name}":
                raise
            continue
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    from mobilenets.core.errors import MobilenetsError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except MobilenetsError as error:
        print(f"mobilenets {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mobilenets {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if os.environ.get("MOBILENETS_DEBUG"):
            raise
        print(
            f"mobilenets {args.command}: internal error: {type(error).__name__}: {error} "
            "(set MOBILENETS_DEBUG=1 for the traceback and please report it)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
