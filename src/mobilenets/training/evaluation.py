"""Accuracy, per-class precision/recall and the confusion matrix, for any model and any labelled images.

Everything is derived from one integer confusion matrix (rows: true class, columns: predicted), which
is a sum over images: shards of a distributed evaluation add their matrices and get the exact result.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mobilenets.data.augment import normalize_batch
from mobilenets.kernels.acceleration import model_device, to_model_layout
from mobilenets.models.preprocessing import IMAGENET_MEAN, IMAGENET_STD


@dataclass
class EvaluationResult:
    classes: list[str]
    confusion: np.ndarray  # (C, C) int64, [true, predicted]
    loss_sum: float = 0.0

    @property
    def count(self) -> int:
        return int(self.confusion.sum())

    @property
    def correct(self) -> int:
        return int(np.trace(self.confusion))

    @property
    def accuracy(self) -> float:
        return self.correct / self.count if self.count else 0.0

    @property
    def loss(self) -> float:
        return self.loss_sum / self.count if self.count else 0.0

    @property
    def support(self) -> np.ndarray:
        return self.confusion.sum(1)

    @property
    def precision(self) -> np.ndarray:
        predicted = self.confusion.sum(0)
        return np.divide(np.diag(self.confusion), predicted, out=np.zeros(len(predicted)), where=predicted > 0)

    @property
    def recall(self) -> np.ndarray:
        support = self.support
        return np.divide(np.diag(self.confusion), support, out=np.zeros(len(support)), where=support > 0)

    @property
    def f1(self) -> np.ndarray:
        p, r = self.precision, self.recall
        return np.divide(2 * p * r, p + r, out=np.zeros(len(p)), where=(p + r) > 0)

    def merge(self, other: EvaluationResult) -> EvaluationResult:
        return EvaluationResult(self.classes, self.confusion + other.confusion, self.loss_sum + other.loss_sum)

    def per_class(self) -> list[dict]:
        return [
            {
                "class": name,
                "precision": float(self.precision[i]),
                "recall": float(self.recall[i]),
                "f1": float(self.f1[i]),
                "support": int(self.support[i]),
            }
            for i, name in enumerate(self.classes)
        ]

    def to_dict(self) -> dict:
        return {
            "accuracy": self.accuracy,
            "loss": self.loss,
            "count": self.count,
            "per_class": self.per_class(),
            "confusion_matrix": self.confusion.tolist(),
            "classes": self.classes,
        }

    def table(self) -> str:
        width = max(12, *(len(c) for c in self.classes))
        lines = [f"{'class':<{width}}  precision  recall     f1  support"]
        for row in self.per_class():
            lines.append(
                f"{row['class']:<{width}}  {row['precision']:9.3f}  {row['recall']:6.3f}  {row['f1']:5.3f}  {row['support']:7d}"
            )
        lines.append(f"{'accuracy':<{width}}  {self.accuracy:9.4f}  ({self.correct}/{self.count})")
        return "\n".join(lines)


def confusion_matrix(targets: torch.Tensor, predictions: torch.Tensor, num_classes: int) -> np.ndarray:
    index = targets.long() * num_classes + predictions.long()
    return (
        torch.bincount(index, minlength=num_classes * num_classes)
        .view(num_classes, num_classes)
        .numpy()
        .astype(np.int64)
    )


@torch.inference_mode()
def evaluate_batches(
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    classes: Sequence[str],
) -> EvaluationResult:
    """Evaluate on (normalized images, labels) batches, with a model or an inference engine."""
    is_module = isinstance(model, nn.Module)
    was_training = is_module and model.training
    if is_module:
        model.eval()
    result = EvaluationResult(list(classes), np.zeros((len(classes), len(classes)), dtype=np.int64))
    for images, labels in batches:
        logits = (model(to_model_layout(images, model_device(model))) if is_module else model(images)).float().cpu()
        loss = F.cross_entropy(logits, labels, reduction="sum").item()
        result = result.merge(
            EvaluationResult(result.classes, confusion_matrix(labels, logits.argmax(1), len(classes)), loss)
        )
    if is_module:
        model.train(was_training)
    return result


def evaluate(
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    labels: torch.Tensor,
    classes: Sequence[str] | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    batch_size: int = 256,
) -> EvaluationResult:
    """Evaluate on cached uint8 images (N, 3, S, S) (``data.DecodedImages.images``) and their labels."""
    classes = list(classes) if classes is not None else [f"class_{i}" for i in range(model.num_classes)]

    def batches():
        for start in range(0, len(images), batch_size):
            yield (
                normalize_batch(images[start : start + batch_size], mean, std),
                labels[start : start + batch_size],
            )

    return evaluate_batches(model, batches(), classes)
