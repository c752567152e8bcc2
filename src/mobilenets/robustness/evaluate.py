"""How a trained model fails in the field, measured: corruptions, shifts, adversarial noise, latency.

- Corruptions (``mobilenets.robustness.corruptions``): accuracy per corruption × severity, the mean corrupted
  accuracy, and Hendrycks & Dietterich's corruption error against a named baseline run,
  CE_c = Σ_s E_{s,c} / Σ_s E^base_{s,c}, mCE = 100 × mean_c CE_c over the 15 common corruptions
  (the 4 held-out ones are reported apart, as in the paper), plus relative mCE (errors minus clean error).
  CE needs all five severities: from fewer, ``mce`` is None and ``mean_ce`` holds the mean, which
  ``mobilenets.robustness.labels`` names for the corruptions and severities it covers.
  Images are corrupted at the model's input resolution, after resize and crop, before normalization,
  so that the resolution-dependent severity tables mean what they say.
- Test-time BatchNorm re-estimation (Schneider et al., NeurIPS 2020): ``adapt_batchnorm`` replaces the
  BN statistics by those of (a few) target images; 32 suffice (Schneider et al. 2020, https://arxiv.org/abs/2006.16971). In the report the model is
  adapted per corruption × severity on ``bn_samples`` corrupted images drawn at random (seeded; the same
  images for every corruption), then scored on all.
- fp32 vs int8 per corruption, when the run directory holds an int8 ONNX model (ONNX Runtime).
- Shift sweeps: resolution (down-scaled, then up-scaled back), exposure (±EV in linear light), gamma,
  JPEG quality.
- Adversarial: FGSM and PGD (L∞, in [0, 1] pixel space, through the normalization) at ε = 1, 2, 4 /255.
- Latency attribution: batch-1 latency of the model, with SE blocks removed, with hard-swish → ReLU,
  and with both; interleaved rounds, medians with quartiles; in PyTorch eager, and in LiteRT and
  ExecuTorch (fp32 and int8) when they are installed, with hard-swish's share of the int8 error
  (``mobilenets.robustness.device_latency``).

Every number comes from running the model; ``run_robustness`` returns one JSON-ready dict that the
report writer (``robustness_report``) renders.
"""

from __future__ import annotations

import copy
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from mobilenets.core.errors import MobilenetsError
from mobilenets.core.run_directory import RunDirectory
from mobilenets.data.images import ImageLoadError, load_image
from mobilenets.models.batchnorm import reestimate_batchnorm
from mobilenets.models.layers import SqueezeExcitation
from mobilenets.models.preprocessing import Preprocessing
from mobilenets.robustness.corruptions import ALL_CORRUPTIONS, CORRUPTIONS, SEVERITIES, corrupt, table_for
from mobilenets.robustness.labels import is_mce

RESOLUTION_FACTORS = (0.75, 0.5, 0.375, 0.25)
EXPOSURE_STOPS = (-2.0, -1.0, 1.0, 2.0)
GAMMAS = (0.5, 0.7, 1.4, 2.0)
JPEG_QUALITIES = (90, 70, 50, 30, 10)
EPSILONS = (1, 2, 4)  # /255


# --------------------------------------------------------------------------------------------------
# Images at the model's input resolution
# --------------------------------------------------------------------------------------------------


@dataclass
class EvalImages:
    """uint8 images (N, H, W, 3) after resize and centre crop, before normalization, with labels."""

    images: np.ndarray
    labels: np.ndarray
    paths: list[Path]
    skipped: list[str] = field(default_factory=list)
    available: int = 0  # images in the split/folder before --max-images


def crop_like_preprocessing(image: Image.Image, preprocessing: Preprocessing) -> np.ndarray:
    """The pixels the model sees, before normalization: ``Preprocessing`` without its last step."""
    resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}[
        preprocessing.interpolation
    ]
    width, height = image.size
    short = preprocessing.resize_size
    size = (
        (short, max(short, int(short * height / width)))
        if width <= height
        else (max(short, int(short * width / height)), short)
    )
    image = image.resize(size, resample)
    left = round((size[0] - preprocessing.input_size) / 2.0)
    top = round((size[1] - preprocessing.input_size) / 2.0)
    image = image.crop((left, top, left + preprocessing.input_size, top + preprocessing.input_size))
    return np.asarray(image, dtype=np.uint8)


def load_eval_images(
    samples: Sequence[tuple[Path, int]], preprocessing: Preprocessing, max_images: int | None = None, seed: int = 0
) -> EvalImages:
    """Decode ``(path, label)`` samples; with ``max_images``, a seeded random subset (in file order)."""
    samples = list(samples)
    available = len(samples)
    if max_images is not None and max_images < len(samples):
        keep = np.sort(np.random.default_rng(seed).permutation(len(samples))[:max_images])
        samples = [samples[i] for i in keep]
    images, labels, paths, skipped = [], [], [], []
    for path, label in samples:
        try:
            images.append(crop_like_preprocessing(load_image(path), preprocessing))
        except ImageLoadError as error:
            skipped.append(str(error))
            continue
        labels.append(label)
        paths.append(Path(path))
    if not images:
        raise MobilenetsError("no usable images to evaluate" + (f" (first problem: {skipped[0]})" if skipped else ""))
    return EvalImages(np.stack(images), np.asarray(labels, dtype=np.int64), paths, skipped, available)


def to_model_input(images: np.ndarray, preprocessing: Preprocessing) -> torch.Tensor:
    """uint8 (N, H, W, 3) → normalized float (N, 3, H, W)."""
    batch = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255)
    return normalize(batch, preprocessing)


def normalize(batch: torch.Tensor, preprocessing: Preprocessing) -> torch.Tensor:
    mean = torch.tensor(preprocessing.mean, dtype=batch.dtype).view(1, -1, 1, 1)
    std = torch.tensor(preprocessing.std, dtype=batch.dtype).view(1, -1, 1, 1)
    return (batch - mean) / std


# --------------------------------------------------------------------------------------------------
# Classifiers: the PyTorch model, and an int8 ONNX model through ONNX Runtime
# --------------------------------------------------------------------------------------------------

Classifier = Callable[[torch.Tensor], np.ndarray]  # normalized batch → predicted class indices


def torch_classifier(model: nn.Module, batch_size: int = 128) -> Classifier:
    model.eval()

    @torch.inference_mode()
    def predict(inputs: torch.Tensor) -> np.ndarray:
        return np.concatenate(
            [model(inputs[i : i + batch_size]).argmax(1).numpy() for i in range(0, len(inputs), batch_size)]
        )

    return predict


def onnx_classifier(path: Path, batch_size: int = 128) -> Classifier:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    fixed_batch = session.get_inputs()[0].shape[0]
    step = fixed_batch if isinstance(fixed_batch, int) else batch_size

    def predict(inputs: torch.Tensor) -> np.ndarray:
        array = inputs.numpy().astype(np.float32)
        return np.concatenate(
            [session.run(None, {name: array[i : i + step]})[0].argmax(1) for i in range(0, len(array), step)]
        )

    return predict


def find_int8_model(run_dir: Path) -> Path | None:
    """The run's int8 ONNX model, by the export convention: a ``.onnx`` file whose name contains "int8"."""
    candidates = sorted(p for p in Path(run_dir).rglob("*.onnx") if "int8" in p.name)
    return candidates[0] if candidates else None


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    return float((predictions == labels).mean())


# --------------------------------------------------------------------------------------------------
# Test-time BatchNorm re-estimation
# --------------------------------------------------------------------------------------------------


def adapt_batchnorm(
    model: nn.Module,
    images: torch.Tensor | Iterable[torch.Tensor],
    batch_size: int = 32,
    prior: float = 0.0,
    inplace: bool = False,
) -> nn.Module:
    """Re-estimate every BatchNorm's running mean/variance on ``images`` (normalized model inputs).

    Schneider et al. (NeurIPS 2020) "Improving robustness against common corruptions by covariate shift
    adaptation": a corruption shifts the feature statistics, so the source statistics no longer whiten
    them; statistics of as few as 32 target images recover much of the loss (ResNet-50 ImageNet-C mCE
    76.7 → 62.2, Schneider et al. 2020). ``prior`` = N mixes in the source statistics as N pseudo-samples:
    μ = (N·μ_source + n·μ_target) / (N + n); 0 replaces them. Weights are untouched; returns the model in
    eval mode (a copy unless ``inplace``).
    """
    adapted = model if inplace else copy.deepcopy(model)
    batches = (
        [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
        if torch.is_tensor(images)
        else list(images)
    )
    if sum(len(batch) for batch in batches) == 0:
        raise MobilenetsError("adapt_batchnorm needs at least one image")
    reestimate_batchnorm(adapted, batches, prior=prior)
    return adapted.eval()


def adaptation_indices(count: int, samples: int, seed: int) -> np.ndarray:
    """Which ``samples`` of ``count`` images BN statistics are re-estimated on: a seeded random draw.

    Never the first ones: folders list images class by class, and one class's statistics are not the
    test distribution's.
    """
    return np.sort(np.random.default_rng(seed).permutation(count)[:samples])


# --------------------------------------------------------------------------------------------------
# Shifts
# --------------------------------------------------------------------------------------------------


def rescale(images: np.ndarray, factor: float) -> np.ndarray:
    """Down-scale by ``factor`` (antialiased bilinear), then back up to the input size: a low-resolution camera."""
    height, width = images.shape[1:3]
    small = (max(1, round(width * factor)), max(1, round(height * factor)))
    return np.stack(
        [
            np.asarray(Image.fromarray(im).resize(small, Image.BILINEAR).resize((width, height), Image.BILINEAR))
            for im in images
        ]
    )


def expose(images: np.ndarray, stops: float) -> np.ndarray:
    """Exposure change of ``stops`` EV: ×2^stops in linear light (sRGB ≈ gamma 2.2), clipped like a sensor."""
    linear = (images / 255.0) ** 2.2
    return np.uint8(np.clip(linear * 2.0**stops, 0, 1) ** (1 / 2.2) * 255 + 0.5)


def apply_gamma(images: np.ndarray, gamma: float) -> np.ndarray:
    """Tone curve x^gamma: < 1 brightens shadows, > 1 darkens them."""
    return np.uint8(np.clip((images / 255.0) ** gamma, 0, 1) * 255 + 0.5)


def jpeg(images: np.ndarray, quality: int) -> np.ndarray:
    return np.stack([corrupt_jpeg(im, quality) for im in images])


def corrupt_jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    import io

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"))


# --------------------------------------------------------------------------------------------------
# Adversarial examples
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttackSettings:
    norm: str = "Linf"
    space: str = "pixels in [0, 1], before normalization (the attack differentiates through it)"
    epsilons: tuple[int, ...] = EPSILONS  # in 1/255 units
    pgd_steps: int = 10
    pgd_step_size: str = "2.5·ε/steps"  # Madry et al. 2018
    pgd_random_start: bool = True
    loss: str = "cross-entropy on the true label"
    model_mode: str = "eval (BatchNorm statistics frozen)"


class _Normalized(nn.Module):
    def __init__(self, model: nn.Module, preprocessing: Preprocessing) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(preprocessing.mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(preprocessing.std).view(1, -1, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model((pixels - self.mean) / self.std)


def fgsm(model: nn.Module, pixels: torch.Tensor, labels: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Goodfellow et al. 2015: one step of size ε along the sign of the loss gradient."""
    pixels = pixels.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(pixels), labels), pixels)
    return (pixels + epsilon * grad.sign()).clamp(0, 1).detach()


def pgd(
    model: nn.Module,
    pixels: torch.Tensor,
    labels: torch.Tensor,
    epsilon: float,
    steps: int = 10,
    step_size: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Madry et al. 2018: projected gradient ascent in the L∞ ball, from a uniform random start."""
    step_size = 2.5 * epsilon / steps if step_size is None else step_size
    noise = torch.rand(pixels.shape, generator=generator) * 2 - 1
    adversarial = (pixels + epsilon * noise).clamp(0, 1)
    for _ in range(steps):
        adversarial.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(adversarial), labels), adversarial)
        adversarial = adversarial.detach() + step_size * grad.sign()
        adversarial = torch.min(torch.max(adversarial, pixels - epsilon), pixels + epsilon).clamp(0, 1)
    return adversarial.detach()


def adversarial_accuracy(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    preprocessing: Preprocessing,
    settings: AttackSettings = AttackSettings(),
    batch_size: int = 64,
    seed: int = 0,
) -> dict:
    """Accuracy under FGSM and PGD at each ε (in 1/255) on uint8 images (N, H, W, 3)."""
    wrapped = _Normalized(model, preprocessing).eval()
    for parameter in wrapped.parameters():
        parameter.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    pixels_all = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255)
    targets_all = torch.from_numpy(labels)
    correct = {"clean": 0, **{f"fgsm_{e}": 0 for e in settings.epsilons}, **{f"pgd_{e}": 0 for e in settings.epsilons}}
    for start in range(0, len(pixels_all), batch_size):
        pixels, targets = pixels_all[start : start + batch_size], targets_all[start : start + batch_size]
        with torch.no_grad():
            correct["clean"] += int((wrapped(pixels).argmax(1) == targets).sum())
        for e in settings.epsilons:
            for attack, name in ((fgsm, "fgsm"), (pgd, "pgd")):
                kwargs = {"steps": settings.pgd_steps, "generator": generator} if name == "pgd" else {}
                adversarial = attack(wrapped, pixels, targets, e / 255, **kwargs)
                with torch.no_grad():
                    correct[f"{name}_{e}"] += int((wrapped(adversarial).argmax(1) == targets).sum())
    for parameter in wrapped.parameters():
        parameter.requires_grad_(True)
    n = len(pixels_all)
    return {
        "images": n,
        "settings": asdict(settings),
        "clean_accuracy": correct["clean"] / n,
        "fgsm": {str(e): correct[f"fgsm_{e}"] / n for e in settings.epsilons},
        "pgd": {str(e): correct[f"pgd_{e}"] / n for e in settings.epsilons},
    }


# --------------------------------------------------------------------------------------------------
# Latency attribution: what SE and hard-swish cost
# --------------------------------------------------------------------------------------------------


def without_squeeze_excitation(model: nn.Module) -> nn.Module:
    """A copy with every SE block replaced by Identity (its multiply, pooling and two 1×1 convs gone)."""
    return _replace(model, lambda m: isinstance(m, SqueezeExcitation), lambda m: nn.Identity())


def with_relu_for_hardswish(model: nn.Module) -> nn.Module:
    """A copy with every hard-swish replaced by ReLU (the SE gate's hard-sigmoid is kept)."""
    return _replace(model, lambda m: isinstance(m, nn.Hardswish), lambda m: nn.ReLU(inplace=True))


def _replace(model: nn.Module, match: Callable[[nn.Module], bool], make: Callable[[nn.Module], nn.Module]) -> nn.Module:
    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if match(child):
                setattr(parent, name, make(child))
    return model


def latency_variants(model: nn.Module) -> dict[str, nn.Module]:
    """``full`` and the removals this model can have: a variant identical to "full" would report its
    timing noise as the cost of blocks the model does not contain."""
    se_blocks = any(isinstance(m, SqueezeExcitation) for m in model.modules())
    hardswish = any(isinstance(m, nn.Hardswish) for m in model.modules())
    variants = {"full": model}
    if se_blocks:
        variants["no_se"] = without_squeeze_excitation(model)
    if hardswish:
        variants["relu_for_hardswish"] = with_relu_for_hardswish(model)
    if se_blocks and hardswish:
        variants["no_se_relu"] = with_relu_for_hardswish(without_squeeze_excitation(model))
    return variants


def latency_attribution(model: nn.Module, resolution: int, rounds: int = 10, calls_per_round: int = 10) -> dict:
    """Batch-1 latency of four variants, timed in interleaved rounds so that machine noise hits all alike."""
    counts = {
        "se_blocks": sum(isinstance(m, SqueezeExcitation) for m in model.modules()),
        "hardswish": sum(isinstance(m, nn.Hardswish) for m in model.modules()),
    }
    variants = latency_variants(model)
    x = torch.randn(1, 3, resolution, resolution)
    samples: dict[str, list[float]] = {name: [] for name in variants}
    with torch.inference_mode():
        for variant in variants.values():
            variant.eval()
            for _ in range(5):
                variant(x)
        for _ in range(rounds):
            for name, variant in variants.items():
                for _ in range(calls_per_round):
                    start = time.perf_counter()
                    variant(x)
                    samples[name].append((time.perf_counter() - start) * 1000)
    full_median = statistics.median(samples["full"])
    rows = []
    for name, times in samples.items():
        quartiles = statistics.quantiles(times, n=4)
        median = statistics.median(times)
        rows.append(
            {
                "variant": name,
                "median_ms": median,
                "p25_ms": quartiles[0],
                "p75_ms": quartiles[2],
                "min_ms": min(times),
                "saving_vs_full_ms": full_median - median,
                "saving_vs_full_percent": 100 * (full_median - median) / full_median,
            }
        )
    return {
        "resolution": resolution,
        "batch": 1,
        "threads": torch.get_num_threads(),
        "samples_per_variant": rounds * calls_per_round,
        "method": f"PyTorch eager, inference_mode; {rounds} interleaved rounds of {calls_per_round} calls per variant",
        **counts,
        "variants": rows,
    }


def _device_measurements(model: nn.Module, inputs: np.ndarray, log: Callable[[str], None]) -> dict:
    """SE/hard-swish latency in the device runtimes and hard-swish's share of the int8 error."""
    from mobilenets.robustness.device_latency import (
        device_latency_attribution,
        hardswish_int8_error_share,
        installed_runtimes,
    )

    if not installed_runtimes():
        log("device latency: skipped (LiteRT and ExecuTorch are not installed: pip install 'mobilenets[edge]')")
        return {}
    calibration = np.ascontiguousarray(inputs[: min(32, len(inputs) // 2)])
    if len(calibration) == 0:
        log("device latency: skipped (needs at least 2 images: some calibrate, the others judge)")
        return {}
    found = {"device_latency": device_latency_attribution(latency_variants(model), calibration, log=log)}
    share = hardswish_int8_error_share(model, calibration, np.ascontiguousarray(inputs[len(calibration) :][:500]))
    if share is not None:
        found["hardswish_int8_error"] = share
        log("hard-swish's share of the LiteRT int8 error measured")
    return found


# --------------------------------------------------------------------------------------------------
# Scores
# --------------------------------------------------------------------------------------------------


def corruption_errors(accuracies: dict, baseline: dict, clean: float, baseline_clean: float) -> dict:
    """CE_c = Σ_s E_{s,c} / Σ_s E^base_{s,c} and relative CE_c = Σ_s (E_{s,c} − E_clean) / Σ_s (E^base_{s,c} − E^base_clean)."""
    ce, relative = {}, {}
    for name, by_severity in accuracies.items():
        severities = [s for s in by_severity if s in baseline.get(name, {})]
        errors = sum(1 - by_severity[s] for s in severities)
        base = sum(1 - baseline[name][s] for s in severities)
        ce[name] = errors / base if base > 0 else None
        gap = sum((1 - by_severity[s]) - (1 - clean) for s in severities)
        base_gap = sum((1 - baseline[name][s]) - (1 - baseline_clean) for s in severities)
        relative[name] = gap / base_gap if base_gap > 0 else None
    return {"ce": ce, "relative_ce": relative}


def mean_over(values: dict, names: Iterable[str]) -> float | None:
    chosen = [values[n] for n in names if n in values and values[n] is not None]
    return float(np.mean(chosen)) if chosen else None


def mean_errors(ce: dict, names: Sequence[str], severities: Sequence[int], prefix: str = "") -> dict:
    """``mean_ce`` (×100) over ``names`` always, and ``mce`` only when it is one: CE summed over all five
    severities (Hendrycks & Dietterich 2019). From fewer severities ``mce`` is None, so that no reader of the
    JSON takes a one-severity figure for an mCE; ``robustness.labels`` names ``mean_ce`` for what it covers."""
    mean = _percent(mean_over(ce, names))
    return {f"{prefix}mean_ce": mean, f"{prefix}mce": mean if is_mce(severities) else None}


def mean_accuracy(accuracies: dict, names: Iterable[str]) -> float | None:
    chosen = [acc for n in names if n in accuracies for acc in accuracies[n].values()]
    return float(np.mean(chosen)) if chosen else None


def summarize(accuracies: dict, clean: float) -> dict:
    """Mean corrupted accuracy over the common corruptions measured (and over the held-out ones, apart)."""
    common = [n for n in CORRUPTIONS if n in accuracies]
    held_out = [n for n in accuracies if n not in CORRUPTIONS]
    mean = mean_accuracy(accuracies, common)
    return {
        "clean_accuracy": clean,
        "mean_corrupted_accuracy": mean,
        "held_out_mean_corrupted_accuracy": mean_accuracy(accuracies, held_out),
        "clean_vs_corrupt_ratio": mean / clean if mean is not None and clean > 0 else None,
        "per_corruption_mean": {n: float(np.mean(list(accuracies[n].values()))) for n in accuracies},
    }


# --------------------------------------------------------------------------------------------------
# The whole measurement
# --------------------------------------------------------------------------------------------------


@dataclass
class RobustnessOptions:
    corruptions: tuple[str, ...] = ALL_CORRUPTIONS
    severities: tuple[int, ...] = SEVERITIES
    seed: int = 0
    bn_adapt: bool = False
    bn_samples: int = 32
    shifts: bool = True
    adversarial: bool = True
    adversarial_images: int = 200
    latency: bool = True
    device_latency: bool = True  # the latency variants in LiteRT/ExecuTorch too, when the edge extra is installed
    batch_size: int = 128


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_robustness(
    model: nn.Module,
    preprocessing: Preprocessing,
    data: EvalImages,
    options: RobustnessOptions | None = None,
    baseline: nn.Module | None = None,
    int8_model: Path | None = None,
    log: Callable[[str], None] = _log,
    progress: Callable[[int, int, str], None] | None = None,
) -> dict:
    """Run every measurement on ``data``; the result is JSON-ready (accuracies are fractions 0–1).

    ``progress(done, total, what)`` is called after each corruption × severity (the bulk of the time).
    """
    options = options or RobustnessOptions()
    started = time.perf_counter()
    model.eval()
    classify = torch_classifier(model, options.batch_size)
    classify_base = torch_classifier(baseline.eval(), options.batch_size) if baseline is not None else None
    classify_int8 = onnx_classifier(int8_model, options.batch_size) if int8_model is not None else None
    images, labels = data.images, data.labels
    size = images.shape[1]

    clean_inputs = to_model_input(images, preprocessing)
    clean = accuracy(classify(clean_inputs), labels)
    result: dict = {
        "images": len(images),
        "images_available": data.available,
        "skipped_files": data.skipped,
        "input_size": size,
        "severity_table": "CIFAR-10-C" if table_for(size) == "cifar" else "ImageNet-C",
        "seed": options.seed,
        "corruptions": list(options.corruptions),
        "severities": list(options.severities),
        "clean_accuracy": clean,
    }
    log(f"clean accuracy {clean:.4f} on {len(images)} images ({size}×{size})")
    if classify_base is not None:
        base_clean = accuracy(classify_base(clean_inputs), labels)
    if classify_int8 is not None:
        int8_clean = accuracy(classify_int8(clean_inputs), labels)

    adaptation_sample = torch.from_numpy(adaptation_indices(len(images), options.bn_samples, options.seed))
    acc: dict[str, dict[int, float]] = {}
    acc_base: dict[str, dict[int, float]] = {}
    acc_bn: dict[str, dict[int, float]] = {}
    acc_int8: dict[str, dict[int, float]] = {}
    steps, done = len(options.corruptions) * len(options.severities), 0
    for name in options.corruptions:
        for severity in options.severities:
            if progress is not None:
                progress(done, steps, f"{name} severity {severity}")
            done += 1
            corrupted = np.stack(
                [corrupt(image, name, severity, options.seed, index) for index, image in enumerate(images)]
            )
            inputs = to_model_input(corrupted, preprocessing)
            acc.setdefault(name, {})[severity] = accuracy(classify(inputs), labels)
            if classify_base is not None:
                acc_base.setdefault(name, {})[severity] = accuracy(classify_base(inputs), labels)
            if options.bn_adapt:
                adapted = adapt_batchnorm(model, inputs[adaptation_sample])
                acc_bn.setdefault(name, {})[severity] = accuracy(
                    torch_classifier(adapted, options.batch_size)(inputs), labels
                )
            if classify_int8 is not None:
                acc_int8.setdefault(name, {})[severity] = accuracy(classify_int8(inputs), labels)
        log(f"{name:18s} " + " ".join(f"{acc[name][s]:.3f}" for s in options.severities))

    result["corruption_accuracy"] = _keyed(acc)
    result.update(summarize(acc, clean))
    if classify_base is not None:
        errors = corruption_errors(acc, acc_base, clean, base_clean)
        common = [n for n in CORRUPTIONS if n in acc]
        held_out = [n for n in acc if n not in CORRUPTIONS]
        result["baseline"] = {
            "corruption_accuracy": _keyed(acc_base),
            **summarize(acc_base, base_clean),
        }
        result["corruption_error"] = errors["ce"]
        result["relative_corruption_error"] = errors["relative_ce"]
        result.update(mean_errors(errors["ce"], common, options.severities))
        result.update(mean_errors(errors["relative_ce"], common, options.severities, prefix="relative_"))
        result.update(mean_errors(errors["ce"], held_out, options.severities, prefix="held_out_"))
    if options.bn_adapt:
        adapted_clean = accuracy(
            torch_classifier(adapt_batchnorm(model, clean_inputs[adaptation_sample]), options.batch_size)(clean_inputs),
            labels,
        )
        # The images actually used: --bn-samples larger than the evaluation set re-estimates on all of them.
        bn = {
            "samples": len(adaptation_sample),
            "corruption_accuracy": _keyed(acc_bn),
            **summarize(acc_bn, adapted_clean),
        }
        if classify_base is not None:
            # As in Schneider et al.: adapted model against the unadapted baseline.
            errors = corruption_errors(acc_bn, acc_base, adapted_clean, base_clean)
            bn["corruption_error"] = errors["ce"]
            bn.update(mean_errors(errors["ce"], [n for n in CORRUPTIONS if n in acc_bn], options.severities))
        result["bn_adapt"] = bn
    if classify_int8 is not None:
        result["int8"] = {
            "model": str(int8_model),
            "corruption_accuracy": _keyed(acc_int8),
            **summarize(acc_int8, int8_clean),
        }

    if options.shifts:
        result["shifts"] = _shift_sweeps(classify, images, labels, preprocessing)
        log("shift sweeps done")
    if options.adversarial:
        n = min(options.adversarial_images, len(images))
        result["adversarial"] = adversarial_accuracy(model, images[:n], labels[:n], preprocessing, seed=options.seed)
        log(f"adversarial done on {n} images")
    if options.latency:
        result["latency"] = latency_attribution(model, size)
        log("latency attribution done")
        if options.device_latency:
            result.update(_device_measurements(model, clean_inputs.numpy(), log))
    result["load_average"] = list(os.getloadavg())
    result["elapsed_s"] = time.perf_counter() - started
    return result


def _shift_sweeps(classify: Classifier, images: np.ndarray, labels: np.ndarray, preprocessing: Preprocessing) -> dict:
    def score(shifted: np.ndarray) -> float:
        return accuracy(classify(to_model_input(shifted, preprocessing)), labels)

    return {
        "resolution": [{"factor": f, "accuracy": score(rescale(images, f))} for f in RESOLUTION_FACTORS],
        "exposure": [{"stops": s, "accuracy": score(expose(images, s))} for s in EXPOSURE_STOPS],
        "gamma": [{"gamma": g, "accuracy": score(apply_gamma(images, g))} for g in GAMMAS],
        "jpeg": [{"quality": q, "accuracy": score(jpeg(images, q))} for q in JPEG_QUALITIES],
    }


def _keyed(accuracies: dict[str, dict[int, float]]) -> dict[str, dict[str, float]]:
    """JSON object keys are strings: severities as "1".."5"."""
    return {name: {str(s): a for s, a in by_severity.items()} for name, by_severity in accuracies.items()}


def _percent(value: float | None) -> float | None:
    return None if value is None else 100 * value


# --------------------------------------------------------------------------------------------------
# Run directories
# --------------------------------------------------------------------------------------------------


def validation_samples(run_dir: Path, classes: Sequence[str]) -> tuple[list[tuple[Path, int]], str]:
    """The run's validation split from ``split.json``, labels re-indexed to the model's class order."""
    path = Path(run_dir) / "split.json"
    if not path.exists():
        raise MobilenetsError(f"{path}: not found; pass --data VAL_DIR (a folder with one subfolder per class)")
    try:
        split = RunDirectory(run_dir).split_record()
        split_classes, val = split["classes"], split["val"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise MobilenetsError(
            f"{path}: not a split file with 'classes' and 'val' ({error}); pass --data VAL_DIR"
        ) from None
    index = {name: i for i, name in enumerate(classes)}
    missing = [name for name in split_classes if name not in index]
    if missing:
        raise MobilenetsError(f"{path}: classes {missing} are not the model's; was the run dir changed after training?")
    if not val:
        raise MobilenetsError(f"{path}: the validation split is empty; pass --data VAL_DIR")
    return [(Path(p), index[split_classes[label]]) for p, label in val], f"{path} (validation split)"
