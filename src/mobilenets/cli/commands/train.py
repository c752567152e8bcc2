"""``mobilenets train``: a folder of images in, a small accurate model (and its report) out."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from PIL import Image

from mobilenets.core.distributed import DistributedContext, explain_peer_failure, init_distributed, shutdown
from mobilenets.core.errors import MobilenetsError
from mobilenets.core.files import atomic_write_text
from mobilenets.data.augment import AUGMENT_LEVELS
from mobilenets.data.disk_cache import choose_cache, decode_to_disk
from mobilenets.data.folders import (
    DecodedImages,
    FolderScan,
    Sample,
    decode_samples,
    find_leakage,
    scan_folder,
    split_samples,
)
from mobilenets.models.factory import create_model
from mobilenets.models.preprocessing import Preprocessing
from mobilenets.models.registry import list_models
from mobilenets.models.weights import list_weights
from mobilenets.training.loop import CHECKPOINT, Interrupted, TrainConfig, Trainer, merge_metrics
from mobilenets.training.recipes import DEFAULTS, choose_recipe, dataset_size_warning, load_recipe_file, range_warnings

SPLIT = "split.json"
CONFIG = "config.json"


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train or fine-tune on a folder of images (one subfolder per class)",
        description="Train or fine-tune a MobileNet on DIR/CLASS/*.jpg; writes a run directory with the model, "
        "metrics, per-class results, curves and report.html. Ctrl-C saves; --resume continues exactly.",
    )
    parser.add_argument("--data", type=Path, help="folder with one subfolder of images per class")
    parser.add_argument("--val", type=Path, help="separate validation folder (default: a stratified split of --data)")
    parser.add_argument(
        "--model",
        choices=list_models(),
        metavar="NAME",
        help="architecture (default: the one --weights holds, else mobilenet_v3_small)",
    )
    parser.add_argument("--width", type=float, default=1.0, help="width multiplier (default 1.0)")
    parser.add_argument(
        "--resolution",
        default="auto",
        help="input size in pixels, or auto: the images' size rounded up to 32, at most 224",
    )
    parser.add_argument("--batch-size", type=int, help=f"default {DEFAULTS['batch_size']} (range 16–128)")
    parser.add_argument("--epochs", type=int, help=f"default {DEFAULTS['epochs']} (range 10–100)")
    parser.add_argument("--lr", type=float, help=f"peak learning rate, default {DEFAULTS['lr']:g} (range 5e-4–5e-3)")
    parser.add_argument(
        "--recipe",
        metavar="auto|FILE",
        help="auto: choose lr/epochs/batch/augmentation by dataset size; FILE: a YAML recipe "
        "(src/mobilenets/recipes/*.yaml) whose values replace the defaults, command-line options still win",
    )
    parser.add_argument(
        "--augment",
        choices=AUGMENT_LEVELS,
        help="augmentation strength (default medium); augmix: AugMix with its consistency loss (the paper's ops); "
        "augmix-all: AugMix plus colour/contrast/brightness/sharpness, which overlap the ImageNet-C corruptions",
    )
    parser.add_argument("--optimizer", choices=["adamw", "rmsprop"], default="adamw")
    parser.add_argument("--weight-decay", type=float, help="default 0.02 (AdamW) / 1e-5 (RMSprop)")
    parser.add_argument("--warmup-epochs", type=float, default=1.0)
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    parser.add_argument("--no-ema", dest="ema", action="store_false", help="evaluate/save raw weights, not their EMA")
    parser.add_argument("--ema-decay", type=float, help="default: averaging horizon of a tenth of the run")
    parser.add_argument("--dropout", type=float, help="classifier dropout (default: the architecture's, 0.2 for V2/V3)")
    parser.add_argument(
        "--weights", help=f"start from these weights (run dir, file, or published: {', '.join(list_weights())})"
    )
    parser.add_argument("--head-epochs", type=int, default=0, help="with --weights: train only the new head first")
    parser.add_argument("--early-stopping", type=int, metavar="EPOCHS", help="stop after EPOCHS without improvement")
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="run directory (default runs/<model>-<time>)")
    parser.add_argument("--quantize", action="store_true", help="also write an int8 ONNX model and its accuracy")
    parser.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue an interrupted run exactly")
    parser.add_argument("--checkpoint-minutes", type=float, default=5.0, help="also checkpoint mid-epoch this often")
    parser.add_argument("--checkpoint-steps", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: CUDA when present")
    parser.add_argument(
        "--cache",
        choices=["auto", "memory", "disk"],
        default="auto",
        help="where decoded images live: memory, or a memory-mapped file for datasets larger than memory "
        "(auto: disk above a quarter of the available memory)",
    )
    parser.add_argument("--cache-dir", type=Path, help="folder for --cache disk (default RUN_DIR/decoded)")
    parser.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        default="auto",
        help="mixed precision: auto = bf16 on CPUs with native bf16 and on GPUs that have it, else fp32; "
        "fp16 (CUDA) uses a gradient scaler",
    )
    parser.add_argument(
        "--freeze-bn", action="store_true", help="keep BatchNorm statistics fixed (fine-tuning with small batches)"
    )
    parser.add_argument(
        "--sync-bn", action="store_true", help="with torchrun on GPUs: BatchNorm statistics over the global batch"
    )
    parser.set_defaults(run=run, parser=parser)


# Under torchrun every rank runs this command; only rank 0 prints and writes files.
CONTEXT = DistributedContext()


def say(message: str) -> None:
    if CONTEXT.is_main:
        print(message, flush=True)


def warn(message: str) -> None:
    if CONTEXT.is_main:
        print(f"warning: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    global CONTEXT
    CONTEXT = init_distributed(args.device, args.sync_bn)
    try:
        return train(args)
    except RuntimeError as error:
        raise explain_peer_failure(CONTEXT, error) or error from None
    finally:
        shutdown(CONTEXT)


def train(args: argparse.Namespace) -> int:
    if args.resume is None and args.recipe not in (None, "auto"):
        apply_recipe_file(args)
    if args.resume is not None:
        config, split = load_run(args.resume)
        run_dir = args.resume
        train_samples, val_samples, classes = split
        say(f"resuming {run_dir}")
    else:
        config, run_dir, (train_samples, val_samples, classes) = new_run(args)
    train_data, val_data = decode_sets(config, train_samples, val_samples, run_dir)
    if args.resume is None and CONTEXT.is_main:
        check_leakage(train_data, val_data, run_dir)
        scan_skipped = json.loads((run_dir / "skipped.json").read_text())
        decode_skipped = [str(s) for s in train_data.skipped + val_data.skipped]
        atomic_write_text(run_dir / "skipped.json", json.dumps(scan_skipped + decode_skipped, indent=1))
    CONTEXT.barrier()
    model = build_model(config, len(classes))
    # Pretrained weights expect their own normalization (ImageNet's for torchvision, 0.5 for some timm ones).
    normalization = Preprocessing.from_dict(getattr(model, "weights_metadata", {}).get("preprocessing", {}))
    preprocessing = Preprocessing(
        input_size=config.resolution, resize_size=config.resolution, mean=normalization.mean, std=normalization.std
    )
    trainer = Trainer(
        config,
        model,
        train_data,
        val_data,
        classes,
        run_dir,
        preprocessing,
        context=CONTEXT,
        log=say,
        show_progress=not args.quiet and sys.stderr.isatty(),
    )
    if args.resume is not None and (run_dir / CHECKPOINT).exists():
        trainer.load_checkpoint(run_dir / CHECKPOINT)
        say(f"continuing at epoch {trainer.state.epoch + 1}, step {trainer.state.step_in_epoch}")
    say(
        f"training {config.model} (width {config.width:g}) at {config.resolution}px on {len(train_data):,} images, "
        f"validating on {len(val_data):,}; {trainer.steps_per_epoch} steps/epoch; run dir {run_dir}"
    )
    say(
        f"{'epoch':>5} {'train_loss':>10} {'train_acc':>9} {'val_loss':>8} {'val_acc':>7} {'lr':>9} {'img/s':>7} {'time':>6}"
    )
    try:
        trainer.fit(on_epoch=print_epoch)
    except Interrupted:
        say(f"interrupted: checkpoint saved; continue with `mobilenets train --resume {run_dir}`")
        return 130
    if CONTEXT.is_main:
        finish_run(trainer, run_dir, config)
    return 0


def print_epoch(record) -> None:
    say(
        f"{record.epoch:>5} {record.train_loss:>10.4f} {record.train_accuracy:>9.4f} {record.val_loss:>8.4f} "
        f"{record.val_accuracy:>7.4f} {record.lr:>9.2e} {record.images_per_second:>7.0f} {record.seconds:>5.0f}s"
    )


def new_run(args: argparse.Namespace) -> tuple[TrainConfig, Path, tuple[list[Sample], list[Sample], list[str]]]:
    if args.data is None:
        raise MobilenetsError("--data DIR is required (or --resume RUN_DIR)")
    scan = scan_folder(args.data)
    report_scan(scan, "training data")
    if args.val is not None:
        val_scan = scan_folder(args.val, classes=scan.classes)
        report_scan(val_scan, "validation data")
        train_samples, val_samples = scan.samples, val_scan.samples
    else:
        train_samples, val_samples = split_samples(scan.samples, args.val_fraction, args.seed)
        say(f"split: {len(train_samples):,} train / {len(val_samples):,} val (stratified, seed {args.seed})")
    if not val_samples:
        raise MobilenetsError(f"{args.data}: too few images to hold out a validation set; add images or pass --val DIR")
    if len(scan.classes) < 2:
        raise MobilenetsError(f"{args.data}: only one class ({scan.classes[0]}); a classifier needs at least two")
    config = make_config(args, len(train_samples), train_samples)
    run_dir = Path(config.out)
    if (run_dir / CHECKPOINT).exists() or (run_dir / "metrics.json").exists():
        raise MobilenetsError(
            f"{run_dir}: already holds a run; pass --resume {run_dir} to continue it, or another --out"
        )
    CONTEXT.barrier()  # every rank has checked before rank 0 starts writing
    if not CONTEXT.is_main:
        return config, run_dir, (train_samples, val_samples, scan.classes)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / CONFIG, json.dumps(config.to_dict(), indent=2))
    split = {
        "root": str(Path(args.data).resolve()),
        "classes": scan.classes,
        "train": [[str(s.path.resolve()), s.label] for s in train_samples],
        "val": [[str(s.path.resolve()), s.label] for s in val_samples],
    }
    atomic_write_text(run_dir / SPLIT, json.dumps(split))
    skipped = [str(s) for s in scan.skipped]
    atomic_write_text(run_dir / "skipped.json", json.dumps(skipped, indent=1))
    return config, run_dir, (train_samples, val_samples, scan.classes)


def report_scan(scan: FolderScan, what: str) -> None:
    counts = scan.counts()
    say(f"{what}: {scan.root}: {len(scan.classes)} classes, {len(scan.samples):,} files")
    for name, count in counts.items():
        say(f"  {name:<24} {count:>7,}")
    if counts and min(counts.values()) > 0:
        ratio = max(counts.values()) / min(counts.values())
        if ratio >= 3:
            warn(
                f"classes are imbalanced ({ratio:.1f}× between the largest and smallest); accuracy will favour "
                "large classes, so read per-class recall in the report"
            )
    for name in scan.empty_classes:
        warn(f"{scan.root / name}: empty class folder, ignored")
    for skipped in scan.skipped:
        warn(f"skipped {skipped}")


def apply_recipe_file(args: argparse.Namespace) -> None:
    """Recipe values replace the defaults; options given on the command line keep their values."""
    parser: argparse.ArgumentParser = args.parser
    settable = {a.dest for a in parser._actions if a.dest not in ("help", "resume", "recipe", "data", "val", "out")}
    recipe = load_recipe_file(args.recipe, settable)
    applied = []
    for key, value in recipe.items():
        if getattr(args, key) == parser.get_default(key):
            setattr(args, key, value)
            applied.append(f"{key}={value}")
    say(f"recipe {args.recipe}: {', '.join(applied) or 'nothing (all given on the command line)'}")


def make_config(args: argparse.Namespace, num_train: int, train_samples: list[Sample]) -> TrainConfig:
    batch_size, epochs, lr, augment = args.batch_size, args.epochs, args.lr, args.augment
    if args.recipe == "auto":
        recipe = choose_recipe(num_train)
        say(recipe.describe(num_train))
        chosen = {"batch_size": recipe.batch_size, "epochs": recipe.epochs, "lr": recipe.lr, "augment": recipe.augment}
        overridden = [
            k
            for k, v in (("batch_size", batch_size), ("epochs", epochs), ("lr", lr), ("augment", augment))
            if v is not None
        ]
        if overridden:
            say(f"  kept from the command line: {', '.join(overridden)}")
        batch_size = batch_size or recipe.batch_size
        epochs = epochs or recipe.epochs
        lr = lr or recipe.lr
        augment = augment or chosen["augment"]
    batch_size = batch_size or DEFAULTS["batch_size"]
    epochs = epochs or DEFAULTS["epochs"]
    lr = lr or DEFAULTS["lr"]
    augment = augment or "medium"
    for name, value in (("--batch-size", batch_size), ("--epochs", epochs), ("--lr", lr), ("--width", args.width)):
        if value <= 0:
            raise MobilenetsError(f"{name} must be positive, got {value:g}")
    for message in range_warnings(batch_size, epochs, lr):
        warn(message)
    if message := dataset_size_warning(num_train):
        warn(message)
    if batch_size > num_train:
        warn(f"--batch-size {batch_size} exceeds the {num_train} training images; using {num_train}")
        batch_size = num_train
    resolution = choose_resolution(args.resolution, train_samples)
    args.model = args.model or architecture_of(args.weights)
    out = args.out or Path("runs") / f"{args.model}-{time.strftime('%Y%m%d-%H%M%S')}"
    # Every option has the name of its TrainConfig field; the values decided above replace the raw ones.
    return TrainConfig.from_dict(
        {
            **vars(args),
            "data": str(args.data),
            "val": str(args.val) if args.val else None,
            "resolution": resolution,
            "batch_size": batch_size,
            "epochs": epochs,
            "lr": lr,
            "augment": augment,
            "out": str(out),
            "cache_dir": str(args.cache_dir) if args.cache_dir else None,
        }
    )


def choose_resolution(requested: str, samples: list[Sample]) -> int:
    if requested != "auto":
        try:
            resolution = int(requested)
        except ValueError:
            raise MobilenetsError(f"--resolution must be a number of pixels or auto, got {requested!r}") from None
        if resolution < 16:
            raise MobilenetsError(f"--resolution {resolution} is too small; MobileNets downsample 32×, use 32 or more")
        if resolution % 32:
            warn(f"--resolution {resolution} is not a multiple of 32; the last feature maps get uneven borders")
        return resolution
    sides = []
    for sample in samples[:: max(1, len(samples) // 64)][:64]:
        try:
            with Image.open(sample.path) as image:
                sides.append(min(image.size))
        except Exception:  # unreadable files are reported when decoding
            continue
    median = statistics.median(sides) if sides else 224
    resolution = int(min(224, max(32, -(-median // 32) * 32)))
    say(f"resolution auto: {resolution}px (median short side of the images is {median:g}px; at most 224)")
    return resolution


def load_run(run_dir: Path) -> tuple[TrainConfig, tuple[list[Sample], list[Sample], list[str]]]:
    for name in (CONFIG, SPLIT):
        if not (run_dir / name).exists():
            raise MobilenetsError(f"{run_dir}: no {name}; --resume needs a run directory written by `mobilenets train`")
    config = TrainConfig.from_dict(json.loads((run_dir / CONFIG).read_text()))
    split = json.loads((run_dir / SPLIT).read_text())
    train = [Sample(Path(p), int(label)) for p, label in split["train"]]
    val = [Sample(Path(p), int(label)) for p, label in split["val"]]
    if (run_dir / "metrics.json").exists() and not (run_dir / CHECKPOINT).exists():
        raise MobilenetsError(f"{run_dir}: this run has finished; start a new one with --out")
    return config, (train, val, split["classes"])


def decode_sets(
    config: TrainConfig, train: list[Sample], val: list[Sample], run_dir: Path
) -> tuple[DecodedImages, DecodedImages]:
    started = time.perf_counter()
    cache = choose_cache(config.cache, len(train) + len(val), config.resolution)
    cache_dir = Path(config.cache_dir) if config.cache_dir else run_dir / "decoded"
    if cache == "disk":
        say(f"decoded images go to {cache_dir} (memory-mapped; written once, reused by every rank, epoch and resume)")
    decoded = []
    for samples, name in ((train, "train"), (val, "val")):
        if cache == "disk":
            data = decode_to_disk(samples, config.resolution, cache_dir, CONTEXT)
        else:
            data = decode_with_progress(samples, config.resolution, name)
        for skipped in data.skipped:
            warn(f"skipped {skipped}")
        decoded.append(data)
    train_data, val_data = decoded
    say(
        f"decoded {len(train_data) + len(val_data):,} images once at {config.resolution}px in "
        f"{time.perf_counter() - started:.1f}s ({(train_data.images.numel() + val_data.images.numel()) / 2**20:.0f} MiB cached "
        f"in {cache})"
    )
    if len(train_data) == 0 or len(val_data) == 0:
        raise MobilenetsError("no readable images left in the training or validation set (see the skipped files above)")
    return train_data, val_data


def decode_with_progress(samples: list[Sample], resolution: int, name: str) -> DecodedImages:
    if not sys.stderr.isatty():
        return decode_samples(samples, resolution)
    from rich.progress import Progress

    with Progress(transient=True) as progress:
        task = progress.add_task(f"decoding {name}", total=len(samples))
        return decode_samples(samples, resolution, progress=lambda n: progress.advance(task, n))


def check_leakage(train: DecodedImages, val: DecodedImages, run_dir: Path) -> None:
    leakage = find_leakage(train, val)
    if leakage.exact or leakage.near:
        warn(
            f"data leakage: {len(leakage.exact)} validation images are exact copies and {len(leakage.near)} near copies "
            "(resized or recompressed: same perceptual hash and pixels) of training images; validation accuracy will be optimistic. First ones:"
        )
        for kind, pairs in (("exact", leakage.exact), ("near", leakage.near)):
            for train_path, val_path in pairs[:5]:
                warn(f"  {kind}: {val_path} ≈ {train_path}")
    atomic_write_text(
        run_dir / "leakage.json",
        json.dumps(
            {
                "exact": [[str(a), str(b)] for a, b in leakage.exact],
                "near": [[str(a), str(b)] for a, b in leakage.near],
            },
            indent=1,
        ),
    )


def architecture_of(weights: str | None) -> str:
    """The architecture a set of weights holds (published name or file metadata); V3-Small without weights."""
    if weights is None:
        return "mobilenet_v3_small"
    from mobilenets.models.weights import PUBLISHED_WEIGHTS, load_model

    if weights in PUBLISHED_WEIGHTS:
        return PUBLISHED_WEIGHTS[weights].architecture
    return load_model(weights).architecture.name


def build_model(config: TrainConfig, num_classes: int):
    options = {} if config.dropout is None else {"dropout": config.dropout}
    torch.manual_seed(config.seed)  # the initial weights (and the new head when fine-tuning)
    if config.weights:
        model = create_model(
            config.model, num_classes=num_classes, width=config.width, weights=config.weights, **options
        )
        say(f"fine-tuning from {config.weights}: new {num_classes}-class head")
        return model
    return create_model(config.model, num_classes=num_classes, width=config.width, **options)


def finish_run(trainer: Trainer, run_dir: Path, config: TrainConfig) -> None:
    from mobilenets.models.weights import load_model
    from mobilenets.reporting.run_report import write_report

    best = load_model(run_dir / "model.safetensors")
    result = trainer.evaluate(best)
    atomic_write_text(run_dir / "evaluation.json", json.dumps(result.to_dict(), indent=1))
    metrics = merge_metrics(run_dir, {**trainer.summary_metrics(), "per_class": result.per_class()})
    (run_dir / CHECKPOINT).unlink(missing_ok=True)
    say(result.table())
    say(
        f"best val accuracy {metrics['best_val_accuracy']:.4f} (epoch {metrics['best_epoch']}), final "
        f"{metrics['final_val_accuracy']:.4f}; {metrics['train_images_per_second']:.0f} img/s, augmentation "
        f"{100 * metrics['augment_share_of_step_time']:.0f}% of step time"
    )
    if config.quantize:
        quantize(run_dir)
    write_report(run_dir)
    say(f"wrote {run_dir}/model.safetensors and {run_dir}/report.html")


def quantize(run_dir: Path) -> None:
    try:
        from mobilenets.deployment.quantization import quantize_run
    except ImportError:
        warn("quantization is not available in this version (mobilenets.deployment.quantization is missing); skipped --quantize")
        return
    say("quantizing to int8 …")
    results = quantize_run(run_dir, "auto")
    merge_metrics(run_dir, results)
    say("  " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in results.items()))
