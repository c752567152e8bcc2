"""Reading images the way users' folders really are: any mode to RGB, EXIF orientation, one clear error per bad file."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from mobilenets.core.errors import MobilenetsError

# Pillow's default bomb limit (~89 MP) is kept; above it we refuse instead of warning.
MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS


class ImageLoadError(MobilenetsError):
    """An image that cannot be used; ``str()`` names the file and the reason."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode → RGB: EXIF orientation applied, alpha composited on white, 16-bit rescaled."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        high = array.max() if image.mode in ("I", "F") and array.max() > 0 else 65535.0
        image = Image.fromarray(np.clip(array / high * 255.0, 0, 255).astype(np.uint8), "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def load_image(path: Path | str) -> Image.Image:
    """Open any image Pillow reads as RGB, or raise ``ImageLoadError`` naming the file and the reason."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                return to_rgb(image)
    except FileNotFoundError:
        raise ImageLoadError(path, "file not found") from None
    except IsADirectoryError:
        raise ImageLoadError(path, "is a directory, not an image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageLoadError(path, f"refused as a possible decompression bomb ({error})") from None
    except Image.UnidentifiedImageError:
        raise ImageLoadError(path, "not an image Pillow can read (unknown format or corrupt header)") from None
    except (OSError, ValueError, SyntaxError) as error:
        raise ImageLoadError(path, f"corrupt or truncated image ({error})") from None
