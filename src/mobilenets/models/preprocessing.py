"""Reading images the way users' folders really are, and the preprocessing each set of weights expects.

Wrong preprocessing (mean/std, resize, BGR/RGB) is the first cause of "pretrained accuracy is low",
so preprocessing travels with the weights as metadata and is applied from there.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Every MobileNet downsamples 32×: below 32 px the last stages see a 1×1 (or empty) map. The one bound
# `train --resolution` and `profile --resolution` both apply.
MIN_RESOLUTION = 32
# Above this one image's activations no longer fit a machine's memory; the largest published MobileNet
# evaluation size is 448 px (timm).
MAX_RESOLUTION = 1024


def check_resolution(resolution: int, option: str = "--resolution") -> int:
    """``resolution`` if a MobileNet can take it, else the one-line error every command gives (naming
    ``option``): at least 32 px, which the 32× downsampling needs, and at most ``MAX_RESOLUTION``."""
    from mobilenets.core.errors import MobilenetsError

    if resolution < MIN_RESOLUTION:
        raise MobilenetsError(
            f"{option} {resolution} is too small: MobileNets downsample 32×; use {MIN_RESOLUTION} or more"
        )
    if resolution > MAX_RESOLUTION:
        raise MobilenetsError(
            f"{option} {resolution} is too large: use at most {MAX_RESOLUTION} (MobileNets are trained at 224; "
            "much larger inputs exhaust memory)"
        )
    return resolution




@dataclass(frozen=True)
class Preprocessing:
    """Resize the short side to ``resize_size``, center-crop ``input_size``, scale to [0,1], normalize."""

    input_size: int = 224
    resize_size: int = 256
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @classmethod
    def for_resolution(cls, input_size: int, crop_fraction: float = 0.875, **kwargs) -> Preprocessing:
        return cls(input_size=input_size, resize_size=round(input_size / crop_fraction), **kwargs)

    @classmethod
    def from_dict(cls, data: dict) -> Preprocessing:
        data = dict(data)
        for key in ("mean", "std"):
            if key in data:
                data[key] = tuple(float(v) for v in data[key])
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def to_dict(self) -> dict:
        return asdict(self)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """A PIL RGB image → normalized CHW float tensor."""
        resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}[self.interpolation]
        width, height = image.size
        # Short side to resize_size, long side truncated: torchvision's Resize(int) rule, so that
        # torchvision weights see exactly the pixels they were evaluated on.
        if width <= height:
            new_size = (self.resize_size, int(self.resize_size * height / width))
        else:
            new_size = (int(self.resize_size * width / height), self.resize_size)
        image = image.resize(new_size, resample)
        left = round((new_size[0] - self.input_size) / 2.0)
        top = round((new_size[1] - self.input_size) / 2.0)
        image = image.crop((left, top, left + self.input_size, top + self.input_size))
        return normalize(to_tensor(image), self.mean, self.std)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB → float CHW in [0, 1]."""
    import torch

    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def normalize(tensor: torch.Tensor, mean, std) -> torch.Tensor:
    import torch

    mean_t = torch.tensor(mean, dtype=tensor.dtype).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=tensor.dtype).view(-1, 1, 1)
    return (tensor - mean_t) / std_t




