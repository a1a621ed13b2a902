"""Matches read from an existing hloc features + matches pair of files
(e.g. SuperPoint + SuperGlue), to be refined by Patch2Pix or used as is.

Conf: ``features`` and ``matches`` (the two h5 files) and ``image_dir`` (image
names are paths relative to it, as in the files); ``match_pairs`` fills them
from its ``proposals`` and ``image_dir`` arguments.
"""

from pathlib import Path
from typing import Any, Dict

import numpy as np

from ..io import from_hloc_coords, get_keypoints, get_matches
from ..preprocess import image_size
from .base import BaseMatcher


class Matcher(BaseMatcher):
    def __init__(self, conf: dict, preprocessing: dict, weights=None, device=None):
        for key in ("features", "matches", "image_dir"):
            if conf.get(key) is None:
                raise ValueError(f"the hloc_file source needs conf['model'][{key!r}]")
        self.features = Path(conf["features"])
        self.matches = Path(conf["matches"])
        self.image_dir = Path(conf["image_dir"])

    def load(self, path: Path) -> Dict[str, Any]:
        name = Path(path).relative_to(self.image_dir).as_posix()
        return {"name": name, "size": image_size(path)}

    def extract(self, data: Dict[str, Any]) -> Dict[str, Any]:
        kps = get_keypoints(self.features, data["name"]).astype(np.float64)
        return {**data, "keypoints": from_hloc_coords(kps)}

    def match(
        self, prep0: Dict[str, Any], prep1: Dict[str, Any]
    ) -> Dict[str, np.ndarray]:
        idx, scores = get_matches(self.matches, prep0["name"], prep1["name"])
        return {
            "keypoints0": prep0["keypoints"][idx[:, 0]],
            "keypoints1": prep1["keypoints"][idx[:, 1]],
            "scores": scores.astype(np.float64),
        }
