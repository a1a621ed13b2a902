"""MegaDepth training pairs in the D2-Net undistorted layout.

``scene_info/<scene>.<k>.npz`` (D2-Net preprocessing) holds per image
``image_paths`` (relative to the dataset root, None if unused),
``intrinsics`` ``(3, 3)``, ``poses`` ``(4, 4)`` world-to-camera, the
``overlap_matrix`` and optionally ``points3D_id_to_2D`` (SfM observations).
Pairs follow the Patch2Pix recipe: landscape images with aspect ratio in
[1.3, 1.7], overlap above 0.35, SfM matches consistent with the pose, at most
500 pairs per scene, the test scenes excluded. Images are cropped from the
right and bottom to aspect 1.5 and resized to 480x320.
"""

import logging
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from ..preprocess import image_size, read_image, to_tensor
from .data import fundamental_matrix

logger = logging.getLogger("p2p_hloc")

TEST_SCENES = ("0024", "0021", "0025", "1589", "0019", "0008", "0032", "0063")

default_conf = {
    "min_overlap": 0.35,  # exclusive
    "max_overlap": 1.0,  # inclusive
    "min_aspect": 1.3,  # width / height, inclusive
    "max_aspect": 1.7,
    "pairs_per_scene": 500,
    "max_sfm_sampson": 1.0,  # mean over the shared SfM points (px^2); None: off
    "exclude_scenes": TEST_SCENES,
    "seed": 0,
}

ASPECT = 1.5
SIZE = (480, 320)  # (W, H) of the network inputs


def crop_size(width: int, height: int, aspect: float = ASPECT) -> Tuple[int, int]:
    """``(W, H)`` after cropping the right or bottom side to ``aspect``."""
    if width / height > aspect:
        return int(round(height * aspect)), height
    return width, int(round(width / aspect))


def resized_intrinsics(
    K: np.ndarray, width: int, height: int, size: Tuple[int, int] = SIZE
) -> np.ndarray:
    """``K`` of the image cropped to aspect 1.5 (right and bottom, so the
    origin stays) and resized to ``size``."""
    wc, hc = crop_size(width, height, size[0] / size[1])
    return np.diag([size[0] / wc, size[1] / hc, 1.0]) @ K


def relative_pose(pose0: np.ndarray, pose1: np.ndarray) -> np.ndarray:
    """``T_0to1`` from two ``(4, 4)`` world-to-camera poses."""
    return pose1 @ np.linalg.inv(pose0)


def sfm_sampson(info: Dict, i: int, j: int) -> Optional[float]:
    """Mean Sampson distance (px^2) of the SfM points seen by images ``i`` and
    ``j`` to the epipolar geometry of their poses (None: no shared point)."""
    obs0, obs1 = info["points3D_id_to_2D"][i], info["points3D_id_to_2D"][j]
    common = sorted(set(obs0) & set(obs1))
    if not common:
        return None
    from .losses import sampson_distance

    m = np.array([np.r_[obs0[k], obs1[k]] for k in common], dtype=np.float64)
    K0, K1 = info["intrinsics"][i], info["intrinsics"][j]
    F = fundamental_matrix(K0, K1, relative_pose(info["poses"][i], info["poses"][j]))
    return sampson_distance(torch.from_numpy(m), torch.from_numpy(F)).mean().item()


def scene_candidates(
    info: Dict,
    root: Path,
    conf: Dict,
    sizes: Optional[Dict[str, Tuple[int, int]]] = None,
) -> List[Dict]:
    """All valid pairs of one ``scene_info`` file (before the per-scene cap).

    ``sizes`` caches image ``(W, H)`` by path (read from the file headers)."""
    sizes = {} if sizes is None else sizes
    paths = info["image_paths"]
    valid = []
    for i, p in enumerate(paths):
        if p is None or info["intrinsics"][i] is None:
            continue
        if p not in sizes:
            sizes[p] = image_size(root / p)
        w, h = sizes[p]
        if conf["min_aspect"] <= w / h <= conf["max_aspect"]:
            valid.append(i)
    ov = np.asarray(info["overlap_matrix"], dtype=np.float64)
    use_sfm = conf["max_sfm_sampson"] is not None and "points3D_id_to_2D" in info
    pairs = []
    for a, i in enumerate(valid):
        for j in valid[a + 1 :]:
            o = ov[i, j]
            if not conf["min_overlap"] < o <= conf["max_overlap"]:
                continue
            if use_sfm:
                err = sfm_sampson(info, i, j)
                if err is None or err > conf["max_sfm_sampson"]:
                    continue
            pairs.append(
                {
                    "image0": paths[i],
                    "image1": paths[j],
                    "size0": sizes[paths[i]],
                    "size1": sizes[paths[j]],
                    "K0": np.asarray(info["intrinsics"][i], np.float64),
                    "K1": np.asarray(info["intrinsics"][j], np.float64),
                    "T_0to1": relative_pose(info["poses"][i], info["poses"][j]),
                    "overlap": o,
                }
            )
    return pairs


def select_pairs(scene_info_dir: Path, root: Path, conf: Dict = None) -> List[Dict]:
    """Training pairs of every scene in ``scene_info_dir`` (``<scene>.<k>.npz``,
    all reconstructions of a scene pooled), at most ``pairs_per_scene`` per
    scene drawn at random (seeded), test scenes excluded."""
    conf = {**default_conf, **(conf or {})}
    rng = np.random.default_rng(conf["seed"])
    by_scene = defaultdict(list)
    for path in sorted(Path(scene_info_dir).glob("*.npz")):
        by_scene[path.name.split(".")[0]].append(path)
    out = []
    for scene, files in tqdm(sorted(by_scene.items()), desc="scenes"):
        if scene in conf["exclude_scenes"]:
            continue
        cands = []
        for f in files:
            info = dict(np.load(f, allow_pickle=True))
            cands += scene_candidates(info, Path(root), conf)
        keep = rng.permutation(len(cands))[: conf["pairs_per_scene"]]
        out += [{"scene": scene, **cands[k]} for k in sorted(keep)]
        logger.debug("Scene %s: %d of %d pairs.", scene, len(keep), len(cands))
    logger.info(
        "Selected %d pairs from %d scenes.", len(out), len({p["scene"] for p in out})
    )
    return out


PAIR_KEYS = (
    "scene",
    "image0",
    "image1",
    "size0",
    "size1",
    "K0",
    "K1",
    "T_0to1",
    "overlap",
)


def stack_pairs(pairs: List[Dict]) -> Dict[str, np.ndarray]:
    """Pair records stacked per field (``PAIR_KEYS``), as ``MegaDepthPairs`` reads."""
    return {k: np.array([p[k] for p in pairs]) for k in PAIR_KEYS}


def write_pairs(pairs: List[Dict], path: Path) -> Path:
    """Store pairs as an ``.npz`` of stacked fields."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **stack_pairs(pairs))
    return path


class MegaDepthPairs(Dataset):
    """Pairs from ``write_pairs`` (the file, or ``stack_pairs``' fields); items:
    ``image0``, ``image1`` ``(3, 320, 480)`` RGB in [0, 1], ``F`` ``(3, 3)`` of
    the resized images, ``K0``, ``K1``, ``T_0to1``, ``index``."""

    def __init__(
        self,
        pairs: Union[Path, Dict[str, np.ndarray]],
        root: Path,
        size: Tuple[int, int] = SIZE,
    ):
        self.pairs = pairs if isinstance(pairs, dict) else dict(np.load(pairs))
        self.root, self.size = Path(root), tuple(size)

    def __len__(self) -> int:
        return len(self.pairs["image0"])

    def load(self, name: str) -> torch.Tensor:
        im = read_image(self.root / name)
        wc, hc = crop_size(*im.size, self.size[0] / self.size[1])
        im = im.crop((0, 0, wc, hc)).resize(self.size, Image.BICUBIC)
        return to_tensor(im)

    def __getitem__(self, idx: int) -> Dict[str, torch.Tensor]:
        p = {k: v[idx] for k, v in self.pairs.items()}
        K0 = resized_intrinsics(p["K0"], *p["size0"], self.size)
        K1 = resized_intrinsics(p["K1"], *p["size1"], self.size)
        F = fundamental_matrix(K0, K1, p["T_0to1"])
        return {
            "image0": self.load(str(p["image0"])),
            "image1": self.load(str(p["image1"])),
            "F": torch.from_numpy(F / np.linalg.norm(F)).float(),
            "K0": torch.from_numpy(K0).float(),
            "K1": torch.from_numpy(K1).float(),
            "T_0to1": torch.from_numpy(p["T_0to1"]).float(),
            "index": idx,
        }
