import numpy as np
import pycolmap
import pytest
from helpers_localization import assert_hloc_signature, sift_h5

from p2p_hloc import triangulation
from p2p_hloc.console import run_cli
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
    path = data["root"] / f"sfm_{ransac}"
    rec = run(data, path.name, estimate_two_view_geometries=ransac)
    assert isinstance(rec, pycolmap.Reconstruction)
    assert pycolmap.Reconstruction(path).num_points3D() == rec.num_points3D()
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
    path = data["root"] / "sfm_False"
    first = run(data, path.name)
    mtime = (path / "points3D.bin").stat().st_mtime
    again = run(data, path.name)
    assert "skipping" in logs.text
    assert again.num_points3D() == first.num_points3D()
    assert (path / "points3D.bin").stat().st_mtime == mtime


def test_bad_pairs_are_skipped_with_a_message(data, logs):
    pairs = parse_pairs(data["pairs_db"])
    bad = write_pairs(
        data["root"] / "bad.txt",
        pairs + [("db/000.png", "db/missing.png"), ("db/000.png", "db/007.png")],
    )
    rec = run(data, "sfm_bad", pairs=bad)
    assert "absent from the model" in logs.text and "no matches" in logs.text
    assert rec.num_points3D() > 200


def test_no_usable_pair_raises(data):
    bad = write_pairs(data["root"] / "none.txt", [("db/000.png", "db/missing.png")])
    with pytest.raises(triangulation.TriangulationError, match="no pair"):
        run(data, "sfm_none", pairs=bad)
    assert not (data["root"] / "sfm_none" / "points3D.bin").exists()


HLOC_SIGNATURE = (  # hloc_interfaces.md, section 3.1
    "sfm_dir, reference_model, image_dir, pairs, features, matches, "
    "skip_geometric_verification=False, estimate_two_view_geometries=False, "
    "min_match_score=None, verbose=False, mapper_options=None"
)


def test_signature_is_hlocs():
    assert_hloc_signature(triangulation.main, HLOC_SIGNATURE)


def test_hloc_positional_call_skips_verification(data):
    """All eleven arguments positional in hloc's order; the 7th,
    skip_geometric_verification, takes every match as an inlier (CALIBRATED:
    pycolmap 4.x would skip hloc's UNDEFINED geometries)."""
    sfm_dir = data["root"] / "sfm_positional"
    rec = triangulation.main(
        sfm_dir,
        data["reference"],
        data["images"],
        data["pairs_db"],
        data["features"],
        data["matches"],
        True,
        False,
        None,
        False,
        {"min_num_matches": 15},
    )
    assert rec.num_points3D() > 200
    with pycolmap.Database.open(sfm_dir / "database.db") as db:
        ids, geometries = db.read_two_view_geometries()
        matches = dict(zip(*db.read_all_matches()))
    assert {g.config for g in geometries} == {
        pycolmap.TwoViewGeometryConfiguration.CALIBRATED
    }
    for i, g in zip(ids, geometries):
        np.testing.assert_array_equal(g.inlier_matches, matches[i])


@pytest.mark.parametrize("flag", ["--reference_sfm_model", "--reference_model"])
def test_cli_with_hlocs_flag_and_the_old_one(data, flag):
    sfm_dir = data["root"] / f"sfm_cli{flag}"
    argv = ["--sfm_dir", str(sfm_dir), flag, str(data["reference"])]
    argv += ["--image_dir", str(data["images"]), "--pairs", str(data["pairs_db"])]
    argv += ["--features", str(data["features"]), "--matches", str(data["matches"])]
    argv += [
        "--mapper_options",
        "min_num_matches=15",
        "triangulation.ignore_two_view_tracks=False",
    ]
    assert run_cli(triangulation.parser(), triangulation.run, argv) == 0
    assert pycolmap.Reconstruction(sfm_dir).num_points3D() > 200
    bad = argv[:-2] + ["no_such_option=1"]
    assert run_cli(triangulation.parser(), triangulation.run, bad) == 2


def test_garbage_reference_model_names_the_folder(data, tmp_path, capsys):
    """Model files pycolmap cannot parse: one error line naming the folder,
    exit 2, and no output folder left half-made."""
    garbage = tmp_path / "garbage_model"
    garbage.mkdir()
    for name in ("cameras.bin", "images.bin", "points3D.bin"):
        (garbage / name).write_bytes(b"not a COLMAP file")
    sfm_dir = tmp_path / "sfm"
    argv = ["--sfm_dir", str(sfm_dir), "--reference_sfm_model", str(garbage)]
    argv += ["--image_dir", str(data["images"]), "--pairs", str(data["pairs_db"])]
    argv += ["--features", str(data["features"]), "--matches", str(data["matches"])]
    assert run_cli(triangulation.parser(), triangulation.run, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(garbage) in err[0], err
    assert not (sfm_dir / "database.db").exists()
