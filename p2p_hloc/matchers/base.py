"""The interface shared by all match sources."""

from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np
import torch
from PIL import Image

from ..preprocess import read_image, target_size


def default_device(device: Optional[Union[str, torch.device]] = None) -> torch.device:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def resize_image(
    path: Path, resize_max: Optional[int], dfactor: int = 1
) -> Tuple[Image.Image, np.ndarray, Tuple[int, int]]:
    """RGB image resized so its larger side is at most ``resize_max`` and its
    sides are multiples of ``dfactor`` (never upsampled); returns it, the
    per-axis ``scale`` (original / resized) and the original ``(W, H)``."""
    image = read_image(path)
    size = image.size
    wt, ht = target_size(*size, resize_max, dfactor)
    if (wt, ht) != size:
        image = image.resize((wt, ht), Image.BICUBIC)
    return image, np.array([size[0] / wt, size[1] / ht]), size


class BaseMatcher:
    """``prepare(path) = extract(load(path))``; ``match(prep0, prep1)``."""

    def load(self, path: Path) -> Dict[str, Any]:
        raise NotImplementedError

    def extract(self, data: Dict[str, Any]) -> Dict[str, Any]:
        return data

    def prepare(self, path: Path) -> Dict[str, Any]:
        return self.extract(self.load(path))

    def match(
        self, prep0: Dict[str, Any], prep1: Dict[str, Any]
    ) -> Dict[str, np.ndarray]:
        raise NotImplementedError


def empty_matches() -> Dict[str, np.ndarray]:
    return {
        "keypoints0": np.zeros((0, 2)),
        "keypoints1": np.zeros((0, 2)),
        "scores": np.zeros(0),
    }
