"""p2p_hloc.match_dense: hloc's signature, file-name rules and two passes."""

from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers_localization import assert_hloc_signature

from p2p_hloc import match_dense, match_pairs
from p2p_hloc.confs import confs
from p2p_hloc.console import InputError, run_cli
from p2p_hloc.io import list_h5_names, names_to_pair, write_pairs

HLOC_SIGNATURE = (  # hloc_interfaces.md, section 2.5
    "conf, pairs, image_dir, export_dir=None, matches=None, features=None, "
    "features_ref=None, max_kps=8192, overwrite=False"
)
CONF = confs["sift"]
DB = ["db/1040.jpg", "db/1043.jpg", "db/1046.jpg", "db/1049.jpg"]


def test_signature_is_hlocs():
    assert_hloc_signature(match_dense.main, HLOC_SIGNATURE)


def test_output_names_follow_hloc(tmp_path):
    pairs = Path("pairs-db-covis20.txt")
    out = CONF["output"]
    assert match_dense.output_paths(CONF, pairs, tmp_path, None, None) == (
        tmp_path / f"feats_{out}.h5",
        tmp_path / f"{out}_pairs-db-covis20.h5",
    )
    assert match_dense.output_paths(CONF, pairs, tmp_path, "m.h5", "x-") == (
        tmp_path / f"x-{out}.h5",
        Path("m.h5"),
    )
    f, m = tmp_path / "f.h5", tmp_path / "m.h5"
    assert match_dense.output_paths(CONF, pairs, None, m, f) == (f, m)
    with pytest.raises(InputError, match="both features and matches as Path"):
        match_dense.output_paths(CONF, pairs, tmp_path, None, f)
    with pytest.raises(InputError, match="export_dir"):
        match_dense.output_paths(CONF, pairs, None, m, "feats_")
    assert match_dense.reference_list(None) == []
    assert match_dense.reference_list(f) == [f]
    assert match_dense.reference_list([f, m]) == [f, m]
    with pytest.raises(TypeError, match="features_ref"):
        match_dense.reference_list("f.h5")


def read_keypoints(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        return {n: f[n]["keypoints"][()] for n in list_h5_names(path)}


@pytest.fixture(scope="module")
def pairs(aachen_v1_1_layout, tmp_path_factory):
    root = tmp_path_factory.mktemp("match_dense")
    query = "query/day/milestone/2010-10-30_17-47-25.jpg"
    sfm = write_pairs(
        root / "pairs-db.txt", [(a, b) for i, a in enumerate(DB) for b in DB[i + 1 :]]
    )
    loc = write_pairs(root / "pairs-loc.txt", [(query, n) for n in DB[:3]])
    return dict(
        root=root,
        sfm=sfm,
        loc=loc,
        query=query,
        images=aachen_v1_1_layout["dataset"] / "images_upright",
    )


def test_two_passes_in_hlocs_order(pairs):
    """Mapping, then localization with the mapping files, every argument
    positional in hloc's order: the files are those of match_pairs, the
    database keypoints stay, the loc pairs join the mapping matches file."""
    out = pairs["root"] / "hloc_order"
    features, sfm_matches = match_dense.main(
        CONF, pairs["sfm"], pairs["images"], out, None, None, None, 8192, False
    )
    assert features == out / f"feats_{CONF['output']}.h5"
    assert sfm_matches == out / f"{CONF['output']}_pairs-db.h5"
    ref = match_pairs.main(
        CONF, pairs["sfm"], pairs["images"], pairs["root"] / "ref", max_kps=8192
    )
    mapping = read_keypoints(features)
    expected = read_keypoints(ref[0])
    assert sorted(mapping) == sorted(DB)
    for name in DB:
        np.testing.assert_array_equal(mapping[name], expected[name])

    result = match_dense.main(
        CONF,
        pairs["loc"],
        pairs["images"],
        out,
        sfm_matches,
        features,
        None,
        None,
        False,
    )
    assert result == (features, sfm_matches)
    after = read_keypoints(features)
    assert sorted(after) == sorted(DB + [pairs["query"]])
    for name in DB:
        np.testing.assert_array_equal(after[name], mapping[name])
    keys = list_h5_names(sfm_matches)
    assert names_to_pair(pairs["query"], DB[0]) in keys
    assert names_to_pair(DB[0], DB[1]) in keys
    with h5py.File(sfm_matches, "r") as f:
        m = f[names_to_pair(pairs["query"], DB[0])]["matches0"][()]
    assert len(m) == len(after[pairs["query"]]) and (m >= 0).sum() > 20


def test_max_kps_and_cli(pairs):
    out = pairs["root"] / "cli"
    argv = ["--conf", "sift", "--pairs", str(pairs["sfm"])]
    argv += ["--image_dir", str(pairs["images"]), "--export_dir", str(out)]
    assert (
        run_cli(match_dense.parser(), match_dense.run, argv + ["--max_kps", "40"]) == 0
    )
    kps = read_keypoints(out / f"feats_{CONF['output']}.h5")
    assert sorted(kps) == sorted(DB) and all(len(k) == 40 for k in kps.values())
    features = out / "query.h5"  # a path given as --features (it ends with .h5)
    argv = ["--conf", "sift", "--pairs", str(pairs["loc"]), "--features"]
    argv += [str(features), "--matches", str(out / "loc.h5")]
    argv += ["--image_dir", str(pairs["images"]), "--max_kps", "none"]
    assert run_cli(match_dense.parser(), match_dense.run, argv) == 0
    assert len(read_keypoints(features)[pairs["query"]]) > 40
    bad = argv[:2] + ["--pairs", str(pairs["loc"]), "--image_dir", "x"]
    assert run_cli(match_dense.parser(), match_dense.run, bad) == 2  # no export_dir
