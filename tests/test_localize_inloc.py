import pickle
from pathlib import Path

import numpy as np
import pytest
from helpers_localization import assert_hloc_signature, sift_h5

from p2p_hloc import localize_inloc
from p2p_hloc.confs import confs
from p2p_hloc.eval.poses import THRESHOLDS, evaluate, read_poses
from p2p_hloc.localize_inloc import interpolate_scan
from p2p_hloc.synthetic import generate_inloc_scene


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    root = tmp_path_factory.mktemp("inloc")
    paths = generate_inloc_scene(root / "inloc", num_queries=3)
    paths["features"], paths["matches"] = sift_h5(
        paths["dataset"], [paths["pairs_query"]], root / "feats.h5", root / "matches.h5"
    )
    paths["root"] = root
    return paths


def run(scene, name, **kw):
    return localize_inloc.main(
        kw.pop("dataset", scene["dataset"]),
        scene["pairs_query"],
        kw.pop("features", scene["features"]),
        kw.pop("matches", scene["matches"]),
        scene["root"] / name,
        kw.pop("skip_matches", 20),
        focal_length=scene["focal_length"],
        **kw,
    )


def test_interpolate_scan():
    h, w = 6, 8
    u, v = np.meshgrid(np.arange(w), np.arange(h))
    xyz = np.stack([u, v, u + v], -1).astype(float)  # linear: bilinear is exact
    xyz[0, 0] = np.nan
    kps = np.array(
        [[2.0, 3.0], [4.25, 2.75], [1.3, 0.6], [0.5, 0.5], [0.2, 3.0], [7.5, 5.5]]
    )
    points, valid = interpolate_scan(xyz, kps)
    assert valid.tolist() == [True, True, True, False, False, True]
    np.testing.assert_allclose(points[0], [1.5, 2.5, 4.0])
    np.testing.assert_allclose(points[1], [3.75, 2.25, 6.0])
    np.testing.assert_allclose(points[2], [1.0, 0.0, 1.0])  # NaN neighbour: nearest
    np.testing.assert_allclose(points[3], [7.0, 5.0, 12.0])


MEASURED = {"h5": (6.2e-3, 0.052), "conf": (5.2e-3, 0.045)}  # worst query


@pytest.mark.parametrize("source", ["h5", "conf"])
def test_end_to_end(scene, source):
    """h5 files, or p2p_hloc's SIFT matcher run on each pair (no quantization)."""
    kw = (
        dict(features=None, matches=None, conf=confs["sift"])
        if source == "conf"
        else {}
    )
    results = run(scene, f"results_{source}.txt", **kw)
    lines = results.read_text().splitlines()
    assert len(lines) == 3 and all(
        line.startswith("IMG_") and len(line.split()) == 8 for line in lines
    )
    report = evaluate(results, scene["ground_truth"], THRESHOLDS["inloc"])
    assert report["num_queries"] == 3
    with open(f"{results}_logs.pkl", "rb") as f:
        assert {v["status"] for v in pickle.load(f)["loc"].values()} == {"localized"}
    # measured (mm, deg): h5 1.7-6.2, 0.015-0.052; conf 2.0-5.2, 0.015-0.045.
    # A 0.5 px slip in the XYZcut lookup either way: 4.0-11.8 mm, 0.089-0.135 deg
    t, r = MEASURED[source]
    for e in report["errors"].values():
        assert e["translation_m"] < 1.5 * t and e["rotation_deg"] < 1.5 * r, e


def test_unreadable_files_are_skipped(scene, tmp_path, logs):
    """An unreadable .mat and a missing alignment lose their cutouts only; a
    query left with too few matches gets the fallback pose, not a crash."""
    import shutil

    dataset = tmp_path / "inloc"
    shutil.copytree(scene["dataset"], dataset)
    mat = next((dataset / "database/cutouts/DUC1/024").glob("*_0_0.jpg.mat"))
    mat.write_bytes(b"not a mat file")
    (dataset / "database/alignments/DUC1/transformations/DUC_trans_025.txt").unlink()
    results = run(scene, "results_bad.txt", dataset=dataset)
    assert (
        "cannot read XYZcut" in logs.text
        and "cannot read the scan alignment" in logs.text
    )
    poses = read_poses(results)
    assert len(poses) == 3
    with open(f"{results}_logs.pkl", "rb") as f:
        log = pickle.load(f)["loc"]
    assert {v["status"] for v in log.values()} <= {"localized", "fallback"}


def test_failed_pnp_falls_back(scene, logs):
    results = run(scene, "results_skip.txt", skip_matches=10**6)
    assert "PnP failed" in logs.text
    with open(f"{results}_logs.pkl", "rb") as f:
        log = pickle.load(f)
    assert len(log["fallback"]) == 3 and len(read_poses(results)) == 3


def test_signature_is_hlocs():
    assert_hloc_signature(
        localize_inloc.main,  # hloc_interfaces.md, section 3.4
        "dataset_dir, retrieval, features, matches, results, skip_matches=None",
    )


def test_hloc_positional_call(scene):
    """hloc's notebook call, positional: (dataset, loc_pairs, features,
    matches, results, skip_matches) localizes, never skips as 'existing'."""
    results = scene["root"] / "positional.txt"
    localize_inloc.main(
        scene["dataset"],
        scene["pairs_query"],
        scene["features"],
        scene["matches"],
        results,
        20,
        focal_length=scene["focal_length"],
    )
    with open(f"{results}_logs.pkl", "rb") as f:
        log = pickle.load(f)
    assert {v["status"] for v in log["loc"].values()} == {"localized"}
    assert log["skip_matches"] == 20 and len(read_poses(results)) == 3


def test_rerun_is_identical(scene):
    """RANSAC is seeded: the same inputs give the same files, byte for byte."""
    files = []
    for _ in range(2):
        results = run(scene, "rerun.txt", overwrite=True)
        files.append((results.read_bytes(), Path(f"{results}_logs.pkl").read_bytes()))
    assert files[0] == files[1]


@pytest.fixture(scope="module")
def exact(scene):
    """Exact observations in the InLoc scene: for each query pair, 150 pixel
    centres of the cutout with a 3D point, moved to the world and projected
    into the query with its true pose (the query keypoints: corner
    convention); written as hloc files."""
    from p2p_hloc.eval.poses import qvec_to_matrix
    from p2p_hloc.io import parse_pairs, to_hloc_coords, write_keypoints, write_matches
    from p2p_hloc.localize_inloc import read_xyz, scan_alignment

    rng = np.random.default_rng(0)
    gt = read_poses(scene["ground_truth"])
    f, size = scene["focal_length"], np.array([480, 360])
    keypoints, pairs = {}, []
    for q, r in parse_pairs(scene["pairs_query"]):
        xyz = read_xyz(scene["dataset"] / (r + ".mat"))
        i, j = np.nonzero(np.isfinite(xyz).all(-1))
        pick = rng.choice(len(i), 150, replace=False)
        i, j = i[pick], j[pick]
        T = scan_alignment(scene["dataset"], r)
        world = xyz[i, j] @ T[:3, :3].T + T[:3, 3]
        qvec, t = gt[Path(q).name]
        cam = world @ qvec_to_matrix(qvec).T + t
        uv = f * cam[:, :2] / cam[:, 2:] + size / 2
        keep = (cam[:, 2] > 0) & np.all((uv > 1) & (uv < size - 1), -1)
        kr = np.stack([j, i], -1)[keep] + 0.5  # pixel centres, corner convention
        start = {n: len(keypoints.get(n, [])) for n in (q, r)}
        for name, kp in ((q, uv[keep]), (r, kr)):
            keypoints[name] = np.concatenate(
                [keypoints.get(name, np.zeros((0, 2))), kp]
            )
        pairs.append((q, r, start[q], start[r], uv[keep], world[keep]))
    root = scene["root"] / "exact"
    root.mkdir()
    features, matches = root / "features.h5", root / "matches.h5"
    for name, kp in keypoints.items():
        write_keypoints(features, name, to_hloc_coords(kp), (480, 360))
    for q, r, sq, sr, uv, _ in pairs:
        m0 = -np.ones(len(keypoints[q]), int)
        m0[sq : sq + len(uv)] = sr + np.arange(len(uv))
        write_matches(matches, q, r, m0, (m0 > -1).astype(float))
    return dict(features=features, matches=matches, pairs=pairs, root=root)


def test_exact_correspondences(scene, exact):
    """The 2D-3D correspondences built from hloc files: query keypoints at
    their true projections and cutout keypoints at their true 3D points. A
    0.5 px slip, of either side's hloc->corner conversion or of the XYZcut
    lookup, is 500 times the 1e-3 px tolerance and about 4000 times the
    1e-6 m one (half a pixel is 4-9 mm on the walls here)."""
    from p2p_hloc.localize_inloc import Cutouts, h5_pairs

    pair_fn, cutouts = h5_pairs(exact["features"], exact["matches"]), Cutouts(
        scene["dataset"]
    )
    for q, r, _, _, uv, world in exact["pairs"]:
        kq, kr = pair_fn(q, r)
        np.testing.assert_allclose(kq, uv, atol=1e-3)
        points, valid = cutouts.points3D(r, kr)
        assert valid.all() and len(points) > 50
        np.testing.assert_allclose(points, world, atol=1e-6)


def test_exact_poses(scene, exact):
    """From exact correspondences the poses are right to numerical noise
    (measured: 0.03-0.08 um, 0 deg); the thresholds allow 100 times that
    (noise differs between builds) and are still far below what a 0.5 px
    slip of either conversion gives (millimetres)."""
    results = run(
        scene,
        "results_exact.txt",
        features=exact["features"],
        matches=exact["matches"],
    )
    report = evaluate(results, scene["ground_truth"], THRESHOLDS["inloc"])
    assert report["num_queries"] == 3
    for e in report["errors"].values():
        assert e["translation_m"] < 1e-5 and e["rotation_deg"] < 1e-4, e
