"""Making the same model fast on the machine at hand, for training and for inference.

One place decides memory format, compilation, reduced precision and threads, so that the training
loop, evaluation and the benchmarks all take the product's default fast path.
"""

from __future__ import annotations

import torch
from torch import nn


def prepare_for_training(model: nn.Module, device: torch.device | str = "cpu") -> nn.Module:
    """Move ``model`` to ``device`` in the fastest memory layout for depthwise/pointwise convolutions.

    channels_last roughly doubles CPU training throughput of MobileNets in eager mode (REFERENCE §4).
    """
    return model.to(device=device, memory_format=torch.channels_last)


def to_model_layout(images: torch.Tensor) -> torch.Tensor:
    """Put a batch in the layout ``prepare_for_training`` chose."""
    return images.contiguous(memory_format=torch.channels_last)
