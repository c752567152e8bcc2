"""Mixup (Zhang et al. 2018, https://arxiv.org/abs/1710.09412): blended images and their blended labels."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mobilenets.core.errors import MobilenetsError, check_number
from mobilenets.data.folders import UNLABELLED


@dataclass(frozen=True)
class MixedBatch:
    """A mixup batch: the blended images, their label distributions, and the label that dominates each."""

    images: torch.Tensor
    targets: torch.Tensor  # λ·onehot(y) + (1 − λ)·onehot(y of the partner image); an unlabelled image adds 0
    labels: torch.Tensor  # what training accuracy counts against (UNLABELLED where that image has no label)


def mixup(
    images: torch.Tensor, labels: torch.Tensor, *, alpha: float, num_classes: int, generator: torch.Generator
) -> MixedBatch:
    """Mixup (Zhang et al. 2018, https://arxiv.org/abs/1710.09412): image i blended with image n − 1 − i.

    One λ ~ Beta(α, α) per batch and the batch's mirror order as partners, as timm does (the batch
    order is already random). Mixing normalized images is mixing pixels: normalization is affine. λ is
    drawn from the step's generator, so a resumed run mixes exactly as the uninterrupted one.

    An image without a label (``UNLABELLED``, ``train --unlabelled``) brings no label mass: a blend's
    targets sum to the share of it that is labelled, and the teacher alone labels the rest
    (``distillation_loss``); Beyer et al. 2022 (https://arxiv.org/abs/2106.05237) mix such images too.
    """
    lam = random.Random(int(torch.randint(2**62, (1,), generator=generator))).betavariate(alpha, alpha)
    one_hot = label_distribution(labels, num_classes)
    mixed = lam * images + (1 - lam) * images.flip(0)
    targets = lam * one_hot + (1 - lam) * one_hot.flip(0)
    return MixedBatch(images=mixed, targets=targets, labels=labels if lam >= 0.5 else labels.flip(0))


def label_distribution(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """One-hot rows of class indices; the row of an ``UNLABELLED`` image is all zeros (no label mass)."""
    labelled = (labels != UNLABELLED).unsqueeze(1)
    return F.one_hot(labels.clamp(min=0), num_classes).float() * labelled


def check_mixup(alpha: float, *, augment: str) -> None:
    """``--mixup`` is a Beta parameter, and cannot join AugMix, whose loss compares three views of one image."""
    check_number("--mixup", alpha, at_least=0)
    if alpha > 0 and augment.startswith("augmix"):
        raise MobilenetsError(f"--mixup and --augment {augment} cannot be combined: choose one")
