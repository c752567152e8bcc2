"""Quantization-aware training: a fake-quantized fine-tune of the BN-folded network, returned as a float
model whose weights go through the same ORT path as PTQ."""

from __future__ import annotations

import torch
from torch import nn

from mobilenets.deployment.quantization.calibration import ImageSet
from mobilenets.models.fusion import fold_batchnorm


class FakeQuantizeWeight(nn.Module):
    """Per-output-channel symmetric int8 fake quantization: the grid ORT's per-channel QDQ weights use."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        reduce = tuple(range(1, weight.dim()))
        scale = (weight.detach().abs().amax(dim=reduce) / 127.0).clamp_min(1e-8)
        zero_point = torch.zeros(weight.shape[0], dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(weight, scale, zero_point, 0, -127, 127)


class FakeQuantizeActivation(nn.Module):
    """Per-tensor uint8 fake quantization with a moving-average min/max (the straight-through estimator)."""

    def __init__(self, momentum: float = 0.01) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("low", torch.tensor(float("inf")))
        self.register_buffer("high", torch.tensor(float("-inf")))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            low, high = x.detach().min().clamp(max=0.0), x.detach().max().clamp(min=0.0)
            if torch.isinf(self.low):
                self.low.copy_(low), self.high.copy_(high)
            else:
                self.low.lerp_(low, self.momentum), self.high.lerp_(high, self.momentum)
        scale = float((self.high - self.low).clamp_min(1e-8) / 255.0)
        zero_point = int(torch.clamp(torch.round(-self.low / scale), 0, 255))
        return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, 0, 255)


def attach_fake_quantization(model: nn.Module) -> list[torch.utils.hooks.RemovableHandle]:
    """Fake-quantize every conv/linear weight and the outputs of the ops ORT quantizes (conv blocks, adds, SE)."""
    from torch.nn.utils import parametrize

    from mobilenets.models.layers import ConvBNAct, InvertedResidual, SqueezeExcitation

    handles = []
    for module in list(model.modules()):
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            parametrize.register_parametrization(module, "weight", FakeQuantizeWeight())
        if isinstance(module, (ConvBNAct, InvertedResidual, SqueezeExcitation)):
            module.output_quantizer = FakeQuantizeActivation()
            handles.append(module.register_forward_hook(lambda m, _inputs, output: m.output_quantizer(output)))
    return handles


def detach_fake_quantization(model: nn.Module, handles: list) -> nn.Module:
    """Back to a plain float network holding the QAT-learned weights (ORT re-quantizes them identically)."""
    from torch.nn.utils import parametrize

    for handle in handles:
        handle.remove()
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
        if hasattr(module, "output_quantizer"):
            del module.output_quantizer
    return model


def qat_finetune(
    model: nn.Module,
    train: ImageSet,
    epochs: int = 2,
    learning_rate: float = 1e-4,
    batch_size: int = 32,
    seed: int = 0,
    progress=None,
) -> nn.Module:
    """Fine-tune a BN-folded copy of ``model`` under fake quantization; returns a float model to export.

    BatchNorm is folded before training (its statistics are frozen, as torchvision's QAT recipe does after
    a few epochs), so the weights that are fake-quantized are exactly the folded weights ORT quantizes.
    With labels the loss is cross-entropy; without (a flat folder) the fp32 model is the teacher and the
    loss is the KL divergence to its predictions, so QAT needs no labels.
    """
    torch.manual_seed(seed)
    teacher = model.eval() if train.labels is None else None
    qat_model = fold_batchnorm(model)
    handles = attach_fake_quantization(qat_model)
    optimizer = torch.optim.AdamW(qat_model.parameters(), lr=learning_rate, weight_decay=0.0)
    images = torch.from_numpy(train.images)
    labels = torch.from_numpy(train.labels) if train.labels is not None else None
    steps = epochs * max(1, len(images) // batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    generator = torch.Generator().manual_seed(seed)
    qat_model.train()
    step = 0
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(order) - batch_size + 1 if len(order) >= batch_size else 1, batch_size):
            index = order[start : start + batch_size]
            batch = images[index]
            flip = torch.rand(len(batch), generator=generator) < 0.5
            batch = torch.where(flip.view(-1, 1, 1, 1), batch.flip(3), batch)
            logits = qat_model(batch)
            if teacher is None:
                loss = nn.functional.cross_entropy(logits, labels[index])
            else:
                with torch.no_grad():
                    target = teacher(batch).log_softmax(1)
                loss = nn.functional.kl_div(logits.log_softmax(1), target, log_target=True, reduction="batchmean")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            if progress is not None:
                progress(step, steps, float(loss.detach()))
    qat_model.eval()
    return detach_fake_quantization(qat_model, handles)
