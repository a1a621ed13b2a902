"""Patch2Pix on NCNet proposals (or the coarse NCNet matches alone)."""

from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np
import torch

from ..model import Patch2Pix, load_model, select_matches
from ..preprocess import load_image
from .base import BaseMatcher, default_device


def load_network(
    name: Union[str, Path],
    weights: Optional[Path] = None,
    device=None,
    coarse_only: bool = False,
) -> Patch2Pix:
    """The network from ``weights`` if given, else from ``name``: an official
    file name (looked up by ``p2p_hloc.weights``) or a path."""
    from ..weights import resolve

    if weights is None:
        weights = resolve(name)
    return load_model(weights, default_device(device), coarse_only=coarse_only)


def to_numpy(pred: Dict[str, torch.Tensor]) -> Dict[str, np.ndarray]:
    return {
        k: pred[k].cpu().double().numpy()
        for k in ("keypoints0", "keypoints1", "scores")
    }


class Matcher(BaseMatcher):
    default_conf = {
        "weights": "patch2pix_pretrained.pth",
        "threshold": 0.25,
        "coarse_only": False,
        "precision": "fp32",
    }

    def __init__(self, conf: dict, preprocessing: dict, weights=None, device=None):
        self.conf = {**self.default_conf, **conf}
        self.preprocessing = preprocessing
        if self.conf.get("ksize", Patch2Pix.ksize) != Patch2Pix.ksize:
            raise ValueError(
                f"only ksize {Patch2Pix.ksize} is supported, got {self.conf['ksize']}"
            )
        self.model = load_network(
            self.conf["weights"], weights, device, coarse_only=self.conf["coarse_only"]
        )
        self.model.precision = self.conf["precision"]

    def load(self, path: Path) -> Dict[str, Any]:
        p = self.preprocessing
        image, scale, size = load_image(
            path, p["resize_max"], p.get("dfactor", 16), p.get("official_16bit", False)
        )
        return {"image": image, "scale": scale, "size": size}

    @torch.inference_mode()
    def extract(self, data: Dict[str, Any]) -> Dict[str, Any]:
        feats = self.model.extract_features(data["image"][None].to(self.model.device))
        return {"feats": feats, "scale": data["scale"], "size": data["size"]}

    @torch.inference_mode()
    def match(
        self, prep0: Dict[str, Any], prep1: Dict[str, Any]
    ) -> Dict[str, np.ndarray]:
        pred = self.model({"features0": prep0["feats"], "features1": prep1["feats"]})
        pred = select_matches(
            pred, prep0["scale"], prep1["scale"], self.conf["threshold"]
        )
        return to_numpy(pred)
