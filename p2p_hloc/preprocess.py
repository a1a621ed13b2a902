"""Image loading and the official Patch2Pix preprocessing.

PIL RGB conversion, bicubic resize of the larger side to ``imsize`` (never
upsampled), each side floored to a multiple of 16, ImageNet normalisation. The
per-axis ``scale = original / resized`` maps network pixels back by plain
multiplication (the official convention).
"""

import math
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class ImageError(ValueError):
    """An image that cannot be read or is too small."""


def read_image(path: Union[str, Path]) -> Image.Image:
    """Open an image as RGB (grayscale, RGBA, palette and 16-bit images are
    converted by PIL exactly as the official code does)."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ImageError(f"cannot read image {path}: {e}") from e


def target_size(
    width: int, height: int, imsize: Optional[int] = None, multiple: int = 16
) -> Tuple[int, int]:
    """Network input size ``(W, H)`` for an image of ``(width, height)``.

    The larger side goes to ``imsize`` (unset, <= 0 or larger than the image:
    the image's own size). With ``multiple > 1`` each side is floored to a
    multiple of it (official); with ``multiple == 1`` sides are rounded (the
    official refine path, any size).
    """
    longest = max(width, height)
    if imsize is None or imsize <= 0 or imsize > longest:
        imsize = longest
    s = longest / imsize
    if multiple > 1:
        wt = multiple * math.floor(width / s / multiple)
        ht = multiple * math.floor(height / s / multiple)
    else:
        wt, ht = int(round(width / s)), int(round(height / s))
    return wt, ht


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> ImageNet-normalised ``(3, H, W)`` float32."""
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(MEAN, dtype=torch.float32)[:, None, None]
    std = torch.tensor(STD, dtype=torch.float32)[:, None, None]
    return (x - mean) / std


def preprocess(
    image: Image.Image,
    imsize: Optional[int] = None,
    multiple: int = 16,
    name: str = "image",
) -> Tuple[torch.Tensor, np.ndarray]:
    """Resize and normalise an RGB image.

    Returns the ``(3, H, W)`` tensor and ``scale = [sx, sy]`` (original /
    resized, float64)."""
    wo, ho = image.size
    wt, ht = target_size(wo, ho, imsize, multiple)
    if wt < multiple or ht < multiple or wt == 0 or ht == 0:
        raise ImageError(
            f"{name} is too small: {wo}x{ho} px gives a {wt}x{ht} network input "
            f"(each side needs at least {max(multiple, 1)} px)"
        )
    resized = image.resize((wt, ht), Image.BICUBIC)
    return to_tensor(resized), np.array([wo / wt, ho / ht], dtype=np.float64)


def load_image(
    path: Union[str, Path], imsize: Optional[int] = None, multiple: int = 16
) -> Tuple[torch.Tensor, np.ndarray, Tuple[int, int]]:
    """Read and preprocess an image file.

    Returns ``(3, H, W)`` tensor, ``scale`` ``[sx, sy]`` and the original
    ``(width, height)``."""
    image = read_image(path)
    tensor, scale = preprocess(image, imsize, multiple, name=str(path))
    return tensor, scale, image.size
