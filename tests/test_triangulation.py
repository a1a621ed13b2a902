import numpy as np
import pycolmap
import pytest
from helpers_localization import sift_h5

from p2p_hloc import triangulation
from p2p_hloc.io import parse_pairs, write_pairs
from p2p_hloc.synthetic import generate_scene, room


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tri")
    scene = generate_scene(root / "scene", num_queries=2)
    sift_h5(
        scene["images"], [scene["pairs_db"]], root / "feats.h5", root / "matches.h5"
    )
    return dict(
        scene, root=root, features=root / "feats.h5", matches=root / "matches.h5"
    )


def run(data, name, pairs=None, **kw):
    return triangulation.main(
        data["root"] / name,
        data["reference"],
        data["images"],
        pairs or data["pairs_db"],
        data["features"],
        data["matches"],
        **kw,
    )


def distance_to_room(xyz: np.ndarray) -> np.ndarray:
    d = []
    for p in room():
        x = xyz - p.origin
        a = np.clip(x @ p.u / (p.u @ p.u), 0, 1)
        b = np.clip(x @ p.v / (p.v @ p.v), 0, 1)
        d.append(np.linalg.norm(x - a[:, None] * p.u - b[:, None] * p.v, axis=-1))
    return np.min(d, 0)


@pytest.mark.parametrize("ransac", [False, True])
def test_points_lie_on_the_scene(data, ransac):
    path = run(data, f"sfm_{ransac}", estimate_two_view_geometries=ransac)
    rec = pycolmap.Reconstruction(path)
    assert rec.num_points3D() > 200
    xyz = np.array([p.xyz for p in rec.points3D.values()])
    assert np.median(distance_to_room(xyz)) < 0.02
    if not ransac:
        with pycolmap.Database.open(path / "database.db") as db:
            _, geometries = db.read_two_view_geometries()
        assert {g.config for g in geometries} == {
            pycolmap.TwoViewGeometryConfiguration.CALIBRATED
        }


def test_existing_model_is_reused(data, logs):
    path = run(data, "sfm_False")
    mtime = (path / "points3D.bin").stat().st_mtime
    run(data, "sfm_False")
    assert "skipping" in logs.text
    assert (path / "points3D.bin").stat().st_mtime == mtime


def test_bad_pairs_are_skipped_with_a_message(data, logs):
    pairs = parse_pairs(data["pairs_db"])
    bad = write_pairs(
        data["root"] / "bad.txt",
        pairs + [("db/000.png", "db/missing.png"), ("db/000.png", "db/007.png")],
    )
    path = run(data, "sfm_bad", pairs=bad)
    assert "absent from the model" in logs.text and "no matches" in logs.text
    assert pycolmap.Reconstruction(path).num_points3D() > 200


def test_no_usable_pair_raises(data):
    bad = write_pairs(data["root"] / "none.txt", [("db/000.png", "db/missing.png")])
    with pytest.raises(triangulation.TriangulationError, match="no pair"):
        run(data, "sfm_none", pairs=bad)
    assert not (data["root"] / "sfm_none" / "points3D.bin").exists()
