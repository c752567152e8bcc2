"""``mobilenets datasets``: write datasets that ship as IDX files (Fashion-MNIST, MNIST) as class folders of PNGs."""

from __future__ import annotations

import argparse
from pathlib import Path

from mobilenets.data.folders import FASHION_MNIST_CLASSES, DatasetError, fashion_mnist_files, write_class_folders


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "datasets",
        help="write Fashion-MNIST (Debian's dataset-fashion-mnist) or any IDX pair as class folders of PNGs",
    )
    parser.add_argument("name", choices=["fashion-mnist", "idx"], help="fashion-mnist, or idx with --images/--labels")
    parser.add_argument("--out", type=Path, required=True, help="output folder (CLASS/NNNNN.png)")
    parser.add_argument("--split", choices=["train", "test"], default="train")
    parser.add_argument("--limit-per-class", type=int, help="write at most N images per class")
    parser.add_argument("--images", type=Path, help="IDX images file (.gz or raw)")
    parser.add_argument("--labels", type=Path, help="IDX labels file (.gz or raw)")
    parser.add_argument("--classes", help="comma-separated class names (default: Fashion-MNIST's, or 0..N-1 for idx)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.limit_per_class is not None and args.limit_per_class < 1:
        raise DatasetError("--limit-per-class must be at least 1")
    if args.name == "fashion-mnist" and args.images is None:
        images, labels = fashion_mnist_files(args.split)
        classes = list(FASHION_MNIST_CLASSES)
    else:
        if args.images is None or args.labels is None:
            raise DatasetError("idx needs --images FILE and --labels FILE")
        images, labels = args.images, args.labels
        classes = list(FASHION_MNIST_CLASSES) if args.name == "fashion-mnist" else None
    if args.classes:
        classes = [c.strip() for c in args.classes.split(",")]
    from mobilenets.core.files import check_writable

    check_writable(args.out)  # before decoding tens of thousands of images, not after
    written = write_class_folders(images, labels, args.out, classes, args.limit_per_class)
    print(f"wrote {sum(written.values()):,} images in {len(written)} class folders under {args.out}")
    for name, count in written.items():
        print(f"  {name:<16} {count:>6,}")
    return 0
