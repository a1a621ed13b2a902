"""Image reading and resizing: the one preprocessing of every match source.

The official Patch2Pix preprocessing: PIL RGB conversion, bicubic resize of
the larger side to ``imsize`` (never upsampled), each side floored to a
multiple of 16 (or, on the refine path, rounded), values in [0, 1]. The
per-axis ``scale = original / resized`` maps network pixels back by plain
multiplication (the official convention). The ImageNet normalisation is the
model's (``Patch2Pix.extract_features``).

Imports no torch until a tensor is asked for (``to_tensor``), so that
``image_size`` and ``read_image`` serve modules that need no model.
"""

import logging
import math
from pathlib import Path
from typing import Any, Optional, Tuple, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from .console import InputError

logger = logging.getLogger("p2p_hloc")

ImageLike = Union[str, Path, Image.Image, np.ndarray, Any]
SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # PIL modes scaled / 257


class ImageError(InputError):
    """An image that cannot be read or is too small."""


def image_size(path: Union[str, Path]) -> Tuple[int, int]:
    """``(width, height)`` of an image file, from its header."""
    with _open(path) as im:
        return im.size


def _open(path: Union[str, Path]) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"image not found: {path}")
    try:
        return Image.open(path)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ImageError(f"cannot read image {path}: {e}") from e
    except Image.DecompressionBombError as e:
        raise ImageError(
            f"cannot read image {path}: {e} (PIL.Image.MAX_IMAGE_PIXELS sets the "
            "limit)"
        ) from e


def _to_rgb(im: Image.Image, name: str, official_16bit: bool) -> Image.Image:
    """RGB conversion; 16-bit grayscale scaled to 8 bits (``/ 257``) unless
    ``official_16bit`` (PIL's conversion, which clips at 255: almost white)."""
    if im.mode in SIXTEEN_BIT:
        if official_16bit:
            logger.warning(
                "%s: 16-bit image converted as the official code does (values "
                "clipped at 255, nearly white): a parity option only.",
                name,
            )
        else:
            arr = np.asarray(im, dtype=np.float64) / 257.0
            im = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))
    return im.convert("RGB")


def read_image(path: Union[str, Path], official_16bit: bool = False) -> Image.Image:
    """Open an image file as RGB (grayscale, RGBA and palette images are
    converted by PIL as the official code does; 16-bit grayscale images are
    scaled to 8 bits, or with ``official_16bit`` clipped as the official code
    does, with a warning)."""
    with _open(path) as im:
        try:
            return _to_rgb(im, str(path), official_16bit)
        except (OSError, ValueError) as e:
            raise ImageError(f"cannot read image {path}: {e}") from e


def as_rgb(image: ImageLike, official_16bit: bool = False) -> Image.Image:
    """An RGB PIL image from a file path or PIL image (``read_image``'s
    conversion), an ``(H, W)`` or ``(H, W, 3)`` uint8 array, or a
    ``(3, H, W)`` / ``(1, H, W)`` tensor in [0, 1] (quantised to 8 bits, as the
    official code reads images)."""
    if isinstance(image, (str, Path)):
        return read_image(image, official_16bit)
    if isinstance(image, Image.Image):
        return _to_rgb(image, "image", official_16bit)
    if hasattr(image, "detach"):  # a torch tensor, channels first
        x = image.detach().cpu().float()
        if x.ndim != 3 or x.shape[0] not in (1, 3):
            raise ImageError(
                f"expected a (3, H, W) or (1, H, W) tensor, got {tuple(x.shape)}"
            )
        image = x.clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
        image = image[..., 0] if image.shape[-1] == 1 else image
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or not (
        arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] == 3)
    ):
        raise ImageError(
            f"expected an (H, W) or (H, W, 3) uint8 image, got {arr.dtype} "
            f"{arr.shape}"
        )
    return Image.fromarray(arr).convert("RGB")


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


def resize(
    image: Image.Image,
    imsize: Optional[int] = None,
    multiple: int = 16,
    name: str = "image",
) -> Tuple[Image.Image, np.ndarray]:
    """Bicubic resize to ``target_size`` (the image itself if unchanged).

    Returns the resized image and ``scale = [sx, sy]`` (original / resized,
    float64). Raises ``ImageError`` (naming ``name``) if a side would be
    smaller than ``multiple``."""
    wo, ho = image.size
    wt, ht = target_size(wo, ho, imsize, multiple)
    if wt < max(multiple, 1) or ht < max(multiple, 1):
        raise ImageError(
            f"{name} is too small: {wo}x{ho} px gives a {wt}x{ht} network input "
            f"(each side needs at least {max(multiple, 1)} px)"
        )
    if (wt, ht) != (wo, ho):
        image = image.resize((wt, ht), Image.BICUBIC)
    return image, np.array([wo / wt, ho / ht], dtype=np.float64)


def to_tensor(image: Union[Image.Image, np.ndarray]):
    """RGB image -> ``(3, H, W)`` float32 torch tensor in [0, 1]."""
    import torch  # only here: the rest of the module serves torch-free code

    x = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(x).permute(2, 0, 1)


def load_image(
    image: ImageLike,
    imsize: Optional[int] = None,
    multiple: int = 16,
    official_16bit: bool = False,
) -> Tuple[Any, np.ndarray, Tuple[int, int]]:
    """Read (``as_rgb``), resize (``resize``) and convert (``to_tensor``).

    Returns the ``(3, H, W)`` tensor in [0, 1], ``scale`` ``[sx, sy]`` and the
    original ``(width, height)``."""
    rgb = as_rgb(image, official_16bit)
    name = str(image) if isinstance(image, (str, Path)) else "image"
    resized, scale = resize(rgb, imsize, multiple, name)
    return to_tensor(resized), scale, rgb.size
