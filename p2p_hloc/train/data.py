"""Generated training pairs: two views of a textured plane with known K and
relative pose, so that the fundamental matrix is exact.

The texture (a photo from ``skimage.data``) lies on the world plane ``z = 0``;
each camera sees it through the plane-induced homography and the view is
rendered with ``cv2.warpPerspective``. Pixels off the plane are black.
"""

from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np
import torch
from scipy.spatial.transform import Rotation
from torch.utils.data import Dataset

from ..preprocess import to_tensor

TEXTURES = ("astronaut", "coffee", "chelsea", "rocket")


def skew(v: np.ndarray) -> np.ndarray:
    """``(3,)`` -> ``(3, 3)`` cross-product matrix."""
    return np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])


def fundamental_matrix(
    K0: np.ndarray, K1: np.ndarray, T_0to1: np.ndarray
) -> np.ndarray:
    """``F`` with ``x1^T F x0 = 0`` from intrinsics and the ``(4, 4)`` relative
    pose mapping camera-0 to camera-1 coordinates."""
    R, t = T_0to1[:3, :3], T_0to1[:3, 3]
    return np.linalg.inv(K1).T @ skew(t) @ R @ np.linalg.inv(K0)


def load_texture(name: str) -> np.ndarray:
    """An RGB uint8 ``(H, W, 3)`` photo bundled with scikit-image."""
    import skimage.data

    return getattr(skimage.data, name)()


def look_at_plane(
    rng: np.random.Generator, centre: np.ndarray, conf: Dict
) -> np.ndarray:
    """A world-to-camera ``(4, 4)`` pose at ``centre`` facing the plane
    ``z = 0``, randomly rotated by up to ``max_rotation``."""
    euler = rng.uniform(-1, 1, 3) * np.array(conf["max_rotation"])
    R = Rotation.from_euler("xyz", euler, degrees=True).as_matrix()
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, -R @ centre
    return T


def camera_centres(rng: np.random.Generator, conf: Dict) -> List[np.ndarray]:
    """Camera 0 at a random lateral offset and distance from the plane;
    camera 1 displaced by ``baseline`` plus a jitter."""
    c0 = np.r_[rng.uniform(-1, 1, 2) * conf["max_offset"], -conf["distance"]]
    c0[2] *= rng.uniform(1 - conf["distance_jitter"], 1 + conf["distance_jitter"])
    jitter = rng.uniform(-1, 1, 3) * conf["baseline_jitter"]
    return [c0, c0 + np.array(conf["baseline"]) + jitter]


def render_plane_pair(
    texture: np.ndarray, seed: int, conf: Dict
) -> Dict[str, np.ndarray]:
    """Render two views of the textured plane.

    Returns ``image0``, ``image1`` ``(H, W, 3)`` uint8, ``K`` ``(3, 3)``,
    ``T_0to1`` ``(4, 4)`` and ``F`` ``(3, 3)`` (image-0 to image-1 pixels)."""
    rng = np.random.default_rng(seed)
    w, h = conf["size"]
    f = conf["focal"] * w
    K = np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1.0]])
    th, tw = texture.shape[:2]
    s = conf["plane_width"] / tw  # metres per texel, texture centred at the origin
    A = np.array([[s, 0, -s * tw / 2], [0, s, -s * th / 2], [0, 0, 1.0]])
    poses = [look_at_plane(rng, c, conf) for c in camera_centres(rng, conf)]
    images = []
    for i, T in enumerate(poses):
        H = K @ T[:3][:, [0, 1, 3]] @ A  # texel -> pixel
        im = cv2.warpPerspective(texture, H, (w, h), flags=cv2.INTER_LINEAR)
        if i == 1:  # photometric change of the second view
            gain = rng.uniform(*conf["gain"])
            im = np.clip(im.astype(np.float32) * gain, 0, 255).astype(np.uint8)
        images.append(im)
    T_0to1 = poses[1] @ np.linalg.inv(poses[0])
    return {
        "image0": images[0],
        "image1": images[1],
        "K": K,
        "T_0to1": T_0to1,
        "F": fundamental_matrix(K, K, T_0to1),
    }


class PlanarPairs(Dataset):
    """``num_pairs`` generated pairs; pair ``i`` uses seed ``seed + i`` and
    texture ``textures[i % len(textures)]``.

    Items: ``image0``, ``image1`` ``(3, H, W)`` RGB in [0, 1], ``F``
    ``(3, 3)`` float32, ``K0``, ``K1`` ``(3, 3)``, ``T_0to1`` ``(4, 4)``, ``index``.
    """

    default_conf = {
        "num_pairs": 16,
        "seed": 0,
        "textures": TEXTURES,
        "size": (320, 240),  # (W, H), multiples of 16
        "focal": 0.9,  # focal length / image width
        "distance": 2.0,  # camera to plane
        "distance_jitter": 0.1,
        "plane_width": 3.0,
        "max_offset": 0.2,  # lateral offset of camera 0
        "baseline": (0.3, 0.0, 0.0),  # camera 1 - camera 0
        "baseline_jitter": 0.1,  # per axis
        "max_rotation": (5.0, 5.0, 5.0),  # degrees about x, y, z, per camera
        "gain": (0.8, 1.2),
    }

    def __init__(self, conf: Dict = None):
        self.conf = {**self.default_conf, **(conf or {})}
        self.textures: Sequence[np.ndarray] = [
            load_texture(n) for n in self.conf["textures"]
        ]

    def __len__(self) -> int:
        return self.conf["num_pairs"]

    def __getitem__(self, idx: int) -> Dict[str, torch.Tensor]:
        tex = self.textures[idx % len(self.textures)]
        pair = render_plane_pair(tex, self.conf["seed"] + idx, self.conf)
        K = torch.from_numpy(pair["K"]).float()
        return {
            "image0": to_tensor(pair["image0"]),
            "image1": to_tensor(pair["image1"]),
            "F": torch.from_numpy(pair["F"]).float(),
            "K0": K,
            "K1": K,
            "T_0to1": torch.from_numpy(pair["T_0to1"]).float(),
            "index": idx,
        }


def image_size(item: Dict[str, torch.Tensor]) -> Tuple[int, int]:
    """``(W, H)`` of a dataset item's first image."""
    return item["image0"].shape[-1], item["image0"].shape[-2]
