"""Command line: ``mobilenets COMMAND ...``. One module per command in ``mobilenets/cli/commands/``.

Every command module defines ``add_parser(subparsers)`` and ``run(args) -> int``. Bad input becomes
one line on stderr naming the problem and the fix, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from mobilenets.core.console import configure_logging

# name -> one-line help. Only the command being run is imported (its module may load torch), so that
# ``mobilenets --help`` and ``mobilenets models`` start instantly.
COMMANDS = {
    "models": "list architectures and published weights",
    "profile": "parameters, multiply-adds, sizes, breakdown by layer type",
    "predict": "classify images (files or folders) with a trained run, weights or an exported model",
    "datasets": "write Fashion-MNIST (Debian's dataset-fashion-mnist) or any IDX pair as class folders of PNGs",
    "train": "train or fine-tune on a folder of images (one subfolder per class)",
    "evaluate": "accuracy and per-class results of a trained run on a folder",
    "export": "export to ONNX and device formats, each checked in its own runtime",
    "quantize": "int8 model (PTQ / mixed precision / QAT), evaluated against fp32",
    "bench": "latency/throughput of a model in every runtime, interleaved",
    "robustness": "measure accuracy under ImageNet-C corruptions, shifts and adversarial noise; SE/hard-swish latency",
    "search": "find the right-sized model for a device budget (accuracy, latency, size on your data)",
    "report": "write (or refresh) a run's report.html from everything the run directory holds",
}


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    from mobilenets import __version__

    parser = argparse.ArgumentParser(
        prog="mobilenets",
        description="Small, fast, trustworthy image classifiers: MobileNet v1/V2/V3 from a folder of images to an edge device.",
    )
    parser.add_argument("--version", action="version", version=f"mobilenets {__version__}")
    parser.add_argument("-q", "--quiet", dest="log_quiet", action="store_true", help="only warnings and errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="also debugging messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = next((a for a in (argv if argv is not None else sys.argv[1:]) if not a.startswith("-")), None)
    for name, help_text in COMMANDS.items():
        module = _command_module(name) if name == chosen else None
        if module is not None:
            module.add_parser(subparsers)
        else:
            subparsers.add_parser(name, help=help_text, add_help=False)
    return parser


def _command_module(name: str):
    try:
        return importlib.import_module(f"mobilenets.cli.commands.{name}")
    except ModuleNotFoundError as error:
        if error.name != f"mobilenets.cli.commands.{name}":
            raise
        return None


def main(argv: list[str] | None = None) -> int:
    from mobilenets.core.errors import MobilenetsError

    parser = build_parser(argv)
    args = parser.parse_args(argv)
    configure_logging(quiet=args.log_quiet, verbose=args.verbose)
    try:
        check_no_empty_values(sys.argv[1:] if argv is None else argv)
        return int(args.run(args) or 0)
    except BrokenPipeError:
        return _stdout_closed()
    except MobilenetsError as error:
        print(f"mobilenets {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mobilenets {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if caused_by_ctrl_c(error):
            print(f"mobilenets {args.command}: interrupted", file=sys.stderr)
            return 130
        if os.environ.get("MOBILENETS_DEBUG"):
            raise
        print(
            f"mobilenets {args.command}: internal error: {type(error).__name__}: {error} "
            "(set MOBILENETS_DEBUG=1 for the traceback and please report it)",
            file=sys.stderr,
        )
        return 1


def caused_by_ctrl_c(error: BaseException) -> bool:
    """Whether ``error`` wraps a Ctrl-C: torch.export turns one raised inside it into its own TorchExportError."""
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False


def check_no_empty_values(argv: list[str]) -> None:
    """An empty value (``--out ""``, an unset shell variable) would become the current folder as a path,
    or nothing as a list: never what was meant, so it is refused rather than read."""
    from mobilenets.core.errors import MobilenetsError

    def hint(option: str) -> str:
        return f" (for the current folder: {option} .)" if option in FOLDER_OPTIONS else ""

    for index, token in enumerate(argv):
        option, equals, value = token.partition("=")
        if token.startswith("--") and equals and not value.strip():
            raise MobilenetsError(f'{option}="": an empty value; give one{hint(option)}')
        if not token.strip():
            before = argv[index - 1] if index and argv[index - 1].startswith("-") else None
            if before is not None and "=" not in before:
                raise MobilenetsError(f'{before} "": an empty value; give one{hint(before)}')
            raise MobilenetsError('an empty argument (""); remove it or give a value (for the current folder: .)')


# Options whose value is a folder, where "." is what an empty value would have become.
FOLDER_OPTIONS = ("--out", "--data", "--val", "--cache-dir", "--resume")


def _stdout_closed() -> int:
    """``mobilenets … | head``: the reader left; the work is done (or saved), so exit quietly."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # Python's own flush at exit would fail again
    return 0


if __name__ == "__main__":
    sys.exit(main())
