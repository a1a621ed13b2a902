"""MegaDepth pair selection on a tiny fake D2-Net scene index."""

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.spatial.transform import Rotation

from p2p_hloc.train.losses import sampson_distance
from p2p_hloc.train.megadepth import (
    MegaDepthPairs,
    crop_size,
    resized_intrinsics,
    select_pairs,
    write_pairs,
)

# (width, height) of the images of the fake scene; aspect ratios
# 1.5, 1.6, 1.3, 1.7, 1.0, 1.8 and a portrait one
SIZES = [
    (150, 100),
    (160, 100),
    (130, 100),
    (170, 100),
    (100, 100),
    (180, 100),
    (100, 150),
]


def pose(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    T = np.eye(4)
    T[:3, :3] = Rotation.from_euler(
        "xyz", rng.uniform(-10, 10, 3), degrees=True
    ).as_matrix()
    T[:3, 3] = rng.uniform(-0.5, 0.5, 3)
    return T


def intrinsics(w: int, h: int) -> np.ndarray:
    return np.array([[100.0, 0, w / 2], [0, 110.0, h / 2], [0, 0, 1]])


def write_scene(root, scene: str, sizes, overlap, index: int = 0, none=()):
    paths, Ks = [], []
    for i, (w, h) in enumerate(sizes):
        rel = f"Undistorted_SfM/{scene}/images/{i}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (w, h), (i * 20, 100, 50)).save(root / rel)
        paths.append(None if i in none else rel)
        Ks.append(intrinsics(w, h))
    info_dir = root / "scene_info"
    info_dir.mkdir(exist_ok=True)
    np.savez(
        info_dir / f"{scene}.{index}.npz",
        image_paths=np.array(paths, dtype=object),
        intrinsics=np.array(Ks + [None], dtype=object)[:-1],
        poses=np.stack([pose(i) for i in range(len(sizes))]),
        overlap_matrix=overlap,
    )
    return info_dir


def full_overlap(n: int, value: float) -> np.ndarray:
    ov = np.full((n, n), value)
    np.fill_diagonal(ov, -1)
    return ov


def test_aspect_and_overlap(tmp_path):
    n = len(SIZES)
    ov = full_overlap(n, 0.5)
    ov[0, 1] = ov[1, 0] = 0.35  # not more than 35 %
    ov[0, 2] = ov[2, 0] = 0.36
    ov[1, 3] = ov[3, 1] = 0.1
    info_dir = write_scene(tmp_path, "0001", SIZES, ov)
    pairs = select_pairs(info_dir, tmp_path, {"max_sfm_sampson": None})
    got = {(p["image0"].split("/")[-1], p["image1"].split("/")[-1]) for p in pairs}
    # landscape images 0..3 have aspect in [1.3, 1.7]; 4 (1.0), 5 (1.8), 6 (portrait) don't
    assert got == {
        ("0.jpg", "2.jpg"),
        ("0.jpg", "3.jpg"),
        ("1.jpg", "2.jpg"),
        ("2.jpg", "3.jpg"),
    }
    p = next(
        p
        for p in pairs
        if p["image1"].endswith("2.jpg") and p["image0"].endswith("0.jpg")
    )
    assert p["overlap"] == pytest.approx(0.36)
    assert tuple(p["size0"]) == (150, 100) and tuple(p["size1"]) == (130, 100)
    np.testing.assert_allclose(p["T_0to1"], pose(2) @ np.linalg.inv(pose(0)))


def test_cap_exclusion_and_none(tmp_path):
    sizes = [(150, 100)] * 12  # 66 valid pairs
    ov = full_overlap(12, 0.8)
    write_scene(tmp_path, "0100", sizes, ov, index=0)
    write_scene(tmp_path, "0100", sizes[:4], full_overlap(4, 0.8), index=1)  # +6 pairs
    write_scene(tmp_path, "0024", sizes, ov)  # a test scene
    write_scene(tmp_path, "0200", sizes[:5], full_overlap(5, 0.9), none=(0,))  # 6 pairs
    conf = {"pairs_per_scene": 20, "max_sfm_sampson": None}
    pairs = select_pairs(tmp_path / "scene_info", tmp_path, conf)
    scenes = [p["scene"] for p in pairs]
    assert (
        scenes.count("0100") == 20
        and scenes.count("0200") == 6
        and "0024" not in scenes
    )
    assert all(
        "0.jpg" not in (p["image0"] + p["image1"])
        for p in pairs
        if p["scene"] == "0200"
    )
    again = select_pairs(tmp_path / "scene_info", tmp_path, conf)
    assert [p["image0"] + p["image1"] for p in again] == [
        p["image0"] + p["image1"] for p in pairs
    ]


def test_sfm_sampson_filter(tmp_path):
    sizes = [(150, 100)] * 3
    info_dir = write_scene(tmp_path, "0300", sizes, full_overlap(3, 0.6))
    # observations of 3D points: exact for images 0/1, noisy in image 2
    X = np.random.default_rng(0).uniform([-1, -1, 4], [1, 1, 6], (20, 3))
    obs = []
    for i in range(3):
        x = (intrinsics(150, 100) @ (pose(i)[:3, :3] @ X.T + pose(i)[:3, 3:])).T
        x = x[:, :2] / x[:, 2:]
        if i == 2:
            x = x + np.random.default_rng(1).normal(0, 5, x.shape)
        obs.append({k: x[k] for k in range(len(X))})
    f = info_dir / "0300.0.npz"
    info = dict(np.load(f, allow_pickle=True))
    info["points3D_id_to_2D"] = np.array(obs, dtype=object)
    np.savez(f, **info)
    pairs = select_pairs(info_dir, tmp_path)
    assert [(p["image0"][-5:], p["image1"][-5:]) for p in pairs] == [("0.jpg", "1.jpg")]


def test_crop_resize_and_fundamental(tmp_path):
    assert crop_size(1600, 900) == (1350, 900)  # crop the right side
    assert crop_size(1200, 1000) == (1200, 800)  # crop the bottom
    w, h = 170, 100
    K = intrinsics(w, h)
    Kr = resized_intrinsics(K, w, h)
    np.testing.assert_allclose(Kr, np.diag([480 / 150, 320 / 100, 1]) @ K)

    sizes = [(170, 100), (130, 100)]
    info_dir = write_scene(tmp_path, "0400", sizes, full_overlap(2, 0.7))
    pairs = select_pairs(info_dir, tmp_path)
    path = write_pairs(pairs, tmp_path / "pairs.npz")
    item = MegaDepthPairs(path, tmp_path)[0]
    assert item["image0"].shape == item["image1"].shape == (3, 320, 480)
    # a 3D point projected with the resized K satisfies the epipolar constraint
    X = np.random.default_rng(0).uniform([-1, -1, 4], [1, 1, 6], (10, 3))
    xs = []
    for i, (wi, hi) in enumerate(sizes):
        x = (
            resized_intrinsics(intrinsics(wi, hi), wi, hi)
            @ (pose(i)[:3] @ np.c_[X, np.ones(10)].T)
        ).T
        xs.append(x[:, :2] / x[:, 2:])
    d = sampson_distance(torch.from_numpy(np.hstack(xs)), item["F"].double())
    assert d.max() < 1e-6
