"""The training loop: what suits small models (MobileNetV3 §6.1, https://arxiv.org/abs/1905.02244), resumable to the step.

- AdamW, RMSprop or SGD; no weight decay on depthwise filters, BatchNorm and biases (they have few
  parameters each, and decaying them only hurts); linear warm-up then cosine decay, stepped per batch;
  label smoothing; an exponential moving average (EMA) of the weights, which is what is evaluated and
  saved when enabled.
- Batches come from the decoded uint8 cache (``data.DecodedImages``) and are augmented as whole batches
  (``augment.BatchAugment``), then optionally blended by mixup (``--mixup``; a teacher labels the
  blended batch); the model runs in the layout ``acceleration`` picks.
- Every random draw of step ``s`` of epoch ``e`` comes from a seed derived from (seed, e, s): data order,
  augmentation, dropout. Together with the saved model, optimizer, scheduler and EMA states, a run
  resumed from any checkpoint replays exactly what the uninterrupted run would have done.
- Checkpoints (``checkpoint.pt``: tensors and plain values only, loaded with ``weights_only=True``) are
  written atomically after every epoch, every ``checkpoint_minutes`` and on Ctrl-C.
- ``TrainingContext`` (``distributed.DistributedContext``) is the seam for distributed training: it owns
  the rank, the world size, DDP wrapping, the reduction of metrics and the rule that only rank 0 writes
  files (see docs/distributed.md).
"""

from __future__ import annotations

import csv
import math
import random
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from mobilenets.core.distributed import DistributedContext as TrainingContext
from mobilenets.core.errors import MobilenetsError, check_number
from mobilenets.core.files import atomic_write
from mobilenets.core.run_directory import RunDirectory
from mobilenets.data.augment import BatchAugment, augment_config, jensen_shannon_consistency, normalize_batch
from mobilenets.data.folders import UNLABELLED, DecodedImages, EpochBatches, epoch_seed
from mobilenets.kernels.acceleration import (
    autocast_for,
    model_device,
    prepare_for_training,
    to_model_layout,
    training_step_model,
)
from mobilenets.models.batchnorm import reestimate_batchnorm
from mobilenets.models.preprocessing import Preprocessing
from mobilenets.models.weights import save_weights
from mobilenets.training.distillation import Teacher, TeacherEnsemble, distillation_loss
from mobilenets.training.evaluation import EvaluationResult, evaluate
from mobilenets.training.options import DEFAULT_WEIGHT_DECAY, OPTIMIZERS

METRICS = "metrics.json"
AUGMIX_JSD_WEIGHT = 12.0  # the AugMix paper's λ


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


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    lr: float
    images_per_second: float
    seconds: float

    HEADER = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "images_per_second", "seconds")


@dataclass
class EpochTotals:
    """Running sums over the steps of the unfinished epoch (this process's share under DDP)."""

    loss_sum: float = 0.0
    correct: float = 0.0
    images: float = 0.0
    seconds: float = 0.0

    def add(self, *, loss_sum: float, correct: float, images: float, seconds: float) -> None:
        self.loss_sum += loss_sum
        self.correct += correct
        self.images += images
        self.seconds += seconds


@dataclass
class TrainingState:
    """Everything beyond module states needed to continue a run exactly."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    epoch_totals: EpochTotals = field(default_factory=EpochTotals)
    history: list[dict] = field(default_factory=list)
    best_val_accuracy: float = -1.0
    best_val_loss: float = float("inf")  # breaks ties of accuracy (older checkpoints: none recorded)
    best_epoch: int = -1
    train_seconds: float = 0.0
    augment_seconds: float = 0.0
    images_seen: int = 0
    finished: bool = False

    def __post_init__(self) -> None:
        # A checkpoint holds the totals as a dict; those of earlier versions as a list in field order.
        totals = self.epoch_totals
        if isinstance(totals, dict):
            self.epoch_totals = EpochTotals(**totals)
        elif isinstance(totals, (list, tuple)):
            self.epoch_totals = EpochTotals(*totals)


def is_better(accuracy: float, loss: float, *, best_accuracy: float, best_loss: float) -> bool:
    """The epoch kept as ``model.safetensors``: higher validation accuracy, or the same with a lower loss.

    On small validation sets accuracy moves in steps of one image and ties are common. Keeping the first
    of the tied epochs kept an early, half-trained one: on 500 Fashion-MNIST images (100 validation
    images), epochs 5 and 18-27 all scored 95%; epoch 5 scored 90.4% on held-out test images, the final
    weights 92.1% (BENCHMARKS.md, "Sixth round"). The loss separates them.
    """
    return accuracy > best_accuracy or (accuracy == best_accuracy and loss < best_loss)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay only full convolution and linear weights: not depthwise filters, BatchNorm or biases."""
    no_decay: set[int] = set()
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels:
            no_decay.add(id(module.weight))
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            no_decay.update(id(p) for p in module.parameters(recurse=False))
    decay, rest = [], []
    for parameter in model.parameters():
        (rest if id(parameter) in no_decay or parameter.ndim <= 1 else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    groups = parameter_groups(model, config.resolved_weight_decay)
    if config.optimizer == "adamw":
        # One fused kernel for all parameters: V3-Small's AdamW step took 11.4 ms per parameter, 10.0 ms
        # with foreach and 3.8 ms fused on 2 cores (benchmarks/optimizer_step.py, BENCHMARKS.md).
        return torch.optim.AdamW(groups, lr=config.lr, fused=True)
    if config.optimizer == "rmsprop":
        # MobileNetV3 §6.1: RMSprop, momentum 0.9; TF's decay 0.9 and a large epsilon keep early steps sane.
        return torch.optim.RMSprop(groups, lr=config.lr, alpha=0.9, eps=1e-3, momentum=0.9, foreach=True)
    if config.optimizer == "sgd":
        # Nesterov momentum 0.9, timm's default optimizer (torchvision's MobileNetV2 recipe: plain momentum).
        return torch.optim.SGD(groups, lr=config.lr, momentum=0.9, nesterov=True, foreach=True)
    raise ValueError(f"unknown optimizer {config.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")


def make_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warm-up from 1% of the lr, then cosine decay to ``min_lr_ratio`` of it, per step."""
    total = max(1, config.epochs * steps_per_epoch)
    warmup = min(total - 1, round(config.warmup_epochs * steps_per_epoch))
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=max(1, total - warmup), eta_min=config.lr * config.min_lr_ratio
    )
    if warmup <= 0:
        return cosine
    linear = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.01, end_factor=1.0, total_iters=warmup)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [linear, cosine], milestones=[warmup])


def schedule_plan(scheduler_state: dict) -> tuple:
    """The lengths that shape a ``make_scheduler`` schedule, from its ``state_dict``: two states with the
    same plan describe the same learning-rate curve."""
    parts = scheduler_state.get("_schedulers", [scheduler_state])
    return (tuple(scheduler_state.get("_milestones", ())), *((p.get("total_iters"), p.get("T_max")) for p in parts))


def replay_schedule(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int, steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """A fresh ``make_scheduler`` schedule advanced by ``steps``: the learning rate an uninterrupted run of
    ``config`` has after that many steps (resuming with another --epochs or number of processes).

    The schedulers update the learning rate from its current value, so each group restarts from its
    initial lr and the same updates are replayed in the same order as the uninterrupted run's.
    """
    for group in optimizer.param_groups:
        group["lr"] = group.get("initial_lr", group["lr"])
    scheduler = make_scheduler(optimizer, config, steps_per_epoch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()": intended here
        for _ in range(steps):
            scheduler.step()
    return scheduler


def ema_decay_for(config: TrainConfig, steps_per_epoch: int) -> float:
    if config.ema_decay is not None:
        return config.ema_decay
    horizon = max(10.0, config.epochs * steps_per_epoch / 10)
    return 1 - 1 / horizon


class ExponentialMovingAverage(AveragedModel):
    """``AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)``, updated
    by the same arithmetic from tensor lists built once.

    torch's own update walks and regroups every parameter and buffer in Python at each step: 4.5 ms
    for V3-Small's ~350 tensors against ~0.4 ms for the lerp itself (``benchmarks/optimizer_step.py``),
    a few percent of a 224 px step and much more of a small-image one. The module tree, ``state_dict``
    and ``n_averaged`` are AveragedModel's, so checkpoints and resuming are unchanged.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        super().__init__(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
        self.decay = decay
        self._lists: tuple[nn.Module, list, list] | None = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_lists"] = None  # a copy or a pickle does not drag the training model along
        return state

    def _tensor_lists(self, model: nn.Module) -> tuple[list, list]:
        """(float pairs grouped by device and dtype, integer pairs), cached for this model."""
        if self._lists is None or self._lists[0] is not model:
            groups: dict[tuple, tuple[list, list]] = {}
            integers: list[tuple[torch.Tensor, torch.Tensor]] = []
            averaged = [*self.module.parameters(), *self.module.buffers()]
            current = [*model.parameters(), *model.buffers()]
            for mine, theirs in zip(averaged, current, strict=True):
                mine, theirs = mine.detach(), theirs.detach()
                if mine.is_floating_point() or mine.is_complex():
                    group = groups.setdefault((mine.device, mine.dtype, theirs.device, theirs.dtype), ([], []))
                    group[0].append(mine)
                    group[1].append(theirs)
                else:
                    integers.append((mine, theirs))
            self._lists = (model, list(groups.values()), integers)
        return self._lists[1], self._lists[2]

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        if self.n_averaged == 0:
            super().update_parameters(model)  # the first update copies the model
            return
        float_groups, integers = self._tensor_lists(model)
        for mine, theirs in float_groups:
            if theirs[0].device != mine[0].device or theirs[0].dtype != mine[0].dtype:
                theirs = [t.to(mine[0].device, mine[0].dtype) for t in theirs]
            torch._foreach_lerp_(mine, theirs, 1 - self.decay)
        if integers:  # num_batches_tracked: get_ema_multi_avg_fn's formula, over all of them at once
            mine, theirs = [m for m, _ in integers], [t.to(m.device) for m, t in integers]
            blended = torch._foreach_add(
                torch._foreach_mul(mine, self.decay), torch._foreach_mul(theirs, 1 - self.decay)
            )
            torch._foreach_copy_(mine, blended)
        self.n_averaged += 1


def adapt_batchnorm_momentum(model: nn.Module, total_steps: int) -> None:
    """Use PyTorch's BN momentum 0.1 on short runs.

    V3's TF convention (momentum 0.01, i.e. decay 0.99) averages running statistics over ~100 steps:
    fine on ImageNet, but a run of a few hundred steps ends with statistics still near their
    initialization, and the evaluated model collapses to one prediction.
    """
    if total_steps >= 5_000:
        return
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and (module.momentum or 0) < 0.1:
            module.momentum = 0.1


@torch.no_grad()
def recompute_batchnorm_statistics(
    model: nn.Module,
    images: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 256,
    max_images: int = 2048,
    seed: int = 0,
) -> None:
    """Set BatchNorm running statistics to the exact averages over (up to ``max_images``) training images.

    Running averages lag behind weights that move fast (short runs, fine-tuning), and an EMA of weights
    has no statistics of its own; either way the evaluated model can collapse to one prediction. The
    exact statistics of the weights being evaluated fix both (PreciseBN, Wu & Johnson 2021).
    """
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:max_images]
    batches = (
        to_model_layout(normalize_batch(images[order[start : start + batch_size]], mean, std), model_device(model))
        for start in range(0, len(order), batch_size)
    )
    reestimate_batchnorm(model, batches)


def head_parameters(model: nn.Module) -> set[int]:
    return {id(p) for p in model.classifier.parameters()}


def frozen_layer_parameters(model: nn.Module, blocks: int) -> set[int]:
    """``--freeze N``: the stem and the first ``N`` blocks, whose weights keep their pretrained values.

    Nothing before them needs a gradient, so backpropagation stops at the first trained block: the
    early, high-resolution layers cost a forward pass only. Their BatchNorm layers still normalize with
    each batch's statistics, as the layers after them do, so training and evaluation see the same model.
    """
    if blocks <= 0:
        return set()
    return {id(p) for module in (model.stem, *list(model.blocks)[:blocks]) for p in module.parameters()}


def set_backbone_frozen(model: nn.Module, frozen: bool, frozen_blocks: int = 0) -> None:
    """Train the classifier alone (fine-tuning warm-up): freeze other weights and BatchNorm statistics.

    ``frozen_blocks`` (``--freeze``) stay frozen either way.
    """
    head = head_parameters(model)
    kept = frozen_layer_parameters(model, frozen_blocks)
    for parameter in model.parameters():
        parameter.requires_grad_((not frozen or id(parameter) in head) and id(parameter) not in kept)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.train(not frozen)


def freeze_batchnorm_statistics(model: nn.Module) -> None:
    """Normalize with the running statistics instead of each batch's (their affine weights still learn)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def atomic_torch_save(obj: object, path: Path) -> None:
    """Save beside ``path`` and rename: a full disk or Ctrl-C keeps the previous checkpoint whole."""
    estimate = sum(t.numel() * t.element_size() for t in _tensors_in(obj))
    atomic_write(path, lambda temporary: torch.save(obj, temporary), needed_bytes=estimate)


def _tensors_in(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for value in obj.values() for t in _tensors_in(value)]
    if isinstance(obj, (list, tuple)):
        return [t for value in obj for t in _tensors_in(value)]
    return []


def read_checkpoint(path: Path) -> dict:
    """A training checkpoint, read without unpickling code (``weights_only``); damage is one clear line."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(checkpoint, dict) or "model" not in checkpoint or "state" not in checkpoint:
            raise ValueError("not a mobilenets training checkpoint")
        return checkpoint
    except Exception as error:  # torch raises many types for damaged files; its advice to unpickle must not reach users
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        if "weights_only" in reason or "Weights only load failed" in str(error):
            reason = "holds objects that cannot be read safely (pickled code)"
        last = Path(path).with_name(RunDirectory.LAST)
        raise MobilenetsError(
            f"{path}: unreadable checkpoint ({reason[:120]}); the run cannot continue exactly. Its last saved weights "
            + (f"are in {last}: start a new run from them with --weights {last}" if last.exists() else "are lost")
        ) from None


@dataclass(frozen=True)
class MixedBatch:
    """A mixup batch: the blended images, their label distributions, and the label that dominates each."""

    images: torch.Tensor
    targets: torch.Tensor  # λ·onehot(y) + (1 − λ)·onehot(y of the partner image)
    labels: torch.Tensor  # what training accuracy counts against


def mixup(
    images: torch.Tensor, labels: torch.Tensor, *, alpha: float, num_classes: int, generator: torch.Generator
) -> MixedBatch:
    """Mixup (Zhang et al. 2018, https://arxiv.org/abs/1710.09412): image i blended with image n − 1 − i.

    One λ ~ Beta(α, α) per batch and the batch's mirror order as partners, as timm does (the batch
    order is already random). Mixing normalized images is mixing pixels: normalization is affine. λ is
    drawn from the step's generator, so a resumed run mixes exactly as the uninterrupted one.
    """
    lam = random.Random(int(torch.randint(2**62, (1,), generator=generator))).betavariate(alpha, alpha)
    one_hot = F.one_hot(labels, num_classes).float()
    mixed = lam * images + (1 - lam) * images.flip(0)
    targets = lam * one_hot + (1 - lam) * one_hot.flip(0)
    return MixedBatch(images=mixed, targets=targets, labels=labels if lam >= 0.5 else labels.flip(0))


def check_mixup(alpha: float, *, augment: str) -> None:
    """``--mixup`` is a Beta parameter, and cannot join AugMix, whose loss compares three views of one image."""
    check_number("--mixup", alpha, at_least=0)
    if alpha > 0 and augment.startswith("augmix"):
        raise MobilenetsError(f"--mixup and --augment {augment} cannot be combined: choose one")


class Interrupted(Exception):
    """Training stopped by Ctrl-C after saving a checkpoint."""


class Trainer:
    """Owns the model, optimizer, scheduler, EMA and state of one run, and the files of its run dir."""

    def __init__(
        self,
        config: TrainConfig,
        model: nn.Module,
        train_data: DecodedImages,
        val_data: DecodedImages,
        classes: list[str],
        run: RunDirectory | Path,
        preprocessing: Preprocessing,
        context: TrainingContext | None = None,
        log: Callable[[str], None] = print,
        show_progress: bool = True,
        teacher: Teacher | TeacherEnsemble | None = None,
    ) -> None:
        self.config = config
        self.teacher = teacher  # runs in inference on every (augmented) batch when distilling
        self.context = context or TrainingContext()
        self.train_data, self.val_data = train_data, val_data
        # `train --unlabelled`: images whose only target is the teacher's prediction (training.distillation).
        self.unlabelled_images = int((train_data.labels == UNLABELLED).sum())
        self.steps_per_epoch = len(self.batches(0))
        if self.steps_per_epoch == 0:
            raise MobilenetsError(
                f"{len(train_data)} training images make no full batch of {config.batch_size}; lower --batch-size"
            )
        # The run's length decides whether compiling pays back its compile time (docs/performance.md).
        self.model = prepare_for_training(
            model,
            self.context.device,
            planned_steps=config.epochs * self.steps_per_epoch,
            precision=config.precision,
        )
        # fp16 (CUDA) needs loss scaling; for bf16 and fp32 the scaler is a pass-through.
        self.scaler = torch.amp.GradScaler(
            self.context.device.type, enabled=getattr(self.model, "training_precision", "") == "float16"
        )
        # Frozen before wrapping: DistributedDataParallel then never waits for their gradients.
        set_backbone_frozen(self.model, False, config.freeze)
        self.train_model = self.context.wrap_model(training_step_model(self.model))
        self.classes = classes
        self.run = RunDirectory(run)  # its files: checkpoint, weights, epochs.csv
        self.preprocessing = preprocessing
        self.log = log if self.context.is_main else (lambda _: None)
        self.show_progress = show_progress and self.context.is_main
        self.augment = BatchAugment(
            augment_config(
                config.augment,
                config.resolution,
                flip=config.flip,
                crop_scale=config.crop_scale,
                erase_probability=config.random_erasing,
            )
        )
        adapt_batchnorm_momentum(self.model, config.epochs * self.steps_per_epoch)
        self.optimizer = make_optimizer(self.model, config)
        self.scheduler = make_scheduler(self.optimizer, config, self.steps_per_epoch)
        self.ema = (
            ExponentialMovingAverage(self.model, ema_decay_for(config, self.steps_per_epoch)) if config.ema else None
        )
        self.state = TrainingState()
        self.last_checkpoint_time = time.monotonic()

    # ------------------------------------------------------------------ data

    def batches(self, epoch: int) -> EpochBatches:
        return EpochBatches(
            len(self.train_data),
            self.config.batch_size,
            self.config.seed,
            epoch,
            self.context.rank,
            self.context.world_size,
        )

    @property
    def labelled_images(self) -> int:
        """The training images with a label (``train_data`` also holds the unlabelled ones)."""
        return len(self.train_data) - self.unlabelled_images

    @property
    def eval_model(self) -> nn.Module:
        """What is evaluated and saved: the EMA of the weights when enabled."""
        return self.ema.module if self.ema is not None else self.model

    # ------------------------------------------------------------------ checkpoints

    def checkpoint_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "state": asdict(self.state),
            "torch_rng": torch.get_rng_state(),
            "world_size": self.context.world_size,
            "scaler": self.scaler.state_dict(),
        }

    def save_checkpoint(self) -> None:
        if self.context.is_main:
            atomic_torch_save(self.checkpoint_dict(), self.run.checkpoint)
        self.last_checkpoint_time = time.monotonic()

    def load_checkpoint(self, path: Path) -> None:
        checkpoint = read_checkpoint(path)
        self.model.load_state_dict(checkpoint["model"])
        if self.ema is not None and checkpoint["ema"] is not None:
            self.ema.load_state_dict(checkpoint["ema"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        if checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        self.state = TrainingState(**checkpoint["state"])
        torch.set_rng_state(checkpoint["torch_rng"])
        saved_world_size = int(checkpoint.get("world_size", 1))
        if saved_world_size != self.context.world_size:
            self.continue_with_another_world_size(saved_world_size)
        elif schedule_plan(checkpoint["scheduler"]) == schedule_plan(self.scheduler.state_dict()):
            self.scheduler.load_state_dict(checkpoint["scheduler"])
        else:  # --resume --epochs N: the rest of the run follows the schedule of an N-epoch run
            self.scheduler = replay_schedule(self.optimizer, self.config, self.steps_per_epoch, self.state.global_step)

    def continue_with_another_world_size(self, saved_world_size: int) -> None:
        """Resume a run saved by ``saved_world_size`` processes with this job's number of processes.

        Steps per epoch change with the number of processes; the position inside the interrupted epoch
        is carried over as images seen, and the learning-rate schedule is advanced to the same fraction
        of the run. Everything else in the checkpoint does not depend on the number of processes.
        """
        state, config = self.state, self.config
        saved_steps_per_epoch = len(
            EpochBatches(len(self.train_data), config.batch_size, config.seed, 0, 0, saved_world_size)
        )
        images_into_epoch = state.step_in_epoch * config.batch_size * saved_world_size
        state.step_in_epoch = min(
            self.steps_per_epoch, images_into_epoch // (config.batch_size * self.context.world_size)
        )
        done = (state.epoch * saved_steps_per_epoch + images_into_epoch / (config.batch_size * saved_world_size)) / max(
            1, config.epochs * saved_steps_per_epoch
        )
        state.global_step = round(done * config.epochs * self.steps_per_epoch)
        self.scheduler = replay_schedule(self.optimizer, config, self.steps_per_epoch, state.global_step)
        self.log(
            f"resuming a run of {saved_world_size} process(es) with {self.context.world_size}: epoch "
            f"{state.epoch + 1}, step {state.step_in_epoch}/{self.steps_per_epoch} of this world size"
        )

    # ------------------------------------------------------------------ the loop

    def train_step(self, indices: torch.Tensor, epoch: int, step: int) -> tuple[float, int, int]:
        seed = epoch_seed(self.config.seed, epoch, step)
        torch.manual_seed(seed)  # dropout and anything else drawing from the global generator
        generator = torch.Generator().manual_seed(seed)
        started = time.perf_counter()
        images = self.augment.normalized(
            self.train_data.images[indices], generator, self.preprocessing.mean, self.preprocessing.std
        )
        labels = self.train_data.labels[indices]
        targets: torch.Tensor = labels  # class indices, or class probabilities after mixup
        if self.config.mixup > 0:  # after augmentation, and the teacher labels this mixed batch (function matching)
            mixed = mixup(images, labels, alpha=self.config.mixup, num_classes=len(self.classes), generator=generator)
            images, targets, labels = mixed.images, mixed.targets, mixed.labels
        # Augmented on the CPU; on the model's device from here (also where the thread count is re-checked).
        images = to_model_layout(images, self.context.device)
        labels, targets = labels.to(self.context.device), targets.to(self.context.device)
        self.state.augment_seconds += time.perf_counter() - started
        with autocast_for(self.model):
            logits = self.train_model(images).float()  # the loss in fp32
        if self.augment.views == 3:
            clean, view1, view2 = logits.chunk(3)
            loss, teacher_logits = self.label_loss(clean, labels, images[: len(clean)])  # the teacher sees the clean view
            loss = loss + AUGMIX_JSD_WEIGHT * jensen_shannon_consistency(clean, view1, view2)
            logits = clean
        else:
            loss, teacher_logits = self.label_loss(logits, targets, images)
        if teacher_logits is not None and self.unlabelled_images:
            # Training accuracy counts an unlabelled image as right when the student agrees with its teacher.
            labels = torch.where(labels == UNLABELLED, teacher_logits.argmax(1), labels)
        if not torch.isfinite(loss):
            raise MobilenetsError(  # the settings' doing, not a fault of the program
                f"the training loss became {loss.item()} at epoch {epoch + 1} step {step + 1}: training diverged; "
                f"train again with a lower --lr (this run: {self.config.lr:g})"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        correct = int((logits.argmax(1) == labels).sum())
        return float(loss.detach()) * len(labels), correct, len(labels)

    def label_loss(
        self, logits: torch.Tensor, targets: torch.Tensor, images: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Cross-entropy with the labels, or with a teacher the distillation loss (training.distillation);
        also the teacher's logits (None without one).

        ``targets`` are class indices (UNLABELLED for an image without a label), or class probabilities after
        mixup; the teacher runs on ``images``, the very (mixed) batch the student was given.
        """
        if self.teacher is None:
            return F.cross_entropy(logits, targets, label_smoothing=self.config.label_smoothing), None
        teacher_logits = self.teacher(images, self.preprocessing.mean, self.preprocessing.std)
        loss = distillation_loss(
            logits,
            teacher_logits,
            targets,
            weight=self.config.distill_weight,
            temperature=self.config.temperature,
            label_smoothing=self.config.label_smoothing,
        )
        return loss, teacher_logits

    def run_epoch(self, epoch: int, progress) -> None:
        state = self.state
        frozen = epoch < self.config.head_epochs
        self.model.train()
        set_backbone_frozen(self.model, frozen, self.config.freeze)
        if self.config.freeze_bn:
            freeze_batchnorm_statistics(self.model)
        task = (
            progress.add_task(f"epoch {epoch + 1}/{self.config.epochs}", total=self.steps_per_epoch)
            if progress
            else None
        )
        if progress:
            progress.update(task, completed=state.step_in_epoch)
        for step, indices in enumerate(self.batches(epoch)):
            if step < state.step_in_epoch:
                continue
            started = time.perf_counter()
            loss_sum, correct, count = self.train_step(indices, epoch, step)
            seconds = time.perf_counter() - started
            totals = state.epoch_totals
            totals.add(loss_sum=loss_sum, correct=correct, images=count, seconds=seconds)
            state.train_seconds += seconds
            state.images_seen += count * self.context.world_size
            state.step_in_epoch = step + 1
            state.global_step += 1
            if progress:
                progress.update(
                    task,
                    advance=1,
                    description=(
                        f"epoch {epoch + 1}/{self.config.epochs} loss {totals.loss_sum / totals.images:.3f} "
                        f"acc {totals.correct / totals.images:.3f} {totals.images / max(totals.seconds, 1e-9):.0f} img/s"
                    ),
                )
            if self.should_checkpoint_mid_epoch():
                self.save_checkpoint()
        if frozen:
            set_backbone_frozen(self.model, False, self.config.freeze)
            if self.config.freeze_bn:
                freeze_batchnorm_statistics(self.model)
        if progress:
            progress.remove_task(task)

    def should_checkpoint_mid_epoch(self) -> bool:
        steps = self.config.checkpoint_steps
        if steps and self.state.global_step % steps == 0:
            return True
        return time.monotonic() - self.last_checkpoint_time > 60 * self.config.checkpoint_minutes

    def finish_epoch(self, epoch: int) -> EpochRecord:
        state = self.state
        own = state.epoch_totals
        loss_sum, correct, images = self.context.reduce_sum(
            torch.tensor([own.loss_sum, own.correct, own.images], dtype=torch.float64)
        ).tolist()
        if not self.config.freeze_bn:
            recompute_batchnorm_statistics(
                self.eval_model,
                self.train_data.images,
                self.preprocessing.mean,
                self.preprocessing.std,
                seed=self.config.seed,
            )
        result = self.context.merge_evaluation(self.evaluate())
        record = EpochRecord(
            epoch=epoch + 1,
            train_loss=loss_sum / max(images, 1),
            train_accuracy=correct / max(images, 1),
            val_loss=result.loss,
            val_accuracy=result.accuracy,
            lr=self.optimizer.param_groups[0]["lr"],
            images_per_second=images / max(own.seconds, 1e-9),
            seconds=own.seconds,
        )
        state.history.append(asdict(record))
        if is_better(result.accuracy, result.loss, best_accuracy=state.best_val_accuracy, best_loss=state.best_val_loss):
            state.best_val_accuracy, state.best_val_loss, state.best_epoch = result.accuracy, result.loss, epoch + 1
            self.save_model("model", {"epoch": epoch + 1, "val_accuracy": result.accuracy})
        state.epoch, state.step_in_epoch, state.epoch_totals = epoch + 1, 0, EpochTotals()
        self.write_epochs_csv()
        self.save_checkpoint()
        return record

    def evaluate(self, model: nn.Module | None = None) -> EvaluationResult:
        # fp32, as saved and deployed: autocast lives only in the training step.
        return evaluate(
            model or self.eval_model,
            self.val_data.images,
            self.val_data.labels,
            self.classes,
            self.preprocessing.mean,
            self.preprocessing.std,
        )

    def save_model(self, name: str, extra: dict) -> None:
        if self.context.is_main:
            save_weights(
                self.eval_model,
                self.run / f"{name}.safetensors",
                self.classes,
                self.preprocessing,
                {"training": extra},
            )

    def write_epochs_csv(self) -> None:
        if not self.context.is_main:
            return
        def write(temporary: Path) -> None:
            with open(temporary, "w", newline="") as file:
                writer = csv.DictWriter(file, fieldnames=EpochRecord.HEADER)
                writer.writeheader()
                writer.writerows(self.state.history)

        atomic_write(self.run / RunDirectory.EPOCHS, write)

    def early_stop(self) -> bool:
        patience = self.config.early_stopping
        state = self.state
        return patience is not None and state.best_epoch > 0 and state.epoch - state.best_epoch >= patience

    def fit(self, on_epoch: Callable[[EpochRecord], None] | None = None) -> TrainingState:
        """Train from the current state to the last epoch; Ctrl-C saves a checkpoint and raises ``Interrupted``."""
        progress = self._progress()
        try:
            if progress:
                progress.start()
            for epoch in range(self.state.epoch, self.config.epochs):
                if self.early_stop():  # resumed after it had stopped early (to finish int8, exports, the report)
                    break
                self.run_epoch(epoch, progress)
                record = self.finish_epoch(epoch)
                if on_epoch:
                    on_epoch(record)
                if self.early_stop():
                    self.log(
                        f"early stopping: no val improvement for {self.config.early_stopping} epochs "
                        f"(best {self.state.best_val_accuracy:.4f} at epoch {self.state.best_epoch})"
                    )
                    break
        except KeyboardInterrupt:
            self.save_checkpoint()
            raise Interrupted(str(self.run.path)) from None
        finally:
            if progress:
                progress.stop()
        self.state.finished = True
        self.save_model("last", {"epoch": self.state.epoch})
        self.save_checkpoint()
        return self.state

    def _progress(self):
        if not self.show_progress:
            return None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        return Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True
        )

    def summary_metrics(self) -> dict:
        state = self.state
        final = state.history[-1] if state.history else {}
        return {
            "best_val_accuracy": max(state.best_val_accuracy, 0.0),
            "best_epoch": state.best_epoch,
            "final_val_accuracy": final.get("val_accuracy", 0.0),
            "final_val_loss": final.get("val_loss", math.nan),
            "epochs_completed": state.epoch,
            "train_images_per_second": state.images_seen / max(state.train_seconds, 1e-9),
            "train_seconds": state.train_seconds,
            "augment_seconds": state.augment_seconds,
            "augment_share_of_step_time": state.augment_seconds / max(state.train_seconds, 1e-9),
            "train_images": self.labelled_images,
            **({"unlabelled_images": self.unlabelled_images} if self.unlabelled_images else {}),
            "val_images": len(self.val_data),
            "evaluated_weights": "ema" if self.ema is not None else "raw",
        }
