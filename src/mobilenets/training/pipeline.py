"""Training a run end to end: a folder of images in, a model, its metrics and report out.

The library behind ``mobilenets train`` and ``mobilenets.train()``: both build a ``TrainOptions`` and call
``train``. Messages go to the ``mobilenets`` logger.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from mobilenets.core.console import say, warn
from mobilenets.core.distributed import (
    DistributedContext,
    explain_peer_failure,
    init_distributed,
    launched_rank,
    shutdown,
)
from mobilenets.core.errors import MobilenetsError
from mobilenets.core.files import remove_path
from mobilenets.core.run_directory import LabelledFile, RunDirectory, Split
from mobilenets.data.disk_cache import choose_cache, decode_to_disk
from mobilenets.data.folders import (
    UNLABELLED,
    DecodedImages,
    FolderScan,
    Sample,
    decode_samples,
    find_leakage,
    scan_folder,
    scan_unlabelled,
    split_samples,
)
from mobilenets.models.factory import create_model
from mobilenets.models.preprocessing import Preprocessing
from mobilenets.training.checks import check_distillation_options, check_options, check_values
from mobilenets.training.configuration import TrainConfig, apply_recipe_file, make_config
from mobilenets.training.diagnosis import diagnose_run, findings_to_json, format_findings
from mobilenets.training.distillation import Teacher, TeacherEnsemble, TeacherQuality, load_teachers, measure_teacher
from mobilenets.training.loop import EpochRecord, Interrupted, Trainer
from mobilenets.training.options import RELOCATABLE, RESUME_MAY_CHANGE, TrainOptions, teacher_sources

log = logging.getLogger("mobilenets")


class RunImages(NamedTuple):
    """The images of a run, before decoding: its split, and the unlabelled ones only a teacher labels."""

    train: list[Sample]
    val: list[Sample]
    classes: list[str]
    unlabelled: list[Sample]


def train(options: TrainOptions) -> RunDirectory:
    """Train (or resume) a run as ``options`` say; returns its run directory.

    Under torchrun every process calls this; only the first prints and writes files. Ctrl-C saves a
    checkpoint and raises ``Interrupted``; ``options.resume`` continues exactly. ``options`` is left as given:
    a recipe file's values and the values decided go to the run's ``config.json``.
    """
    options = dataclasses.replace(options)  # a recipe file fills the copy, never the caller's object
    check_options(options)
    # torchrun's rank is known before joining the job: only rank 0 prints from the start.
    quiet_unless_main = None if launched_rank() == 0 else log.level
    if quiet_unless_main is not None:
        log.setLevel(logging.ERROR)
    try:
        if options.resume is None and options.recipe not in (None, "auto"):
            apply_recipe_file(options)
            check_values(options)  # a recipe file's values face the same checks as the command line's
            check_distillation_options(options)
        # Where to train, as the recipe file or the resumed run's config.json says unless given.
        device, sync_bn = resumed_placement(options) if options.resume is not None else (options.device, options.sync_bn)
        context = init_distributed(device, sync_bn)
        try:
            return _train(options, context)
        except RuntimeError as error:
            raise explain_peer_failure(context, error) or error from None
        finally:
            shutdown(context)
    finally:
        if quiet_unless_main is not None:
            log.setLevel(quiet_unless_main)


def resumed_placement(options: TrainOptions) -> tuple[str, bool]:
    """--device and --sync-bn of a resumed run: config.json's, or a new --device given with --resume."""
    saved = RunDirectory(options.resume).read_json(RunDirectory.CONFIG)
    device = options.device if "device" in options.given() else saved.get("device", "auto")
    sync_bn = bool(saved.get("sync_bn", False))
    if sync_bn and (device == "cpu" or not torch.cuda.is_available()):
        # SyncBatchNorm is CUDA-only; a run trained with it on GPUs may still be finished on a CPU.
        say("resuming on the CPU: --sync-bn (CUDA only) is off for the rest of this run")
        sync_bn = False
    return device, sync_bn


def _train(options: TrainOptions, context: DistributedContext) -> RunDirectory:
    if options.resume is not None:
        run = RunDirectory(options.resume)
        config, split, changes, relocated = read_resume(run, options)
        say(f"resuming {run.path}")
        trainer = _prepare(config, run, split, context=context, options=options)
        if run.checkpoint.exists():
            trainer.load_checkpoint(run.checkpoint)
            say(f"continuing at epoch {trainer.state.epoch + 1}, step {trainer.state.step_in_epoch}")
        if changes and context.is_main:
            say(f"resume changes: {'; '.join(changes)}")
            if relocated is not None:  # the next resume, evaluate or quantize finds the images where they are now
                run.write_split(relocated)
            run.write_json(RunDirectory.CONFIG, config.to_dict())
    else:
        config, run, split, existed = new_run(options, context)
        try:
            trainer = _prepare(config, run, split, context=context, options=options)
        except (MobilenetsError, KeyboardInterrupt):
            if context.is_main:
                remove_failed_start(run, kept=existed)
            raise
    say(
        f"training {config.model} (width {config.width:g}) at {config.resolution}px on "
        f"{trainer.labelled_images:,} images"
        + (f" and {trainer.unlabelled_images:,} unlabelled" if trainer.unlabelled_images else "")
        + f", validating on {len(trainer.val_data):,}; {trainer.steps_per_epoch} steps/epoch; run dir {run.path}"
    )
    say(
        f"{'epoch':>5} {'train_loss':>10} {'train_acc':>9} {'val_loss':>8} {'val_acc':>7} {'lr':>9} {'img/s':>7} {'time':>6}"
    )
    try:
        trainer.fit(on_epoch=print_epoch)
    except Interrupted:
        say(f"interrupted: checkpoint saved; continue with `mobilenets train --resume {run.path}`")
        raise
    if context.is_main:
        finish_run(trainer, run, config)
    return run


def remove_failed_start(run: RunDirectory, *, kept: set[str]) -> None:
    """Undo a start that failed before training (bad weights or teacher, unreadable images): its config and
    split would make the same ``--out`` look taken. Files that were there before are left alone."""
    for name in set(run.contents()) - kept:
        path = run / name
        with contextlib.suppress(OSError):
            remove_path(path)
    with contextlib.suppress(OSError):
        run.path.rmdir()  # only when empty: a folder the user made keeps what else it holds


def _prepare(
    config: TrainConfig,
    run: RunDirectory,
    split: RunImages,
    *,
    context: DistributedContext,
    options: TrainOptions,
) -> Trainer:
    """Everything between the settings and the first step: images decoded, model and teacher built."""
    train_samples, val_samples, classes, unlabelled = split
    # A teacher that cannot be used is said before minutes of decoding, not after.
    sources = teacher_sources(config.teacher)
    if options.resume is not None:
        for source in sources:
            if not Path(source).exists():
                raise MobilenetsError(
                    f"--resume {run.path}: its teacher {source} (config.json) is missing; put it back there (a run's "
                    "teacher cannot change on resume)"
                )
    teacher = (
        load_teachers(
            sources, student_classes=classes, engine=config.teacher_engine, device=context.device, log=say
        )
        if sources
        else None
    )
    # Unlabelled images join the training set with the label UNLABELLED: the sampler, the augmentation and
    # the BatchNorm statistics treat them as any training image; only the loss tells them apart.
    train_data, val_data = decode_sets(config, train_samples + unlabelled, val_samples, run, context=context)
    if unlabelled and not bool((train_data.labels == UNLABELLED).any()):
        raise MobilenetsError(
            f"--unlabelled {config.unlabelled}: none of its {len(unlabelled):,} files is a readable image (see the "
            "skipped files above); pass a folder of images"
        )
    if options.resume is None and context.is_main:
        check_leakage(train_data, val_data, run)
        scan_skipped = run.read_json(RunDirectory.SKIPPED, [])
        decode_skipped = [str(s) for s in train_data.skipped + val_data.skipped]
        run.write_json(RunDirectory.SKIPPED, scan_skipped + decode_skipped, indent=1)
    context.barrier()
    model = build_model(config, len(classes))
    # Pretrained weights expect their own normalization (ImageNet's for torchvision, 0.5 for some timm ones).
    normalization = model.metadata.preprocessing
    preprocessing = Preprocessing(
        input_size=config.resolution, resize_size=config.resolution, mean=normalization.mean, std=normalization.std
    )
    # Only the main rank diagnoses the run, so only it measures the teacher (the others wait a few seconds).
    if teacher is not None and context.is_main:
        teacher.quality = check_teacher(teacher, sources=sources, val_data=val_data, preprocessing=preprocessing)
    return Trainer(
        config,
        model,
        train_data,
        val_data,
        classes,
        run,
        preprocessing,
        context=context,
        log=say,
        show_progress=not options.quiet and sys.stderr.isatty(),
        teacher=teacher,
    )


def check_teacher(
    teacher: Teacher | TeacherEnsemble,
    *,
    sources: Sequence[str],
    val_data: DecodedImages,
    preprocessing: Preprocessing,
) -> TeacherQuality:
    """The teacher's top-1 on this run's validation images, said before training (the diagnosis compares it).

    An ensemble has seen an image when any of its teachers trained on it.
    """
    teacher_train: list[str] = []
    for source in sources:
        # A run directory, or a weights file inside one: its split says which images the teacher trained on.
        run = Path(source) if Path(source).is_dir() else Path(source).parent
        if (run / RunDirectory.SPLIT).exists():
            with contextlib.suppress(MobilenetsError, OSError, ValueError, KeyError):
                teacher_train += [str(f.path.resolve()) for f in RunDirectory(run).read_split().train]
    quality = measure_teacher(
        teacher,
        val_data.images,
        val_data.labels,
        mean=preprocessing.mean,
        std=preprocessing.std,
        val_paths=[str(Path(s.path).resolve()) for s in val_data.samples],
        teacher_train_paths=teacher_train,
    )
    say(f"teacher's accuracy on the {quality.val_images:,} validation images: {quality.val_accuracy:.1%}")
    if quality.saw_validation:
        unseen = (
            f"; on the {quality.val_images - quality.saw_validation:,} others: {quality.unseen_accuracy:.1%}"
            if quality.unseen_accuracy is not None
            else ""
        )
        warn(
            f"the teacher was trained on {quality.saw_validation} of these validation images, so that figure is "
            f"optimistic{unseen}; train the teacher and the student on the same split (same --data, --val-fraction "
            "and --seed)"
        )
    return quality


def print_epoch(record: EpochRecord) -> None:
    validated = record.val_accuracy is not None  # set together with val_loss, or neither (--val-every)
    val_loss, val_accuracy = (f"{record.val_loss:>8.4f}", f"{record.val_accuracy:>7.4f}") if validated else ("-", "-")
    say(
        f"{record.epoch:>5} {record.train_loss:>10.4f} {record.train_accuracy:>9.4f} {val_loss:>8} "
        f"{val_accuracy:>7} {record.lr:>9.2e} {record.images_per_second:>7.0f} {record.seconds:>5.0f}s"
    )


def new_run(
    options: TrainOptions, context: DistributedContext
) -> tuple[TrainConfig, RunDirectory, RunImages, set[str]]:
    """Scan, split and settle the settings of a new run, and write them; also returns the names its run
    directory held before (a start that fails removes only what it wrote)."""
    if options.data is None:
        raise MobilenetsError("--data DIR is required (or --resume RUN_DIR)")
    scan = scan_folder(options.data)
    report_scan(scan, "training data")
    if options.val is not None:
        val_scan = scan_folder(options.val, classes=scan.classes)
        if not val_scan.samples:  # --val's own classes are the problem, not --data's size (and no per-file noise)
            raise MobilenetsError(
                f"{options.val}: no images of the training classes ({', '.join(scan.classes[:5])}"
                f"{', …' if len(scan.classes) > 5 else ''}); --val needs the same class folders as --data"
            )
        report_scan(val_scan, "validation data")
        train_samples, val_samples = scan.samples, val_scan.samples
    else:
        train_samples, val_samples = split_samples(scan.samples, options.val_fraction, options.seed)
        say(f"split: {len(train_samples):,} train / {len(val_samples):,} val (stratified, seed {options.seed})")
    if not val_samples:
        raise MobilenetsError(f"{options.data}: too few images to hold out a validation set; add images or pass --val DIR")
    if len(scan.classes) < 2:
        raise MobilenetsError(f"{options.data}: only one class ({scan.classes[0]}); a classifier needs at least two")
    unlabelled = scan_unlabelled_images(options.unlabelled, labelled=train_samples + val_samples)
    config = make_config(options, len(train_samples), train_samples, num_unlabelled=len(unlabelled))
    config = context.broadcast_object(config)  # rank 0's decisions (the default --out is a time stamp, taken once)
    run = RunDirectory(config.out)
    context.barrier()  # every rank has checked before rank 0 starts writing
    images = RunImages(train_samples, val_samples, scan.classes, unlabelled)
    if not context.is_main:
        return config, run, images, set()
    existed = set(run.contents())
    if RunDirectory.CONFIG in existed:  # check_new_run_paths let it through: killed while decoding, nothing trained
        warn(f"{run.path}: its run stopped before its first checkpoint (nothing trained); starting it again")
    run.path.mkdir(parents=True, exist_ok=True)
    run.write_json(RunDirectory.CONFIG, config.to_dict())
    run.write_split(
        Split(
            classes=scan.classes,
            train=[LabelledFile(s.path, s.label) for s in train_samples],
            val=[LabelledFile(s.path, s.label) for s in val_samples],
            train_root=Path(options.data),
            val_root=Path(options.val) if options.val is not None else None,
            unlabelled=[s.path for s in unlabelled],
            unlabelled_root=Path(options.unlabelled) if options.unlabelled is not None else None,
        )
    )
    skipped = [str(s) for s in scan.skipped]
    run.write_json(RunDirectory.SKIPPED, skipped, indent=1)
    return config, run, images, existed


def scan_unlabelled_images(folder: Path | None, *, labelled: list[Sample]) -> list[Sample]:
    """``--unlabelled``'s images, less any that are labelled images of this run (said, not silently)."""
    if folder is None:
        return []
    samples, skipped, excluded = scan_unlabelled(folder, exclude=[s.path for s in labelled])
    say(f"unlabelled images: {folder}: {len(samples):,} files (the teacher's predictions are their targets)")
    if excluded:
        warn(
            f"--unlabelled {folder}: {excluded:,} of its files are labelled training or validation images of this "
            "run; they are used with their labels only"
        )
    for file in skipped:
        warn(f"skipped {file}")
    return samples


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


def read_resume(
    run: RunDirectory, options: TrainOptions
) -> tuple[TrainConfig, RunImages, list[str], Split | None]:
    """A run's config and split for ``--resume``, with the options a resume may change applied, and those
    changes said (config.json is rewritten only once the checkpoint shows they fit the run). The last value
    is the split with its folders moved (``--data``/``--val``/``--unlabelled`` given), to be written with them."""
    config = TrainConfig.from_dict(run.read_json(RunDirectory.CONFIG))
    split = run.read_split()
    if "teacher_engine" in options.given() and not config.teacher:
        raise MobilenetsError(
            f"--resume {run.path}: --teacher-engine chooses what runs a teacher, and this run has none (a run's "
            "teacher cannot change on resume); drop --teacher-engine"
        )
    split, changed = relocate_split(split, config=config, options=options, run=run)
    relocated = split if changed else None
    for name, value in options.given().items():
        if name in RELOCATABLE:
            continue
        if name in RESUME_MAY_CHANGE and hasattr(config, name) and getattr(config, name) != value:
            changed.append(f"--{name.replace('_', '-')} {getattr(config, name)} → {value}")
            setattr(config, name, value)
    train = [Sample(f.path, f.label) for f in split.train]
    val = [Sample(f.path, f.label) for f in split.val]
    unlabelled = [Sample(path, UNLABELLED) for path in split.unlabelled]
    val_flag, val_folder = ("--val", config.val) if config.val else ("--data", config.data)
    for what, paths, flag, folder in (
        ("training images it trains on", [f.path for f in split.train], "--data", config.data),
        ("validation images it validates on", [f.path for f in split.val], val_flag, val_folder),
        ("unlabelled images it trains on", split.unlabelled, "--unlabelled", config.unlabelled),
    ):
        if missing := [path for path in paths if not path.is_file()]:
            # Fewer images would change every epoch's batches: the resumed run would not continue exactly.
            raise MobilenetsError(
                f"{run.path}: {len(missing):,} of the {len(paths):,} {what} are missing (first: {missing[0]}); put "
                f"the {flag} folder back at {folder}, or beside the run where it was, or pass {flag} DIR where the "
                "same files are now, to resume"
            )
    return config, RunImages(train, val, split.classes, unlabelled), changed, relocated


def relocate_split(
    split: Split, *, config: TrainConfig, options: TrainOptions, run: RunDirectory
) -> tuple[Split, list[str]]:
    """``--resume RUN --data DIR`` (and ``--val``, ``--unlabelled``): the run's images, moved to other folders.

    Each must hold every file of its part of the split at the same place inside it, or the resume is refused:
    fewer images would change every epoch's batches. ``config`` is updated; the changes are returned as said.
    """
    given = options.given()
    moved = {name: Path(getattr(options, name)) for name in RELOCATABLE if name in given}
    for name, folder in moved.items():
        if not folder.is_dir():
            problem = "not a folder" if folder.exists() else "no such folder"
            raise MobilenetsError(
                f"--{name} {folder}: {problem}; with --resume, --{name} names the folder that now holds the run's "
                f"{RELOCATABLE[name]} images"
            )
    if moved and run.read_json(RunDirectory.SPLIT).get("format") != 2:
        raise MobilenetsError(
            f"--{next(iter(moved))}: {run.path}'s {RunDirectory.SPLIT} is of an earlier format that records each "
            "image's absolute path and not its folder, so its images cannot be found in another; put them back "
            "where it says to resume"
        )
    if "val" in moved and not config.val:
        raise MobilenetsError(
            f"--val {moved['val']}: this run's validation images are a share of its --data folder (--val-fraction), "
            "not a folder of their own; pass --data DIR alone to say where they are now"
        )
    if "unlabelled" in moved and not split.unlabelled:
        raise MobilenetsError(
            f"--unlabelled {moved['unlabelled']}: this run trains on no unlabelled images, and a resume cannot add "
            "them; drop --unlabelled"
        )
    resolved = {name: folder.resolve() for name, folder in moved.items()}
    data = resolved.get("data")
    relocated = split.moved(
        train_root=data,
        val_root=resolved.get("val") or (data if not config.val else None),
        unlabelled_root=resolved.get("unlabelled"),
    )
    parts = {
        "data": [f.path for f in relocated.train] + ([] if config.val else [f.path for f in relocated.val]),
        "val": [f.path for f in relocated.val],
        "unlabelled": relocated.unlabelled,
    }
    changed = []
    for name, folder in moved.items():
        paths = parts[name]
        what = "training and validation" if name == "data" and not config.val else RELOCATABLE[name]
        if missing := [path for path in paths if not path.is_file()]:
            raise MobilenetsError(
                f"--{name} {folder}: {len(missing):,} of the run's {len(paths):,} {what} images are not in it "
                f"(first: {missing[0]}); pass the folder that holds the same files at the same places inside it"
            )
        was = {"data": split.train_root, "val": split.val_root, "unlabelled": split.unlabelled_root}[name]
        if was is None or Path(was).resolve() != resolved[name]:
            changed.append(f"--{name} {was or getattr(config, name)} → {resolved[name]}")
            setattr(config, name, str(resolved[name]))
    return relocated, changed


def decode_sets(
    config: TrainConfig, train: list[Sample], val: list[Sample], run: RunDirectory, *, context: DistributedContext
) -> tuple[DecodedImages, DecodedImages]:
    started = time.perf_counter()
    # Rank 0's choice: "auto" reads the free memory, which differs between processes, and every rank must
    # take the same path (the disk cache's writers meet at barriers).
    cache = context.broadcast_object(choose_cache(config.cache, len(train) + len(val), config.resolution))
    cache_dir = Path(config.cache_dir) if config.cache_dir else run / "decoded"
    if cache == "disk":
        say(f"decoded images go to {cache_dir} (memory-mapped; written once, reused by every rank, epoch and resume)")
    decoded = []
    for samples, name in ((train, "train"), (val, "val")):
        if cache == "disk":
            data = decode_to_disk(samples, config.resolution, cache_dir, context)
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


def check_leakage(train: DecodedImages, val: DecodedImages, run: RunDirectory) -> None:
    leakage = find_leakage(train, val)
    if leakage.exact or leakage.near:
        warn(
            f"data leakage: {len(leakage.exact)} validation images are exact copies and {len(leakage.near)} near copies "
            "(resized or recompressed: same perceptual hash and pixels) of training images; validation accuracy will be optimistic. First ones:"
        )
        for kind, pairs in (("exact", leakage.exact), ("near", leakage.near)):
            for train_path, val_path in pairs[:5]:
                warn(f"  {kind}: {val_path} ≈ {train_path}")
    run.write_json(
        RunDirectory.LEAKAGE,
        {
            "exact": [[str(a), str(b)] for a, b in leakage.exact],
            "near": [[str(a), str(b)] for a, b in leakage.near],
        },
        indent=1,
    )


def build_model(config: TrainConfig, num_classes: int) -> nn.Module:
    options = {} if config.dropout is None else {"dropout": config.dropout}
    torch.manual_seed(config.seed)  # the initial weights (and the new head when fine-tuning)
    if config.weights:
        model = create_model(
            config.model, num_classes=num_classes, width=config.width, weights=config.weights, **options
        )
        say(f"fine-tuning from {config.weights}: new {num_classes}-class head")
        return model
    return create_model(config.model, num_classes=num_classes, width=config.width, **options)


def finish_run(trainer: Trainer, run: RunDirectory, config: TrainConfig) -> None:
    """Evaluate the best weights and diagnose the run. The checkpoint stays until the whole run is complete
    (int8, exports and report too, ``mobilenets.api``), so that Ctrl-C during those steps loses nothing and
    ``--resume`` finishes them."""
    from mobilenets.models.weights import load_model

    best = load_model(run.model)
    result = trainer.evaluate(best)
    run.write_json(RunDirectory.EVALUATION, result.to_dict(), indent=1)
    metrics = run.merge_metrics({**trainer.summary_metrics(), "per_class": result.per_class(), "complete": False})
    say(result.table())
    say(
        f"best val accuracy {metrics['best_val_accuracy']:.4f} (epoch {metrics['best_epoch']}), final "
        f"{metrics['final_val_accuracy']:.4f}; {metrics['train_images_per_second']:.0f} img/s, augmentation "
        f"{100 * metrics['augment_share_of_step_time']:.0f}% of step time"
    )
    diagnosis = diagnose_run(trainer, best=best, run=run)
    teacher = trainer.teacher
    run.merge_metrics(
        {
            "diagnosis": findings_to_json(diagnosis),
            "initial_weights": config.initial_weights,
            "teacher": None
            if teacher is None
            else {**teacher.describe(), **(teacher.quality.to_dict() if teacher.quality else {})},
        }
    )
    say(format_findings(diagnosis))
