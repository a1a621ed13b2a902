"""localize_sfm on a scene with exact observations (helpers_exact): every
2D-3D correspondence, pose, log entry and option checked where the mutation
run (tools/mutation.py) found them untested. Poses come out right to about
1e-7 m here, so the thresholds sit far below what a 0.5 px slip gives."""

import pickle
import shutil
from pathlib import Path

import h5py
import numpy as np
import pycolmap
import pytest
from helpers_exact import exact_scene, match_ids, query_names, sfm

from p2p_hloc import localize_sfm
from p2p_hloc.console import InputError, run_cli
from p2p_hloc.eval.poses import evaluate, pose_error, read_poses
from p2p_hloc.io import (
    get_keypoints,
    get_matches,
    parse_pairs,
    to_hloc_coords,
    write_keypoints,
    write_matches,
    write_pairs,
)
from p2p_hloc.localize_sfm import (
    QueryLocalizer,
    _merge,
    covisibility_clusters,
    estimate_pose,
    pose_config,
    pose_tuple,
)
from p2p_hloc.synthetic import View, look

# measured: 4e-8 to 8e-8 m and 0 deg with and without clustering (numerical
# noise); the thresholds allow 100 times that, far below the millimetres a
# query keypoint 0.5 px off gives (tools/conventions.py)
MAX_ERROR = (1e-5, 1e-3)  # (m, deg)
SIDE = [f"db/{i:03d}.png" for i in range(8, 13)]


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    s = exact_scene(tmp_path_factory.mktemp("exact_loc"), clusters=2)
    s["sfm"] = sfm(s)
    s["rec"] = pycolmap.Reconstruction(s["sfm"])
    return s


def run(scene, name, retrieval=None, **kw):
    results = localize_sfm.main(
        kw.pop("reference", scene["sfm"]),
        kw.pop("queries", scene["queries"]),
        retrieval or scene["pairs_query"],
        kw.pop("features", scene["features"]),
        kw.pop("matches", scene["matches"]),
        scene["root"] / name,
        **kw,
    )
    with open(f"{results}_logs.pkl", "rb") as f:
        logs = pickle.load(f)
    return results, logs


def errors(scene, results):
    report = evaluate(results, scene["ground_truth"], [], scene["queries"])
    return np.array([list(e.values()) for e in report["errors"].values()])


@pytest.mark.parametrize("clustering", [False, True])
def test_exact_correspondences_and_poses(scene, clustering):
    results, logs = run(
        scene, f"exact_{clustering}.txt", covisibility_clustering=clustering
    )
    assert np.all(errors(scene, results) < MAX_ERROR)
    rec, retrieval = scene["rec"], dict()
    for q, r in parse_pairs(scene["pairs_query"]):
        retrieval.setdefault(q, []).append(r)
    for q in query_names(scene):
        log = logs["loc"][q]
        assert log["status"] == "localized"
        assert log["num_clusters"] == (2 if clustering else 1)
        assert log["db"] == [r for r in retrieval[q] if not clustering or r not in SIDE]
        xy, point_ids = scene["keypoints"][q]
        kp = log["keypoint_indices"]
        np.testing.assert_allclose(log["keypoints_query"], xy[kp], atol=1e-3)
        xyz = np.array([rec.points3D[i].xyz for i in log["points3D_ids"]])
        np.testing.assert_allclose(xyz, scene["points"][point_ids[kp]], atol=1e-4)
        # every match read, each (query keypoint, 3D point) once
        expected, read = set(), 0
        for r in log["db"]:
            image = rec.find_image_with_name(r)
            m0, _ = match_ids(point_ids, scene["keypoints"][r][1])
            read += np.sum(m0 > -1)
            for i in np.flatnonzero(m0 > -1):
                p = image.points2D[m0[i]]
                if p.has_point3D():
                    expected.add((i, p.point3D_id))
        assert log["num_matches"] == read
        assert set(zip(kp.tolist(), log["points3D_ids"].tolist())) == expected
        assert log["num_correspondences"] == len(expected) == len(kp)
        # the decoys (query points of side points) are the outliers
        inliers = point_ids[kp] < scene["num_main"]
        np.testing.assert_array_equal(log["inlier_mask"], inliers)
        assert log["num_inliers"] == inliers.sum() > 100
        np.testing.assert_array_equal(log["ret"]["qvec"], read_poses(results)[q[6:]][0])


def test_the_cluster_with_most_inliers_wins(scene):
    """Alone, the side cluster gives the query turned by 90 degrees."""
    main_ids = [
        scene["rec"].find_image_with_name(f"db/{i:03d}.png").image_id for i in (0, 3, 1)
    ]
    side_ids = [scene["rec"].find_image_with_name(n).image_id for n in SIDE]
    clusters = covisibility_clusters(scene["rec"], side_ids[:2] + main_ids)
    assert clusters == [main_ids, side_ids[:2]]
    side = write_pairs(
        scene["root"] / "pairs_side.txt",
        [(q, r) for q, r in parse_pairs(scene["pairs_query"]) if r in SIDE],
    )
    results, logs = run(scene, "side.txt", side)
    for q, pose in read_poses(results).items():
        view = scene["views"][f"query/{q}"]
        turned = View(q, 0, 0, 0, *look(view.center, -90))
        t, r = pose_error(pose, (turned.qvec, turned.t))
        assert t < MAX_ERROR[0] and r < MAX_ERROR[1]
        assert pose_error(pose, (view.qvec, view.t))[1] > 60
    side_inliers = [logs["loc"][q]["num_inliers"] for q in query_names(scene)]
    _, logs = run(scene, "both.txt", covisibility_clustering=True)
    both = [logs["loc"][q]["num_inliers"] for q in query_names(scene)]
    assert all(0 < s < b for s, b in zip(side_inliers, both))


def test_the_best_cluster_wins_wherever_it_comes(scene):
    """With only 2 side images retrieved, the main cluster comes first (being
    larger): it must still win over the side cluster tried after it."""
    pairs = parse_pairs(scene["pairs_query"])
    side = {q: [r for a, r in pairs if a == q and r in SIDE][:2] for q, _ in pairs}
    retrieval = write_pairs(
        scene["root"] / "pairs_main_first.txt",
        [(q, r) for q, r in pairs if r not in SIDE or r in side[q]],
    )
    results, logs = run(
        scene, "main_first.txt", retrieval, covisibility_clustering=True
    )
    assert np.all(errors(scene, results) < MAX_ERROR)
    for q in query_names(scene):
        log = logs["loc"][q]
        assert log["num_clusters"] == 2 and not set(log["db"]) & set(SIDE)


def test_a_tie_in_inliers_goes_to_the_cluster_tried_first(scene):
    """hloc's rule (only a strictly larger count replaces the best): the
    main cluster's matches are thinned until it has exactly as many inliers
    as the side cluster; the cluster tried first (the larger, here the side
    one) must win, with the pose it gives alone."""
    rec, pairs = scene["rec"], parse_pairs(scene["pairs_query"])
    side = write_pairs(
        scene["root"] / "pairs_tie_side.txt", [(q, r) for q, r in pairs if r in SIDE]
    )
    side_results, logs = run(scene, "tie_side.txt", side)
    target = {q: logs["loc"][q]["num_inliers"] for q in query_names(scene)}
    matches = scene["root"] / "tie_matches.h5"
    shutil.copy(scene["matches"], matches)
    for q in query_names(scene):
        point_ids = scene["keypoints"][q][1]
        main = {
            r: match_ids(point_ids, scene["keypoints"][r][1])[0]
            for a, r in pairs
            if a == q and r not in SIDE
        }
        found = {}  # query keypoint -> the 3D points it reaches
        for r, m0 in main.items():
            image = rec.find_image_with_name(r)
            for i in np.flatnonzero(m0 > -1):
                if image.points2D[m0[i]].has_point3D():
                    found.setdefault(i, set()).add(image.points2D[m0[i]].point3D_id)
        keep, count = [], 0
        for i in sorted(found):
            if count + len(found[i]) <= target[q]:
                keep.append(i)
                count += len(found[i])
        assert count == target[q] > 20
        for r, m0 in main.items():
            m0 = np.where(np.isin(np.arange(len(m0)), keep), m0, -1)
            write_matches(matches, q, r, m0, (m0 > -1).astype(float))
    main = write_pairs(
        scene["root"] / "pairs_tie_main.txt",
        [(q, r) for q, r in pairs if r not in SIDE],
    )
    _, logs = run(scene, "tie_main.txt", main, matches=matches)
    assert {q: logs["loc"][q]["num_inliers"] for q in target} == target
    results, logs = run(scene, "tie.txt", matches=matches, covisibility_clustering=True)
    alone, poses = read_poses(side_results), read_poses(results)
    for q in query_names(scene):
        log = logs["loc"][q]
        ids = [rec.find_image_with_name(r).image_id for a, r in pairs if a == q]
        assert log["num_clusters"] == 2 and log["num_inliers"] == target[q]
        assert log["db"] == SIDE and len(covisibility_clusters(rec, ids)[0]) == 5
        t, r = pose_error(poses[q[6:]], alone[q[6:]])
        assert t < MAX_ERROR[0] and r < MAX_ERROR[1]


def test_clusters_keep_the_retrieval_order(scene):
    ids = [
        scene["rec"].find_image_with_name(f"db/{i:03d}.png").image_id
        for i in (2, 0, 1, 3)
    ]
    assert covisibility_clusters(scene["rec"], ids) == [ids]
    assert covisibility_clusters(scene["rec"], ids[::-1]) == [ids[::-1]]


def test_failed_groups_fall_back_to_the_first_image(scene, logs):
    """No correspondence at all: the last group's log, the first retrieved
    image's exact pose, and the counts in the summary."""
    q = query_names(scene)[0]
    matches = scene["root"] / "no_matches.h5"
    shutil.copy(scene["matches"], matches)
    pairs = [(a, b) for a, b in parse_pairs(scene["pairs_query"]) if a == q]
    for a, b in pairs:
        n = len(scene["keypoints"][a][0])
        write_matches(matches, a, b, -np.ones(n), np.zeros(n))
    results, log = run(
        scene, "fallback.txt", matches=matches, covisibility_clustering=True
    )
    entry = log["loc"][q]
    assert entry["status"] == "fallback" and entry["ret"] is None
    assert entry["num_inliers"] == 0 and entry["inlier_mask"] is None
    # the last group: the side cluster (5 images) comes first, being larger
    assert entry["num_clusters"] == 2 and entry["db"] == [
        r for _, r in pairs if r not in SIDE
    ]
    assert log["fallback"] == [q] and log["failed"] == []
    first = scene["rec"].find_image_with_name(pairs[0][1]).cam_from_world()
    qvec, tvec = read_poses(results)[q[6:]]
    np.testing.assert_allclose(qvec, first.rotation.quat[[3, 0, 1, 2]], atol=1e-7)
    np.testing.assert_allclose(tvec, first.translation, atol=1e-7)
    assert "Localized 2 / 3 queries." in logs.text
    assert f"1 queries got the fallback pose (PnP failed), e.g. {q}." in logs.text


def test_pose_tuple_is_w_first(scene):
    image = scene["rec"].find_image_with_name("db/001.png")
    qvec, tvec = pose_tuple(image.cam_from_world())
    R = image.cam_from_world().rotation.matrix()
    w = np.sqrt(1 + np.trace(R)) / 2
    np.testing.assert_allclose(qvec[0], w, atol=1e-9)
    np.testing.assert_allclose(qvec[1], (R[2, 1] - R[1, 2]) / (4 * w), atol=1e-9)
    np.testing.assert_array_equal(tvec, image.cam_from_world().translation)


def test_queries_without_images_in_the_model(scene, logs, capfd):
    """A retrieved image that is not registered in the model is skipped (a
    warning for those queries only); a query left with none gets no pose,
    logged as failed. The progress bar says what it counts."""
    rec = pycolmap.Reconstruction(scene["sfm"])
    unregistered = rec.find_image_with_name("db/000.png")
    rec.deregister_frame(unregistered.frame_id)
    q0, q1, _ = query_names(scene)
    pairs = [(q, r) for q, r in parse_pairs(scene["pairs_query"]) if q != q0]
    pairs += [(q0, "db/000.png"), (q1, "db/000.png"), (q1, "db/none.png")]
    retrieval = write_pairs(scene["root"] / "pairs_unreg.txt", pairs)
    results, log = run(scene, "unreg.txt", retrieval, reference=rec)
    assert q0[6:] not in read_poses(results) and len(read_poses(results)) == 2
    assert log["failed"] == [q0] and log["fallback"] == []
    assert log["loc"][q0] == dict(
        db=["db/000.png"], ret=None, num_inliers=0, status="no_pose"
    )
    assert "db/000.png" not in log["loc"][q1]["db"]
    assert log["loc"][q1]["status"] == "localized"
    n = sum(q == q1 for q, _ in pairs)
    assert f"Query {q1}: 2 of {n} retrieved images are not in the model" in logs.text
    assert logs.text.count("retrieved images are not in the model") == 2  # q0, q1
    assert "localize: 100%|" in capfd.readouterr().err
    assert f"1 queries have no pose in the results, e.g. {q0}." in logs.text
    assert "Localized 2 / 3 queries." in logs.text


def test_missing_pairs_are_skipped(scene, logs):
    q = query_names(scene)[1]
    pairs = [(a, b) for a, b in parse_pairs(scene["pairs_query"]) if a == q]
    retrieval = write_pairs(  # first: the next pairs are still read
        scene["root"] / "pairs_unmatched.txt", [(q, "db/005.png")] + pairs
    )
    with h5py.File(scene["matches"], "r") as f:
        assert f"{q.replace('/', '-')}/db-005.png" not in f
    _, log = run(scene, "unmatched.txt", retrieval)
    assert f"No matches for pair ({q}, db/005.png): skipped." in logs.text
    assert log["loc"][q]["status"] == "localized"
    assert log["loc"][q]["num_matches"] > 100


def test_no_pair_at_all_gives_no_correspondence(scene):
    q = query_names(scene)[0]
    localizer = QueryLocalizer(
        scene["rec"], scene["features"], scene["root"] / "x.h5", {}
    )
    write_matches(scene["root"] / "x.h5", "a", "b", np.zeros(1), np.ones(1))
    xy, ids, kp, n = localizer.correspondences(q, [1, 2])
    assert xy.shape == (0, 2) and ids.shape == (0,) and kp is None and n == 0
    assert ids.dtype == np.int64


def test_matches_beyond_the_model_keypoints_are_ignored(scene, tmp_path):
    """A database image with more keypoints in the features file than in the
    model (keypoints added after the triangulation): matches to them have no
    3D point, in keypoint and in raw mode."""
    q = query_names(scene)[0]
    r = next(b for a, b in parse_pairs(scene["pairs_query"]) if a == q)
    features = tmp_path / "features.h5"
    shutil.copy(scene["features"], features)
    kps = get_keypoints(features, r)
    extra = to_hloc_coords(scene["keypoints"][q][0][:1]) + 3.0
    write_keypoints(features, r, np.concatenate([kps, extra]), (480, 360))
    matches = tmp_path / "matches.h5"
    m0 = -np.ones(len(scene["keypoints"][q][0]))
    m0[0] = len(kps)
    raw = dict(
        keypoints0=to_hloc_coords(scene["keypoints"][q][0][:1]),
        keypoints1=extra,
        scores=np.ones(1),
    )
    write_matches(matches, q, r, m0, (m0 > -1).astype(float), **raw)
    for mode in (False, True):
        localizer = QueryLocalizer(scene["rec"], features, matches, {}, raw=mode)
        image = scene["rec"].find_image_with_name(r)
        xy, ids, _, n = localizer.correspondences(q, [image.image_id])
        assert n == mode and len(xy) == 0 and len(ids) == 0  # raw: 1 read


def test_point3D_ids(scene):
    image = scene["rec"].find_image_with_name("db/002.png")
    localizer = QueryLocalizer(scene["rec"], scene["features"], scene["matches"], {})
    ids = localizer.point3D_ids(image.image_id)
    assert ids.dtype == np.int64 and len(ids) == len(image.points2D)
    expected = [p.point3D_id if p.has_point3D() else -1 for p in image.points2D]
    np.testing.assert_array_equal(ids, expected)
    assert localizer.point3D_ids(image.image_id) is ids


@pytest.fixture(scope="module")
def raw_matches(scene):
    """The query pairs with raw matches: each shared point's exact query
    point, its database partner 0.3 px off the database keypoint (score
    0.5), and as many wrong matches of score 0.25."""
    rng = np.random.default_rng(1)
    path = scene["root"] / "raw_matches.h5"
    for q, r in parse_pairs(scene["pairs_query"]):
        (xq, iq), (xr, ir) = scene["keypoints"][q], scene["keypoints"][r]
        m0, scores = match_ids(iq, ir)
        i = np.flatnonzero(m0 > -1)
        kq, kr = xq[i], xr[m0[i]] + [0.3, 0.0]
        wrong = rng.uniform([0, 0], [480, 360], kq.shape), kr[rng.permutation(len(kr))]
        write_matches(
            path,
            q,
            r,
            m0,
            scores,
            keypoints0=to_hloc_coords(np.concatenate([kq, wrong[0]])),
            keypoints1=to_hloc_coords(np.concatenate([kr, wrong[1]])),
            scores=np.r_[np.full(len(kq), 0.5), np.full(len(kq), 0.25)],
        )
    return path


def test_localizer_defaults_and_raw_ids(scene, raw_matches):
    """Keypoint mode by default (radius 4, min_score 0 for raw mode); the raw
    points of a pair (partners 0.3 px off) find the 3D points of the matched
    keypoints, keypoint 0 included."""
    rec = scene["rec"]
    loc = QueryLocalizer(rec, scene["features"], raw_matches, {})
    assert (loc.raw, loc.radius, loc.min_score) == (False, 4.0, 0.0)
    raw = QueryLocalizer(rec, scene["features"], raw_matches, {}, raw=True)
    first = 0
    for q, r in parse_pairs(scene["pairs_query"]):
        point_ids = loc.point3D_ids(rec.find_image_with_name(r).image_id)
        m, ids = loc.keypoint_pair(q, r, point_ids)
        xy, raw_ids = raw.raw_pair(q, r, point_ids)
        np.testing.assert_array_equal(raw_ids[: len(ids)], ids)
        first += np.sum(ids[get_matches(raw_matches, q, r)[0][:, 1] == 0] >= 0)
    assert first > 0  # some pairs match keypoint 0, which has a 3D point


def test_raw_query_points(scene, raw_matches):
    results, log = run(
        scene,
        "raw.txt",
        matches=raw_matches,
        raw_query_points=True,
        radius=0.5,
        min_score=0.5,
    )
    assert np.all(errors(scene, results) < MAX_ERROR)
    for q in query_names(scene):
        entry = log["loc"][q]
        assert entry["status"] == "localized" and entry["keypoint_indices"] is None
        # the observations are the raw query points in the corner convention
        xy, _ = scene["keypoints"][q]
        d = np.linalg.norm(entry["keypoints_query"][:, None] - xy[None], axis=-1)
        assert d.min(1).max() < 1e-3
    assert log["raw_query_points"] and log["radius"] == 0.5 and log["min_score"] == 0.5


@pytest.mark.parametrize("radius, min_score", [(0.2, 0.5), (0.5, 0.6)])
def test_raw_partners_out_of_reach_give_no_correspondence(
    scene, raw_matches, radius, min_score
):
    """Partners 0.3 px off do not reach keypoints within 0.2 px; scores of 0.5
    are below 0.6."""
    _, log = run(
        scene,
        f"raw_{radius}_{min_score}.txt",
        matches=raw_matches,
        raw_query_points=True,
        radius=radius,
        min_score=min_score,
    )
    assert {e["num_correspondences"] for e in log["loc"].values()} == {0}
    assert log["fallback"] == query_names(scene)


def test_pose_config():
    assert pose_config(12) == {
        "estimation": {"ransac": {"max_error": 12.0, "random_seed": 0}}
    }
    assert pose_config(5.5, None, None)["estimation"]["ransac"]["random_seed"] == -1
    merged = pose_config(
        3,
        {
            "estimation": {"ransac": {"min_num_trials": 7}},
            "refinement": {"refine_focal_length": True},
        },
        4,
    )
    assert merged == {
        "estimation": {
            "ransac": {"max_error": 3.0, "random_seed": 4, "min_num_trials": 7}
        },
        "refinement": {"refine_focal_length": True},
    }
    for bad, message in (
        ({"estimator": {}}, "unknown keys ['estimator']"),
        ({"refinement": {"max_num_iters": "x"}}, ""),
    ):
        with pytest.raises(InputError) as e:
            pose_config(12, bad)
        assert str(e.value).startswith(f"bad localization config {bad!r}: ")
        assert message in str(e.value)


def test_merge_is_key_by_key():
    base = {"a": {"b": 1, "c": {"d": 2}}, "e": 3}
    assert _merge(base, {"a": {"c": {"f": 4}}, "e": {"g": 5}}) == {
        "a": {"b": 1, "c": {"d": 2, "f": 4}},
        "e": {"g": 5},
    }
    assert base == {"a": {"b": 1, "c": {"d": 2}}, "e": 3}


def test_estimate_pose_needs_three_points():
    camera = pycolmap.Camera(
        model="PINHOLE", width=480, height=360, params=[373, 373, 240, 180]
    )
    xyz = np.random.default_rng(0).uniform([-1, -1, 4], [1, 1, 6], (3, 3))
    uv = (xyz[:, :2] / xyz[:, 2:] * 373 + [240, 180]).astype(np.float32)
    config = pose_config(12)
    assert estimate_pose(uv[:2], xyz[:2], camera, config) is None
    assert estimate_pose(uv, xyz.astype(np.float32), camera, config)["num_inliers"] == 3


def test_refinement_options_reach_pycolmap():
    """Focal length refinement (off by default) recovers the true focal
    length (400) from a 10% wrong one: measured 399.93, translation 1e-3;
    without it the translation is off by 0.46."""
    xyz = np.random.default_rng(0).uniform([-1, -1, 4], [1, 1, 6], (50, 3))
    uv = xyz[:, :2] / xyz[:, 2:] * 400 + [240, 180]  # the camera at the origin
    for refine, focal, max_t in ((True, 400, 0.01), (False, 360, 1.0)):
        camera = pycolmap.Camera(
            model="SIMPLE_PINHOLE", width=480, height=360, params=[360, 240, 180]
        )
        config = pose_config(100, {"refinement": {"refine_focal_length": refine}})
        ret = estimate_pose(uv, xyz, camera, config)
        assert abs(camera.params[0] - focal) < 0.2
        t = np.linalg.norm(ret["cam_from_world"].translation)
        assert (t < max_t) if refine else (t > 0.1)


def test_refinement_options_are_used(scene):
    """A refinement that may not refine anything leaves the RANSAC pose."""
    config = {"refinement": {"max_num_iterations": 0}, "estimation": {}}
    results, log = run(scene, "norefine.txt", config=config, overwrite=True)
    assert log["config"]["refinement"] == {"max_num_iterations": 0}


def test_inputs_are_checked_before_any_work(scene, tmp_path):
    for key in ("retrieval", "features", "matches"):
        kw = {key: tmp_path / f"missing_{key}.h5"}
        retrieval = kw.pop("retrieval", None)
        with pytest.raises(FileNotFoundError) as e:
            run(scene, "never.txt", retrieval, **kw)
        assert str(e.value) == f"{tmp_path / f'missing_{key}.h5'} not found"
    with pytest.raises(FileNotFoundError, match="no queries file matches"):
        run(scene, "never.txt", queries=tmp_path / "none_*.txt")
    empty = tmp_path / "empty_queries.txt"
    empty.write_text("# nothing\n")
    with pytest.raises(InputError) as e:
        run(scene, "never.txt", queries=empty)
    assert str(e.value) == f"no queries in {empty}"
    (tmp_path / "empty_queries2.txt").write_text("")
    with pytest.raises(InputError) as e:  # every file named
        localize_sfm.read_queries(tmp_path / "empty_queries*.txt")
    second = tmp_path / "empty_queries2.txt"
    assert str(e.value) == f"no queries in {empty}, {second}"
    nested = tmp_path / "new" / "folder" / "results.txt"
    localize_sfm.check_writable(nested)
    assert nested.parent.is_dir() and not list(nested.parent.iterdir())
    if Path("/proc/self").is_dir():  # a folder that refuses files, even to root
        with pytest.raises(InputError, match="^cannot write the results /proc/r"):
            localize_sfm.check_writable(Path("/proc/results.txt"))
    (tmp_path / "file").write_text("")
    with pytest.raises(InputError, match="^cannot write the results .*file/x.txt"):
        localize_sfm.main(
            scene["sfm"],
            scene["queries"],
            scene["pairs_query"],
            scene["features"],
            scene["matches"],
            tmp_path / "file" / "x.txt",
        )
    empty_model = pycolmap.Reconstruction(scene["reference"])
    with pytest.raises(ValueError) as e:
        run(scene, "never.txt", reference=scene["reference"])
    assert str(e.value) == (
        f"reference model {scene['reference']} has no 3D points: triangulate first"
    )
    assert empty_model.num_points3D() == 0
    assert not (scene["root"] / "never.txt").exists()


def test_queries_glob_reads_files_in_sorted_order(scene, tmp_path):
    lines = scene["queries"].read_text().splitlines()
    for i, line in enumerate(lines):
        (tmp_path / f"{2 - i}_q.txt").write_text(line + "\n")
    names = [n for n, _ in localize_sfm.read_queries(tmp_path / "*_q.txt")]
    assert names == [line.split()[0] for line in lines[::-1]]


def test_existing_results_are_kept_unless_overwrite(scene, logs):
    results, _ = run(scene, "kept.txt")
    results.write_text("marker\n")
    run(scene, "kept.txt")
    assert results.read_text() == "marker\n" and "skipping" in logs.text
    run(scene, "kept.txt", overwrite=True)
    assert len(read_poses(results)) == 3


def test_results_and_logs(scene):
    results, log = run(scene, "cams.txt", prepend_camera_name=True, seed=None)
    assert sorted(read_poses(results)) == query_names(scene)
    assert not list(scene["root"].glob("cams.txt*.tmp"))
    assert log["config"]["estimation"]["ransac"]["random_seed"] == -1
    assert {k: log[k] for k in ("ransac_thresh", "covisibility_clustering")} == {
        "ransac_thresh": 12,
        "covisibility_clustering": False,
    }
    assert (log["raw_query_points"], log["radius"], log["min_score"]) == (
        False,
        4.0,
        0.0,
    )
    for q, (qvec, tvec) in read_poses(results).items():
        np.testing.assert_allclose(log["loc"][q]["ret"]["qvec"], qvec)
        np.testing.assert_allclose(log["loc"][q]["ret"]["tvec"], tvec)


def test_command_line(scene, capsys):
    args = ["--reference_sfm", str(scene["sfm"]), "--queries", str(scene["queries"])]
    args += ["--features", str(scene["features"]), "--matches", str(scene["matches"])]
    args += ["--retrieval", str(scene["pairs_query"])]
    results = scene["root"] / "cli.txt"
    options = [
        "--ransac_thresh",
        "8",
        "--covisibility_clustering",
        "--prepend_camera_name",
        "--overwrite",
        "--seed",
        "3",
        "--radius",
        "2.5",
        "--min_score",
        "0.1",
    ]
    run_ = lambda a: localize_sfm.main(**vars(a))  # noqa: E731
    for _ in range(2):  # the second run overwrites
        argv = args + ["--results", str(results)] + options
        assert run_cli(localize_sfm.parser(), run_, argv) == 0
    with open(f"{results}_logs.pkl", "rb") as f:
        log = pickle.load(f)
    assert log["config"]["estimation"]["ransac"] == {"max_error": 8.0, "random_seed": 3}
    assert log["ransac_thresh"] == 8.0
    assert log["covisibility_clustering"] and log["radius"] == 2.5
    assert log["min_score"] == 0.1 and not log["raw_query_points"]
    assert sorted(read_poses(results)) == query_names(scene)
    for i in range(0, len(args), 2):
        with pytest.raises(SystemExit):
            localize_sfm.parser().parse_args(
                args[:i] + args[i + 2 :] + ["--results", "x"]
            )
    with pytest.raises(SystemExit):
        localize_sfm.parser().parse_args(args)
    p = localize_sfm.parser().parse_args(
        args + ["--results", "x", "--raw_query_points"]
    )
    assert p.raw_query_points and p.seed == 0 and p.ransac_thresh == 12.0
    assert not (p.covisibility_clustering or p.prepend_camera_name or p.overwrite)
    assert (p.radius, p.min_score) == (4.0, 0.0)


def test_query_without_keypoints_falls_back(scene, tmp_path, logs):
    """A query missing from the features file: an error naming it, the first
    retrieved image's pose, and a log entry saying so."""
    q = query_names(scene)[0]
    features = tmp_path / "features_without_query.h5"
    shutil.copy(scene["features"], features)
    with h5py.File(features, "a") as f:
        del f[q]
    results, log = run(scene, "no_query_keypoints.txt", features=features)
    retrieved = [r for a, r in parse_pairs(scene["pairs_query"]) if a == q]
    assert log["loc"][q] == dict(
        db=retrieved, ret=None, num_inliers=0, status="fallback"
    )
    assert log["fallback"] == [q] and q[6:] in read_poses(results)
    assert f"Query {q}: no keypoints for image {q!r} in {features}" in logs.text


def test_raw_query_points_message(scene):
    q = query_names(scene)[0]
    r = next(b for a, b in parse_pairs(scene["pairs_query"]) if a == q)
    localizer = QueryLocalizer(
        scene["rec"], scene["features"], scene["matches"], {}, raw=True
    )
    with pytest.raises(InputError) as e:
        localizer.raw_pair(q, r, np.zeros(0, np.int64))
    assert str(e.value) == (
        f"pair ({q}, {r}) of {scene['matches']} has no raw matches (keypoints0, "
        "keypoints1, scores): raw query points need a dense matcher's matches file"
    )
