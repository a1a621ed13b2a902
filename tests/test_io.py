"""hloc file formats: keys, coordinates, round trips, errors naming files."""

import h5py
import numpy as np
import pytest

from p2p_hloc.io import (
    PairsError,
    from_hloc_coords,
    get_keypoints,
    get_matches,
    list_h5_names,
    names_to_pair,
    parse_pairs,
    to_hloc_coords,
    write_keypoints,
    write_matches,
)
from p2p_hloc.io.h5 import H5Error, find_pair, open_h5
from p2p_hloc.io.raw import RAW_KEYS, RawMatches, RawMatchesError


def test_names_to_pair():
    assert names_to_pair("db/1.jpg", "query/a/2.jpg") == "db-1.jpg/query-a-2.jpg"
    assert names_to_pair("a", "b", "_") == "a_b"


def test_coordinates():
    # the centre of the top-left pixel: (0.5, 0.5) corner, (0, 0) hloc
    np.testing.assert_array_equal(to_hloc_coords([[0.5, 0.5]]), [[0, 0]])
    xy = np.random.default_rng(0).uniform(0, 100, (5, 2))
    np.testing.assert_allclose(from_hloc_coords(to_hloc_coords(xy)), xy)


def test_round_trip(tmp_path):
    feats, matches = tmp_path / "f.h5", tmp_path / "m.h5"
    kps = np.array([[1, 2], [3, 4], [5, 6]], np.float32)
    write_keypoints(feats, "db/a.jpg", kps, (640, 480))
    write_keypoints(feats, "q/b.jpg", kps[:2], (640, 480), np.array([0.5, 0.7]))
    assert list_h5_names(feats) == {"db/a.jpg", "q/b.jpg"}
    np.testing.assert_array_equal(get_keypoints(feats, "db/a.jpg"), kps)
    write_matches(matches, "q/b.jpg", "db/a.jpg", np.array([2, -1]), np.array([0.9, 0]))
    with h5py.File(matches, "r") as f:
        g = f["q-b.jpg"]["db-a.jpg"]  # nested groups
        assert (
            g["matches0"].dtype == np.int32
            and g["matching_scores0"].dtype == np.float16
        )
        assert find_pair(f, "db/a.jpg", "q/b.jpg") == ("q-b.jpg/db-a.jpg", True)
    idx, scores = get_matches(matches, "db/a.jpg", "q/b.jpg")
    np.testing.assert_array_equal(idx, [[2, 0]])
    with pytest.raises(H5Error, match="no keypoints"):
        get_keypoints(feats, "nope.jpg")
    with pytest.raises(H5Error, match="not found"):
        get_matches(matches, "x", "y")


def test_old_separator(tmp_path):
    path = tmp_path / "m.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("a.jpg_b.jpg/matches0", data=np.array([0], np.int32))
        f.create_dataset("a.jpg_b.jpg/matching_scores0", data=np.array([1], np.float16))
    idx, _ = get_matches(path, "b.jpg", "a.jpg")
    np.testing.assert_array_equal(idx, [[0, 0]])


def test_corrupt_h5_named(tmp_path):
    path = tmp_path / "bad.h5"
    path.write_bytes(b"garbage")
    with pytest.raises(H5Error, match="bad.h5"):
        open_h5(path)


def test_parse_pairs(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text("\n# comment\na.jpg b.jpg\n\n  c.jpg   d.jpg  \n")
    assert parse_pairs(path) == [("a.jpg", "b.jpg"), ("c.jpg", "d.jpg")]
    path.write_text("a.jpg b.jpg\nmy file.jpg b.jpg\n")
    with pytest.raises(PairsError, match="pairs.txt:2"):
        parse_pairs(path)


def test_raw_matches(tmp_path):
    """The store writes the public raw-match format (hloc's convention) and
    reads it back checked; a stray temporary file is ignored."""
    raw = RawMatches(tmp_path / "raw")
    assert raw.find("a", "b") is None and raw.empty() and raw.meta() is None
    pred = {  # a matcher's output: corner convention
        "keypoints0": np.array([[0.5, 0.5], [10.25, 3.5], [1, 2]], np.float32),
        "keypoints1": np.zeros((3, 2), np.float32),
        "scores": np.ones(3, np.float32),
        "size0": np.array([640, 480]),
        "size1": np.array([320, 240]),
    }
    raw.write("a", "b", pred)
    assert raw.find("b", "a") == ("a", "b") and not raw.empty()
    data = raw.read("a", "b")
    np.testing.assert_array_equal(data["keypoints0"], [[0, 0], [9.75, 3], [0.5, 1.5]])
    assert data["keypoints0"].dtype == np.float32
    with np.load(raw.path("a", "b")) as f:  # the public format, as stored
        assert sorted(f.files) == sorted(RAW_KEYS)
        assert str(f["name0"]) == "a" and f["size1"].tolist() == [320, 240]
    raw.path("c", "d").parent.mkdir(parents=True, exist_ok=True)
    raw.path("c", "d").with_name(raw.path("c", "d").name + ".tmp").write_bytes(b"x")
    assert raw.find("c", "d") is None
    raw.path("c", "d").write_bytes(b"truncated")
    with pytest.raises(RawMatchesError, match=raw.path("c", "d").name):
        raw.read("c", "d")
    raw.set_meta({"conf": {"output": "x"}, "weights": "abc"})
    assert raw.meta() == {"conf": {"output": "x"}, "weights": "abc"}
    (raw.root / "meta.json").write_text("{")
    with pytest.raises(RawMatchesError, match="meta.json"):
        raw.meta()
    raw.remove()
    assert not (tmp_path / "raw").exists() and raw.empty()


def test_file_lock_nested_and_held(tmp_path):
    """A process may take a lock it holds again (match_pairs' run lock and
    the write phase inside it); another process waits, and times out."""
    import subprocess
    import sys

    from p2p_hloc.io.lock import file_lock

    path = tmp_path / "m.h5"
    other = (
        "import sys; from p2p_hloc.io.lock import file_lock, LockTimeout\n"
        "try:\n"
        f"    with file_lock({str(path)!r}, timeout=0.3, poll=0.05): sys.exit(0)\n"
        "except LockTimeout as e:\n"
        "    print(e); sys.exit(3)\n"
    )
    with file_lock(path, "outer"):
        with file_lock(path, "inner"):
            p = subprocess.run([sys.executable, "-c", other], capture_output=True)
            assert p.returncode == 3 and b"still held" in p.stdout
        p = subprocess.run([sys.executable, "-c", other], capture_output=True)
        assert p.returncode == 3  # the inner block did not release it
    assert subprocess.run([sys.executable, "-c", other]).returncode == 0


def test_read_raw_names_any_damage(tmp_path):
    """Truncated files and flipped bytes (stored or deflated) raise only
    RawMatchesError naming the file, or read equal to np.load."""
    import random

    from p2p_hloc.io.raw import read_raw

    path = tmp_path / "pair.npz"
    arrays = dict(
        name0="a",
        name1="b",
        keypoints0=np.ones((30, 2), np.float32),
        keypoints1=np.zeros((30, 2)),
        scores=np.linspace(0, 1, 30),
        size0=np.array([9, 9]),
        size1=np.array([9, 9]),
    )
    rng = random.Random(0)
    for save in (np.savez, np.savez_compressed):
        save(path, **arrays)
        good = path.read_bytes()
        data = read_raw(path)
        for k in ("keypoints0", "keypoints1", "scores"):
            np.testing.assert_array_equal(data[k], arrays[k])
        for t in range(300):
            damaged = bytearray(good)
            if t % 2:
                damaged = damaged[: rng.randrange(len(damaged))]
            else:
                for _ in range(3):
                    damaged[rng.randrange(len(damaged))] = rng.randrange(256)
            path.write_bytes(bytes(damaged))
            try:
                read_raw(path)
            except RawMatchesError as e:
                assert "pair.npz" in str(e)
