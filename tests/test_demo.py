import json

import numpy as np
import pytest
from PIL import Image

from p2p_hloc.weights import WeightsNotFoundError
from pipelines import demo


def test_demo_with_sift(tmp_path):
    """The README's demo: every query within (0.25 m, 2 deg) with SIFT
    proposals; pictures of the two worst queries (largest pose error), the
    per-query table with the errors."""
    report = demo.main(tmp_path, proposals="sift", num_queries=3)
    assert len((tmp_path / "results.txt").read_text().splitlines()) == 3
    errors = json.loads((tmp_path / "pose_errors.json").read_text())["errors"]
    assert len(errors) == 3
    for e in errors.values():
        assert e["translation_m"] < 0.25 and e["rotation_deg"] < 2, errors
    assert report["recall"]["0.25m,2.0deg"] == 1.0
    worst = sorted(errors, key=lambda q: -errors[q]["translation_m"])[:2]
    pictures = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert pictures == [f"{i:02d}_query-{q[:-4]}.png" for i, q in enumerate(worst)]
    image = np.asarray(Image.open(tmp_path / "plots" / pictures[0]).convert("RGB"))
    green = (image[..., 1] > 150) & (image[..., 0] < 100) & (image[..., 2] < 100)
    red = (image[..., 0] > 180) & (image[..., 1] < 80) & (image[..., 2] < 80)
    assert green.sum() > 500 and red.sum() > 0  # inlier and other matches
    table = (tmp_path / "results.txt_queries.tsv").read_text().splitlines()
    assert len(table) == 4 and table[0].endswith("translation_m\trotation_deg")


def test_demo_without_weights_says_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("P2P_HLOC_HOME", str(tmp_path / "empty"))
    with pytest.raises(WeightsNotFoundError, match="p2p-hloc weights download"):
        demo.main(tmp_path / "out")
    assert not (tmp_path / "out" / "results.txt").exists()
