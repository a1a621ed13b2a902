import json

import pytest

from p2p_hloc.weights import WeightsNotFoundError
from pipelines import demo


def test_demo_with_sift(tmp_path):
    """The README's demo: every query within (0.25 m, 2 deg) with SIFT proposals."""
    report = demo.main(tmp_path, proposals="sift", num_queries=3)
    assert len((tmp_path / "results.txt").read_text().splitlines()) == 3
    errors = json.loads((tmp_path / "pose_errors.json").read_text())["errors"]
    assert len(errors) == 3
    for e in errors.values():
        assert e["translation_m"] < 0.25 and e["rotation_deg"] < 2, errors
    assert report["recall"]["0.25m,2.0deg"] == 1.0
    assert (tmp_path / "matches.png").stat().st_size > 0


def test_demo_without_weights_says_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("P2P_HLOC_HOME", str(tmp_path / "empty"))
    with pytest.raises(WeightsNotFoundError, match="p2p-hloc weights download"):
        demo.main(tmp_path / "out")
    assert not (tmp_path / "out" / "results.txt").exists()


def test_aachen_v1_1_pipeline_on_a_generated_scene(tmp_path):
    """The v1.1 pipeline on a scene laid out like the dataset (SIFT conf)."""
    from p2p_hloc.eval.poses import THRESHOLDS, evaluate
    from p2p_hloc.synthetic import generate_scene
    from pipelines import aachen_v1_1

    scene = generate_scene(tmp_path / "scene", num_queries=2)
    dataset, pairs = tmp_path / "aachen_v1.1", tmp_path / "pairs"
    (dataset / "3D-models").mkdir(parents=True)
    (dataset / "queries").mkdir()
    pairs.mkdir()
    scene["images"].rename(dataset / "images_upright")
    scene["reference"].rename(dataset / "3D-models/aachen_v_1_1")
    scene["queries"].rename(dataset / "queries/day_time_queries_with_intrinsics.txt")
    scene["pairs_db"].rename(pairs / "pairs-db-covis20.txt")
    scene["pairs_query"].rename(pairs / "pairs-query-netvlad50.txt")
    results = aachen_v1_1.main(dataset, pairs, tmp_path / "outputs", conf="sift")
    assert results.name == "Aachen-v1.1_p2p_sift_netvlad50.txt"
    report = evaluate(results, scene["ground_truth"], THRESHOLDS["aachen"])
    assert report["recall"]["0.25m,2.0deg"] == 1.0, report["errors"]


def test_inloc_pipeline_on_a_generated_scene(tmp_path):
    from p2p_hloc.eval.poses import THRESHOLDS, evaluate
    from p2p_hloc.synthetic import generate_inloc_scene
    from pipelines import inloc

    scene = generate_inloc_scene(tmp_path / "inloc", num_queries=2)
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    scene["pairs_query"].rename(pairs / "pairs-query-netvlad40-temporal.txt")
    results = inloc.main(
        scene["dataset"],
        pairs,
        tmp_path / "outputs",
        conf="sift",
        focal_length=scene["focal_length"],  # 480 px wide queries, not 4032
    )
    report = evaluate(results, scene["ground_truth"], THRESHOLDS["inloc"])
    assert report["recall"]["0.25m,10.0deg"] == 1.0, report["errors"]
