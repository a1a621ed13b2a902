"""Registration into hloc, with the minimal ``hloc`` package of
helpers_hloc.py (fixture ``fake_hloc``): hloc is not installable here (not on
PyPI).
"""

import shutil

import numpy as np
import pytest
import torch
from conftest import align_rows, assert_same_h5, h5_content
from helpers_localization import sift_h5
from PIL import Image

from p2p_hloc import match_pairs, triangulation
from p2p_hloc.io import write_pairs


def test_register_and_run(fake_hloc, golden_dir, golden_weights):
    """hloc's model contract on golden pair A at its own size (640 x 480,
    sides multiples of 16: no resize): the official matches, both sides
    shifted to hloc's integer pixel centres."""
    from p2p_hloc.hloc_plugin import register

    register()
    import hloc.matchers
    from hloc import match_dense
    from hloc.utils.base_model import dynamic_load

    assert {
        "loftr",
        "patch2pix",
        "patch2pix_aachen",
        "patch2pix_inloc",
        "ncnet",
    } <= set(match_dense.confs)
    conf = match_dense.confs["patch2pix_aachen"]
    assert conf["preprocessing"]["grayscale"] is False
    assert conf["preprocessing"]["dfactor"] == 16
    assert conf["model"]["min_score"] == 0.25
    Model = dynamic_load(hloc.matchers, conf["model"]["name"])
    model = Model({**conf["model"], "weights": str(golden_weights)}).eval()

    # what hloc feeds: [1, C, H, W] in [0, 1], sides multiples of dfactor
    images = [
        np.asarray(Image.open(golden_dir / f"pairA_{i}.png").convert("RGB"))
        for i in (1, 2)
    ]
    x0, x1 = (
        torch.from_numpy(im).permute(2, 0, 1)[None].float() / 255 for im in images
    )
    with torch.no_grad():
        out = model({"image0": x0, "image1": x1})
    assert out["keypoints0"].shape == out["keypoints1"].shape
    assert out["keypoints0"].ndim == 2 and out["scores"].ndim == 1
    assert torch.all(out["scores"] >= 0.25)

    # the official matches (original pixels, corner convention; the golden
    # tests hold our own model to them) with score > 0.25
    golden = np.load(golden_dir / "outputs_A_default.npz")
    want = golden["final_thr025_matches"] - 0.5  # to hloc's integer centres
    assert len(want) > 300
    got = torch.cat([out["keypoints0"], out["keypoints1"]], 1).double().numpy()
    ip, _ = align_rows(got, want)
    assert len(ip) >= len(want) - 1
    # half a pixel on either side is far outside the tolerance
    for shift in ([0.5, 0, 0, 0], [0, 0, 0, -0.5], [0, 0.5, 0, 0], [0, 0, 0.5, 0]):
        with pytest.raises(AssertionError):
            align_rows(got + shift, want)

    # registering twice is harmless
    register()
    assert dynamic_load(hloc.matchers, "patch2pix") is Model


@pytest.fixture
def small_dataset(golden_dir, golden_weights, tmp_path):
    """Database images (golden pairs A and B), a query, mapping and loc pairs,
    and patch2pix_aachen with the golden weights at 160 px (small: the
    network runs 16 times)."""
    from p2p_hloc.hloc_plugin import hloc_conf

    images = tmp_path / "images"
    (images / "db").mkdir(parents=True)
    (images / "query").mkdir()
    shutil.copy(golden_dir / "pairA_1.png", images / "db/a.png")
    shutil.copy(golden_dir / "pairA_2.png", images / "db/b.png")
    shutil.copy(golden_dir / "pairB_1.png", images / "db/c.png")
    shutil.copy(golden_dir / "pairB_2.png", images / "query/q.png")
    db = ["db/a.png", "db/b.png", "db/c.png"]
    conf = hloc_conf("patch2pix_aachen")
    conf["model"]["weights"] = str(golden_weights)
    conf["preprocessing"] = {**conf["preprocessing"], "resize_max": 160}
    return dict(
        images=images,
        conf=conf,
        sfm_pairs=write_pairs(
            tmp_path / "pairs-db.txt", [(db[0], db[1]), (db[1], db[2])]
        ),
        loc_pairs=write_pairs(
            tmp_path / "pairs-loc.txt", [("query/q.png", n) for n in db[:2]]
        ),
    )


def test_both_passes_use_our_quantization(fake_hloc, small_dataset, tmp_path):
    """hloc.match_dense.main with our conf, called as hloc's scripts call it
    (mapping; then localization with the mapping files and max_kps=None):
    the files are exactly those match_pairs writes for the same pairs, the
    database keypoints do not move in the second pass, and hloc's own
    aggregation is never reached."""
    from p2p_hloc.hloc_plugin import register

    register()
    from hloc import match_dense

    d, out = small_dataset, tmp_path / "hloc_outputs"
    features, sfm_matches = match_dense.main(
        d["conf"], d["sfm_pairs"], d["images"], out, max_kps=8192
    )
    assert features == out / f"feats_{d['conf']['output']}.h5"
    assert sfm_matches == out / f"{d['conf']['output']}_pairs-db.h5"
    ref = tmp_path / "match_pairs"
    ref_features, ref_matches = match_pairs.main(
        d["conf"], d["sfm_pairs"], d["images"], ref, max_kps=8192
    )
    assert_same_h5(features, ref_features)
    assert_same_h5(sfm_matches, ref_matches)
    mapping = h5_content(features)

    result = match_dense.main(
        d["conf"],
        d["loc_pairs"],
        d["images"],
        out,
        features=features,
        max_kps=None,
        matches=sfm_matches,
    )
    assert result == (features, sfm_matches)
    match_pairs.main(
        d["conf"],
        d["loc_pairs"],
        d["images"],
        ref,
        features=ref_features,
        matches=ref_matches,
    )
    assert_same_h5(features, ref_features)
    assert_same_h5(sfm_matches, ref_matches)
    after = h5_content(features)
    for name in ("db/a.png", "db/b.png", "db/c.png"):
        np.testing.assert_array_equal(
            after[f"{name}/keypoints"], mapping[f"{name}/keypoints"]
        )
    assert len(after["query/q.png/keypoints"]) > 10
    assert match_dense.calls == []


def test_other_confs_and_the_opt_in_keep_hlocs_code(fake_hloc, tmp_path):
    from p2p_hloc.hloc_plugin import register

    register()
    from hloc import match_dense

    pairs = tmp_path / "pairs-x.txt"
    result = match_dense.main(match_dense.confs["loftr"], pairs, tmp_path, tmp_path)
    assert result == (
        tmp_path / "feats_matches-loftr.h5",
        tmp_path / "matches-loftr_pairs-x.h5",
    )
    assert match_dense.calls == [("matches-loftr", result[1], result[0], 8192)]

    register(hloc_aggregation=True)  # hloc's grid for Patch2Pix matches
    conf = match_dense.confs["patch2pix"]
    features, matches = match_dense.main(conf, pairs, tmp_path, tmp_path, max_kps=None)
    assert match_dense.calls[-1] == (conf["output"], matches, features, None)


def test_triangulation_on_pycolmap_4(fake_hloc, aachen_v1_1_layout, tmp_path, logs):
    """hloc's triangulation gives no 3D point on pycolmap 4.x without an
    error: register() says so, logs the empty model as an error and, opted
    in, puts p2p_hloc.triangulation in its place."""
    from p2p_hloc.hloc_plugin import register

    dataset = aachen_v1_1_layout["dataset"]
    images, pairs = dataset / "images_upright", tmp_path / "pairs.txt"
    shutil.copy(aachen_v1_1_layout["pairs"] / "pairs-db-covis20.txt", pairs)
    features, matches = sift_h5(
        images, [pairs], tmp_path / "feats.h5", tmp_path / "matches.h5"
    )
    args = (dataset / "3D-models/aachen_v_1_1", images, pairs, features, matches)
    register()
    import hloc.triangulation

    assert "p2p_hloc.triangulation" in logs.text
    rec = hloc.triangulation.main(tmp_path / "hloc_sfm", *args)
    assert rec.num_points3D() == 0
    assert "hloc.triangulation produced no 3D points" in logs.text

    register(fix_triangulation=True)
    assert hloc.triangulation.main is triangulation.main
    rec = hloc.triangulation.main(tmp_path / "fixed_sfm", *args)
    assert rec.num_points3D() > 200
