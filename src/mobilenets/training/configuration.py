"""The settings a new run records in ``config.json``: the options as given, and every value left open
decided (architecture, initial weights, ``--recipe auto``'s schedule, resolution, ``--out``), each decision said."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import NamedTuple

from PIL import Image

from mobilenets.core.console import say, warn
from mobilenets.core.errors import MobilenetsError
from mobilenets.data.folders import Sample
from mobilenets.training.mixup import check_mixup
from mobilenets.training.options import DEFAULT_WEIGHT_DECAY, PATHS, TrainOptions
from mobilenets.training.recipes import (
    DEFAULTS,
    FINETUNE_RECIPES,
    choose_recipe,
    dataset_size_warning,
    load_recipe_file,
    range_warnings,
)


@dataclass
class TrainConfig:
    """Everything that defines a run; saved as ``config.json`` and read back by ``--resume``."""

    data: str
    model: str = "mobilenet_v3_small"
    width: float = 1.0
    resolution: int = 224
    batch_size: int = 32
    epochs: int = 10
    lr: float = 1e-3
    optimizer: str = "adamw"
    weight_decay: float | None = None  # None: the optimizer's (options.DEFAULT_WEIGHT_DECAY)
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01
    label_smoothing: float = 0.1
    ema: bool = True
    ema_decay: float | None = None  # None: an averaging horizon of a tenth of the run
    augment: str = "medium"
    dropout: float | None = None
    seed: int = 0
    weights: str | None = None
    # Where the initial weights came from: a published name or a path; None when trained from scratch.
    initial_weights: str | None = None
    head_epochs: int = 0
    # Fine-tuning: the stem and the first N blocks keep their pretrained weights (faster steps: no backward there).
    freeze: int = 0
    # Knowledge distillation (training.distillation): a run dir, file or .onnx; a list is an ensemble.
    teacher: str | list[str] | None = None
    distill_weight: float = 0.5
    temperature: float = 4.0
    teacher_engine: str = "auto"  # auto, torch, onnxruntime (training.distillation.load_teacher)
    # A folder of images without labels (absolute): the teacher's predictions are their only target.
    unlabelled: str | None = None
    mixup: float = 0.0  # mixup's Beta(α, α), 0: off; with a teacher, the teacher labels the blends
    # Horizontal flips in the levels that have them; off for images with a handedness (text, digits, and
    # Fashion-MNIST's shoes, which all face one way: flips cost 0.5 points there, docs/training.md).
    flip: bool = True
    # The smallest share of the image's area a random-resized crop keeps (None: the --augment level's).
    crop_scale: float | None = None
    random_erasing: float = 0.0  # probability of erasing a random rectangle of each training image (timm's re_prob)
    early_stopping: int | None = None  # epochs without val improvement
    # Validate (PreciseBN, evaluation, the kept model.safetensors) every N epochs and after the last: on large
    # data the per-epoch validation is a share of the run worth saving (docs/training.md).
    val_every: int = 1
    val: str | None = None
    val_fraction: float = 0.2
    out: str = "runs/train"
    quantize: bool = False
    export: str | None = None  # formats exported when the run finishes (mobilenets.api), comma-separated
    recipe: str | None = None
    checkpoint_minutes: float = 5.0
    checkpoint_steps: int = 0  # also checkpoint every N steps (0: off); tests use it to kill mid-epoch
    freeze_bn: bool = False  # keep BatchNorm statistics fixed (fine-tuning with small per-process batches)
    sync_bn: bool = False  # SyncBatchNorm across processes (CUDA only in PyTorch)
    precision: str = "auto"  # autocast dtype: auto (bf16 where native), fp32, bf16, fp16 (CUDA, with a scaler)
    device: str = "auto"
    cache: str = "auto"  # decoded images in memory, or memory-mapped on disk (datasets larger than memory)
    cache_dir: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def resolved_weight_decay(self) -> float:
        if self.weight_decay is not None:
            return self.weight_decay
        return DEFAULT_WEIGHT_DECAY[self.optimizer]


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
        if width not in (None, published.width):
            from mobilenets.models.published import default_published

            at_width = default_published(published.architecture, width).name
            other = f"--weights {at_width}" if at_width else f"a checkpoint of width {width:g} (--weights FILE)"
            raise MobilenetsError(
                f"--width {width:g}: --weights {weights} is published at width {published.width:g}; drop --width, pass "
                f"--width {published.width:g}, or pass {other}"
            )
        return published.architecture, published.width
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
