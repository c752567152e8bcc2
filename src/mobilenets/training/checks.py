"""What ``mobilenets train`` refuses before any work: impossible values, paths that cannot be used, a
resume that cannot continue exactly. Zero is refused like a negative, never replaced by a default."""

from __future__ import annotations

import difflib
from pathlib import Path

import torch

from mobilenets.core.console import warn
from mobilenets.core.errors import MobilenetsError, check_number
from mobilenets.core.files import check_writable
from mobilenets.core.run_directory import RunDirectory
from mobilenets.data.augment_levels import AUGMENT_LEVELS
from mobilenets.models.registry import list_models
from mobilenets.training.checkpoints import read_checkpoint
from mobilenets.training.configuration import TrainConfig
from mobilenets.training.distillation import DistillationSettings, missing_teacher
from mobilenets.training.options import (
    HIDDEN_OPTIONS,
    NON_NEGATIVE,
    POSITIVE,
    RESUME_MAY_CHANGE,
    WHOLE_NUMBERS,
    TrainOptions,
    check_seed,
    flag_of,
    teacher_sources,
    type_problem,
)


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
    check_seed(options.seed)
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
    if options.unlabelled is not None and options.teacher is None:
        raise MobilenetsError(
            f"--unlabelled {options.unlabelled}: images without labels learn from a teacher's predictions; add "
            "--teacher RUN_DIR|FILE|MODEL.onnx (a larger model fine-tuned on --data), or drop --unlabelled"
        )
    if options.teacher is not None and options.distill_weight == 0 and options.unlabelled is None:
        warn(
            "--distill-weight 0: the teacher's predictions carry no weight, yet it runs on every batch; drop --teacher "
            "to train the same student faster, or give it a share (the default 0.5, or 0.9, measured alike)"
        )
    if "teacher_engine" in options.given() and options.teacher is None:
        raise MobilenetsError(
            f"--teacher-engine {options.teacher_engine} chooses what runs the teacher, and no --teacher is given: add "
            "--teacher RUN_DIR|FILE|MODEL.onnx, or drop --teacher-engine"
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


def check_resumed_epochs(epochs: int, *, epochs_done: int) -> None:
    if epochs < epochs_done:
        raise MobilenetsError(
            f"--epochs {epochs}: this run has already trained {epochs_done} epochs; pass at least "
            f"{epochs_done} (--epochs {epochs_done} finishes it now with the epochs done)"
        )


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
