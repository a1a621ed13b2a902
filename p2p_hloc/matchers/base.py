"""The interface shared by all match sources."""

from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np
import torch


def default_device(device: Optional[Union[str, torch.device]] = None) -> torch.device:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


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
