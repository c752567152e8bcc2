"""Data augmentation on whole batches of cached uint8 images, so that it never starves the model.

Every transform works on a (B, 3, H, W) float batch in [0, 1] with per-sample random parameters drawn
from an explicit ``torch.Generator`` (seeded per step by the training loop: resuming replays the same
augmentation). All geometric operations of one sample (random-resized crop, flip, RandAugment's
rotate/shear/translate) are composed into one affine matrix and applied by one ``grid_sample`` call.

Strengths, light → heavy, as the seed's recipes ask ("maximum augmentation" for tiny datasets):

- ``light``: mild random-resized crop (scale 0.64–1) and horizontal flip.
- ``medium``: crop scale 0.25–1, flip, colour jitter 0.3.
- ``heavy``: crop scale 0.25–1, flip, RandAugment (Cubuk et al. 2020; N=2, M=9 of 30). Inception's
  0.08 lower bound, made for 224-px ImageNet photos, left small low-resolution datasets unrecognisable
  (V3-Small on 400 Fashion-MNIST images: 65% validation accuracy after 40 epochs).
- ``augmix``: a base crop and flip, then AugMix (Hendrycks et al. 2020): three chains of 1–3 operations
  mixed with Dirichlet weights, two augmented views per image for the Jensen–Shannon consistency loss.
  The base is the reference code's: for images of at most 64 px (CIFAR scale) a mild crop (``light``'s,
  standing in for CIFAR's pad-4 random crop) and flip; above, a random-resized crop (scale 0.25–1) and
  flip, as its ImageNet script does. No colour jitter: AugMix's operations are the only photometric ones.
  The paper's operation set leaves out colour, contrast, brightness and sharpness, which overlap the
  ImageNet-C corruptions it is evaluated on.
- ``augmix-all``: the same with those four operations added (the reference code's ``--all-ops``, timm's
  default). Scores under the contrast and brightness corruptions then measure overlap with the training
  augmentation, not robustness to something unseen.

Every level with flips keeps them unless ``--no-flip``: a mirrored letter, digit or shoe (Fashion-MNIST's
all face one way) is an image the test set never shows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from mobilenets.data.augment_levels import AUGMENT_LEVELS

# The corruption tables switch from CIFAR-10-C to ImageNet-C above this size (corruptions.CIFAR_MAX_SIZE);
# AugMix's base crop follows the same line between its CIFAR and ImageNet recipes.
SMALL_IMAGE_SIZE = 64
LIGHT_CROP_SCALE = (0.64, 1.0)
INCEPTION_CROP_SCALE = (0.25, 1.0)  # Inception's 0.08 erased small low-resolution images (see ``heavy``)


@dataclass(frozen=True)
class AugmentConfig:
    crop_scale: tuple[float, float] | None = None  # None: no random-resized crop
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = False
    color_jitter: float = 0.0
    randaugment_ops: int = 0
    randaugment_magnitude: float = 9.0  # of 30, as in the paper's ImageNet setting
    augmix: bool = False
    augmix_all_ops: bool = False  # add colour, contrast, brightness, sharpness (overlap ImageNet-C)
    augmix_severity: float = 3.0  # of 10
    augmix_width: int = 3
    augmix_depth: int = 3  # chains have 1..depth operations
    erase_probability: float = 0.0  # random erasing (``--random-erasing``), after normalization


def augment_config(
    level: str,
    resolution: int | None = None,
    *,
    flip: bool = True,
    crop_scale: float | None = None,
    erase_probability: float = 0.0,
) -> AugmentConfig:
    """The configuration of an ``--augment`` level; ``resolution`` (None: ImageNet scale) picks AugMix's base crop.

    ``flip=False`` (``--no-flip``) drops the level's horizontal flips, for images whose left and right
    differ (text, digits, shoes that all face one way); ``crop_scale`` (``--crop-scale``) replaces the
    smallest area fraction of the level's random-resized crop; ``erase_probability`` adds Random Erasing.
    """
    small = resolution is not None and resolution <= SMALL_IMAGE_SIZE
    augmix_base = AugmentConfig(crop_scale=LIGHT_CROP_SCALE if small else INCEPTION_CROP_SCALE, flip=True, augmix=True)
    configs = {
        "none": AugmentConfig(),
        "light": AugmentConfig(crop_scale=LIGHT_CROP_SCALE, flip=True),
        "medium": AugmentConfig(crop_scale=INCEPTION_CROP_SCALE, flip=True, color_jitter=0.3),
        "heavy": AugmentConfig(crop_scale=INCEPTION_CROP_SCALE, flip=True, randaugment_ops=2),
        "augmix": augmix_base,
        "augmix-all": replace(augmix_base, augmix_all_ops=True),
    }
    if level not in configs:
        raise ValueError(f"unknown augmentation {level!r}; choose one of {', '.join(AUGMENT_LEVELS)}")
    config = configs[level]
    if crop_scale is not None:
        if config.crop_scale is None:
            raise ValueError(f"--augment {level} has no random crop to set the scale of")
        config = replace(config, crop_scale=(crop_scale, 1.0))
    return replace(config, flip=config.flip and flip, erase_probability=erase_probability)


# --------------------------------------------------------------------------------------------------
# Geometry: per-sample affine matrices in grid_sample's normalized coordinates
# --------------------------------------------------------------------------------------------------


def _uniform(shape, low, high, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(shape, generator=generator) * (high - low) + low


def _random_sign(n: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 2, (n,), generator=generator).float() * 2 - 1


def identity_affine(n: int) -> torch.Tensor:
    return torch.eye(3).repeat(n, 1, 1)


def random_resized_crop_affine(
    n: int, scale: tuple[float, float], ratio: tuple[float, float], generator: torch.Generator
) -> torch.Tensor:
    """Inception-style crops: area fraction in ``scale``, aspect ratio log-uniform in ``ratio``."""
    area = _uniform(n, scale[0], scale[1], generator)
    log_ratio = _uniform(n, math.log(ratio[0]), math.log(ratio[1]), generator)
    aspect = log_ratio.exp()
    width = (area * aspect).sqrt().clamp(max=1.0)
    height = (area / aspect).sqrt().clamp(max=1.0)
    # Crop centres keep the crop inside the image.
    center_x = (torch.rand(n, generator=generator) * 2 - 1) * (1 - width)
    center_y = (torch.rand(n, generator=generator) * 2 - 1) * (1 - height)
    matrix = identity_affine(n)
    matrix[:, 0, 0], matrix[:, 1, 1] = width, height
    matrix[:, 0, 2], matrix[:, 1, 2] = center_x, center_y
    return matrix


def flip_affine(n: int, generator: torch.Generator) -> torch.Tensor:
    matrix = identity_affine(n)
    matrix[:, 0, 0] = _random_sign(n, generator)
    return matrix


def rotate_affine(degrees: torch.Tensor) -> torch.Tensor:
    radians = degrees * math.pi / 180
    matrix = identity_affine(len(degrees))
    matrix[:, 0, 0], matrix[:, 0, 1] = radians.cos(), -radians.sin()
    matrix[:, 1, 0], matrix[:, 1, 1] = radians.sin(), radians.cos()
    return matrix


def shear_affine(amount: torch.Tensor, axis: int) -> torch.Tensor:
    matrix = identity_affine(len(amount))
    matrix[:, axis, 1 - axis] = amount
    return matrix


def translate_affine(fraction: torch.Tensor, axis: int) -> torch.Tensor:
    matrix = identity_affine(len(fraction))
    matrix[:, axis, 2] = 2 * fraction  # normalized coordinates span 2
    return matrix


def affine_sampling_grid(matrices: torch.Tensor, height: int, width: int, dtype: torch.dtype) -> torch.Tensor:
    """``F.affine_grid(matrices[:, :2], (n, c, height, width), align_corners=False)``, by broadcasting.

    affine_grid multiplies every pixel's (x, y, 1) by the matrix in a batched matmul, while the grid is
    separable: x' = a·x + b·y + c is a row term plus a column term. For a 32-image 224-px batch on 2 cores:
    15.3 ms against 1.5 ms (benchmarks/augmentation.py, BENCHMARKS.md). Same values to float rounding
    (tests/test_augment.py).
    """
    xs = (torch.arange(width, dtype=dtype) * 2 + 1) / width - 1  # pixel centres in [-1, 1]
    ys = (torch.arange(height, dtype=dtype) * 2 + 1) / height - 1
    m = matrices[:, :2, :].to(dtype)
    grid = torch.empty(len(matrices), height, width, 2, dtype=dtype)
    for axis in (0, 1):
        columns = m[:, axis, 0, None, None] * xs + m[:, axis, 2, None, None]  # (n, 1, W)
        rows = m[:, axis, 1, None, None] * ys[:, None]  # (n, H, 1)
        torch.add(columns, rows, out=grid[..., axis])
    return grid


def warp(images: torch.Tensor, matrices: torch.Tensor, fill: float = 0.5) -> torch.Tensor:
    """Resample each image through its output→input affine matrix; outside pixels become ``fill`` (grey)."""
    grid = affine_sampling_grid(matrices, images.shape[2], images.shape[3], images.dtype)
    return F.grid_sample(images - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False).add_(fill)


# --------------------------------------------------------------------------------------------------
# Photometric operations on [0, 1] batches; ``factor``/``amount`` are per-sample (B,) tensors
# --------------------------------------------------------------------------------------------------


def _per_sample(values: torch.Tensor) -> torch.Tensor:
    return values.view(-1, 1, 1, 1)


def grayscale(images: torch.Tensor) -> torch.Tensor:
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype).view(1, 3, 1, 1)
    return (images * weights).sum(1, keepdim=True)


def blend(images: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL ImageEnhance's rule: factor 0 gives ``other``, 1 the image, above 1 extrapolates."""
    return (other + _per_sample(factor) * (images - other)).clamp(0, 1)


def adjust_brightness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return blend(images, torch.zeros_like(images), factor)


def adjust_contrast(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    mean = grayscale(images).mean((1, 2, 3), keepdim=True)
    return blend(images, mean.expand_as(images), factor)


def adjust_saturation(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return blend(images, grayscale(images).expand_as(images), factor)


def adjust_sharpness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    kernel = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]], dtype=images.dtype) / 13
    kernel = kernel.expand(images.shape[1], 1, 3, 3)
    smooth = F.conv2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), kernel, groups=images.shape[1])
    return blend(images, smooth, factor)


def _blend_(images: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``blend`` in ``images``'s own memory: other + f·(x − other) = x + (1 − f)·(other − x), one pass."""
    return images.lerp_(other, _per_sample(1 - factor)).clamp_(0, 1)


def _grayscale_of(images: torch.Tensor) -> torch.Tensor:
    """``grayscale`` without the full-size product tensor (float rounding may differ in the last bit)."""
    gray = images[:, 0:1] * 0.299
    return gray.add_(images[:, 1:2], alpha=0.587).add_(images[:, 2:3], alpha=0.114)


def color_jitter_(
    images: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor, saturation: torch.Tensor
) -> torch.Tensor:
    """``adjust_brightness``, ``adjust_contrast`` then ``adjust_saturation``, in place (equal to float rounding).

    Each out-of-place step allocates and writes whole batches several times; in place the three take
    a few passes over memory the batch already owns (benchmarks/augmentation.py).
    """
    images.mul_(_per_sample(brightness)).clamp_(0, 1)  # blend with black: 0 + f·(x − 0)
    _blend_(images, _grayscale_of(images).mean((1, 2, 3), keepdim=True), contrast)
    return _blend_(images, _grayscale_of(images), saturation)


def solarize(images: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    return torch.where(images >= _per_sample(threshold), 1 - images, images)


def posterize(images: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    levels = _per_sample(2 ** bits.round())
    return torch.floor(images * 255 / (256 / levels)) * (256 / levels) / 255


def autocontrast(images: torch.Tensor, _: torch.Tensor | None = None) -> torch.Tensor:
    low = images.amin((2, 3), keepdim=True)
    high = images.amax((2, 3), keepdim=True)
    scale = torch.where(high > low, 1 / (high - low).clamp(min=1e-6), torch.ones_like(high))
    return torch.where(high > low, (images - low) * scale, images)


def equalize(images: torch.Tensor, _: torch.Tensor | None = None) -> torch.Tensor:
    """Per-channel histogram equalization, batched with one scatter_add."""
    batch, channels = images.shape[:2]
    levels = (images * 255).round().long().clamp(0, 255).flatten(2)
    histogram = torch.zeros(batch, channels, 256).scatter_add_(2, levels, torch.ones(levels.shape))
    cdf = histogram.cumsum(2)
    first = cdf.gather(2, (histogram > 0).float().argmax(2, keepdim=True))
    total = levels.shape[2]
    lut = ((cdf - first) / (total - first).clamp(min=1) * 255).clamp(0, 255)
    equalized = (lut.gather(2, levels) / 255).view_as(images)
    # A channel of one level has nothing to spread; PIL leaves it unchanged rather than turning it black.
    single_level = ((histogram > 0).sum(2) <= 1).view(batch, channels, 1, 1)
    return torch.where(single_level, images, equalized)


# name → (kind, magnitude(m in 0..1, signs) → per-sample parameter)
PhotometricOp = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _enhance_factor(m: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    return 1 + 0.9 * m * sign


PHOTOMETRIC_OPS: dict[str, tuple[PhotometricOp, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]] = {
    "identity": (lambda x, _: x, lambda m, s: m),
    "autocontrast": (autocontrast, lambda m, s: m),
    "equalize": (equalize, lambda m, s: m),
    "solarize": (solarize, lambda m, s: 1 - m),
    "posterize": (posterize, lambda m, s: 8 - 4 * m),
    "color": (adjust_saturation, _enhance_factor),
    "contrast": (adjust_contrast, _enhance_factor),
    "brightness": (adjust_brightness, _enhance_factor),
    "sharpness": (adjust_sharpness, _enhance_factor),
}
GEOMETRIC_OPS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "rotate": lambda m, s: rotate_affine(30 * m * s),
    "shear_x": lambda m, s: shear_affine(0.3 * m * s, 0),
    "shear_y": lambda m, s: shear_affine(0.3 * m * s, 1),
    "translate_x": lambda m, s: translate_affine(0.45 * m * s, 0),
    "translate_y": lambda m, s: translate_affine(0.45 * m * s, 1),
}
RANDAUGMENT_OPS = tuple(PHOTOMETRIC_OPS) + tuple(GEOMETRIC_OPS)

# AugMix's operations as its reference code parameterizes them (google-research/augmix, augmentations.py):
# every application draws a level uniformly in [0.1, severity] on a 0–10 scale, and each op maps it to
# its parameter. These are milder and one-sided where RandAugment's are not: posterize keeps 3–4 bits at
# the default severity 3, and the enhancement ops only ever weaken (factor 0.1 + 0.18·level: 0.12–0.64).


def _augmix_enhance_factor(level: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
    return 0.1 + 1.8 * level / 10


AUGMIX_PHOTOMETRIC_OPS: dict[str, tuple[PhotometricOp, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]] = {
    "autocontrast": (autocontrast, lambda level, s: level),
    "equalize": (equalize, lambda level, s: level),
    "posterize": (posterize, lambda level, s: 4 - torch.floor(4 * level / 10)),
    "solarize": (solarize, lambda level, s: (256 - torch.floor(256 * level / 10)) / 255),
    # The four operations the paper leaves out because they overlap ImageNet-C ("--all-ops" adds them).
    "color": (adjust_saturation, _augmix_enhance_factor),
    "contrast": (adjust_contrast, _augmix_enhance_factor),
    "brightness": (adjust_brightness, _augmix_enhance_factor),
    "sharpness": (adjust_sharpness, _augmix_enhance_factor),
}
AUGMIX_GEOMETRIC_OPS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "rotate": lambda level, s: rotate_affine(torch.floor(30 * level / 10) * s),  # whole degrees
    "shear_x": lambda level, s: shear_affine(0.3 * level / 10 * s, 0),
    "shear_y": lambda level, s: shear_affine(0.3 * level / 10 * s, 1),
    # Up to a third of the image at level 10; sub-pixel here, whole pixels in the reference.
    "translate_x": lambda level, s: translate_affine(level / 30 * s, 0),
    "translate_y": lambda level, s: translate_affine(level / 30 * s, 1),
}
AUGMIX_FILL = 0.0  # the reference's PIL transforms fill with black
# The paper's set, in the reference's order.
AUGMIX_OPS = (
    "autocontrast",
    "equalize",
    "posterize",
    "rotate",
    "solarize",
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
)
AUGMIX_OVERLAPPING_OPS = ("color", "contrast", "brightness", "sharpness")
AUGMIX_ALL_OPS = (*AUGMIX_OPS, *AUGMIX_OVERLAPPING_OPS)


def apply_random_ops(
    images: torch.Tensor,
    op_names: tuple[str, ...],
    chosen: torch.Tensor,
    magnitude: torch.Tensor,
    generator: torch.Generator,
    geometric_ops: dict = GEOMETRIC_OPS,
    photometric_ops: dict = PHOTOMETRIC_OPS,
    fill: float = 0.5,
) -> torch.Tensor:
    """Apply op ``op_names[chosen[i]]`` to image i (chosen = -1: none), all samples of one op at once.

    ``magnitude`` is each sample's strength in the tables' unit (RandAugment: 0–1; AugMix: a level of 0–10).
    """
    n = len(images)
    images = images.clone()  # never write into the caller's batch
    signs = _random_sign(n, generator)
    geometry = identity_affine(n)
    has_geometry = torch.zeros(n, dtype=torch.bool)
    for index, name in enumerate(op_names):
        if name in geometric_ops:
            mask = chosen == index
            if mask.any():
                geometry[mask] = geometric_ops[name](magnitude[mask], signs[mask])
                has_geometry |= mask
    if has_geometry.any():
        images[has_geometry] = warp(images[has_geometry], geometry[has_geometry], fill)
    for index, name in enumerate(op_names):
        if name in photometric_ops:
            mask = chosen == index
            if mask.any() and name != "identity":
                op, parameter = photometric_ops[name]
                images[mask] = op(images[mask], parameter(magnitude[mask], signs[mask]))
    return images


def randaugment(images: torch.Tensor, ops: int, magnitude: float, generator: torch.Generator) -> torch.Tensor:
    """RandAugment: ``ops`` operations drawn uniformly per image, all at magnitude ``magnitude``/30."""
    m = torch.full((len(images),), magnitude / 30)
    for _ in range(ops):
        chosen = torch.randint(0, len(RANDAUGMENT_OPS), (len(images),), generator=generator)
        images = apply_random_ops(images, RANDAUGMENT_OPS, chosen, m, generator)
    return images


def augmix(images: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """One AugMix view: ``width`` chains of 1..``depth`` ops, Dirichlet-weighted, then mixed with the original.

    The paper's α=1 is used: Dirichlet(1, …, 1) is normalized exponentials and Beta(1, 1) is uniform,
    so everything comes from the step's generator and resuming replays it exactly.
    """
    n = len(images)
    operations = augmix_operations(config)
    weights = -torch.rand(n, config.augmix_width, generator=generator).clamp(min=1e-12).log()
    weights = weights / weights.sum(1, keepdim=True)
    skip = torch.rand(n, generator=generator)
    mixed = torch.zeros_like(images)
    for chain in range(config.augmix_width):
        depth = torch.randint(1, config.augmix_depth + 1, (n,), generator=generator)
        view = images
        for step in range(config.augmix_depth):
            chosen = torch.randint(0, len(operations), (n,), generator=generator)
            chosen = torch.where(depth > step, chosen, torch.full_like(chosen, -1))
            level = _uniform(n, 0.1, config.augmix_severity, generator)  # the reference's sample_level
            view = apply_random_ops(
                view, operations, chosen, level, generator, AUGMIX_GEOMETRIC_OPS, AUGMIX_PHOTOMETRIC_OPS, AUGMIX_FILL
            )
        mixed = mixed + _per_sample(weights[:, chain]) * view
    return _per_sample(skip) * images + _per_sample(1 - skip) * mixed


def augmix_operations(config: AugmentConfig) -> tuple[str, ...]:
    """The paper's operation set, or with ``augmix_all_ops`` the one that adds the four overlapping ops."""
    return AUGMIX_ALL_OPS if config.augmix_all_ops else AUGMIX_OPS


def jensen_shannon_consistency(logits_clean, logits_view1, logits_view2) -> torch.Tensor:
    """AugMix's JS divergence among the predictions on the clean image and its two augmented views."""
    p_clean, p_1, p_2 = (logits.softmax(1) for logits in (logits_clean, logits_view1, logits_view2))
    log_mixture = ((p_clean + p_1 + p_2) / 3).clamp(1e-7, 1).log()
    return (
        F.kl_div(log_mixture, p_clean, reduction="batchmean")
        + F.kl_div(log_mixture, p_1, reduction="batchmean")
        + F.kl_div(log_mixture, p_2, reduction="batchmean")
    ) / 3


# --------------------------------------------------------------------------------------------------
# The batch pipeline the training loop calls
# --------------------------------------------------------------------------------------------------


# Random Erasing (Zhong et al., 2017, https://arxiv.org/abs/1708.04896) as timm's ``RandomErasing(mode="pixel")``
# defaults: 2-33% of the area (the paper's upper bound is 40%), the paper's aspect range 0.3-3.3, per-pixel
# normal noise in normalized units.
ERASE_AREA = (0.02, 1 / 3)
ERASE_ASPECT = (0.3, 1 / 0.3)


def random_erasing_(images: torch.Tensor, probability: float, generator: torch.Generator) -> torch.Tensor:
    """Replace one random rectangle of each image, with ``probability``, by N(0, 1) noise; in place.

    ``images`` is the normalized float batch (B, C, H, W), any memory format. Every draw comes from the
    step's ``generator``, so resuming replays it exactly.
    """
    n, _, height, width = images.shape
    chosen = torch.rand(n, generator=generator) < probability
    area = _uniform(n, ERASE_AREA[0], ERASE_AREA[1], generator) * height * width
    log_aspect = _uniform(n, math.log(ERASE_ASPECT[0]), math.log(ERASE_ASPECT[1]), generator)
    box_height = (area * log_aspect.exp()).sqrt().round().clamp(1, height)
    box_width = (area / log_aspect.exp()).sqrt().round().clamp(1, width)
    top = (torch.rand(n, generator=generator) * (height - box_height + 1)).floor()
    left = (torch.rand(n, generator=generator) * (width - box_width + 1)).floor()
    erased = chosen.nonzero().flatten()
    if not len(erased):
        return images
    # Noise only for the chosen images: drawing it for the whole batch cost ~2.5% of a 64-px V2 step.
    noise = torch.randn((len(erased), *images.shape[1:]), generator=generator, dtype=images.dtype)
    rows = torch.arange(height).view(1, height, 1)
    columns = torch.arange(width).view(1, 1, width)
    top, left, box_height, box_width = (v[erased].view(-1, 1, 1) for v in (top, left, box_height, box_width))
    inside = (rows >= top) & (rows < top + box_height) & (columns >= left) & (columns < left + box_width)
    images[erased] = torch.where(inside.unsqueeze(1), noise, images[erased])
    return images


class BatchAugment:
    """uint8 (B, 3, H, W) → augmented float [0, 1]; with AugMix, (3B, …): clean, view 1, view 2."""

    def __init__(self, config: AugmentConfig) -> None:
        self.config = config

    @property
    def views(self) -> int:
        return 3 if self.config.augmix else 1

    def _geometry_and_jitter(self, n: int, generator: torch.Generator):
        """The batch's crop/flip matrices and brightness/contrast/saturation factors, in draw order."""
        config = self.config
        geometry = identity_affine(n)
        if config.crop_scale is not None:
            geometry = geometry @ random_resized_crop_affine(n, config.crop_scale, config.crop_ratio, generator)
        if config.flip:
            geometry = geometry @ flip_affine(n, generator)
        c = config.color_jitter
        jitter = [_uniform(n, 1 - c, 1 + c, generator) for _ in range(3)] if c else None
        return geometry, jitter

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        config = self.config
        x = images.float().div_(255)
        geometry, jitter = self._geometry_and_jitter(len(x), generator)
        if config.crop_scale is not None or config.flip:
            x = warp(x, geometry)
        if jitter is not None:
            x = color_jitter_(x, *jitter)
        if config.randaugment_ops:
            x = randaugment(x, config.randaugment_ops, config.randaugment_magnitude, generator)
        if config.augmix:
            x = torch.cat([x, augmix(x, config, generator), augmix(x, config, generator)])
        return x.clamp_(0, 1)

    def normalized(self, images: torch.Tensor, generator: torch.Generator, mean, std) -> torch.Tensor:
        """``normalize_batch(self(images, generator), mean, std)`` in channels_last: the training step's input.

        Crops, flips and colour jitter (``none``, ``light``, ``medium``) of a 3-channel uint8 batch run as
        one C++ kernel (mobilenets.kernels) when it is built: same random draws, same numbers to float
        rounding (tests/test_augment.py), a few passes per image in cache instead of ~25 over the batch
        (benchmarks/augmentation.py). Everything else runs the PyTorch operations above.
        """
        x = self._normalized(images, generator, mean, std)
        if self.config.erase_probability > 0:
            random_erasing_(x, self.config.erase_probability, generator)
        return x

    def _normalized(self, images: torch.Tensor, generator: torch.Generator, mean, std) -> torch.Tensor:
        from mobilenets import kernels

        config = self.config
        simple = not (config.randaugment_ops or config.augmix)
        if (
            simple
            and images.dtype == torch.uint8
            and images.dim() == 4
            and images.shape[1] == 3
            and kernels.available()
        ):
            geometry, jitter = self._geometry_and_jitter(len(images), generator)
            ones = torch.ones(len(images))
            factors = jitter if jitter is not None else [ones, ones, ones]
            return torch.ops.mobilenets_kernels.augment_crop_flip_jitter(
                images, geometry, *factors, jitter is not None, torch.tensor(mean), torch.tensor(std), 0.5
            )
        x = normalize_batch(self(images, generator), mean, std, inplace=True)
        return x.contiguous(memory_format=torch.channels_last)


def normalize_batch(images: torch.Tensor, mean, std, inplace: bool = False) -> torch.Tensor:
    """Float [0, 1] (or uint8) batch → normalized with the weights' mean/std.

    ``inplace=True`` overwrites a float batch the caller owns (the training loop's augmented batch).
    """
    if images.dtype == torch.uint8:
        images, inplace = images.float().div_(255), True
    mean_t = torch.tensor(mean, dtype=images.dtype).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=images.dtype).view(1, -1, 1, 1)
    return (images.sub_(mean_t) if inplace else images - mean_t).div_(std_t)
