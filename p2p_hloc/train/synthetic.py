"""Training pairs from the generated scenes of ``p2p_hloc.synthetic``.

A scene (``generate_scene``: 8 fixed database views and ``num_queries`` random
ones of a textured room, exact K and poses) is written once to a folder. Every
two views whose overlap, measured with the rendered depth, lies in
``(min_overlap, max_overlap]`` form a pair, stored in the record format of
``megadepth.write_pairs``: ``MegaDepthPairs`` then crops and resizes the images,
scales K and builds F exactly as for MegaDepth.
"""

import logging
from itertools import combinations
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from ..synthetic import View, generate_scene, read_views, room, world_points
from .megadepth import SIZE, MegaDepthPairs, relative_pose, stack_pairs

logger = logging.getLogger("p2p_hloc")

default_conf = {
    "num_queries": 16,  # random views added to the 8 database views
    "width": 480,  # rendered views (cropped to the aspect of the network input)
    "height": 360,
    "seed": 0,
    "min_overlap": 0.35,  # exclusive
    "max_overlap": 1.0,  # inclusive
    "grid": 8,  # pixel step of the points that measure the overlap
    "depth_rtol": 0.05,  # relative depth difference of a point seen by a view
}


def seen_fraction(
    xyz: np.ndarray, view: View, xyz_view: np.ndarray, rtol: float
) -> float:
    """Fraction of the world points ``(N, 3)`` (NaN rows: none) that ``view``
    sees: inside its image, at the depth of its own points ``(H, W, 3)`` there."""
    xyz = xyz[np.isfinite(xyz).all(-1)]
    if len(xyz) == 0:
        return 0.0
    uv, z = view.project(xyz)
    inside = (z > 0) & (uv >= 0).all(-1) & (uv < (view.width, view.height)).all(-1)
    u, v = uv[inside].astype(int).T
    _, z_seen = view.project(xyz_view[v, u])
    return float((np.abs(z_seen - z[inside]) < rtol * z[inside]).sum() / len(xyz))


def overlapping_pairs(views: Sequence[View], scene: str, conf: Dict) -> List[Dict]:
    """Pair records (``megadepth.stack_pairs`` fields) of the views whose
    overlap, the smaller of the two seen fractions, is in range."""
    planes = room()
    xyz = [world_points(planes, v) for v in views]
    step = conf["grid"]
    grid = [x[step // 2 :: step, step // 2 :: step].reshape(-1, 3) for x in xyz]
    pairs = []
    for i, j in combinations(range(len(views)), 2):
        v0, v1 = views[i], views[j]
        overlap = min(
            seen_fraction(grid[i], v1, xyz[j], conf["depth_rtol"]),
            seen_fraction(grid[j], v0, xyz[i], conf["depth_rtol"]),
        )
        if not conf["min_overlap"] < overlap <= conf["max_overlap"]:
            continue
        pairs.append(
            {
                "scene": scene,
                "image0": v0.name,
                "image1": v1.name,
                "size0": (v0.width, v0.height),
                "size1": (v1.width, v1.height),
                "K0": v0.K,
                "K1": v1.K,
                "T_0to1": relative_pose(v0.pose, v1.pose),
                "overlap": overlap,
            }
        )
    return pairs


class SyntheticPairs(MegaDepthPairs):
    """Overlapping pairs of a scene generated in ``root`` (kept if it exists).

    Items as ``MegaDepthPairs``: ``image0``, ``image1`` ``(3, H, W)``
    RGB in [0, 1] with ``(W, H) = size``, ``F`` ``(3, 3)``, ``K0``, ``K1``
    ``(3, 3)`` of the network input, ``T_0to1`` ``(4, 4)``, ``index``."""

    def __init__(self, root: Path, conf: Dict = None, size: Tuple[int, int] = SIZE):
        self.conf = {**default_conf, **(conf or {})}
        self.scene = generate_scene(
            root,
            num_queries=self.conf["num_queries"],
            width=self.conf["width"],
            height=self.conf["height"],
            seed=self.conf["seed"],
        )
        self.views = read_views(self.scene)
        pairs = overlapping_pairs(self.views, Path(root).name, self.conf)
        if not pairs:
            raise ValueError(f"No pair of views in {root} overlaps enough.")
        logger.info("%d pairs of %d views in %s.", len(pairs), len(self.views), root)
        super().__init__(stack_pairs(pairs), self.scene["images"], size)
