"""triangulation on exact observations (helpers_exact): every 3D point, track,
verified geometry and option checked where the mutation run
(tools/mutation.py) found them untested."""

import re
import shutil
from pathlib import Path

import numpy as np
import pycolmap
import pytest
from helpers_exact import exact_scene, match_ids

from p2p_hloc import triangulation
from p2p_hloc.console import InputError, run_cli
from p2p_hloc.io import (
    parse_pairs,
    to_hloc_coords,
    write_keypoints,
    write_matches,
    write_pairs,
)
from p2p_hloc.triangulation import (
    MODEL_FILES,
    TriangulationError,
    colmap_log,
    epipolar_inliers,
    move_model,
    parse_option_args,
    read_pair_matches,
)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return exact_scene(tmp_path_factory.mktemp("exact_tri"))


def run(scene, name, pairs=None, **kw):
    return triangulation.main(
        scene["root"] / name,
        kw.pop("reference_model", scene["reference"]),
        scene["images"],
        pairs or scene["pairs_db"],
        kw.pop("features", scene["features"]),
        kw.pop("matches", scene["matches"]),
        **kw,
    )


def check_points(scene, rec):
    """Every 3D point is a true point, and every observation of it is a
    keypoint of that point."""
    ids = {name: i for name, (_, i) in scene["keypoints"].items()}
    for p in rec.points3D.values():
        true = {
            int(ids[rec.images[e.image_id].name][e.point2D_idx])
            for e in p.track.elements
        }
        assert len(true) == 1
        np.testing.assert_allclose(p.xyz, scene["points"][true.pop()], atol=1e-5)


@pytest.mark.parametrize(
    "mode", ["poses", "skip_geometric_verification", "estimate_two_view_geometries"]
)
def test_exact_points(scene, mode):
    kw = {} if mode == "poses" else {mode: True}
    rec = run(scene, f"sfm_{mode}", max_epipolar_error=0.01, **kw)
    assert rec.num_points3D() > 350  # of 400, some seen by one image only
    check_points(scene, rec)
    on_disk = pycolmap.Reconstruction(scene["root"] / f"sfm_{mode}")
    assert on_disk.num_points3D() == rec.num_points3D()
    assert not (scene["root"] / f"sfm_{mode}" / "triangulation.tmp").exists()
    with pycolmap.Database.open(scene["root"] / f"sfm_{mode}" / "database.db") as db:
        pairs, geometries = db.read_two_view_geometries()
        num_matches = dict(zip(*db.read_all_matches()))
    matched = {
        frozenset(p)
        for p in parse_pairs(scene["pairs_db"])
        if (match_ids(*(scene["keypoints"][n][1] for n in p))[0] > -1).any()
    }
    assert len(pairs) == len(matched)  # each pair with matches, once
    if mode != "estimate_two_view_geometries":
        # exact observations: every match within 0.01 px of its epipolar line
        assert {g.config for g in geometries} == {
            pycolmap.TwoViewGeometryConfiguration.CALIBRATED
        }
        for p, g in zip(pairs, geometries):
            assert len(g.inlier_matches) == len(num_matches[p]) > 0


def test_options_reach_pycolmap(scene):
    """A mapper option that forbids every point: none is made."""
    options = {"triangulation": {"min_angle": 179.0}}
    with pytest.raises(TriangulationError) as e:
        run(scene, "sfm_none", mapper_options=options)
    db = scene["root"] / "sfm_none" / "database.db"
    assert str(e.value) == (
        f"triangulation produced no 3D points (see {db}): check that the "
        "matches are correct and that the pairs overlap"
    )
    assert not (scene["root"] / "sfm_none" / "points3D.bin").exists()


def test_min_match_score_and_pair_order(scene, tmp_path, logs):
    """Scores not above min_match_score are dropped; a pair listed twice (in
    either order) or with itself is read once; skipped pairs are counted."""
    (a, b), (c, d) = parse_pairs(scene["pairs_db"])[:2]
    matches = tmp_path / "m.h5"
    shutil.copy(scene["matches"], matches)
    m0 = -np.ones(len(scene["keypoints"][a][0]), int)
    m0[:4] = [0, 1, 2, 3]
    write_matches(matches, a, b, m0, np.r_[0.5, 0.6, 0.7, 0.8, np.zeros(len(m0) - 4)])
    pairs = write_pairs(
        tmp_path / "p.txt", [(a, b), (b, a), (a, a), (c, d), (a, "db/x.png"), (c, a)]
    )
    ids = {n: i for i, n in enumerate(sorted(scene["keypoints"]), 1)}
    out = read_pair_matches(ids, pairs, matches, min_match_score=0.6)
    assert {(a, b), (c, d)} <= set(out) and not {(b, a), (a, a)} & set(out)
    np.testing.assert_array_equal(out[a, b], [[2, 2], [3, 3]])
    assert len(read_pair_matches(ids, pairs, matches)[a, b]) == 4
    assert "Skipped 1 pairs naming images absent from the model" in logs.text
    with pytest.raises(TriangulationError) as e:
        read_pair_matches(ids, pairs, matches, min_match_score=1.0)
    assert str(e.value) == f"no pair of {pairs} has matches between model images"
    assert f"pairs with no matches in {matches}, e.g. ('{a}', '{b}')" in logs.text


def test_images_without_keypoints_get_no_points(scene, tmp_path, logs):
    import h5py

    features = tmp_path / "f.h5"
    shutil.copy(scene["features"], features)
    with h5py.File(features, "a") as f:
        del f["db/001.png"]
    rec = run(scene, "sfm_missing", features=features)
    assert (
        "1 images have no keypoints in" in logs.text
        and "(e.g. db/001.png)" in logs.text
    )
    assert "absent from the model or without keypoints" in logs.text
    for image in rec.images.values():  # the images after it have theirs
        has_keypoints = image.name != "db/001.png"
        assert (image.num_points3D > 0) == (len(image.points2D) > 0) == has_keypoints
    check_points(scene, rec)


def test_inputs_and_existing_models(scene, tmp_path, logs):
    for key in ("reference_model", "image_dir", "pairs", "features", "matches"):
        args = dict(
            sfm_dir=tmp_path / "sfm",
            reference_model=scene["reference"],
            image_dir=scene["images"],
            pairs=scene["pairs_db"],
            features=scene["features"],
            matches=scene["matches"],
        )
        args[key] = tmp_path / "nowhere"
        with pytest.raises(FileNotFoundError) as e:
            triangulation.main(**args)
        assert str(e.value) == f"input of the triangulation not found: {args[key]}"
    assert not (tmp_path / "sfm").exists()
    first = run(scene, "sfm_kept")
    path = scene["root"] / "sfm_kept"
    (path / "marker").write_text("")
    again = run(scene, "sfm_kept", pairs=tmp_path / "nowhere")  # not even read
    assert "Triangulated model exists" in logs.text
    assert again.num_points3D() == first.num_points3D()
    (path / "points3D.bin").unlink()  # incomplete: triangulated again
    assert run(scene, "sfm_kept").num_points3D() == first.num_points3D()
    pairs = write_pairs(tmp_path / "p.txt", parse_pairs(scene["pairs_db"])[:3])
    fewer = run(scene, "sfm_kept", pairs=pairs, overwrite=True)
    assert 0 < fewer.num_points3D() < first.num_points3D()
    assert pycolmap.Reconstruction(path).num_points3D() == fewer.num_points3D()


def test_epipolar_inliers_in_pixels(scene):
    """Against the distances to the epipolar lines computed in pixels with
    the fundamental matrix: inlier iff both are within max_error."""
    rec = pycolmap.Reconstruction(scene["reference"])
    im0, im1 = (rec.find_image_with_name(f"db/00{i}.png") for i in (0, 1))
    cam0, cam1 = rec.cameras[im0.camera_id], rec.cameras[im1.camera_id]
    rng = np.random.default_rng(0)
    kp0 = rng.uniform([0, 0], [480, 360], (200, 2))
    kp1 = rng.uniform([0, 0], [480, 360], (200, 2))
    rel = im1.cam_from_world() * im0.cam_from_world().inverse()
    t = rel.translation
    E = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
    F = (
        np.linalg.inv(cam1.calibration_matrix()).T
        @ E
        @ rel.rotation.matrix()
        @ np.linalg.inv(cam0.calibration_matrix())
    )
    x0, x1 = np.c_[kp0, np.ones(200)], np.c_[kp1, np.ones(200)]
    line1, line0 = x0 @ F.T, x1 @ F
    err = np.abs(np.sum(x1 * line1, -1))
    d1 = err / np.linalg.norm(line1[:, :2], axis=-1)
    d0 = err / np.linalg.norm(line0[:, :2], axis=-1)
    for max_error in (2.0, 20.0, 60.0):
        mask = epipolar_inliers(kp0, kp1, im0, im1, cam0, cam1, max_error)
        np.testing.assert_array_equal(mask, (d0 <= max_error) & (d1 <= max_error))
        assert 0 < mask.sum() < 200 or max_error == 2.0
    # the default threshold is 4 px
    default = epipolar_inliers(kp0, kp1, im0, im1, cam0, cam1)
    np.testing.assert_array_equal(default, (d0 <= 4) & (d1 <= 4))
    assert ((d0 <= 60) != (d1 <= 60)).any()  # the two images disagree somewhere


def test_parse_option_args():
    defaults = pycolmap.IncrementalPipelineOptions()
    assert parse_option_args(
        [
            "min_num_matches=20",
            "triangulation.min_angle=3",
            "triangulation.ignore_two_view_tracks=False",
        ],
        defaults,
    ) == {
        "min_num_matches": 20,
        "triangulation": {"min_angle": 3.0, "ignore_two_view_tracks": False},
    }
    assert parse_option_args([], defaults) == {}
    assert isinstance(
        parse_option_args(["triangulation.min_angle=3"], defaults)["triangulation"][
            "min_angle"
        ],
        float,
    )
    for arg, message in (
        ("min_num_matches", "options are key=value pairs, not 'min_num_matches'"),
        ("nope=1", "unknown option 'nope' of IncrementalPipelineOptions"),
        ("nope.min_angle=1", "unknown option 'nope.min_angle' of Incremental"),
        ("triangulation.nope=1", "unknown option 'triangulation.nope' of Incremental"),
        ("min_num_matches=2.5", "option 'min_num_matches' must be int, not 2.5"),
        ("min_num_matches=x", "option 'min_num_matches' must be int, not 'x'"),
    ):
        with pytest.raises(InputError) as e:
            parse_option_args([arg], defaults)
        assert str(e.value).startswith(message)


def test_colmap_log_level():
    before = pycolmap.logging.minloglevel
    with colmap_log(False):
        assert pycolmap.logging.minloglevel == int(pycolmap.logging.WARNING)
    assert pycolmap.logging.minloglevel == before
    pycolmap.logging.minloglevel = pycolmap.logging.INFO
    try:
        with colmap_log(True):
            assert pycolmap.logging.minloglevel == int(pycolmap.logging.INFO)
        with pytest.raises(KeyError):
            with colmap_log(False):
                raise KeyError
        assert pycolmap.logging.minloglevel == int(pycolmap.logging.INFO)
    finally:
        pycolmap.logging.minloglevel = before


def test_move_model(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir(), dst.mkdir()
    for f in MODEL_FILES:
        (src / f).write_text(f"new {f}")
    (dst / "points3D.bin").write_text("stale")
    move_model(src, dst)
    assert [(dst / f).read_text() for f in MODEL_FILES] == [
        f"new {f}" for f in MODEL_FILES
    ]
    assert not list(src.iterdir()) and triangulation.model_exists(dst)
    (dst / "frames.bin").unlink()
    assert not triangulation.model_exists(dst)


def test_command_line(scene, capsys, caplog):
    args = ["--sfm_dir", str(scene["root"] / "sfm_cli")]
    args += ["--reference_model", str(scene["reference"])]
    args += ["--image_dir", str(scene["images"]), "--pairs", str(scene["pairs_db"])]
    args += ["--features", str(scene["features"]), "--matches", str(scene["matches"])]
    p = triangulation.parser()
    argv = args + ["--mapper_options", "triangulation.min_angle=179.0"]
    assert run_cli(p, triangulation.run, argv) == 1  # no point: not an input error
    assert "triangulation produced no 3D points" in capsys.readouterr().err
    argv = args + ["--overwrite", "--max_epipolar_error", "0.01", "--verbose"]
    assert run_cli(triangulation.parser(), triangulation.run, argv) == 0
    check_points(scene, pycolmap.Reconstruction(scene["root"] / "sfm_cli"))
    argv = args + ["--mapper_options", "min_angle=1"]
    assert run_cli(triangulation.parser(), triangulation.run, argv) == 2
    assert "unknown option 'min_angle'" in capsys.readouterr().err
    ns = triangulation.parser().parse_args(args)
    assert (ns.mapper_options, ns.max_epipolar_error, ns.min_match_score) == (
        [],
        4.0,
        None,
    )
    assert not (ns.overwrite or ns.verbose or ns.skip_geometric_verification)
    assert not ns.estimate_two_view_geometries
    for i in range(0, len(args), 2):
        with pytest.raises(SystemExit):
            triangulation.parser().parse_args(args[:i] + args[i + 2 :])


def two_views(focal0: float, focal1: float, rotation, translation):
    """Two images of a model: the first at the origin, the second at the
    ``(axis-angle rotation, translation)`` cam_from_world, with their cameras."""
    rec = pycolmap.Reconstruction()
    for i, focal in ((1, focal0), (2, focal1)):
        camera = pycolmap.Camera(
            model="SIMPLE_PINHOLE",
            width=640,
            height=480,
            params=[focal, 320, 240],
            camera_id=i,
        )
        rec.add_camera_with_trivial_rig(camera)
    pose = pycolmap.Rigid3d(pycolmap.Rotation3d(np.asarray(rotation)), translation)
    for i, cam_from_world in ((1, pycolmap.Rigid3d()), (2, pose)):
        image = pycolmap.Image(name=f"{i}.png", camera_id=i, image_id=i)
        rec.add_image_with_trivial_frame(image, cam_from_world)
    return [(rec.images[i], rec.cameras[i]) for i in (1, 2)]


def test_epipolar_inliers_general_motion():
    """A motion along every axis and cameras of different focal lengths:
    correspondences moved up to 8 px off are inliers iff both pixel distances
    to the epipolar lines (fundamental matrix) are within max_error (4 px by
    default)."""
    (im0, cam0), (im1, cam1) = two_views(480.0, 500.0, [0.1, -0.2, 0.15], [1, 0.5, 0.3])
    rng = np.random.default_rng(1)
    kp0 = rng.uniform([100, 100], [540, 380], (3000, 2))
    rays = np.c_[cam0.cam_from_img(kp0), np.ones(len(kp0))]
    xyz = rays * rng.uniform(4, 10, (len(kp0), 1))
    kp1 = np.array([cam1.img_from_cam(im1.cam_from_world() * p) for p in xyz])
    kp0 = kp0 + rng.uniform(-8, 8, kp0.shape)
    kp1 = kp1 + rng.uniform(-8, 8, kp1.shape)
    K0, K1 = cam0.calibration_matrix(), cam1.calibration_matrix()
    t = im1.cam_from_world().translation
    tx = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
    R = im1.cam_from_world().rotation.matrix()
    F = np.linalg.inv(K1).T @ tx @ R @ np.linalg.inv(K0)
    x0, x1 = np.c_[kp0, np.ones(len(kp0))], np.c_[kp1, np.ones(len(kp1))]
    line1, line0 = x0 @ F.T, x1 @ F
    err = np.abs(np.sum(x1 * line1, -1))
    d0 = err / np.linalg.norm(line0[:, :2], axis=-1)
    d1 = err / np.linalg.norm(line1[:, :2], axis=-1)
    for max_error in (1.0, 3.0, 4.0, 6.0):
        mask = epipolar_inliers(kp0, kp1, im0, im1, cam0, cam1, max_error)
        np.testing.assert_array_equal(mask, (d0 <= max_error) & (d1 <= max_error))
        assert 0 < mask.sum() < len(mask)
    default = epipolar_inliers(kp0, kp1, im0, im1, cam0, cam1)
    np.testing.assert_array_equal(default, (d0 <= 4) & (d1 <= 4))
    assert (np.maximum(d0, d1) > 4).any() and (np.maximum(d0, d1) < 5).any()
    assert ((d0 <= 4) & (d1 > 4)).any() and ((d0 > 4) & (d1 <= 4)).any()


def test_option_values_with_equal_signs():
    """The first '=' separates the key: image names may hold one."""
    defaults = pycolmap.IncrementalPipelineOptions()
    assert parse_option_args(["image_names=['db/a=1.png']"], defaults) == {
        "image_names": ["db/a=1.png"]
    }


def test_command_line_values_and_help():
    """Paths parse as Path, flags need no value, the score is a float; the
    help names the command, says what it does and how options are given."""
    paths = ["sfm_dir", "reference_sfm_model", "image_dir", "pairs"]
    paths += ["features", "matches"]
    args = [a for name in paths for a in (f"--{name}", f"x/{name}")]
    flags = ["skip_geometric_verification", "estimate_two_view_geometries"]
    flags += ["verbose", "overwrite"]
    ns = triangulation.parser().parse_args(
        args + [f"--{f}" for f in flags] + ["--min_match_score", "0.25"]
    )
    for name in paths:
        assert getattr(ns, name) == Path(f"x/{name}"), name
        assert isinstance(getattr(ns, name), Path), name
    assert all(getattr(ns, f) is True for f in flags)
    assert ns.min_match_score == 0.25 and isinstance(ns.min_match_score, float)
    assert triangulation.parser().parse_args(
        args + ["--max_epipolar_error", "2"]
    ).max_epipolar_error == pytest.approx(2.0)
    text = " ".join(triangulation.parser().format_help().split())
    assert text.startswith("usage: python -m p2p_hloc.triangulation ")
    assert "Triangulate 3D points in a reference model with known poses" in text
    assert "--mapper_options KEY=VALUE [KEY=VALUE ...]" in text


def test_interrupted_move_leaves_no_complete_model(tmp_path):
    """A move that fails half-way (a file missing) leaves the old model
    without its points3D.bin: it is not taken for a finished model."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir(), dst.mkdir()
    for f in MODEL_FILES:
        (src / f).write_text(f"new {f}")
        (dst / f).write_text(f"old {f}")
    (src / "frames.bin").unlink()
    with pytest.raises(FileNotFoundError):
        move_model(src, dst)
    assert not triangulation.model_exists(dst)
    assert not (dst / "points3D.bin").exists()
    assert (dst / "images.bin").read_text() == "new images.bin"


@pytest.fixture(scope="module")
def shifted(scene, tmp_path_factory):
    """The first pair of ``pairs_db`` (its matches ``m`` (K, 2)) with the
    second image's keypoints moved by (3, -3) px, and which matches are within
    0.01, 4 and 5 px of their epipolar lines (``keep``)."""
    root = tmp_path_factory.mktemp("shifted")
    (a, b), *_ = parse_pairs(scene["pairs_db"])
    features = root / "f.h5"
    shutil.copy(scene["features"], features)
    xy, _ = scene["keypoints"][b]
    write_keypoints(features, b, to_hloc_coords(xy + [3.0, -3.0]), (480, 360))
    m0, _ = match_ids(scene["keypoints"][a][1], scene["keypoints"][b][1])
    m = np.c_[np.flatnonzero(m0 > -1), m0[m0 > -1]]
    reference = pycolmap.Reconstruction(scene["reference"])
    im0, im1 = (reference.find_image_with_name(n) for n in (a, b))
    cameras = reference.cameras[im0.camera_id], reference.cameras[im1.camera_id]
    kp0, kp1 = scene["keypoints"][a][0][m[:, 0]], xy[m[:, 1]] + [3.0, -3.0]
    keep = {e: epipolar_inliers(kp0, kp1, im0, im1, *cameras, e) for e in (0.01, 4, 5)}
    assert keep[4].sum() != keep[5].sum() and keep[0.01].sum() < len(m) / 10
    pairs = write_pairs(root / "p.txt", [(a, b)])
    return dict(pair=(a, b), features=features, m=m, keep=keep, pairs=pairs)


def inlier_matches(database):
    with pycolmap.Database.open(database) as db:
        (_,), (geometry,) = db.read_two_view_geometries()
    return geometry


def test_pose_verification_default_threshold(scene, shifted, tmp_path, capsys):
    """Called without max_error, the pose verification keeps the matches
    within 4 px of their epipolar lines (a second image's keypoints moved
    by 3 px: some of them are 4 to 5 px off), as CALIBRATED inliers."""
    reference = pycolmap.Reconstruction(scene["reference"])
    database = tmp_path / "database.db"
    ids = triangulation.create_db_from_model(reference, database)
    ids = triangulation.import_features(ids, database, shifted["features"])
    triangulation.write_matches_and_geometries(
        reference, ids, database, shifted["features"], {shifted["pair"]: shifted["m"]}
    )
    progress = capsys.readouterr().err.replace("\r", "\n").splitlines()
    for step in ("import features", "import matches"):
        assert any(line.startswith(f"{step}: 100%") for line in progress)
    geometry = inlier_matches(database)
    assert geometry.config == pycolmap.TwoViewGeometryConfiguration.CALIBRATED
    m = shifted["m"]
    np.testing.assert_array_equal(geometry.inlier_matches, m[shifted["keep"][4]])


@pytest.mark.parametrize("max_error", [None, 5])
def test_main_pose_verification_threshold(scene, shifted, max_error):
    """main's max_epipolar_error (4 px by default) reaches the pose
    verification."""
    kw = {} if max_error is None else {"max_epipolar_error": max_error}
    run(
        scene,
        f"sfm_{max_error}px",
        shifted["pairs"],
        features=shifted["features"],
        mapper_options={"triangulation": {"ignore_two_view_tracks": False}},
        **kw,
    )
    geometry = inlier_matches(scene["root"] / f"sfm_{max_error}px" / "database.db")
    keep = shifted["keep"][max_error or 4]
    np.testing.assert_array_equal(geometry.inlier_matches, shifted["m"][keep])


def test_estimate_two_view_geometries_ignores_the_poses(scene, shifted):
    """With estimate_two_view_geometries, RANSAC (not the known poses, here
    off by 3 px) decides: nearly every match is an inlier even at a 0.01 px
    max_epipolar_error; the pairs it verified are listed beside the model."""
    run(
        scene,
        "sfm_ransac_shifted",
        shifted["pairs"],
        features=shifted["features"],
        mapper_options={"triangulation": {"ignore_two_view_tracks": False}},
        estimate_two_view_geometries=True,
        max_epipolar_error=0.01,
    )
    sfm_dir = scene["root"] / "sfm_ransac_shifted"
    geometry = inlier_matches(sfm_dir / "database.db")
    assert len(geometry.inlier_matches) > 0.9 * len(shifted["m"])
    assert parse_pairs(sfm_dir / "pairs-verified.txt") == [shifted["pair"]]


def test_new_nested_folder_and_a_stale_temporary_one(scene):
    """sfm_dir is made with its parents; a temporary folder left by an
    interrupted run is replaced."""
    rec = run(scene, "new/nested/sfm")
    assert pycolmap.Reconstruction(scene["root"] / "new/nested/sfm").num_points3D()
    check_points(scene, rec)
    stale = scene["root"] / "sfm_stale" / "triangulation.tmp"
    stale.mkdir(parents=True)
    (stale / "points3D.bin").write_text("stale")
    rec = run(scene, "sfm_stale")
    assert not stale.exists()
    on_disk = pycolmap.Reconstruction(scene["root"] / "sfm_stale")
    assert on_disk.num_points3D() == rec.num_points3D() > 350


def test_a_single_point_is_a_model(scene, tmp_path):
    """One pair with one match: one 3D point, written, not an error."""
    (a, b), *_ = parse_pairs(scene["pairs_db"])
    m0, scores = match_ids(scene["keypoints"][a][1], scene["keypoints"][b][1])
    m0[np.flatnonzero(m0 > -1)[1:]] = -1
    matches = tmp_path / "m.h5"
    write_matches(matches, a, b, m0, scores)
    pairs = write_pairs(tmp_path / "p.txt", [(a, b)])
    options = {"min_num_matches": 1, "triangulation": {"ignore_two_view_tracks": False}}
    rec = run(scene, "sfm_one", pairs, matches=matches, mapper_options=options)
    assert rec.num_points3D() == 1
    check_points(scene, rec)
    assert pycolmap.Reconstruction(scene["root"] / "sfm_one").num_points3D() == 1


def test_model_ids_are_kept(scene, tmp_path):
    """A reference whose camera, rig, frame and image ids do not count from 1
    (a model cut from a larger one): the same ids in the database and the
    triangulated model, and true points."""
    old = pycolmap.Reconstruction(scene["reference"])
    new = pycolmap.Reconstruction()
    for camera in old.cameras.values():
        camera.camera_id += 10
        new.add_camera_with_trivial_rig(camera)  # rig_id = camera_id
    for image in old.images.values():
        pose = image.cam_from_world()
        renamed = pycolmap.Image(
            name=image.name,
            camera_id=image.camera_id + 10,
            image_id=image.image_id + 20,
        )
        new.add_image_with_trivial_frame(renamed, pose)  # frame_id = image_id
    reference = tmp_path / "reference"
    reference.mkdir()
    new.write(reference)
    rec = run(scene, "sfm_ids", reference_model=reference)
    check_points(scene, rec)
    assert rec.num_points3D() > 350
    for image in rec.images.values():
        original = old.find_image_with_name(image.name)
        assert image.image_id == original.image_id + 20
        assert image.camera_id == original.camera_id + 10
    with pycolmap.Database.open(scene["root"] / "sfm_ids" / "database.db") as db:
        assert sorted(c.camera_id for c in db.read_all_cameras()) == sorted(new.cameras)
        assert sorted(r.rig_id for r in db.read_all_rigs()) == sorted(new.rigs)
        assert sorted(f.frame_id for f in db.read_all_frames()) == sorted(new.frames)
        assert {i.name: i.image_id for i in db.read_all_images()} == {
            i.name: i.image_id for i in new.images.values()
        }


def test_min_match_score_reaches_the_import(scene):
    """Every exact match has the score 1: a min_match_score of 1 leaves none."""
    with pytest.raises(TriangulationError, match="no pair of .* has matches"):
        run(scene, "sfm_score", min_match_score=1.0)
    assert run(scene, "sfm_score", min_match_score=0.5).num_points3D() > 350


def test_colmap_messages_only_when_verbose(scene, capfd):
    """COLMAP's INFO lines (glog: 'I<date> ...') reach stderr with verbose
    only."""
    capfd.readouterr()
    run(scene, "sfm_quiet")
    assert not re.search(r"^I\d{8} ", capfd.readouterr().err, re.M)
    run(scene, "sfm_verbose", verbose=True)
    assert re.search(r"^I\d{8} ", capfd.readouterr().err, re.M)


def test_pairs_missing_from_the_files_are_reported(scene, logs):
    """A pair absent from the matches file, or naming an image absent from
    the model, is skipped with an example; the pairs after it are read."""
    (a, b), (c, d) = parse_pairs(scene["pairs_db"])[:2]
    listed = {frozenset(p) for p in parse_pairs(scene["pairs_db"])}
    listed |= {frozenset(p) for p in parse_pairs(scene["pairs_query"])}
    names = sorted(scene["keypoints"])
    x, y = next((x, y) for x in names for y in names if x < y and {x, y} not in listed)
    pairs = write_pairs(
        scene["root"] / "p_missing.txt", [(x, y), (a, "db/no.png"), (c, d)]
    )
    ids = {n: i for i, n in enumerate(names, 1)}
    out = read_pair_matches(ids, pairs, scene["matches"])
    assert list(out) == [(c, d)]
    assert f"no matches in {scene['matches']}, e.g. ('{x}', '{y}')." in logs.text
    assert (
        f"absent from the model or without keypoints, e.g. ('{a}', 'db/no.png')."
        in logs.text
    )


def test_epipolar_inliers_at_the_threshold():
    """A match exactly max_error px from its epipolar lines is an inlier
    (a sideways motion: horizontal lines; focal 256 px: exact arithmetic)."""
    (im0, cam0), (im1, cam1) = two_views(256.0, 256.0, [0, 0, 0], [1, 0, 0])
    kp0 = np.array([[400.0, 250.0], [400.0, 250.0], [100.0, 300.0]])
    kp1 = np.array([[300.0, 254.0], [300.0, 246.0], [150.0, 304.5]])
    np.testing.assert_array_equal(
        epipolar_inliers(kp0, kp1, im0, im1, cam0, cam1), [True, True, False]
    )
    np.testing.assert_array_equal(
        epipolar_inliers(kp0, kp1, im0, im1, cam0, cam1, 4.5), [True, True, True]
    )
