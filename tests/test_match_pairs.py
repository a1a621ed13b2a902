"""match_pairs on real files: homography warps of a scikit-image photo."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import skimage.data

from p2p_hloc.confs import confs
from p2p_hloc.io import PairsError, get_matches, names_to_pair
from p2p_hloc.io.h5 import H5Error
from p2p_hloc.io.raw import RawMatches, RawMatchesError
from p2p_hloc.match_pairs import main
from p2p_hloc.preprocess import ImageError

REPO = Path(__file__).resolve().parents[1]
SIZE = (256, 192)  # W, H of the warped images
HOMOGRAPHIES = [
    np.eye(3),
    np.array([[1.0, 0.05, 10], [0.02, 1.0, -5], [0, 0, 1]]),
    np.array([[0.95, -0.05, 20], [0.05, 0.95, 0], [1e-4, 0, 1]]),
    np.array([[1.05, 0.0, -12], [0.0, 1.02, 6], [0, 1e-4, 1]]),
]


def make_scene(root: Path, n: int = 3, size=SIZE) -> list:
    """``n`` warps of one photo under ``root/scene/``; returns their names.
    ``HOMOGRAPHIES[i]`` maps image 0 to image i (integer pixel centres)."""
    photo = cv2.resize(skimage.data.astronaut()[..., ::-1], (360, 360))
    (root / "scene").mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        name = f"scene/im{i}.png"
        cv2.imwrite(str(root / name), cv2.warpPerspective(photo, HOMOGRAPHIES[i], size))
        names.append(name)
    return names


def write_pairs(path: Path, lines) -> Path:
    path.write_text(
        "\n".join(" ".join(p) if isinstance(p, tuple) else p for p in lines)
    )
    return path


def check_hloc_files(features: Path, matches: Path, pairs, image_dir: Path) -> None:
    """hloc's reading rules, localize_inloc's included."""
    with h5py.File(features, "r") as ff, h5py.File(matches, "r") as fm:
        for q, r in pairs:
            for name in (q, r):
                g = ff[name]
                kps = g["keypoints"][()]
                assert kps.dtype == np.float32 and kps.ndim == 2 and kps.shape[1] == 2
                assert g["scores"].shape == (len(kps),)
                w, h = g["image_size"][()]
                assert (w, h) == cv2.imread(str(image_dir / name)).shape[1::-1]
                # strictly inside: localize_inloc's interpolate_scan asserts it
                assert np.all((kps > 0) & (kps < [w - 1, h - 1]))
            pair = fm[names_to_pair(q, r)]  # query first, '/' separator
            m0 = pair["matches0"][()]
            kpq, kpr = ff[q]["keypoints"][()], ff[r]["keypoints"][()]
            assert m0.dtype == np.int32 and m0.shape == (len(kpq),)
            assert pair["matching_scores0"].shape == (len(kpq),)
            valid = m0 > -1
            assert kpq[valid].shape[0] == valid.sum()  # localize_inloc indexing
            assert np.all(m0[valid] < len(kpr))
            assert len(np.unique(m0[valid])) == valid.sum()  # one-to-one
    for q, r in pairs:
        idx, scores = get_matches(matches, r, q)  # reversed lookup works too
        assert idx.shape[1] == 2 and len(scores) == len(idx)


def project(H: np.ndarray, xy: np.ndarray) -> np.ndarray:
    p = np.c_[xy, np.ones(len(xy))] @ H.T
    return p[:, :2] / p[:, 2:]


def pair_error(features: Path, matches: Path, n0: str, n1: str, i0: int, i1: int):
    H = HOMOGRAPHIES[i1] @ np.linalg.inv(HOMOGRAPHIES[i0])
    with h5py.File(features, "r") as f:
        k0, k1 = f[n0]["keypoints"][()], f[n1]["keypoints"][()]
    idx, _ = get_matches(matches, n0, n1)
    return np.linalg.norm(project(H, k0[idx[:, 0]]) - k1[idx[:, 1]], axis=1)


@pytest.fixture(scope="module")
def sift_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("sift")
    names = make_scene(root / "images", 3)
    pairs = [(names[0], names[1]), (names[0], names[2]), (names[1], names[2])]
    pairs_file = write_pairs(root / "pairs.txt", pairs)
    feats, matches = main(confs["sift"], pairs_file, root / "images", root / "out")
    return root, names, pairs, feats, matches


def test_sift_files_follow_hloc_rules(sift_run):
    root, names, pairs, feats, matches = sift_run
    assert feats.name == "feats_matches-sift-r1600-n4096.h5"
    assert matches.name == "matches-sift-r1600-n4096_pairs.h5"
    check_hloc_files(feats, matches, pairs, root / "images")
    assert not (matches.parent / (matches.name + ".raw")).exists()
    # coordinates: hloc's integer centres fit cv2's homographies
    for (n0, n1), (i0, i1) in zip(pairs, [(0, 1), (0, 2), (1, 2)]):
        err = pair_error(feats, matches, n0, n1, i0, i1)
        assert len(err) > 50 and np.median(err) < 1.0


def test_point_seen_in_three_images_is_one_keypoint(sift_run):
    """Keypoints are shared: the track a->b (0-1), a->c (0-2) closes with
    b->c in pair 1-2, and each keypoint lies on the same plane point."""
    root, names, pairs, feats, matches = sift_run
    m = {p: dict(get_matches(matches, *p)[0]) for p in pairs}
    tracks = [
        (a, b, m[pairs[1]][a])
        for a, b in m[pairs[0]].items()
        if a in m[pairs[1]] and m[pairs[2]].get(b) == m[pairs[1]][a]
    ]
    assert len(tracks) > 30
    with h5py.File(feats, "r") as f:
        kps = [f[n]["keypoints"][()] for n in names]
    tracks = np.array(tracks)
    for i in (1, 2):
        err = np.linalg.norm(
            project(HOMOGRAPHIES[i], kps[0][tracks[:, 0]]) - kps[i][tracks[:, i]],
            axis=1,
        )
        assert np.median(err) < 1.0
    # no two keypoints of an image closer than a pixel: duplicates were merged
    for k in kps:
        d = np.linalg.norm(k[:, None] - k[None], axis=-1) + np.eye(len(k)) * 1e3
        assert d.min() >= 1.0


def test_pairs_file_order_does_not_matter(sift_run, tmp_path):
    root, names, pairs, feats, matches = sift_run
    shuffled = write_pairs(tmp_path / "pairs.txt", [pairs[2], pairs[0], pairs[1]])
    f, m = main(confs["sift"], shuffled, root / "images", tmp_path)
    for a, b in ((f, feats), (m, matches)):
        a, b = h5_content(a), h5_content(b)
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_immatch_parity_option(sift_run, tmp_path):
    root, names, pairs, feats, matches = sift_run
    quant = {**confs["patch2pix_aachen_immatch"]["quantization"], "min_score": 0.1}
    conf = {**confs["sift"], "output": "sift-immatch", "quantization": quant}
    f, m = main(conf, root / "pairs.txt", root / "images", tmp_path)
    check_hloc_files(f, m, pairs, root / "images")
    assert np.median(pair_error(f, m, *pairs[0], 0, 1)) < 1.0


def test_rerun_skips_done_pairs_in_either_direction(sift_run, caplog):
    root, names, pairs, feats, matches = sift_run
    before = (feats.read_bytes(), matches.read_bytes())
    reversed_pairs = write_pairs(
        root / "pairs-reversed.txt", [(b, a) for a, b in pairs]
    )
    main(confs["sift"], reversed_pairs, root / "images", root / "out", feats, matches)
    assert (feats.read_bytes(), matches.read_bytes()) == before


def test_patch2pix_end_to_end(tmp_path, golden_weights):
    names = make_scene(tmp_path / "images", 3)
    pairs = [(names[0], names[1]), (names[2], names[0])]
    pairs_file = write_pairs(tmp_path / "pairs.txt", pairs)
    conf = {
        **confs["patch2pix"],
        "model": {**confs["patch2pix"]["model"], "threshold": 0.0},
    }
    t = time.time()
    feats, matches = main(
        conf, pairs_file, tmp_path / "images", tmp_path / "out", weights=golden_weights
    )
    print(f"patch2pix: {(time.time() - t) / len(pairs):.1f} s per pair")
    check_hloc_files(feats, matches, pairs, tmp_path / "images")
    with h5py.File(matches, "r") as f:
        assert len(f[names_to_pair(*pairs[0])]["keypoints0"]) > 0  # raw kept, as hloc


def test_localization_mode_keeps_mapping_keypoints(tmp_path):
    names = make_scene(tmp_path / "images", 4)
    images, out = tmp_path / "images", tmp_path / "out"
    sfm = write_pairs(
        tmp_path / "pairs-db.txt", [(names[0], names[1]), (names[1], names[2])]
    )
    feats, matches = main(confs["sift"], sfm, images, out)
    with h5py.File(feats, "r") as f:
        db = {n: f[n]["keypoints"][()] for n in names[:3]}
    loc = write_pairs(
        tmp_path / "pairs-loc.txt", [(names[3], names[0]), (names[3], names[2])]
    )
    main(confs["sift"], loc, images, out, features=feats, matches=matches)
    pairs = [(names[3], names[0]), (names[3], names[2]), (names[0], names[1])]
    check_hloc_files(feats, matches, pairs, images)
    with h5py.File(feats, "r") as f:
        for n, k in db.items():
            np.testing.assert_array_equal(f[n]["keypoints"][()], k)
    assert np.median(pair_error(feats, matches, names[3], names[0], 3, 0)) < 1.0
    # fixed references from another file (hloc's features_ref), copied over
    feats2, matches2 = main(
        confs["sift"], loc, images, tmp_path / "out2", features_ref=feats
    )
    with h5py.File(feats2, "r") as f:
        np.testing.assert_array_equal(f[names[0]]["keypoints"][()], db[names[0]])
    check_hloc_files(feats2, matches2, pairs[:2], images)


def test_refine_hloc_file_proposals(sift_run, golden_weights, tmp_path):
    root, names, pairs, feats, matches = sift_run
    pairs_file = write_pairs(tmp_path / "pairs.txt", pairs[:1])
    conf = confs["patch2pix_refine"]
    conf = {**conf, "refine": {**conf["refine"], "threshold": 0.0}}
    f, m = main(
        conf,
        pairs_file,
        root / "images",
        tmp_path,
        weights=golden_weights,
        proposals=(feats, matches),
    )
    check_hloc_files(f, m, pairs[:1], root / "images")
    with h5py.File(m, "r") as h:
        n_raw = len(h[names_to_pair(*pairs[0])]["scores"])
    assert n_raw == len(get_matches(matches, *pairs[0])[0])  # one per proposal


def h5_content(path: Path) -> dict:
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda k, v: out.update({k: v[()]}) if isinstance(v, h5py.Dataset) else None
        )
    return out


NCNET = {**confs["ncnet"], "model": {**confs["ncnet"]["model"], "threshold": 0.0}}
RUN = """
import sys
from pathlib import Path
from p2p_hloc.confs import confs
from p2p_hloc.match_pairs import main
c = confs["ncnet"]
c = {**c, "model": {**c["model"], "threshold": 0.0}}
main(c, Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), weights=Path(sys.argv[4]),
     num_workers=0)
"""


def run(args, **kw):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", RUN, *map(str, args)], env=env, **kw)


def test_resume_after_sigkill(tmp_path, golden_weights):
    names = make_scene(tmp_path / "images", 3)
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    pairs_file = write_pairs(tmp_path / "pairs.txt", pairs)
    args = [pairs_file, tmp_path / "images", tmp_path / "killed", golden_weights]
    proc = run(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    raw = tmp_path / "killed" / "matches-ncnet-r1024-t0.9_pairs.h5.raw"
    t0 = time.time()
    while not any(raw.glob("*/*.npz")) and proc.poll() is None:
        assert time.time() - t0 < 60
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list(raw.glob("*/*.npz")))
    assert 1 <= done < len(pairs), "the run was not killed mid-way"
    assert not (tmp_path / "killed" / "feats_matches-ncnet-r1024-t0.9.h5").exists()
    assert run(args).wait() == 0
    main(
        NCNET,
        pairs_file,
        tmp_path / "images",
        tmp_path / "clean",
        weights=golden_weights,
    )
    for name in (
        "feats_matches-ncnet-r1024-t0.9.h5",
        "matches-ncnet-r1024-t0.9_pairs.h5",
    ):
        a, b = h5_content(tmp_path / "killed" / name), h5_content(
            tmp_path / "clean" / name
        )
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert not raw.exists()


def test_corrupt_files_are_reported_by_name(sift_run, tmp_path):
    root, names, pairs, feats, matches = sift_run
    pairs_file = write_pairs(tmp_path / "pairs.txt", pairs)
    bad = tmp_path / "matches.h5"
    bad.write_bytes(matches.read_bytes()[: len(matches.read_bytes()) // 2])  # truncated
    with pytest.raises(H5Error, match=str(bad)):
        main(confs["sift"], pairs_file, root / "images", tmp_path, matches=bad)
    bad.write_bytes(b"not an h5 file")
    with pytest.raises(H5Error, match=str(bad)):
        main(confs["sift"], pairs_file, root / "images", tmp_path, matches=bad)
    # a corrupt raw pair file (not written by us: ours are atomic)
    m = tmp_path / "m.h5"
    raw = RawMatches(m.with_name(m.name + ".raw"))
    raw.path(*pairs[0]).parent.mkdir(parents=True)
    raw.path(*pairs[0]).write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(RawMatchesError, match=raw.path(*pairs[0]).name):
        main(confs["sift"], pairs_file, root / "images", tmp_path, matches=m)


def test_bad_pairs_files(sift_run, tmp_path):
    root, names, pairs, feats, matches = sift_run
    images, out = root / "images", tmp_path / "out"
    # blank lines, comments, duplicates (both directions), self-pairs: handled
    messy = write_pairs(
        tmp_path / "messy.txt",
        [
            "",
            "# comment",
            pairs[0],
            "  ",
            (pairs[0][1], pairs[0][0]),
            pairs[0],
            (names[2], names[2]),
        ],
    )
    f, m = main(confs["sift"], messy, images, out)
    with h5py.File(m, "r") as h:
        assert (
            sum(
                isinstance(v, h5py.Dataset)
                for v in h[names_to_pair(*pairs[0])].values()
            )
            == 5
        )
        assert len(h) == 1 and len(h[pairs[0][0].replace("/", "-")]) == 1
    before = (f.read_bytes(), m.read_bytes())
    # names with spaces: hloc's format cannot hold them
    spaced = write_pairs(
        tmp_path / "spaced.txt", [pairs[0], "scene/my image.png scene/im0.png"]
    )
    with pytest.raises(PairsError, match=r"spaced.txt:2"):
        main(confs["sift"], spaced, images, out, f, m)
    # missing image: named with its pair, nothing runs
    missing = write_pairs(
        tmp_path / "missing.txt", [pairs[1], (names[0], "scene/nope.png")]
    )
    with pytest.raises(ImageError, match=r"nope.png"):
        main(confs["sift"], missing, images, out, f, m)
    # unreadable image: named with its pair; existing files untouched
    shutil.copytree(images, tmp_path / "images")
    (tmp_path / "images" / "scene" / "im9.png").write_bytes(b"\x89PNG broken")
    broken = write_pairs(
        tmp_path / "broken.txt", [pairs[1], (names[0], "scene/im9.png")]
    )
    with pytest.raises(ImageError, match=r"im9.png"):
        main(confs["sift"], broken, tmp_path / "images", out, f, m)
    assert (f.read_bytes(), m.read_bytes()) == before
    # the pair matched before the error is kept for the next run
    assert len(list((m.parent / (m.name + ".raw")).glob("*/*.npz"))) == 1


def test_cli(sift_run, tmp_path):
    root, names, pairs, feats, matches = sift_run
    cmd = [sys.executable, "-m", "p2p_hloc.match_pairs", "--conf", "sift"]
    cmd += ["--pairs", root / "pairs.txt", "--image_dir", root / "images"]
    cmd += ["--export_dir", tmp_path, "--matches", tmp_path / "m.h5"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run(list(map(str, cmd)), env=env, check=True, capture_output=True)
    check_hloc_files(
        tmp_path / "feats_matches-sift-r1600-n4096.h5",
        tmp_path / "m.h5",
        pairs,
        root / "images",
    )


def test_with_precision():
    from p2p_hloc.match_pairs import with_precision

    c = with_precision(confs["patch2pix"], "bf16")
    assert c["model"]["precision"] == "bf16" and c["output"].endswith("-bf16")
    assert "precision" not in confs["patch2pix"]["model"]  # a copy
    r = with_precision(confs["sift_patch2pix"], "fp16")
    assert r["refine"]["precision"] == "fp16" and "precision" not in r["model"]
    assert with_precision(confs["sift"], "fp32") is confs["sift"]
    with pytest.raises(ValueError, match="no Patch2Pix"):
        with_precision(confs["sift"], "bf16")


def test_kill_between_final_renames(tmp_path, monkeypatch):
    """A run stopped after renaming ``features`` but before ``matches``
    rebuilds the new images on re-run instead of treating them as fixed."""
    names = make_scene(tmp_path / "images", 3)
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    pairs_file = write_pairs(tmp_path / "pairs.txt", pairs)
    clean = main(confs["sift"], pairs_file, tmp_path / "images", tmp_path / "clean")
    real_replace = Path.replace

    def replace_once(self, target):
        if ".h5.tmp-" in str(self) and "_pairs.h5" in str(self):
            raise KeyboardInterrupt  # the process dies before the second rename
        return real_replace(self, target)

    monkeypatch.setattr(Path, "replace", replace_once)
    with pytest.raises(KeyboardInterrupt):
        main(confs["sift"], pairs_file, tmp_path / "images", tmp_path / "killed")
    monkeypatch.setattr(Path, "replace", real_replace)
    assert clean[0].name in os.listdir(tmp_path / "killed")
    assert clean[1].name not in os.listdir(tmp_path / "killed")
    again = main(confs["sift"], pairs_file, tmp_path / "images", tmp_path / "killed")
    for a, b in zip(clean, again):
        ca, cb = h5_content(a), h5_content(b)
        assert ca.keys() == cb.keys()
        for k in ca:
            np.testing.assert_array_equal(ca[k], cb[k])


def test_cache_order_loads_each_image_once_for_shared_db():
    """2 queries x 20 db images: in file order every db image is loaded once
    per query; in cache order every image is loaded once."""
    from p2p_hloc.match_pairs import cache_order, load_order

    pairs = [(f"q{i}", f"db{j:02d}") for i in range(2) for j in range(20)]
    assert len(load_order(sorted(pairs), 4)) == 42
    order = cache_order(pairs, 4)
    assert sorted(order) == sorted(pairs)  # a permutation, orientation kept
    assert len(load_order(order, 4)) == 22
    assert order == cache_order(list(reversed(pairs)), 4)  # deterministic
    # a chain with no reuse at all keeps working
    chain = [(f"i{k}", f"i{k + 1}") for k in range(10)] + [("i3", "i3")]
    assert sorted(cache_order(chain, 2)) == sorted(chain)
