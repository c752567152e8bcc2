"""Batched augmentation: exact against PIL where PIL has the operation, seeded, shape- and range-safe."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from mobilenets.data import augment as augment_module
from mobilenets.data.augment import (
    AUGMENT_LEVELS,
    AUGMIX_ALL_OPS,
    AUGMIX_GEOMETRIC_OPS,
    AUGMIX_OPS,
    AUGMIX_PHOTOMETRIC_OPS,
    AugmentConfig,
    BatchAugment,
    adjust_contrast,
    augment_config,
    autocontrast,
    equalize,
    jensen_shannon_consistency,
    posterize,
    random_erasing_,
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
def test_no_flip_keeps_every_images_left_side_on_the_left(level):
    # Left half white, right half black: a crop holds some of both halves, or one half only (both sides of
    # the output then equal), so only a flip can put more white on the right. The training batch (``normalized``: the C++ kernel
    # where it is built) and the PyTorch path must both honour it.
    batch = torch.zeros(64, 3, 16, 16, dtype=torch.uint8)
    batch[..., :8] = 255
    config = augment_config(level, 16, flip=False)
    assert config.flip is False
    assert replace(config, flip=augment_config(level, 16).flip) == augment_config(level, 16)  # nothing else moved
    if config.randaugment_ops:
        return  # RandAugment's Invert and Solarize swap dark and bright: this test cannot see flips there
    for run in (BatchAugment(config), lambda x, g: BatchAugment(config).normalized(x, g, (0.5,) * 3, (0.5,) * 3)):
        out = run(batch, torch.Generator().manual_seed(0))[:64]  # AugMix: the clean view
        left, right = out[..., :8].mean((1, 2, 3)), out[..., 8:].mean((1, 2, 3))
        assert (left >= right).all()
    if level != "none":  # the same level with its flips mirrors some of them
        with_flips = BatchAugment(augment_config(level, 16))(batch, torch.Generator().manual_seed(0))[:64]
        assert (with_flips[..., :8].mean((1, 2, 3)) < with_flips[..., 8:].mean((1, 2, 3))).any()


def test_crop_scale_replaces_the_levels_smallest_crop_and_nothing_else():
    for level in AUGMENT_LEVELS[1:]:
        config = augment_config(level, 16, crop_scale=0.81)
        assert config.crop_scale == (0.81, 1.0)
        assert replace(config, crop_scale=augment_config(level, 16).crop_scale) == augment_config(level, 16)
    with pytest.raises(ValueError, match="none has no random crop"):
        augment_config("none", crop_scale=0.81)
    # A horizontal ramp from 0 to 1: a crop of width w (of the image's) spans w of it. The narrowest crop
    # keeps 81% of the area at the narrowest aspect ratio (3/4): w = sqrt(0.81 * 3/4) = 0.78.
    ramp = torch.linspace(0, 255, 16).round().to(torch.uint8).view(1, 1, 1, 16).expand(256, 3, 16, 16).contiguous()

    def narrowest_span(crop_scale: float | None) -> float:
        out = BatchAugment(augment_config("light", 16, crop_scale=crop_scale, flip=False))(
            ramp, torch.Generator().manual_seed(0)
        )
        return (out[:, 0, 8].amax(-1) - out[:, 0, 8].amin(-1)).min().item()

    assert narrowest_span(0.81) == pytest.approx((0.81 * 3 / 4) ** 0.5, abs=0.01)
    assert narrowest_span(None) == pytest.approx((0.64 * 3 / 4) ** 0.5, abs=0.01)  # light's own 0.64


def test_the_command_line_passes_flip_crop_scale_and_random_erasing_on():
    from mobilenets.cli.commands.train import options_from
    from mobilenets.cli.main import build_parser

    argv = ["train", "--data", "images", "--no-flip", "--crop-scale", "0.81", "--random-erasing", "0.25"]
    options = options_from(build_parser(argv).parse_args(argv))
    assert (options.flip, options.crop_scale, options.random_erasing) == (False, 0.81, 0.25)
    argv = ["train", "--data", "images"]
    defaults = options_from(build_parser(argv).parse_args(argv))
    assert (defaults.flip, defaults.crop_scale) == (True, None)


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


def test_augmix_keeps_the_papers_operation_set_and_augmix_all_adds_the_four_overlapping_ones(monkeypatch):
    # The reference code's `augmentations` and `augmentations_all` (google-research/augmix, augmentations.py).
    paper = [
        "autocontrast",
        "equalize",
        "posterize",
        "rotate",
        "solarize",
        "shear_x",
        "shear_y",
        "translate_x",
        "translate_y",
    ]
    assert list(AUGMIX_OPS) == paper
    assert list(AUGMIX_ALL_OPS) == [*paper, "color", "contrast", "brightness", "sharpness"]
    used = []
    original = augment_module.apply_random_ops

    def spy(images, op_names, *args):
        used.append(op_names)
        return original(images, op_names, *args)

    monkeypatch.setattr(augment_module, "apply_random_ops", spy)
    for level, expected in (("augmix", AUGMIX_OPS), ("augmix-all", AUGMIX_ALL_OPS)):
        used.clear()
        BatchAugment(augment_config(level, 32))(images(4, 16), torch.Generator().manual_seed(0))
        # 2 views × 3 chains × up to 3 operations, all from the level's set.
        assert len(used) == 2 * 3 * 3 and set(used) == {expected}


def test_augmix_base_is_the_light_crop_for_small_images_and_the_same_for_all_three_views():
    assert augment_config("augmix", 32).crop_scale == augment_config("light").crop_scale == (0.64, 1.0)
    assert augment_config("augmix-all", 64).crop_scale == (0.64, 1.0)
    assert augment_config("augmix", 224).crop_scale == augment_config("augmix").crop_scale == (0.25, 1.0)
    assert all(augment_config(level, 32).color_jitter == 0 for level in ("augmix", "augmix-all"))
    batch = images(8, 32)
    mixed = BatchAugment(augment_config("augmix", 32))(batch, torch.Generator().manual_seed(3))
    light = BatchAugment(augment_config("light"))(batch, torch.Generator().manual_seed(3))
    # The clean third is exactly the light pipeline's output: same draws, same crop and flip.
    assert torch.equal(mixed[:8], light)
    # Each view is a convex mix of the clean image with its augmented chains, never the same as it.
    assert not torch.equal(mixed[8:16], light) and not torch.equal(mixed[8:16], mixed[16:])


def test_augmix_parameters_are_the_reference_codes():
    level, sign = torch.tensor([3.0]), torch.tensor([1.0])
    posterize_bits = AUGMIX_PHOTOMETRIC_OPS["posterize"][1]
    assert posterize_bits(torch.tensor([2.4, 2.6, 10.0]), sign).tolist() == [4, 3, 0]  # 4 - int(level·4/10)
    solarize_threshold = AUGMIX_PHOTOMETRIC_OPS["solarize"][1]
    assert solarize_threshold(level, sign).item() * 255 == pytest.approx(256 - 76)  # 256 - int(level·256/10)
    for name in ("color", "contrast", "brightness", "sharpness"):
        assert AUGMIX_PHOTOMETRIC_OPS[name][1](level, sign).item() == pytest.approx(0.1 + 1.8 * 0.3)
    rotation = AUGMIX_GEOMETRIC_OPS["rotate"](torch.tensor([3.5]), sign)  # int(3.5·30/10) = 10 degrees
    assert torch.allclose(rotation, rotate_affine(torch.tensor([10.0])))
    shear = AUGMIX_GEOMETRIC_OPS["shear_x"](level, -sign)
    assert shear[0, 0, 1].item() == pytest.approx(-0.09)


def test_contrast_and_equalize_match_pillow():
    batch = images(3, 8)
    x = batch.float() / 255
    for i in range(len(batch)):
        pil = as_pil(batch[i])
        # PIL rounds the grey mean to an integer first: within a level of it.
        expected = from_pil(ImageEnhance.Contrast(pil).enhance(0.4))
        assert (adjust_contrast(x[i : i + 1], torch.tensor([0.4]))[0] - expected).abs().max() <= 1.5 / 255
    constant = torch.full((2, 3, 4, 4), 64 / 255)  # one level: nothing to spread; PIL keeps it, so do we
    assert torch.equal(equalize(constant), constant)
    assert torch.equal(from_pil(ImageOps.equalize(as_pil(torch.full((3, 4, 4), 64, dtype=torch.uint8)))), constant[0])


@pytest.mark.parametrize("level", AUGMENT_LEVELS)
def test_the_training_steps_normalized_batch_equals_the_pytorch_path(level):
    """``BatchAugment.normalized`` (one C++ kernel for crops, flips and colour jitter where it is built)
    gives what augmenting, ``normalize_batch`` and channels_last give, from the same random draws."""
    batch = images(6, 20)
    augment = BatchAugment(augment_config(level, 20))
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    fast = augment.normalized(batch, torch.Generator().manual_seed(3), mean, std)
    expected = augment_module.normalize_batch(augment(batch, torch.Generator().manual_seed(3)), mean, std)
    assert fast.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(fast, expected, rtol=0, atol=1e-4)


def test_random_erasing_replaces_one_rectangle_of_the_papers_size_per_chosen_image():
    x = torch.zeros(64, 3, 40, 40).contiguous(memory_format=torch.channels_last)
    erased = random_erasing_(x.clone(), 1.0, torch.Generator().manual_seed(0))
    assert erased.is_contiguous(memory_format=torch.channels_last)
    for image in erased:
        changed = (image != 0).any(0)
        rows, columns = changed.any(1).nonzero().flatten(), changed.any(0).nonzero().flatten()
        box = changed[rows.min() : rows.max() + 1, columns.min() : columns.max() + 1]
        assert box.all(), "one solid rectangle, every channel noise"
        assert 0.02 * 1600 - 40 <= box.numel() <= 1600 / 3 + 80  # the paper's 2-33% of the area, rounded sides
    again = random_erasing_(x.clone(), 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(again, erased), "the step's generator decides everything: resuming replays it"
    assert torch.equal(random_erasing_(x.clone(), 0.0, torch.Generator().manual_seed(0)), x)
    share = (random_erasing_(torch.zeros(2000, 3, 8, 8), 0.25, torch.Generator().manual_seed(1)) != 0).flatten(1)
    assert 0.22 < share.any(1).float().mean() < 0.28


def test_random_erasing_follows_the_rest_of_the_training_batch():
    batch = images(6, 20)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    config = augment_config("light", 20)
    plain = BatchAugment(config).normalized(batch, torch.Generator().manual_seed(3), mean, std)
    erasing = BatchAugment(AugmentConfig(**{**config.__dict__, "erase_probability": 1.0}))
    erased = erasing.normalized(batch, torch.Generator().manual_seed(3), mean, std)
    kept = erased == plain
    assert 0 < kept.float().mean() < 1  # same crops and flips, then a rectangle of noise in each image
