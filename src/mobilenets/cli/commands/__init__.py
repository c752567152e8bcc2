"""One module per ``mobilenets`` sub-command: ``add_parser(subparsers)`` and ``run(args) -> int``."""
