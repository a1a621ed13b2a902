import pickle
import shutil

import numpy as np
import pycolmap
import pytest
from helpers_localization import sift_h5

from p2p_hloc import localize_sfm, triangulation
from p2p_hloc.eval.poses import THRESHOLDS, evaluate, read_poses
from p2p_hloc.io import parse_pairs, write_matches, write_pairs


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from p2p_hloc.synthetic import generate_scene

    root = tmp_path_factory.mktemp("loc")
    scene = generate_scene(root / "scene", num_queries=4)
    feats, matches = root / "feats.h5", root / "matches.h5"
    sift_h5(scene["images"], [scene["pairs_db"], scene["pairs_query"]], feats, matches)
    sfm = root / "sfm"
    triangulation.main(
        sfm,
        scene["reference"],
        scene["images"],
        scene["pairs_db"],
        feats,
        matches,
    )
    return dict(scene, root=root, features=feats, matches=matches, sfm=sfm)


def localize(data, name, retrieval=None, queries=None, **kw):
    return localize_sfm.main(
        data["sfm"],
        queries or data["queries"],
        retrieval or data["pairs_query"],
        data["features"],
        data["matches"],
        data["root"] / name,
        **kw,
    )


@pytest.mark.parametrize("clustering", [False, True])
def test_all_queries_localized(data, clustering):
    results = localize(
        data, f"results_{clustering}.txt", covisibility_clustering=clustering
    )
    lines = results.read_text().splitlines()
    assert len(lines) == 4
    for line in lines:
        fields = line.split()
        assert len(fields) == 8 and "/" not in fields[0]
        assert abs(np.linalg.norm(np.array(fields[1:5], float)) - 1) < 1e-6
    report = evaluate(results, data["ground_truth"], THRESHOLDS["aachen"])
    assert report["recall"]["0.25m,2.0deg"] == 1.0, report["errors"]
    with open(f"{results}_logs.pkl", "rb") as f:
        log = pickle.load(f)
    assert {v["status"] for v in log["loc"].values()} == {"localized"}


def test_existing_results_are_kept(data, logs):
    path = localize(data, "results_False.txt")
    assert "skipping" in logs.text and path.exists()


def test_bad_input_and_fallback(data, logs):
    """A query absent from retrieval gets no line; a retrieved image absent from
    the model and a pair without matches are skipped; a query whose PnP fails
    gets the pose of its first retrieved image."""
    pairs = parse_pairs(data["pairs_query"])
    queries = sorted({q for q, _ in pairs})
    absent, failing, other = queries[0], queries[1], queries[2]
    unmatched = next(
        f"db/{i:03d}.png" for i in range(8) if (other, f"db/{i:03d}.png") not in pairs
    )
    pairs = [p for p in pairs if p[0] != absent]
    pairs += [(other, "db/not_in_model.png"), (other, unmatched)]
    retrieval = write_pairs(data["root"] / "bad_pairs.txt", pairs)
    matches = data["root"] / "matches_bad.h5"
    shutil.copy(data["matches"], matches)
    for q, r in pairs:
        if q == failing:  # no match survives: no 2D-3D correspondence
            write_matches(matches, q, r, -np.ones(5, int), np.zeros(5))
    results = localize_sfm.main(
        data["sfm"],
        data["queries"],
        retrieval,
        data["features"],
        matches,
        data["root"] / "results_bad.txt",
    )
    poses = read_poses(results)
    assert len(poses) == 3 and absent.split("/")[-1] not in poses
    for message in (
        "no retrieved image in the model",
        "not in the model",
        "No matches for pair",
        "PnP failed",
    ):
        assert message in logs.text
    first = next(r for q, r in pairs if q == failing)
    expected = (
        pycolmap.Reconstruction(data["sfm"])
        .find_image_with_name(first)
        .cam_from_world()
    )
    np.testing.assert_allclose(poses[failing.split("/")[-1]][1], expected.translation)
    with open(f"{results}_logs.pkl", "rb") as f:
        assert pickle.load(f)["loc"][failing]["status"] == "fallback"
