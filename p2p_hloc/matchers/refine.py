"""Patch2Pix refinement of the matches of any other source."""

from pathlib import Path
from typing import Any, Dict

import numpy as np
import torch

from ..model import select_matches
from ..preprocess import load_image
from .base import BaseMatcher, empty_matches
from .patch2pix import load_network, to_numpy


class Refined(BaseMatcher):
    """Proposals from ``proposer`` (original pixels, corner convention) are
    refined by the mid and fine regressors on images resized to
    ``resize_max`` with any side length (the official refine path)."""

    default_conf = {
        "weights": "patch2pix_pretrained.pth",
        "resize_max": 1024,
        "threshold": 0.25,
        "precision": "fp32",
        "official_16bit": False,  # parity only: 16-bit images clipped (white)
    }

    def __init__(self, proposer: BaseMatcher, conf: dict, weights=None, device=None):
        self.proposer = proposer
        self.conf = {**self.default_conf, **conf}
        self.model = load_network(self.conf["weights"], weights, device)
        self.model.precision = self.conf["precision"]

    def load(self, path: Path) -> Dict[str, Any]:
        image, scale, size = load_image(
            path, self.conf["resize_max"], 1, self.conf["official_16bit"]
        )
        return {
            "proposer": self.proposer.load(path),
            "image": image,
            "scale": scale,
            "size": size,
        }

    @torch.inference_mode()
    def extract(self, data: Dict[str, Any]) -> Dict[str, Any]:
        feats = self.model.extract_features(data["image"][None].to(self.model.device))
        prep = self.proposer.extract(data["proposer"])
        return {
            "proposer": prep,
            "feats": feats,
            "scale": data["scale"],
            "size": data["size"],
        }

    @torch.inference_mode()
    def match(
        self, prep0: Dict[str, Any], prep1: Dict[str, Any]
    ) -> Dict[str, np.ndarray]:
        prop = self.proposer.match(prep0["proposer"], prep1["proposer"])
        if len(prop["scores"]) == 0:
            return empty_matches()
        # corner convention: original -> network pixels is a plain division
        xy = np.concatenate(
            [prop["keypoints0"] / prep0["scale"], prop["keypoints1"] / prep1["scale"]],
            1,
        )
        proposals = torch.from_numpy(xy).float().to(self.model.device)
        pred = self.model(
            {
                "features0": prep0["feats"],
                "features1": prep1["feats"],
                "proposals": proposals,
            }
        )
        pred = select_matches(
            pred, prep0["scale"], prep1["scale"], self.conf["threshold"]
        )
        return to_numpy(pred)
