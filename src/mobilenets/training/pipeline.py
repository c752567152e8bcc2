"""Training a run end to end: a folder of images in, a model, its metrics and report out.

The library behind ``mobilenets train`` and ``mobilenets.train()``: both build a ``TrainOptions`` and call
``train``. Messages go to the ``mobilenets`` logger.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import logging
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from PIL import Image
from torch import nn

from mobilenets.core.distributed import (
    DistributedContext,
    explain_peer_failure,
    init_distributed,
    launched_rank,
    shutdown,
)
from mobilenets.core.errors import MobilenetsError, check_number
from mobilenets.core.files import check_writable, remove_path
from mobilenets.core.run_directory import LabelledFile, RunDirectory, Split
from mobilenets.data.augment_levels import AUGMENT_LEVELS
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
from mobilenets.models.registry import list_models
from mobilenets.training.diagnosis import diagnose_run, findings_to_json, format_findings
from mobilenets.training.distillation import (
    DistillationSettings,
    Teacher,
    TeacherEnsemble,
    TeacherQuality,
    load_teachers,
    measure_teacher,
    missing_teacher,
)
from mobilenets.training.loop import (
    EpochRecord,
    Interrupted,
    TrainConfig,
    Trainer,
    check_mixup,
    read_checkpoint,
)
from mobilenets.training.options import (
    HIDDEN_OPTIONS,
    NON_NEGATIVE,
    PATHS,
    POSITIVE,
    RESUME_MAY_CHANGE,
    SEED_LIMIT,
    WHOLE_NUMBERS,
    TrainOptions,
    flag_of,
    teacher_sources,
    type_problem,
)
from mobilenets.training.recipes import (
    DEFAULTS,
    FINETUNE_RECIPES,
    choose_recipe,
    dataset_size_warning,
    load_recipe_file,
    range_warnings,
)

log = logging.getLogger("mobilenets")


class RunImages(NamedTuple):
    """The images of a run, before decoding: its split, and the unlabelled ones only a teacher labels."""

    train: list[Sample]
    val: list[Sample]
    classes: list[str]
    unlabelled: list[Sample]


def check_options(options: TrainOptions) -> None:
    """Refuse impossible values and paths before any work: zero is refused like a negative, never replaced."""
    check_values(options)
    if options.resume is not None:
        check_resume(options)
    else:
        check_new_run_paths(options)
        check_distillation_options(options)


def check_values(options: TrainOptions) -> None:
    """The numbers and choices of ``options``, from the command line, Python or a recipe file."""
    for name, value in vars(options).items():
        if problem := type_problem(name, value):
            raise MobilenetsError(problem)
    if options.model is not None and options.model not in list_models():
        close = difflib.get_close_matches(str(options.model), list_models(), n=1)
        raise MobilenetsError(
            f"--model {options.model!r}: no such architecture"
            + (f"; did you mean {close[0]}?" if close else f"; choose one of {', '.join(list_models())}")
        )
    if options.augment is not None and options.augment not in AUGMENT_LEVELS:
        raise MobilenetsError(f"--augment {options.augment!r}: choose one of {', '.join(AUGMENT_LEVELS)}")
    for name, value in vars(options).items():
        # NaN passes every comparison below, and an infinite Beta or temperature never returns.
        if isinstance(value, float):
            check_number(flag_of(name), value)
    for name, flag in POSITIVE.items():
        check_number(flag, getattr(options, name), above=0, whole=name in WHOLE_NUMBERS)
    for name, flag in NON_NEGATIVE.items():
        check_number(flag, getattr(options, name), at_least=0, whole=name in WHOLE_NUMBERS)
    if options.seed >= SEED_LIMIT:
        raise MobilenetsError(f"--seed {options.seed}: give a whole number from 0 to {SEED_LIMIT - 1}")
    if options.resolution not in (None, "auto"):
        from mobilenets.models.preprocessing import check_resolution

        check_resolution(int(options.resolution))  # the bounds every command shares, before the scan
    if not 0 < options.val_fraction < 1:
        raise MobilenetsError(f"--val-fraction must be between 0 and 1 (exclusive), got {options.val_fraction:g}")
    if not 0 <= options.label_smoothing < 1:
        raise MobilenetsError(f"--label-smoothing must be in [0, 1), got {options.label_smoothing:g}")
    if options.crop_scale is not None and not 0 < options.crop_scale <= 1:
        raise MobilenetsError(
            f"--crop-scale is the smallest share of an image's area a crop keeps, in (0, 1], got {options.crop_scale:g}"
        )
    if not 0 <= options.random_erasing <= 1:
        raise MobilenetsError(f"--random-erasing is a probability in [0, 1], got {options.random_erasing:g}")
    if options.dropout is not None and not 0 <= options.dropout < 1:
        raise MobilenetsError(f"--dropout must be in [0, 1), got {options.dropout:g}")
    if options.ema_decay is not None and not 0 <= options.ema_decay < 1:
        raise MobilenetsError(
            f"--ema-decay is the share of the running average each step keeps, in [0, 1), got {options.ema_decay:g} "
            "(at 1 it would never move from the initial weights); omit it for a horizon of a tenth of the run"
        )
    DistillationSettings(weight=options.distill_weight, temperature=options.temperature)  # before the scan
    if options.precision == "fp16" and not _cuda_requested(options.device):
        raise MobilenetsError(
            "--precision fp16 needs a CUDA GPU (CPUs have no fast fp16 arithmetic); on a CPU use --precision bf16 "
            "(native on recent CPUs) or fp32"
        )


def check_distillation_options(options: TrainOptions) -> None:
    """``--distill-weight``, ``--temperature`` and ``--unlabelled`` only mean something with a teacher: never
    silently ignored."""
    if options.unlabelled is not None:
        if options.teacher is None:
            raise MobilenetsError(
                f"--unlabelled {options.unlabelled}: images without labels learn from a teacher's predictions; add "
                "--teacher RUN_DIR|FILE|MODEL.onnx (a larger model fine-tuned on --data), or drop --unlabelled"
            )
        if options.mixup:
            raise MobilenetsError(
                f"--mixup {options.mixup:g} with --unlabelled: mixup blends two images' labels, and unlabelled "
                "images have none; drop one of them"
            )
    if options.teacher is not None and options.distill_weight == 0 and options.unlabelled is None:
        warn(
            "--distill-weight 0: the teacher's predictions carry no weight, yet it runs on every batch; drop --teacher "
            "to train the same student faster, or give it a share (the default 0.5, or 0.9, measured alike)"
        )
    stray = [name for name in ("distill_weight", "temperature") if name in options.given()]
    if stray and options.teacher is None:
        flags = " and ".join(flag_of(name) for name in stray)
        raise MobilenetsError(
            f"{flags} set{'s' if len(stray) == 1 else ''} knowledge distillation, which needs a teacher: add "
            f"--teacher RUN_DIR|FILE|MODEL.onnx, or drop {flags}"
        )


def _cuda_requested(device: str) -> bool:
    if device == "cpu":
        return False
    import torch

    return torch.cuda.is_available()


def check_resume(options: TrainOptions) -> None:
    run = RunDirectory(options.resume)
    if not run.path.is_dir():
        raise MobilenetsError(f"--resume {run.path}: does not exist")
    run.require(RunDirectory.CONFIG, RunDirectory.SPLIT, needed_by="--resume")
    refused = [name for name in options.given() if name not in RESUME_MAY_CHANGE and name != "resume"]
    if refused:
        flags = ", ".join(flag_of(name) for name in refused)
        raise MobilenetsError(
            f"--resume keeps the run's settings (config.json); {flags} cannot change on resume. Resume may change only "
            f"{', '.join(flag_of(n) for n in RESUME_MAY_CHANGE if n not in HIDDEN_OPTIONS)}; for other settings "
            "start a new run "
            "with --out"
        )
    if run.is_complete():
        raise MobilenetsError(
            f"{run.path}: this run is complete (model, metrics and report written); evaluate, quantize or export it, "
            "or start a new run with another --out"
        )
    if not run.checkpoint.exists() and not run.metrics_path.exists():
        if holds_trained_state(run):  # killed while saving the epoch's checkpoint: weights written, state not
            raise MobilenetsError(
                f"{run.path}: no {RunDirectory.CHECKPOINT} to resume from (it holds: {', '.join(run.contents())}); "
                f"it stopped while saving an epoch, so it cannot continue exactly: evaluate or export its "
                f"{RunDirectory.MODEL}, or train again with another --out"
            )
        raise MobilenetsError(
            f"{run.path}: no {RunDirectory.CHECKPOINT} to resume from (it holds: {', '.join(run.contents())}); "
            f"the run stopped before its first checkpoint, so nothing was trained: start it again with --out {run.path}"
        )
    if options.epochs is not None and run.checkpoint.exists():
        check_resumed_epochs(options.epochs, epochs_done=read_checkpoint(run.checkpoint)["state"]["epoch"])


def check_new_run_paths(options: TrainOptions) -> None:
    """``--out`` must not be inside ``--data``/``--val``/``--unlabelled``: a later run would train on its plots
    as images."""
    if options.data is None:
        raise MobilenetsError("--data DIR is required (or --resume RUN_DIR)")
    for flag, folder in (("--data", options.data), ("--val", options.val), ("--unlabelled", options.unlabelled)):
        if folder is None:
            continue
        if not Path(folder).exists():
            raise MobilenetsError(f"{flag} {folder}: does not exist")
        if not Path(folder).is_dir():
            what = "a folder of images" if flag == "--unlabelled" else "a folder with one subfolder of images per class"
            raise MobilenetsError(f"{flag} {folder}: is a file, not {what}")
        if flag == "--unlabelled":
            for labelled_flag, labelled in (("--data", options.data), ("--val", options.val)):
                if labelled is not None and _is_within(Path(folder), Path(labelled)):
                    raise MobilenetsError(
                        f"--unlabelled {folder} is inside {labelled_flag} {labelled}, where it would be read as a "
                        "class of its own; move it outside the labelled folder"
                    )
        if options.out is not None and _is_within(Path(options.out), Path(folder)):
            raise MobilenetsError(
                f"--out {options.out} is inside {flag} {folder}; the run's files would become training images. "
                "Choose an --out outside the data folder"
            )
    check_model_sources(options)
    # A file in the way or a folder that cannot be written is said now, not as a traceback after the scan.
    check_writable(options.out or Path("runs"), "--out", create=False)
    if options.cache_dir is not None:
        check_writable(options.cache_dir, "--cache-dir", create=False)
    if options.out is not None:
        run = RunDirectory(options.out)
        if run.checkpoint.exists() and not run.is_complete():
            raise MobilenetsError(
                f"{run.path}: holds an unfinished run; continue it with --resume {run.path}, or choose another --out"
            )
        if holds_trained_state(run) or (run.config.exists() and not is_untrained_run(run)):
            raise MobilenetsError(f"{run.path}: already holds a run; choose another --out")


def check_model_sources(options: TrainOptions) -> None:
    """--weights and --teacher name a published checkpoint or something on disk: a path that is neither is
    said before the folder is scanned (what the file holds is checked when it is read)."""
    from mobilenets.models.published import list_weights

    published = list_weights()
    named = options.weights not in (None, "auto", "none") and options.weights not in published
    if named and not Path(options.weights).exists():
        close = difflib.get_close_matches(str(options.weights), published, n=1)
        raise MobilenetsError(
            f"--weights {options.weights}: no such file, and no published checkpoint has that name; "
            + (f"did you mean {close[0]}?" if close else f"pass a weights file or run directory, auto, none, or one of: {', '.join(published)}")
        )
    for source in teacher_sources(options.teacher):
        if source not in published and not Path(source).exists():
            raise missing_teacher(source)


def is_untrained_run(run: RunDirectory) -> bool:
    """A run's own settings and split, and nothing trained: what a run killed while decoding leaves. Any
    other config.json (a project's own, say) is never overwritten."""
    try:
        TrainConfig.from_dict(run.read_json(RunDirectory.CONFIG))
        run.read_split()
    except (MobilenetsError, OSError, ValueError, TypeError, KeyError):
        return False
    return not holds_trained_state(run)


def holds_trained_state(run: RunDirectory) -> bool:
    """Whether a run directory holds anything training produced (weights, an epoch, a checkpoint, metrics)."""
    produced = (RunDirectory.CHECKPOINT, RunDirectory.MODEL, RunDirectory.LAST, RunDirectory.EPOCHS, RunDirectory.METRICS)
    return any((run.path / name).exists() for name in produced)


def _is_within(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents



def say(message: str) -> None:
    log.info(message)


def warn(message: str) -> None:
    log.warning(message)


# --------------------------------------------------------------------------------------------------


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
        config, split, changes = read_resume(run, options)
        say(f"resuming {run.path}")
        trainer = _prepare(config, run, split, context=context, options=options)
        if run.checkpoint.exists():
            trainer.load_checkpoint(run.checkpoint)
            say(f"continuing at epoch {trainer.state.epoch + 1}, step {trainer.state.step_in_epoch}")
        if changes and context.is_main:
            say(f"resume changes: {'; '.join(changes)}")
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


def check_resumed_epochs(epochs: int, *, epochs_done: int) -> None:
    if epochs < epochs_done:
        raise MobilenetsError(
            f"--epochs {epochs}: this run has already trained {epochs_done} epochs; pass at least "
            f"{epochs_done} (--epochs {epochs_done} finishes it now with the epochs done)"
        )


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
    teacher = load_teachers(sources, student_classes=classes, log=say) if sources else None
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
    say(
        f"{record.epoch:>5} {record.train_loss:>10.4f} {record.train_accuracy:>9.4f} {record.val_loss:>8.4f} "
        f"{record.val_accuracy:>7.4f} {record.lr:>9.2e} {record.images_per_second:>7.0f} {record.seconds:>5.0f}s"
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


def apply_recipe_file(options: TrainOptions) -> None:
    """Recipe values replace the defaults; options given explicitly keep their values."""
    located = {*PATHS, "recipe", "teacher"}  # teachers are runs or files too
    recipe = load_recipe_file(options.recipe, set(TrainOptions.defaults()) - located, paths=located)
    given = options.given()
    applied = []
    for key, value in recipe.items():
        if key not in given:
            setattr(options, key, value)
            applied.append(f"{key}={value}")
    say(f"recipe {options.recipe}: {', '.join(applied) or 'nothing (all given explicitly)'}")


class Schedule(NamedTuple):
    """The values ``--recipe auto`` may decide for a folder, as this run uses them."""

    batch_size: int
    epochs: int
    lr: float
    augment: str
    head_epochs: int | None  # None: not given and no recipe chose it


def choose_schedule(
    options: TrainOptions, *, num_train: int, num_unlabelled: int, initial_weights: str | None
) -> Schedule:
    """--batch-size, --epochs, --lr, --augment and --head-epochs: as given, else ``--recipe auto``'s choice for
    this many images (said with its reason), else the documented defaults."""
    batch_size, epochs, lr, augment = options.batch_size, options.epochs, options.lr, options.augment
    head_epochs = options.head_epochs
    if options.recipe == "auto":
        recipe = choose_recipe(num_train, pretrained=initial_weights is not None)
        say(recipe.describe(num_train))
        overridden = [
            name
            for name, value in (("batch_size", batch_size), ("epochs", epochs), ("lr", lr), ("augment", augment))
            if value is not None
        ]
        if overridden:
            say(f"  kept from the command line: {', '.join(overridden)}")
        if num_unlabelled and epochs is None:
            warn(
                f"--recipe auto chose {recipe.epochs} epochs for the {num_train:,} labelled images; with the "
                f"{num_unlabelled:,} unlabelled ones each epoch is {(num_train + num_unlabelled) / num_train:.1f}× "
                "longer: pass --epochs to size the run yourself"
            )
        batch_size = batch_size or recipe.batch_size
        epochs = epochs or recipe.epochs
        lr = lr or recipe.lr
        augment = augment or recipe.augment
        head_epochs = recipe.head_epochs if head_epochs is None else head_epochs
    return Schedule(
        batch_size=batch_size or DEFAULTS["batch_size"],
        epochs=epochs or DEFAULTS["epochs"],
        lr=lr or DEFAULTS["lr"],
        augment=augment or "medium",
        head_epochs=head_epochs,
    )


def check_augment_options(options: TrainOptions, *, augment: str) -> None:
    """--crop-scale and --no-flip change a level's crop and flips; the level ``none`` has neither."""
    if options.crop_scale is not None and augment == "none":
        raise MobilenetsError(
            f"--crop-scale {options.crop_scale:g} sets the random crop of --augment light, medium, heavy or augmix, "
            "but this run's augmentation is none: pick one of those levels, or drop --crop-scale"
        )
    if not options.flip and augment == "none":
        raise MobilenetsError(
            "--no-flip turns off the flips of --augment light, medium, heavy or augmix, but this run's augmentation "
            "is none, which has no flips: pick one of those levels, or drop --no-flip"
        )


def make_config(
    options: TrainOptions, num_train: int, train_samples: list[Sample], *, num_unlabelled: int = 0
) -> TrainConfig:
    """The settings a new run records in ``config.json``: ``options`` with every value left open decided
    (architecture, initial weights, recipe, resolution, --out). ``options`` itself is left as given."""
    model, width = choose_architecture(options.weights, model=options.model, width=options.width)
    initial_weights = resolve_initial_weights(options.weights, model=model, width=width)
    check_freeze(options.freeze, model=model, width=width, initial_weights=initial_weights, weights=options.weights)
    schedule = choose_schedule(
        options, num_train=num_train, num_unlabelled=num_unlabelled, initial_weights=initial_weights
    )
    batch_size, epochs, lr, augment = schedule.batch_size, schedule.epochs, schedule.lr, schedule.augment
    check_augment_options(options, augment=augment)
    for name, value in (("--batch-size", batch_size), ("--epochs", epochs), ("--lr", lr), ("--width", width)):
        if value <= 0:
            raise MobilenetsError(f"{name} must be positive, got {value:g}")
    if options.optimizer == "sgd" and options.lr is None:
        warn(
            f"--optimizer sgd with lr {lr:g}, which is AdamW's ({'the recipe' if options.recipe == 'auto' else 'the default'}): "
            "SGD usually needs 10–50× more (0.02–0.05 fine-tuning V2 on Fashion-MNIST); pass --lr"
        )
    large_fine_tune = initial_weights is not None and num_train >= FINETUNE_RECIPES[-1].min_images
    for message in range_warnings(batch_size, epochs, lr, fine_tune_large=large_fine_tune, optimizer=options.optimizer):
        warn(message)
    if message := dataset_size_warning(num_train, pretrained=initial_weights is not None):
        warn(message)
    if batch_size > (total := num_train + num_unlabelled):
        warn(f"--batch-size {batch_size} exceeds the {total} training images; using {total}")
        batch_size = total
    resolution = choose_resolution(options.resolution, train_samples)
    check_mixup(options.mixup, augment=augment)
    head_epochs = check_head_epochs(
        schedule.head_epochs or 0,
        epochs=epochs,
        given=options.head_epochs is not None,
        initial_weights=initial_weights,
    )
    out = options.out or Path("runs") / f"{model}-{time.strftime('%Y%m%d-%H%M%S')}"
    # Every option has the name of its TrainConfig field; the values decided above replace the raw ones.
    return TrainConfig.from_dict(
        {
            **vars(options),
            "model": model,
            "width": width,
            "head_epochs": head_epochs,
            "data": str(options.data),
            "val": str(options.val) if options.val else None,
            "resolution": resolution,
            "batch_size": batch_size,
            "epochs": epochs,
            "lr": lr,
            "augment": augment,
            "weights": absolute_if_path(initial_weights),
            "initial_weights": absolute_if_path(initial_weights),
            "teacher": absolute_if_path(options.teacher)
            if not isinstance(options.teacher, tuple)
            else [absolute_if_path(source) for source in options.teacher],
            "unlabelled": absolute_if_path(options.unlabelled),
            "out": str(out),
            "cache_dir": str(options.cache_dir) if options.cache_dir else None,
        }
    )


def absolute_if_path(value: str | Path | None) -> str | None:
    """A file or run directory as an absolute path (``--resume`` from another folder finds it); names stay."""
    if value is None:
        return None
    return str(Path(value).resolve()) if Path(value).exists() else str(value)


def check_head_epochs(head_epochs: int, *, epochs: int, given: bool, initial_weights: str | None) -> int:
    """Head-only epochs train the new classifier on a pretrained backbone; they need both, and epochs after."""
    if not head_epochs:
        return 0
    if initial_weights is None:
        if given:
            raise MobilenetsError(
                f"--head-epochs {head_epochs} trains only the new head on a pretrained backbone, but this run starts "
                "from scratch, so the backbone would stay random; drop --head-epochs, or start from pretrained weights"
            )
        return 0
    if head_epochs >= epochs:
        if given:  # a linear probe: asked for, so done, and said
            warn(
                f"--head-epochs {head_epochs} covers all {epochs} epochs: only the new head trains (a linear probe); "
                "the backbone keeps its pretrained weights"
            )
            return head_epochs
        plural = "s leave" if epochs > 1 else " leaves"
        say(f"  no head-only epoch: {epochs} epoch{plural} none to train the backbone after it")
        return 0
    return head_epochs


def choose_architecture(weights: str | None, *, model: str | None, width: float | None) -> tuple[str, float]:
    """``--model`` and ``--width``, or those of the checkpoint ``--weights`` names. A given value that
    contradicts a weights file is refused here, before the run directory is written."""
    from mobilenets.models.weights import PUBLISHED_WEIGHTS, load_model

    if weights is None or weights in ("auto", "none"):
        return model or "mobilenet_v3_small", 1.0 if width is None else width
    if weights in PUBLISHED_WEIGHTS:
        published = PUBLISHED_WEIGHTS[weights]
        if model is not None and model != published.architecture:
            raise MobilenetsError(
                f"--weights {weights} holds a {published.architecture} model, not {model}; drop --model or pass "
                f"--model {published.architecture}"
            )
        if width not in (None, 1.0):
            raise MobilenetsError(
                f"--weights {weights} is published at width 1.0, not {width:g}; drop --width, or pass a checkpoint "
                "of that width (--weights FILE)"
            )
        return published.architecture, 1.0
    from mobilenets.models.weights import read_checkpoint as read_weights

    _, metadata = read_weights(weights)
    if metadata is None:
        # torchvision's or timm's file says neither: it is built at the given width and its shapes checked.
        held = load_model(weights, name=model, width=width)
        return held.architecture.name, float(held.architecture.options.get("width", 1.0))
    # Our own file says both (read above, so it is whole); the run builds it once, later.
    name, saved_width = metadata["architecture"], float(metadata.get("options", {}).get("width", 1.0))
    if model is not None and model != name:
        raise MobilenetsError(f"--weights {weights} holds a {name} model, not {model}; drop --model or pass --model {name}")
    if width is not None and width != saved_width:
        raise MobilenetsError(
            f"--width {width:g}: --weights {weights} holds {name} at width {saved_width:g}; drop --width, or pass "
            f"--width {saved_width:g}"
        )
    return name, saved_width


def check_freeze(
    blocks: int, *, model: str, width: float, initial_weights: str | None, weights: str | None = None
) -> None:
    """``--freeze N`` keeps pretrained layers: refused from scratch (they would stay random) and beyond the last block."""
    if not blocks:
        return
    if initial_weights is None:
        where = (
            "a checkpoint file (--weights FILE; auto found none, see above)"
            if weights == "auto"
            else "--weights auto or a file"
        )
        raise MobilenetsError(
            f"--freeze {blocks} keeps pretrained layers fixed, but this run starts from scratch, so they would stay "
            f"random; drop --freeze, or start from pretrained weights ({where})"
        )
    from mobilenets.models.registry import get_architecture

    available = len(get_architecture(model, width=width).blocks)
    if blocks > available:
        raise MobilenetsError(
            f"--freeze {blocks}: {model} has {available} blocks after its stem; pass at most {available} "
            f"(--freeze {available} trains only the layers after the last block)"
        )


def choose_resolution(requested: str, samples: list[Sample]) -> int:
    from mobilenets.models.preprocessing import check_resolution

    if requested != "auto":
        try:
            resolution = int(requested)
        except ValueError:
            raise MobilenetsError(f"--resolution must be a number of pixels or auto, got {requested!r}") from None
        check_resolution(resolution)  # the bounds every command shares (models.preprocessing)
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


def read_resume(run: RunDirectory, options: TrainOptions) -> tuple[TrainConfig, RunImages, list[str]]:
    """A run's config and split for ``--resume``, with the options a resume may change applied, and those
    changes said (config.json is rewritten only once the checkpoint shows they fit the run)."""
    config = TrainConfig.from_dict(run.read_json(RunDirectory.CONFIG))
    split = run.read_split()
    changed = []
    for name, value in options.given().items():
        if name in RESUME_MAY_CHANGE and hasattr(config, name) and getattr(config, name) != value:
            changed.append(f"--{name.replace('_', '-')} {getattr(config, name)} → {value}")
            setattr(config, name, value)
    train = [Sample(f.path, f.label) for f in split.train]
    val = [Sample(f.path, f.label) for f in split.val]
    unlabelled = [Sample(path, UNLABELLED) for path in split.unlabelled]
    if missing := [path for path in split.unlabelled if not path.exists()]:
        # Fewer images would change every epoch's batches: the resumed run would not continue exactly.
        raise MobilenetsError(
            f"{run.path}: {len(missing):,} of the {len(unlabelled):,} unlabelled images it trains on are missing "
            f"(first: {missing[0]}); put the --unlabelled folder back at {config.unlabelled}, or beside the run where "
            "it was, to resume"
        )
    return config, RunImages(train, val, split.classes, unlabelled), changed


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


def resolve_initial_weights(weights: str | None, *, model: str, width: float) -> str | None:
    """What a run starts from: a published name or a path, or None (scratch). ``auto`` may download.

    An explicit name or file that cannot be used is an error; ``auto`` falls back to scratch with one
    loud line saying why and where a checkpoint file could be placed, because training still works.
    """
    from mobilenets.models.published import default_published
    from mobilenets.models.weights import WeightsError, fetch_published

    if weights is None or weights == "none":
        say("initial weights: none (from scratch, --weights none)")
        return None
    if weights != "auto":
        return weights
    default = default_published(model, width)
    if default.name is None:
        warn(f"TRAINING FROM SCRATCH: {default.reason}; small datasets need pretrained weights (--weights FILE)")
        return None
    try:
        fetch_published(default.name, log=say)
    except WeightsError as error:
        warn(f"TRAINING FROM SCRATCH: {default.name} is not available: {error}")
        return None
    say(f"initial weights: {default.reason} (--weights auto; --weights none trains from scratch)")
    return default.name


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
