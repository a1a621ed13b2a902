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
