"""Re-estimating BatchNorm statistics: one implementation for training (exact statistics of the weights
being evaluated) and for test-time adaptation to shifted inputs."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor], *, prior: float = 0.0) -> int:
    """Set every BatchNorm's running mean/variance to the exact average over ``batches`` (model inputs).

    ``prior`` = N keeps the current statistics as N pseudo-samples: μ = (N·μ_old + n·μ_batches) / (N + n)
    (Schneider et al. 2020); 0 replaces them. Weights are untouched; the model's train/eval mode is kept.
    Returns the number of images seen (0: nothing changed).
    """
    batches = list(batches)
    count = sum(len(batch) for batch in batches)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or count == 0:
        return 0
    previous = [(m.running_mean.clone(), m.running_var.clone(), m.momentum) for m in norms]
    was_training = model.training
    model.eval()
    for module in norms:
        module.reset_running_stats()
        module.momentum = None  # a cumulative average over the batches
        module.train()
    for batch in batches:
        model(batch)
    weight = prior / (prior + count)
    for module, (mean, var, momentum) in zip(norms, previous, strict=True):
        module.running_mean.mul_(1 - weight).add_(weight * mean)
        module.running_var.mul_(1 - weight).add_(weight * var)
        module.momentum = momentum
    model.train(was_training)
    return count
