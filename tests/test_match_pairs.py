"""match_pairs on real files: homography warps of a scikit-image photo."""

import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import skimage.data
from conftest import h5_content

from p2p_hloc.confs import confs
from p2p_hloc.console import InputError
from p2p_hloc.io import (
    PairsError,
    canonical_name,
    get_matches,
    names_to_pair,
    parse_pairs,
)
from p2p_hloc.io.h5 import H5Error
from p2p_hloc.io.lock import file_lock
from p2p_hloc.io.raw import RawMatches, RawMatchesError
from p2p_hloc.match_checks import raw_provenance
from p2p_hloc.match_pairs import main
from p2p_hloc.preprocess import ImageError

REPO = Path(__file__).resolve().parents[1]
SIFT_FILES = ("feats_matches-sift-r1600-n4096.h5", "matches-sift-r1600-n4096_pairs.h5")
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


def test_overwrite_keeps_shared_files(tmp_path):
    """``overwrite`` redoes this run's pairs only: the features file that
    another matches file uses keeps that file's images."""
    names = make_scene(tmp_path / "images", 4)
    images, out = tmp_path / "images", tmp_path / "out"
    db = write_pairs(tmp_path / "pairs-db.txt", [(names[0], names[1])])
    feats, m_db = main(confs["sift"], db, images, out)
    loc = write_pairs(tmp_path / "pairs-loc.txt", [(names[2], names[3])])
    main(confs["sift"], loc, images, out)
    _, m_loc = main(confs["sift"], loc, images, out, overwrite=True)
    check_hloc_files(feats, m_db, [(names[0], names[1])], images)
    check_hloc_files(feats, m_loc, [(names[2], names[3])], images)


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


NCNET = {**confs["ncnet"], "model": {**confs["ncnet"]["model"], "threshold": 0.0}}
# match_pairs in a process that kills itself (SIGKILL, as the OOM killer does)
# right after writing its N-th raw file: a point the test controls.
KILLED_RUN = """
import os, signal, sys
from pathlib import Path
from p2p_hloc.confs import confs
from p2p_hloc.io.raw import RawMatches
from p2p_hloc.match_pairs import main

pairs, images, out, kill_after = sys.argv[1:]
real, written = RawMatches.write, []

def write(self, *args):
    real(self, *args)
    written.append(1)
    if len(written) == int(kill_after):
        os.kill(os.getpid(), signal.SIGKILL)

RawMatches.write = write
main(confs["sift"], Path(pairs), Path(images), Path(out), num_workers=0)
"""


def run_killed(args, kill_after: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-c", KILLED_RUN, *map(str, args), str(kill_after)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True)


def test_resume_after_sigkill(tmp_path):
    """Killed after its first raw file, a run resumes the rest and writes
    the files of an uninterrupted run."""
    names = make_scene(tmp_path / "images", 3)
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    pairs_file = write_pairs(tmp_path / "pairs.txt", pairs)
    args = [pairs_file, tmp_path / "images", tmp_path / "killed"]
    assert run_killed(args, kill_after=1).returncode == -signal.SIGKILL
    feats, matches = (tmp_path / "killed" / n for n in SIFT_FILES)
    assert len(raw_files(matches)) == 1 and not feats.exists() and not matches.exists()
    resumed = run_killed(args, kill_after=0)
    assert resumed.returncode == 0, resumed.stderr
    assert "Matching 2 pairs (1 resumed)" in resumed.stderr
    main(confs["sift"], pairs_file, tmp_path / "images", tmp_path / "clean")
    for name in SIFT_FILES:
        a = h5_content(tmp_path / "killed" / name)
        b = h5_content(tmp_path / "clean" / name)
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert not (tmp_path / "killed" / (matches.name + ".raw")).exists()


def raw_files(matches: Path) -> list:
    return sorted((matches.parent / (matches.name + ".raw")).glob("*/*.npz"))


def test_corrupt_files_are_reported_by_name(sift_run, tmp_path):
    """Each is found before any pair is matched, and named."""
    root, names, pairs, feats, matches = sift_run
    images = root / "images"
    pairs_file = write_pairs(tmp_path / "pairs.txt", pairs)
    bad = tmp_path / "matches.h5"
    bad.write_bytes(matches.read_bytes()[: len(matches.read_bytes()) // 2])  # truncated
    with pytest.raises(H5Error, match=str(bad)):
        main(confs["sift"], pairs_file, images, tmp_path, matches=bad)
    bad.write_bytes(b"not an h5 file")
    with pytest.raises(H5Error, match=str(bad)):
        main(confs["sift"], pairs_file, images, tmp_path, matches=bad)
    m = tmp_path / "m.h5"
    # a truncated features file, or features_ref file
    bad_feats = tmp_path / "feats.h5"
    bad_feats.write_bytes(feats.read_bytes()[: len(feats.read_bytes()) // 2])
    for kw in ({"features": bad_feats}, {"features_ref": [feats, bad_feats]}):
        with pytest.raises(H5Error, match=str(bad_feats)):
            main(confs["sift"], pairs_file, images, tmp_path, matches=m, **kw)
        assert not raw_files(m)  # nothing was matched
    with pytest.raises(FileNotFoundError, match="nope.h5"):
        main(
            confs["sift"],
            pairs_file,
            images,
            tmp_path,
            features_ref=tmp_path / "nope.h5",
        )
    # a corrupt raw pair file (not written by us: ours are atomic)
    raw = RawMatches(m.with_name(m.name + ".raw"))
    raw.set_meta(raw_provenance(confs["sift"], None, None))
    raw.path(*pairs[0]).parent.mkdir(parents=True)
    raw.path(*pairs[0]).write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(RawMatchesError, match=raw.path(*pairs[0]).name):
        main(confs["sift"], pairs_file, images, tmp_path, matches=m)
    assert raw_files(m) == [raw.path(*pairs[0])]  # nothing else was matched
    raw.remove()
    # a corrupt record of a run stopped between its final renames
    m.with_name(m.name + ".pending.json").write_text('{"names": ["a.png"')
    with pytest.raises(InputError, match=r"m.h5.pending.json .*delete it to resume"):
        main(confs["sift"], pairs_file, images, tmp_path, matches=m)
    assert not raw_files(m)


def test_features_from_other_images_are_refused(sift_run, tmp_path):
    """Same names, other sizes: the stored keypoints are not trusted, in
    ``features`` or in ``features_ref``."""
    root, names, pairs, feats, matches = sift_run
    small = make_scene(tmp_path / "images", 3, size=(200, 150))
    assert small == names
    pairs_file = write_pairs(tmp_path / "pairs.txt", pairs[:1])
    copy = tmp_path / "feats.h5"
    shutil.copyfile(feats, copy)
    m = tmp_path / "m.h5"
    msg = rf"{copy}: image 'scene/im0.png' has image_size 256x192 but .*im0.png is 200x150"
    for kw in ({"features": copy}, {"features_ref": copy}):
        with pytest.raises(InputError, match=msg):
            main(
                confs["sift"],
                pairs_file,
                tmp_path / "images",
                tmp_path,
                matches=m,
                **kw,
            )
        assert not raw_files(m)
    # a matches file whose pairs have no keypoints in the features file
    with pytest.raises(InputError, match=rf"{matches} holds pairs of images without"):
        main(confs["sift"], pairs_file, root / "images", tmp_path, matches=matches)


def stop_after_writes(monkeypatch, n: int) -> None:
    """The run stops (KeyboardInterrupt) after writing ``n`` raw matches."""
    real, count = RawMatches.write, []

    def write(self, *args):
        real(self, *args)
        count.append(1)
        if len(count) == n:
            raise KeyboardInterrupt

    monkeypatch.setattr(RawMatches, "write", write)


def test_resume_refuses_other_settings(sift_run, tmp_path, monkeypatch):
    """Raw matches of a stopped run are not resumed by another conf: refused
    with what differs, or recomputed with ``discard_raw``."""
    root, names, pairs, feats, matches = sift_run
    images, m = root / "images", tmp_path / "m.h5"
    stop_after_writes(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        main(
            confs["sift"],
            root / "pairs.txt",
            images,
            tmp_path,
            matches=m,
            num_workers=0,
        )
    monkeypatch.undo()
    assert len(raw_files(m)) == 1
    # the images changed size since: the stored raw matches are not theirs
    make_scene(tmp_path / "small", 3, size=(200, 150))
    with pytest.raises(
        RawMatchesError,
        match="computed on images of 256x192 and 256x192 px, now 200x150",
    ):
        main(confs["sift"], root / "pairs.txt", tmp_path / "small", tmp_path, matches=m)
    other = {**confs["sift"], "model": {**confs["sift"]["model"], "ratio": 0.7}}
    with pytest.raises(
        RawMatchesError,
        match=r"m.h5.raw were made .*model.ratio: 0.8 -> 0.7.*--discard_raw",
    ):
        main(other, root / "pairs.txt", images, tmp_path, matches=m)
    assert len(raw_files(m)) == 1 and not m.exists()
    # a store that records nothing (an older version): refused too
    (m.parent / "m.h5.raw" / "meta.json").unlink()
    with pytest.raises(RawMatchesError, match="does not record what produced"):
        main(confs["sift"], root / "pairs.txt", images, tmp_path, matches=m)
    f, m = main(
        other, root / "pairs.txt", images, tmp_path, matches=m, discard_raw=True
    )
    clean = main(other, root / "pairs.txt", images, tmp_path / "clean")
    for a, b in zip((f, m), clean):
        a, b = h5_content(a), h5_content(b)
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_resume_refuses_other_weights(tmp_path, golden_weights):
    """The checkpoint is recorded by checksum: a copy resumes, another file
    (same name, other bytes) is refused before the model loads."""
    names = make_scene(tmp_path / "images", 2)
    pairs_file = write_pairs(tmp_path / "pairs.txt", [tuple(names)])
    copy = tmp_path / "copy" / golden_weights.name
    copy.parent.mkdir()
    shutil.copyfile(golden_weights, copy)
    stored = raw_provenance(NCNET, golden_weights, None)
    assert stored == raw_provenance(NCNET, copy, None)
    assert stored["weights"]["model"]["size"] == golden_weights.stat().st_size
    m = tmp_path / "m.h5"
    raw = RawMatches(m.with_name(m.name + ".raw"))
    raw.set_meta(stored)
    empty = {k: np.zeros((0, 2)) for k in ("keypoints0", "keypoints1")}
    raw.write(*names, {**empty, "scores": np.zeros(0), "size0": SIZE, "size1": SIZE})
    with copy.open("ab") as f:
        f.write(b"\0")
    with pytest.raises(RawMatchesError, match=r"weights.model.sha256: [0-9a-f]{64} ->"):
        main(NCNET, pairs_file, tmp_path / "images", tmp_path, matches=m, weights=copy)


def test_empty_pairs_file(tmp_path, logs):
    """Valid empty files, and a log line saying so."""
    pairs_file = write_pairs(tmp_path / "pairs.txt", ["# nothing yet", ""])
    f, m = main(confs["sift"], pairs_file, tmp_path, tmp_path / "out")
    for path in (f, m):
        with h5py.File(path, "r") as h:
            assert len(h) == 0
    assert f"No pairs in {pairs_file}" in logs.text
    assert sorted(
        p.name for p in (tmp_path / "out").iterdir() if "lock" not in p.name
    ) == sorted([f.name, m.name])


def test_same_file_for_features_and_matches(sift_run, tmp_path):
    root, names, pairs, feats, matches = sift_run
    with pytest.raises(InputError, match="same file"):
        main(confs["sift"], root / "pairs.txt", root / "images", None, feats, feats)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = struct.pack(">I", zlib.crc32(kind + data))
    return struct.pack(">I", len(data)) + kind + data + crc


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
    # an image whose header is unreadable: named, before anything runs
    shutil.copytree(images, tmp_path / "images")
    (tmp_path / "images" / "scene" / "im9.png").write_bytes(b"\x89PNG broken")
    broken = write_pairs(
        tmp_path / "broken.txt", [pairs[1], (names[0], "scene/im9.png")]
    )
    with pytest.raises(ImageError, match=r"im9.png"):
        main(confs["sift"], broken, tmp_path / "images", out, f, m)
    assert not raw_files(m)
    bomb = (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0))
        + png_chunk(b"IEND", b"")
    )
    (tmp_path / "images" / "scene" / "im9.png").write_bytes(bomb)
    with pytest.raises(ImageError, match=r"im9.png: Image size \(400000000 pixels\)"):
        main(confs["sift"], broken, tmp_path / "images", out, f, m)
    assert not raw_files(m)
    # a truncated image (its header is fine): named with its pair when read;
    # existing files untouched
    png = (images / names[2]).read_bytes()
    (tmp_path / "images" / "scene" / "im9.png").write_bytes(png[: len(png) // 2])
    with pytest.raises(ImageError, match=r"\(scene/im0.png, scene/im9.png\).*im9.png"):
        main(confs["sift"], broken, tmp_path / "images", out, f, m, num_workers=0)
    assert (f.read_bytes(), m.read_bytes()) == before
    # the pair matched before the error is kept for the next run
    assert len(raw_files(m)) == 1


def test_pairs_file_lines(tmp_path, logs):
    """Names are read as HDF5 reads them back; every error names file:line."""
    path = tmp_path / "pairs.txt"
    path.write_text("./a.png x//y.png\n# c\nx/./y.png b/c.png/\nim#1.png a.png")
    assert parse_pairs(path) == [
        ("a.png", "x/y.png"),
        ("x/y.png", "b/c.png"),
        ("im#1.png", "a.png"),
    ]
    assert "2 lines name images in non-canonical form" in logs.text
    assert "line 1: ./a.png x//y.png -> a.png x/y.png" in logs.text
    for bad, why in [
        ("../a.png", "'..'"),
        ("x/../a.png", "'..'"),
        ("/data/a.png", "absolute"),
        ("./", "names no file"),
    ]:
        path.write_text(f"a.png b.png\n\n{bad} b.png\n")
        with pytest.raises(PairsError, match=rf"pairs.txt:3: .*{why}"):
            parse_pairs(path)
    path.write_text("a.png b.png\nc.png d.png  # night\n")
    with pytest.raises(PairsError, match="pairs.txt:2: a '#' comment must have"):
        parse_pairs(path)
    path.write_bytes("a.png b.png\n\nd\u00e9j\u00e0.png b.png\n".encode("latin-1"))
    with pytest.raises(PairsError, match="pairs.txt:3: not UTF-8 text"):
        parse_pairs(path)


def check_canonical(features: Path, matches: Path, pairs) -> None:
    """Every image and pair key is stored under its canonical name, once."""
    with h5py.File(features, "r") as f:
        images = set()
        f.visititems(
            lambda k, v: (
                images.add(v.parent.name.strip("/"))
                if isinstance(v, h5py.Dataset)
                else None
            )
        )
    assert images == {n for p in pairs for n in p}
    assert all(canonical_name(n) == n for n in images)
    assert set(h5_content(matches)) == {
        f"{names_to_pair(*p)}/{k}"
        for p in pairs
        for k in ("matches0", "matching_scores0", "keypoints0", "keypoints1", "scores")
    }


def test_aliased_names_give_one_image(sift_run, tmp_path):
    """``./a`` and ``a``, ``x//y`` and ``x/y`` are the same HDF5 group: one
    image with one set of keypoints, every index within them."""
    root, names, pairs, feats, matches = sift_run
    aliased = write_pairs(
        tmp_path / "pairs.txt",
        [
            f"./{names[0]} {names[1]}",
            f"{names[0]} {names[2].replace('/', '//')}",
            f"{names[1].replace('/', '/./')} {names[2]}",
        ],
    )
    f, m = main(confs["sift"], aliased, root / "images", tmp_path)
    check_hloc_files(f, m, pairs, root / "images")
    check_canonical(f, m, pairs)


def cli(*args) -> list:
    cmd = [sys.executable, "-m", "p2p_hloc.match_pairs", "--conf", "sift"]
    return [*cmd, *map(str, args)]


CLI_ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def test_cli(sift_run, tmp_path):
    """``python -m p2p_hloc.match_pairs``: ``--device``; one clean error line
    naming file and line (exit 2), ``--debug`` for the traceback."""
    from p2p_hloc.console import run_cli
    from p2p_hloc.match_pairs import parser, run

    root, names, pairs, feats, matches = sift_run
    args = cli("--pairs", root / "pairs.txt", "--image_dir", root / "images")[3:]
    args += [
        "--export_dir",
        tmp_path,
        "--matches",
        tmp_path / "m.h5",
        "--device",
        "cpu",
    ]
    assert run_cli(parser(), run, list(map(str, args))) == 0
    f = tmp_path / "feats_matches-sift-r1600-n4096.h5"
    check_hloc_files(f, tmp_path / "m.h5", pairs, root / "images")
    bad = write_pairs(tmp_path / "bad.txt", [pairs[0], "a.png b.png # night"])
    cmd = cli("--pairs", bad, "--image_dir", root / "images", "--export_dir", tmp_path)
    r = subprocess.run(cmd, env=CLI_ENV, capture_output=True, text=True)
    assert r.returncode == 2
    errors = [line for line in r.stderr.splitlines() if ": error:" in line]
    assert errors == [
        f"match_pairs.py: error: {bad}:2: a '#' comment must have a line of its own "
        "(hloc's pairs format has no comments after the names): 'a.png b.png # night' "
        "(--debug for the traceback)"
    ]
    assert "Traceback" not in r.stderr
    with pytest.raises(PairsError, match="bad.txt:2"):
        run_cli(parser(), run, cmd[3:] + ["--debug"])


def test_two_identical_runs_at_once(sift_run, tmp_path):
    """The second run waits for the first (saying so), then finds its pairs
    done; both exit 0 with files that agree."""
    root, names, pairs, feats, matches = sift_run
    cmd = cli("--pairs", root / "pairs.txt", "--image_dir", root / "images")
    cmd += ["--export_dir", tmp_path, "--num_workers", "0"]
    f, m = (tmp_path / n for n in SIFT_FILES)
    logs = [tmp_path / f"run{i}.log" for i in range(2)]
    with file_lock(m, "the test"):  # both runs start while it is held
        procs = []
        for log in logs:
            with log.open("w") as out:
                procs.append(subprocess.Popen(cmd, env=CLI_ENV, stderr=out))
        for log, proc in zip(logs, procs):
            while "Waiting for" not in log.read_text():
                assert proc.poll() is None, log.read_text()
                time.sleep(0.1)
    assert [p.wait() for p in procs] == [0, 0]
    texts = [log.read_text() for log in logs]
    assert all(f"Waiting for {m}.lock: another run holds it" in t for t in texts)
    assert sorted("3 pairs, 3 already in" in t for t in texts) == [False, True]
    check_hloc_files(f, m, pairs, root / "images")
    check_canonical(f, m, pairs)
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".h5") == sorted(
        SIFT_FILES
    )
    assert not list(tmp_path.glob("*.raw")) and not list(tmp_path.glob("*.tmp*"))


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
