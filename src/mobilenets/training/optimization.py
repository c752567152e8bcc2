"""What each training step updates besides the weights' gradients: the optimizer and its parameter groups
(no weight decay on depthwise filters, BatchNorm and biases), the warm-up and cosine schedule, the EMA of
the weights, BatchNorm's statistics, and the layers kept frozen while fine-tuning."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from mobilenets.data.augment import normalize_batch
from mobilenets.kernels.acceleration import model_device, to_model_layout
from mobilenets.models.batchnorm import reestimate_batchnorm
from mobilenets.training.configuration import TrainConfig
from mobilenets.training.options import OPTIMIZERS


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
