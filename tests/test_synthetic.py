import numpy as np
import pycolmap
import pytest

from p2p_hloc.eval.poses import THRESHOLDS, evaluate, pose_error, read_poses
from p2p_hloc.io import parse_pairs, parse_queries, parse_retrieval, write_poses
from p2p_hloc.synthetic import (
    SIDE_POSES,
    View,
    generate_scene,
    intersect,
    look,
    room,
    simulate_matches,
    world_points,
)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return generate_scene(tmp_path_factory.mktemp("scene"), num_queries=3)


def test_scene_layout(scene):
    rec = pycolmap.Reconstruction(scene["reference"])
    assert rec.num_images() == 8 and rec.num_points3D() == 0
    assert all(im.has_pose for im in rec.images.values())
    names = {im.name for im in rec.images.values()}
    queries = parse_queries(scene["queries"])
    assert len(queries) == 3 and queries[0][1]["model"] == "PINHOLE"
    retrieval = parse_retrieval(scene["pairs_query"])
    assert set(retrieval) == {q for q, _ in queries}
    assert all(set(refs) <= names for refs in retrieval.values())
    for name in names | set(retrieval):
        assert (scene["images"] / name).is_file()
    assert len(read_poses(scene["ground_truth"])) == 3


def test_depth_is_consistent_with_the_poses():
    """A pixel's 3D point projects back onto that pixel; points lie on planes."""
    view = View("v", 64, 48, 50.0, *look((0.5, 0.0, 2.0), 10, -5))
    xyz = world_points(room(), view)
    assert np.isfinite(xyz).all(-1).mean() > 0.8
    p = xyz[np.isfinite(xyz).all(-1)] @ view.R.T + view.t
    uv = p[:, :2] / p[:, 2:] * view.focal + [32, 24]
    u, v = np.meshgrid(np.arange(64) + 0.5, np.arange(48) + 0.5)
    ok = np.isfinite(xyz).all(-1)
    np.testing.assert_allclose(uv, np.stack([u[ok], v[ok]], -1), atol=1e-6)


def test_pose_errors(tmp_path):
    q = np.array([1.0, 0, 0, 0])
    assert pose_error((q, np.zeros(3)), (q, np.zeros(3))) == (0.0, 0.0)
    c, s = np.cos(np.radians(5)), np.sin(np.radians(5))
    t, r = pose_error((np.array([c, 0, s, 0]), np.zeros(3)), (q, np.array([0.0, 0, 1])))
    assert t == pytest.approx(1.0) and r == pytest.approx(10.0)
    gt = write_poses(
        tmp_path / "gt.txt", {"a/x.jpg": (q, np.zeros(3)), "b/y.jpg": (q, np.zeros(3))}
    )
    est = write_poses(tmp_path / "est.txt", {"a/x.jpg": (q, np.array([0.3, 0, 0]))})
    report = evaluate(est, gt, THRESHOLDS["aachen"], ["a/x.jpg", "b/y.jpg"])
    assert report["errors"]["y.jpg"]["translation_m"] == float("inf")
    assert report["recall"] == {
        "0.25m,2.0deg": 0.0,
        "0.5m,5.0deg": 0.5,
        "5.0m,10.0deg": 0.5,
    }


def test_two_clusters_without_images(tmp_path):
    """clusters=2: a second group of database images whose covisibility pairs
    stay among themselves, retrieved by every query; no images rendered."""
    paths = generate_scene(
        tmp_path / "s", num_queries=2, clusters=2, render_images=False
    )
    rec = pycolmap.Reconstruction(paths["reference"])
    assert rec.num_images() == 8 + len(SIDE_POSES)
    assert not any(paths["images"].rglob("*.png"))
    side = {f"db/{i:03d}.png" for i in range(8, 8 + len(SIDE_POSES))}
    pairs = parse_pairs(paths["pairs_db"])
    assert pairs and all((a in side) == (b in side) for a, b in pairs)
    for refs in parse_retrieval(paths["pairs_query"]).values():
        assert len(refs) == 4 + len(side) and set(refs[4:]) == side


def test_simulated_matches_follow_the_geometry():
    """Without jitter, both points of a simulated match see the same plane
    point: keypoints1 is the projection of what keypoints0 sees."""
    planes = room()
    v0 = View("a", 64, 48, 50.0, *look((0.0, 0.0, 2.0), 10))
    v1 = View("b", 64, 48, 50.0, *look((0.6, 0.1, 2.4), -5))
    m = simulate_matches(planes, v0, v1, 200, jitter=0.0)
    assert 100 < len(m["scores"]) <= 200
    depth, _, _ = intersect(planes, v0.center, v0.rays(m["keypoints0"]))
    xyz = v0.center + depth[:, None] * v0.rays(m["keypoints0"])
    np.testing.assert_allclose(v1.project(xyz)[0], m["keypoints1"], atol=1e-6)
    assert np.all(m["size0"] == [64, 48]) and np.all(m["scores"] >= 0.3)
    grid = simulate_matches(planes, v0, v1, 50, jitter=0.0, grid=8.0)
    assert np.allclose(grid["keypoints0"] % 8, 4)  # lattice centres
    noisy = simulate_matches(planes, v0, v1, 200, jitter=0.5)
    assert len(noisy["scores"]) > 100
