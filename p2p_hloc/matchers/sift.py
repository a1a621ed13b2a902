"""SIFT (OpenCV) with mutual nearest neighbours and Lowe's ratio test."""

from pathlib import Path
from typing import Any, Dict

import cv2
import numpy as np
import torch

from ..preprocess import read_image, resize
from .base import BaseMatcher, empty_matches


class Matcher(BaseMatcher):
    default_conf = {"max_keypoints": 4096, "ratio": 0.8}

    def __init__(self, conf: dict, preprocessing: dict, weights=None, device=None):
        self.conf = {**self.default_conf, **conf}
        self.preprocessing = preprocessing

    def load(self, path: Path) -> Dict[str, Any]:
        p = self.preprocessing
        image = read_image(path, p.get("official_16bit", False))
        resized, scale = resize(
            image, p.get("resize_max"), p.get("dfactor", 1), str(path)
        )
        gray = cv2.cvtColor(np.asarray(resized), cv2.COLOR_RGB2GRAY)
        return {"image": gray, "scale": scale, "size": image.size}

    def extract(self, data: Dict[str, Any]) -> Dict[str, Any]:
        sift = cv2.SIFT_create(nfeatures=self.conf["max_keypoints"])
        kps, desc = sift.detectAndCompute(data["image"], None)
        xy = np.array([k.pt for k in kps], np.float64).reshape(-1, 2)
        # OpenCV puts pixel centres at integer coordinates: +0.5 to corners
        xy = (xy + 0.5) * data["scale"]
        desc = np.zeros((0, 128), np.float32) if desc is None else desc
        return {"keypoints": xy, "descriptors": desc, "size": data["size"]}

    def match(
        self, prep0: Dict[str, Any], prep1: Dict[str, Any]
    ) -> Dict[str, np.ndarray]:
        d0, d1 = prep0["descriptors"], prep1["descriptors"]
        if len(d0) < 2 or len(d1) < 2:
            return empty_matches()
        dist = torch.cdist(torch.from_numpy(d0), torch.from_numpy(d1)).numpy()
        nn01 = dist.argmin(1)
        nn10 = dist.argmin(0)
        i = np.flatnonzero(nn10[nn01] == np.arange(len(d0)))
        two = np.sort(np.partition(dist[i], 1, axis=1)[:, :2], 1)
        ratio = two[:, 0] / np.maximum(two[:, 1], 1e-12)
        keep = ratio < self.conf["ratio"]
        i = i[keep]
        return {
            "keypoints0": prep0["keypoints"][i],
            "keypoints1": prep1["keypoints"][nn01[i]],
            "scores": 1.0 - ratio[keep],
        }
