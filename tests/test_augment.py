"""Batched augmentation: exact against PIL where PIL has the operation, seeded, shape- and range-safe."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from mobilenets.augment import (
    AUGMENT_LEVELS,
    AugmentConfig,
    BatchAugment,
    augment_config,
    autocontrast,
    jensen_shannon_consistency,
    posterize,
    rotate_affine,
    solarize,
    warp,
)


def images(n: int = 6, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def as_pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray(image.permute(1, 2, 0).numpy())


def from_pil(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255


def test_none_is_identity_and_flip_is_an_exact_mirror():
    batch = images()
    plain = BatchAugment(augment_config("none"))(batch, torch.Generator().manual_seed(0))
    assert torch.equal(plain, batch.float() / 255)
    flipped = BatchAugment(AugmentConfig(flip=True))(batch, torch.Generator().manual_seed(0))
    original = batch.float() / 255
    mirrored = [torch.allclose(f, o.flip(-1), atol=1e-5) for f, o in zip(flipped, original, strict=True)]
    kept = [torch.allclose(f, o, atol=1e-5) for f, o in zip(flipped, original, strict=True)]
    assert all(m or k for m, k in zip(mirrored, kept, strict=True)) and any(mirrored) and any(kept)


@pytest.mark.parametrize("level", AUGMENT_LEVELS)
def test_every_level_is_seeded_and_in_range(level):
    batch = images(8, 24)
    augment = BatchAugment(augment_config(level))
    first = augment(batch, torch.Generator().manual_seed(5))
    again = augment(batch, torch.Generator().manual_seed(5))
    other = augment(batch, torch.Generator().manual_seed(6))
    assert first.shape == (8 * augment.views, 3, 24, 24)
    assert torch.equal(first, again)
    assert level == "none" or not torch.equal(first, other)
    assert first.min() >= 0 and first.max() <= 1 and torch.isfinite(first).all()


def test_rotation_by_90_degrees_is_rot90():
    batch = images(1, 8).float() / 255
    rotated = warp(batch, rotate_affine(torch.tensor([90.0])))
    assert torch.allclose(rotated, torch.rot90(batch, 1, (2, 3)), atol=1e-5)


def test_photometric_ops_match_pillow():
    batch = images(4, 8)
    x = batch.float() / 255
    for i in range(len(batch)):
        pil = as_pil(batch[i])
        solarized = solarize(x[i : i + 1], torch.tensor([128 / 255]))[0]
        assert torch.allclose(solarized, from_pil(ImageOps.solarize(pil, 128)), atol=1e-6)
        assert torch.allclose(
            posterize(x[i : i + 1], torch.tensor([3.0]))[0], from_pil(ImageOps.posterize(pil, 3)), atol=1e-6
        )
        expected = from_pil(ImageOps.autocontrast(pil))
        assert (autocontrast(x[i : i + 1])[0] - expected).abs().max() <= 1 / 255 + 1e-6


def test_jensen_shannon_consistency():
    logits = torch.randn(4, 10)
    assert jensen_shannon_consistency(logits, logits, logits).item() == pytest.approx(0.0, abs=1e-6)
    other = torch.randn(4, 10)
    p, q = logits.softmax(1), other.softmax(1)
    m = (2 * p + q) / 3
    expected = ((2 * (p * (p / m).log()).sum(1) + (q * (q / m).log()).sum(1)) / 3).mean()
    assert jensen_shannon_consistency(logits, logits, other).item() == pytest.approx(expected.item(), rel=1e-4)
