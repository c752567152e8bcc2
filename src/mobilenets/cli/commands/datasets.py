"""``mobilenets datasets``: write datasets that ship as IDX files (Fashion-MNIST, MNIST) as class folders of PNGs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mobilenets.core.errors import check_number
from mobilenets.data.folders import (
    FASHION_MNIST_CLASSES,
    DatasetError,
    check_class_folders_out,
    fashion_mnist_files,
    plan_class_folders,
    write_planned_class_folders,
)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "datasets",
        help="write Fashion-MNIST (Debian's dataset-fashion-mnist) or any IDX pair as class folders of PNGs",
    )
    parser.add_argument("name", choices=["fashion-mnist", "idx"], help="fashion-mnist, or idx with --images/--labels")
    parser.add_argument("--out", type=Path, required=True, help="output folder (CLASS/NNNNN.png)")
    parser.add_argument("--split", choices=["train", "test"], help="fashion-mnist's split (default: train)")
    parser.add_argument("--limit-per-class", type=int, help="write at most N images per class")
    parser.add_argument("--images", type=Path, help="IDX images file (.gz or raw)")
    parser.add_argument("--labels", type=Path, help="IDX labels file (.gz or raw)")
    parser.add_argument("--classes", help="comma-separated class names (default: Fashion-MNIST's, or 0..N-1 for idx)")
    parser.set_defaults(run=run)


def _input_files(args: argparse.Namespace) -> tuple[Path, Path]:
    if args.name == "idx" and args.split is not None:
        raise DatasetError(
            f"--split {args.split} picks one of Fashion-MNIST's installed splits; with idx, --images and --labels "
            "name the files: drop --split"
        )
    if args.name == "fashion-mnist" and args.images is None and args.labels is None:
        return fashion_mnist_files(args.split or "train")
    missing = [option for option in ("--images", "--labels") if getattr(args, option[2:]) is None]
    if missing and args.name == "idx":
        raise DatasetError(
            f"idx: {' and '.join(missing)} missing; pass --images IMAGES_FILE --labels LABELS_FILE (IDX files, .gz or raw)"
        )
    if missing:
        given = "--labels" if missing == ["--images"] else "--images"
        raise DatasetError(
            f"fashion-mnist: {given} given without {missing[0]}; pass both --images FILE and --labels FILE, "
            "or neither to use the installed Fashion-MNIST"
        )
    return args.images, args.labels


def run(args: argparse.Namespace) -> int:
    """Check every argument and the input files before --out is created; refuse an --out whose class folders
    already hold images (the same command run again on its own completed output is a no-op)."""
    from mobilenets.core.files import check_writable

    check_number("--limit-per-class", args.limit_per_class, at_least=1, whole=True)
    images, labels = _input_files(args)
    check_writable(args.out, create=False)  # a read-only or blocked --out, found before reading any image
    if args.classes:
        classes, classes_from = args.classes.split(","), "--classes"
    elif args.name == "fashion-mnist":
        classes, classes_from = list(FASHION_MNIST_CLASSES), "Fashion-MNIST's class list"
    else:
        classes, classes_from = None, "--classes"
    plan = plan_class_folders(images, labels, classes, args.limit_per_class, classes_from)
    other_out = f"{args.out}-{args.split or 'train'}" if args.name == "fashion-mnist" else f"{args.out}-2"
    if classes is None and plan.names != [str(label) for label in range(len(plan.names))]:
        shown = ", ".join(plan.names[:12]) + (", …" if len(plan.names) > 12 else "")
        print(
            f"warning: the labels in {labels} are not 0..{len(plan.names) - 1} but {shown}: one class folder per "
            "label present, named by it; check the labels file, or pass --classes to name them",
            file=sys.stderr,
        )
    counts = plan.counts()
    if check_class_folders_out(plan, args.out, other_out):
        print(
            f"{args.out} already holds these {sum(counts.values()):,} images (the same files, pixel for pixel); nothing to do"
        )
        return 0
    check_writable(args.out)  # created only now, with every argument checked
    written = write_planned_class_folders(plan, args.out)
    folders = sum(1 for count in written.values() if count)
    print(f"wrote {sum(written.values()):,} images in {folders} class folders under {args.out}")
    for name, count in written.items():
        print(f"  {name:<16} {count:>6,}")
    return 0
