import numpy as np
import pycolmap
import pytest

from p2p_hloc.eval.poses import THRESHOLDS, evaluate, pose_error, read_poses
from p2p_hloc.io import parse_queries, parse_retrieval, write_poses
from p2p_hloc.synthetic import View, generate_scene, look, room, world_points


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
