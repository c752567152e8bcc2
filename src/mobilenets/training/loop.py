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

The run's settings are ``configuration.TrainConfig``; the optimizer, schedule, EMA, BatchNorm statistics and
frozen layers are in ``optimization``; checkpoint files in ``checkpoints``; mixup in ``mixup``.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mobilenets.core.distributed import DistributedContext as TrainingContext
from mobilenets.core.errors import MobilenetsError
from mobilenets.core.files import atomic_write
from mobilenets.core.run_directory import RunDirectory
from mobilenets.data.augment import BatchAugment, augment_config, jensen_shannon_consistency
from mobilenets.data.folders import UNLABELLED, DecodedImages, EpochBatches, epoch_seed
from mobilenets.kernels.acceleration import autocast_for, prepare_for_training, to_model_layout, training_step_model
from mobilenets.models.preprocessing import Preprocessing
from mobilenets.models.weights import save_weights
from mobilenets.training.checkpoints import atomic_torch_save, read_checkpoint
from mobilenets.training.configuration import TrainConfig
from mobilenets.training.distillation import Teacher, TeacherEnsemble, distillation_loss
from mobilenets.training.evaluation import EvaluationResult, evaluate
from mobilenets.training.mixup import mixup
from mobilenets.training.optimization import (
    ExponentialMovingAverage,
    adapt_batchnorm_momentum,
    ema_decay_for,
    freeze_batchnorm_statistics,
    make_optimizer,
    make_scheduler,
    recompute_batchnorm_statistics,
    replay_schedule,
    schedule_plan,
    set_backbone_frozen,
)

METRICS = "metrics.json"
AUGMIX_JSD_WEIGHT = 12.0  # the AugMix paper's λ


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float | None  # None: an epoch not validated (--val-every)
    val_accuracy: float | None
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
    validation_seconds: float = 0.0  # PreciseBN and the evaluation at the end of validated epochs
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

    def validates(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` (0-based) ends with a validation: every ``val_every``-th, and always the last."""
        done = epoch + 1
        return done % self.config.val_every == 0 or done >= self.config.epochs

    def finish_epoch(self, epoch: int) -> EpochRecord:
        state = self.state
        own = state.epoch_totals
        loss_sum, correct, images = self.context.reduce_sum(
            torch.tensor([own.loss_sum, own.correct, own.images], dtype=torch.float64)
        ).tolist()
        result = self.validate() if self.validates(epoch) else None
        record = EpochRecord(
            epoch=epoch + 1,
            train_loss=loss_sum / max(images, 1),
            train_accuracy=correct / max(images, 1),
            val_loss=result.loss if result is not None else None,
            val_accuracy=result.accuracy if result is not None else None,
            lr=self.optimizer.param_groups[0]["lr"],
            images_per_second=images / max(own.seconds, 1e-9),
            seconds=own.seconds,
        )
        state.history.append(asdict(record))
        if result is not None:
            self.keep_if_best(result, epoch=epoch + 1)
        state.epoch, state.step_in_epoch, state.epoch_totals = epoch + 1, 0, EpochTotals()
        self.write_epochs_csv()
        self.save_checkpoint()
        return record

    def validate(self) -> EvaluationResult:
        """The BatchNorm statistics recomputed, then the validation images evaluated (timed as validation)."""
        started = time.perf_counter()
        # The statistics are only needed by the evaluation (and the saved weights, which follow it).
        if not self.config.freeze_bn:
            recompute_batchnorm_statistics(
                self.eval_model,
                self.train_data.images,
                self.preprocessing.mean,
                self.preprocessing.std,
                seed=self.config.seed,
            )
        result = self.context.merge_evaluation(self.evaluate())
        self.state.validation_seconds += time.perf_counter() - started
        return result

    def keep_if_best(self, result: EvaluationResult, *, epoch: int) -> None:
        """Save the weights as ``model.safetensors`` when epoch ``epoch`` (1-based) is the best validated yet."""
        state = self.state
        if is_better(result.accuracy, result.loss, best_accuracy=state.best_val_accuracy, best_loss=state.best_val_loss):
            state.best_val_accuracy, state.best_val_loss, state.best_epoch = result.accuracy, result.loss, epoch
            self.save_model("model", {"epoch": epoch, "val_accuracy": result.accuracy})

    def validate_last_epoch(self) -> None:
        """Validate the last epoch trained when --val-every skipped it: a run resumed with ``--epochs`` equal to
        the epochs it had done ends there, and its final figures and kept weights must include the final ones."""
        state = self.state
        if not state.history or state.history[-1]["val_accuracy"] is not None:
            return
        result = self.validate()
        state.history[-1].update(val_loss=result.loss, val_accuracy=result.accuracy)
        self.keep_if_best(result, epoch=state.history[-1]["epoch"])
        self.write_epochs_csv()

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
        """``--early-stopping``'s patience run out, judged at a validated epoch (the run then ends validated)."""
        patience = self.config.early_stopping
        state = self.state
        validated = bool(state.history) and state.history[-1]["val_accuracy"] is not None
        return (
            patience is not None and validated and state.best_epoch > 0 and state.epoch - state.best_epoch >= patience
        )

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
                    gap = self.state.epoch - self.state.best_epoch
                    self.log(
                        f"early stopping: no val improvement for {gap} epoch{'s' if gap != 1 else ''} "
                        f"(best {self.state.best_val_accuracy:.4f} at epoch {self.state.best_epoch}; "
                        f"--early-stopping {self.config.early_stopping})"
                    )
                    break
            self.validate_last_epoch()
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
            "validation_seconds": state.validation_seconds,
            "train_images": self.labelled_images,
            **({"unlabelled_images": self.unlabelled_images} if self.unlabelled_images else {}),
            "val_images": len(self.val_data),
            "evaluated_weights": "ema" if self.ema is not None else "raw",
        }
