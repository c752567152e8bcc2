"""The options of a training run, as a user gives them (command line or Python); no torch here, so the
command line can build its parser without loading it."""

from __future__ import annotations

import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

from mobilenets.core.errors import MobilenetsError, check_number

# Each optimizer's weight decay when --weight-decay is not given: AdamW's decoupled decay (Loshchilov &
# Hutter 2019) works at a much larger value than the L2 penalty RMSprop and SGD add to the gradient;
# RMSprop's is MobileNetV3's (§6.1), SGD's torchvision's MobileNetV2 recipe.
DEFAULT_WEIGHT_DECAY = {"adamw": 0.02, "rmsprop": 1e-5, "sgd": 4e-5}
OPTIMIZERS = tuple(DEFAULT_WEIGHT_DECAY)
# What runs a teacher: auto times both on the CPU and keeps the faster (PyTorch on a GPU); the others force one.
TEACHER_ENGINES = ("auto", "torch", "onnxruntime")


@dataclass
class TrainOptions:
    """What a user asks of ``mobilenets train`` (one field per command-line option, same names).

    ``None`` means "not given": the recipe (``--recipe``) or the documented default decides, and the
    value decided is what ``config.json`` records.
    """

    data: Path | str | None = None
    val: Path | str | None = None
    model: str | None = None
    width: float | None = None  # None: the width --weights holds, else 1.0
    resolution: int | str = "auto"
    batch_size: int | None = None
    epochs: int | None = None
    lr: float | None = None
    recipe: str | None = None
    augment: str | None = None
    flip: bool = True
    crop_scale: float | None = None
    optimizer: str = "adamw"
    weight_decay: float | None = None
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    ema: bool = True
    ema_decay: float | None = None
    dropout: float | None = None
    weights: str | None = "auto"
    # One teacher, or several (an ensemble: the mean of their logits); a run dir, a weights file or an .onnx.
    teacher: str | Path | Sequence[str | Path] | None = None
    distill_weight: float = 0.5
    temperature: float = 4.0
    teacher_engine: str = "auto"  # what runs the teacher: auto (the faster here), torch, onnxruntime
    unlabelled: Path | str | None = None  # images only the teacher labels
    mixup: float = 0.0
    random_erasing: float = 0.0
    head_epochs: int | None = None
    freeze: int = 0
    early_stopping: int | None = None
    val_every: int = 1
    val_fraction: float = 0.2
    seed: int = 0
    out: Path | str | None = None
    quantize: bool = False
    export: str | None = None  # device formats to write at the end, comma-separated: "tflite,executorch"
    resume: Path | str | None = None
    checkpoint_minutes: float = 5.0
    checkpoint_steps: int = 0
    quiet: bool = False
    device: str = "auto"
    cache: str = "auto"
    cache_dir: Path | str | None = None
    precision: str = "auto"
    freeze_bn: bool = False
    sync_bn: bool = False
    # The options the user passed, whatever their value: `--seed 0` asks for seed 0 although 0 is the
    # default, so a resume must refuse it, and `--distill-weight 0.5` without a teacher is an error.
    passed: frozenset[str] = field(default=frozenset(), repr=False)

    def __post_init__(self) -> None:
        for name in PATHS:
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
                # Path("") is the current folder: an empty value is refused, never read as ".".
                raise MobilenetsError(
                    f"{flag_of(name)} must be a path (a non-empty string or pathlib.Path), got {value!r}"
                )
            setattr(self, name, Path(value))
        if isinstance(self.export, (list, tuple)) and all(isinstance(item, str) for item in self.export):
            self.export = ",".join(self.export)  # export=["tflite", "executorch"] from Python
        for name in FILE_OR_NAME:  # a pathlib.Path is its string
            if isinstance(getattr(self, name), os.PathLike):
                setattr(self, name, os.fspath(getattr(self, name)))
        self.teacher = _teachers(self.teacher)
        for name in (*WHOLE_NUMBERS, *NUMBERS):
            # NumPy scalars from a sweep's grid (np.int64(30), np.float32(0.1)) are the numbers they hold;
            # as themselves they would reach config.json, which JSON cannot write.
            value = getattr(self, name)
            if type(value).__module__ == "numpy" and isinstance(value, numbers.Real):
                setattr(self, name, int(value) if isinstance(value, numbers.Integral) else float(value))

    @classmethod
    def defaults(cls) -> dict:
        """Each option's default, by name (``passed`` is no option)."""
        return {f.name: f.default for f in fields(cls) if f.name != "passed"}

    def given(self) -> dict:
        """What the user asked for: the options passed, at any value, and any other whose value differs from
        its default (set on the object, or by a recipe file)."""
        defaults = self.defaults()
        return {
            name: getattr(self, name)
            for name in defaults
            if name in self.passed or getattr(self, name) != defaults[name]
        }


def _teachers(value: object) -> str | tuple[str, ...] | None:
    """``teacher`` as one source (a string) or an ensemble (a tuple of two or more); anything else refused."""
    if value is None:
        return None
    items = [value] if isinstance(value, (str, os.PathLike)) else value
    if not isinstance(items, (list, tuple)) or not all(
        isinstance(item, (str, os.PathLike)) and str(item).strip() for item in items
    ):
        raise MobilenetsError(
            f"--teacher must be a run directory or model file (a non-empty string or pathlib.Path), or a list of "
            f"them for an ensemble, got {value!r}"
        )
    sources = teacher_sources(items)
    if not sources:
        raise MobilenetsError("--teacher: an empty list names no teacher; pass one or more, or None for no teacher")
    as_paths = [Path(source) for source in sources]  # runs/t and runs/t/ are one teacher
    for source, path in zip(sources, as_paths, strict=True):
        if as_paths.count(path) > 1:
            raise MobilenetsError(
                f"--teacher {source} is given {as_paths.count(path)} times; an ensemble's teachers must differ "
                "(pass each once)"
            )
    return sources[0] if len(sources) == 1 else tuple(sources)


def teacher_sources(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """The teachers a ``teacher`` setting names: none, one (a string) or several (a list, an ensemble)."""
    if value is None:
        return ()
    if isinstance(value, (str, os.PathLike)):
        return (str(value),)
    return tuple(str(item) for item in value)


PATHS = ("data", "val", "unlabelled", "out", "resume", "cache_dir")
# The type of each option's value, checked before any work (the Python API takes any object).
WHOLE_NUMBERS = (
    "batch_size", "epochs", "head_epochs", "freeze", "early_stopping", "val_every", "seed", "checkpoint_steps",
)  # fmt: skip
NUMBERS = (
    "width", "lr", "weight_decay", "warmup_epochs", "label_smoothing", "ema_decay", "dropout", "distill_weight",
    "temperature", "mixup", "random_erasing", "val_fraction", "checkpoint_minutes", "crop_scale",
)  # fmt: skip
SWITCHES = ("flip", "ema", "quantize", "quiet", "freeze_bn", "sync_bn")
STRINGS = ("model", "weights", "recipe", "export", "augment", "optimizer")  # names or files, checked further later
FILE_OR_NAME = ("weights", "recipe")  # a published or bundled name, or a file (a pathlib.Path too)
CHOICES = {
    "device": ("auto", "cpu", "cuda"),
    "cache": ("auto", "memory", "disk"),
    "precision": ("auto", "fp32", "bf16", "fp16"),
    "optimizer": OPTIMIZERS,
    "teacher_engine": TEACHER_ENGINES,
}


def type_problem(name: str, value: object) -> str | None:
    """Why ``value`` cannot be option ``name``'s (``None``: it can); ``True`` is no epoch count."""
    if value is None:
        return None
    if name in WHOLE_NUMBERS and (isinstance(value, bool) or not isinstance(value, int)):
        return f"{flag_of(name)} must be a whole number, got {value!r}"
    if name in NUMBERS and (isinstance(value, bool) or not isinstance(value, (int, float))):
        return f"{flag_of(name)} must be a number, got {value!r}"
    if name in SWITCHES and not isinstance(value, bool):
        return f"{name} must be True or False, got {value!r}"
    if name in STRINGS and not isinstance(value, str) and not (name in FILE_OR_NAME and isinstance(value, os.PathLike)):
        return f"{flag_of(name)} must be a string, got {value!r}"
    if name in CHOICES and value not in CHOICES[name]:
        return f"{flag_of(name)} must be one of {', '.join(CHOICES[name])}, got {value!r}"
    whole = (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, str) and value.isdigit())
    if name == "resolution" and not (value == "auto" or whole):
        return f"--resolution must be a positive whole number of pixels or auto, got {value!r}"
    return None


# Options whose command-line flag turns them off (store_false).
NEGATED_FLAGS = {"ema": "--no-ema", "flip": "--no-flip"}


def flag_of(name: str) -> str:
    """The command-line flag of a ``TrainOptions`` field, as a user types it."""
    return NEGATED_FLAGS.get(name, "--" + name.replace("_", "-"))


# Options a resumed run may change, and how; every other option is kept from config.json and refused
# when given with --resume (never silently ignored).
RESUME_MAY_CHANGE = {
    "epochs": "train for more (or fewer, not below those done) epochs; the learning-rate schedule is stretched",
    "quantize": "also quantize to int8 at the end",
    "export": "also export these formats at the end",
    "quiet": "progress display",
    "checkpoint_minutes": "how often to checkpoint",
    "checkpoint_steps": "how often to checkpoint",
    "device": "where to train",
    "early_stopping": "patience",
    "val_every": "how often to validate",
    "teacher_engine": "what runs the teacher (its predictions agree to float rounding)",
    "data": "where the run's training images are now (the same files, at the same places inside it)",
    "val": "where the run's validation folder is now",
    "unlabelled": "where the run's unlabelled images are now",
}
# Of those, the folders a resumed run's images moved to (each the same files; training.pipeline.relocate_split).
RELOCATABLE = {"data": "training", "val": "validation", "unlabelled": "unlabelled"}
# Options the command line accepts but does not list in --help (tests and benchmarks use them); messages
# never suggest them.
HIDDEN_OPTIONS = ("checkpoint_steps",)
POSITIVE = {
    "batch_size": "--batch-size",
    "epochs": "--epochs",
    "lr": "--lr",
    "width": "--width",
    "early_stopping": "--early-stopping",  # 0 would stop after the first epoch, whatever it scored
    "val_every": "--val-every",  # 0 would never validate, and the run would keep no weights
}
NON_NEGATIVE = {
    "head_epochs": "--head-epochs",
    "freeze": "--freeze",
    "warmup_epochs": "--warmup-epochs",
    "weight_decay": "--weight-decay",
    "checkpoint_minutes": "--checkpoint-minutes",
    "checkpoint_steps": "--checkpoint-steps",
    "ema_decay": "--ema-decay",
    "mixup": "--mixup",
    "seed": "--seed",
}
# NumPy's and PyTorch's generators take seeds below 2**32 (NumPy's legacy RandomState) and 2**63.
SEED_LIMIT = 2**32


def check_seed(seed: object) -> None:
    """A seed as every command takes it (``train``, ``search``): a whole number from 0 to 2**32 - 1."""
    if seed is not None:
        check_number("--seed", seed, at_least=0, whole=True)
    if seed is None or seed >= SEED_LIMIT:
        raise MobilenetsError(f"--seed {seed}: give a whole number from 0 to {SEED_LIMIT - 1}")
