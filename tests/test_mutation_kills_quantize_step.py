"""Fast checks of the quantization step on tiny raw folders (a few images and
pairs, a few dozen points): the output arrays against ``quantize_pairs``, the
settings, fixed images, resume after a stop, errors and leftovers."""

import json
import os
import re
import shutil
import stat
import tempfile
from functools import partial
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import assert_same_h5, h5_content

from p2p_hloc.console import InputError, run_cli
from p2p_hloc.io.h5 import H5Error, names_to_pair
from p2p_hloc.io.raw import RawMatchesError, raw_files
from p2p_hloc.io.text import parse_pairs
from p2p_hloc.quantize import (
    clip_to_image,
    main,
    quantize_pairs,
    read_pending,
    spill,
    step,
    unique_pairs,
)

SIZES = {"a.png": (40, 30), "b.png": (36, 44), "c.png": (50, 26), "d.png": (30, 30)}
# raw files as stored (name0, name1); the run's pairs file lists some reversed
STORED = [
    ("a.png", "b.png"),
    ("c.png", "a.png"),
    ("b.png", "c.png"),
    ("d.png", "b.png"),
]
LINES = [("a.png", "b.png"), ("a.png", "c.png"), ("b.png", "c.png"), ("b.png", "d.png")]


def raw_data(n0: str, n1: str, seed: int, n: int = 24) -> dict:
    """``n`` raw matches between points of a pool of 8 per image (so that the
    pairs of an image share points), some a pixel outside the image."""
    rng = np.random.default_rng(seed)
    data = {"name0": n0, "name1": n1, "size0": SIZES[n0], "size1": SIZES[n1]}
    for side, name in enumerate((n0, n1)):
        size = np.array(SIZES[name])
        pool = np.random.default_rng(ord(name[0])).uniform(-1, 1, (8, 2)) * 0.55 + 0.5
        xy = pool[rng.integers(0, 8, n)] * size + rng.normal(0, 0.7, (n, 2))
        single = seed % 4 in ((1, 2), (1, 3))[side]  # both, one or no side
        data[f"keypoints{side}"] = xy.astype(np.float32 if single else np.float64)
    data["scores"] = rng.uniform(0, 1, n).round(2).astype(f"f{4 + 4 * (seed == 3)}")
    return data


def make_raw(root: Path, stored=STORED) -> list:
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for k, (n0, n1) in enumerate(stored):
        out.append(raw_data(n0, n1, k))
        np.savez(root / f"{k}.npz", **out[-1])
    return out


def pairs_file(path: Path, lines) -> Path:
    path.write_text("".join(f"{a} {b}\n" for a, b in lines))
    return path


def run(tmp_path: Path, lines=LINES, out="out", **kw):
    f, m = tmp_path / out / "f.h5", tmp_path / out / "m.h5"
    p = pairs_file(tmp_path / f"pairs-{len(lines)}.txt", lines)
    files = raw_files(tmp_path / "raw")
    todo = unique_pairs(parse_pairs(p))
    summary = step.write_phase(todo, files, f, m, source="RAW", **kw)
    return f, m, summary


def listing(folder: Path) -> list:
    return sorted(os.listdir(folder))


CLEAN = ["f.h5", "f.h5.lock", "m.h5", "m.h5.lock"]


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"radius": 2.5, "min_score": 0.3, "max_kps": 5},
        {"method": "immatch", "psize": 16.0, "radius": 1.0},
    ],
)
def test_files_hold_the_arrays_of_quantize_pairs(tmp_path, kw):
    """Keypoints, scores, sizes, matches0, matching_scores0 and the clipped
    raw matches, written in the direction of each raw file; a raw file of a
    pair outside the run, repeats and self-pairs of the pairs file ignored."""
    data = make_raw(tmp_path / "raw", STORED + [("a.png", "d.png")])[:-1]
    lines = LINES + [("b.png", "a.png"), ("c.png", "c.png")]
    f, m, summary = run(tmp_path, lines, **kw)
    q = quantize_pairs(STORED, data, **kw)
    feats, matches = h5_content(f), h5_content(m)
    assert sorted(feats) == sorted(
        f"{n}/{k}" for n in SIZES for k in ("image_size", "keypoints", "scores")
    )
    for name, kps in q.keypoints.items():
        np.testing.assert_array_equal(feats[f"{name}/keypoints"], kps.astype("f4"))
        assert feats[f"{name}/keypoints"].dtype == np.float32
        np.testing.assert_array_equal(
            feats[f"{name}/scores"], q.scores[name].astype("f4")
        )
        np.testing.assert_array_equal(feats[f"{name}/image_size"], SIZES[name])
        if "max_kps" in kw:
            assert len(kps) <= kw["max_kps"]
    keys = {k.rsplit("/", 1)[0] for k in matches}
    assert keys == {names_to_pair(*p) for p in STORED}
    for (n0, n1), m0, s0, d in zip(q.pairs, q.matches0, q.scores0, data):
        g = f"{n0}/{n1}"
        np.testing.assert_array_equal(matches[f"{g}/matches0"], m0)
        assert matches[f"{g}/matches0"].dtype == np.int32
        np.testing.assert_array_equal(
            matches[f"{g}/matching_scores0"], s0.astype(np.float16)
        )
        for s in (0, 1):
            got = matches[f"{g}/keypoints{s}"]
            assert got.dtype == np.float32
            kp = clip_to_image(d[f"keypoints{s}"], d[f"size{s}"]).astype("f4")
            np.testing.assert_array_equal(got, kp)
            assert np.all((got > 0) & (got < np.array(d[f"size{s}"]) - 1))
        np.testing.assert_array_equal(matches[f"{g}/scores"], d["scores"].astype("f4"))
    assert listing(f.parent) == CLEAN
    for name in ("f.h5", "m.h5"):  # what a run waiting for the lock is told
        holder = (f.parent / f"{name}.lock").read_text()
        assert holder.startswith(f"pid {os.getpid()} on ")
        assert holder.endswith(f": writing {name}")
    n_matches = sum(int((m0 >= 0).sum()) for m0 in q.matches0)
    assert summary.pairs == 4 and summary.raw_matches == 4 * 24
    assert (summary.images_built, summary.images_fixed) == (4, 0)
    assert summary.keypoints == sum(len(k) for k in q.keypoints.values())
    assert summary.matches == n_matches > 0
    assert set(summary.seconds) == {
        "read",
        "copy",
        "images",
        "features_h5",
        "pairs",
        "matches_h5",
        "rename",
    }
    with h5py.File(f, "r") as h:
        assert json.loads(h.attrs[step.REGISTRY]) == ["m.h5"]


def test_settings_change_the_output(tmp_path):
    """radius, min_score, max_kps, method and psize all reach the images."""
    make_raw(tmp_path / "raw")
    runs = [
        {},
        {"radius": 1.5},
        {"min_score": 0.5},
        {"max_kps": 3},
        {"method": "immatch"},
        {"method": "immatch", "psize": 8},
    ]
    seen = []
    for i, kw in enumerate(runs):
        f, m, _ = run(tmp_path, out=f"o{i}", **kw)
        seen.append(h5_content(f)["a.png/keypoints"].tobytes())
    assert len(set(seen)) == len(runs)
    with pytest.raises(ValueError, match="unknown quantization method 'x'"):
        run(tmp_path, method="x")


def write_ref(path: Path, name: str, kps, scores_key="scores", size=None):
    with h5py.File(path, "a") as h:
        g = h.create_group(name)
        g["keypoints"] = np.asarray(kps, np.float32)
        g["image_size"] = np.asarray(size or SIZES[name])
        if scores_key:
            g[scores_key] = np.arange(1, len(kps) + 1, dtype=np.float32) / 10


def test_fixed_images_from_features_and_refs(tmp_path):
    """Images already in the features file keep their keypoints, then those
    of the first ``features_ref`` file that has them (copied, with their
    scores: ``scores``, ``keypoint_scores`` or ones); matches0 as
    ``quantize_pairs`` with those images fixed; a second run adds its pairs
    only."""
    data = make_raw(tmp_path / "raw")
    ref_a, ref_b = tmp_path / "ref_a.h5", tmp_path / "ref_b.h5"
    fixed = {
        "b.png": [[5.0, 5], [20, 30], [30, 10], [12, 40]],
        "c.png": [[10.0, 5], [40, 20], [25, 12]],
        "d.png": [[3.0, 3], [20, 20]],
    }
    write_ref(ref_a, "c.png", fixed["c.png"], "keypoint_scores")
    write_ref(ref_a, "d.png", fixed["d.png"], None)
    write_ref(ref_b, "c.png", [[1.0, 1]])  # shadowed by ref_a
    write_ref(ref_b, "b.png", fixed["b.png"])
    f, m, summary = run(tmp_path, LINES[:3], features_ref=[ref_a, ref_b])
    assert (summary.images_built, summary.images_fixed) == (1, 2)
    feats = h5_content(f)
    for n in ("b.png", "c.png"):
        np.testing.assert_array_equal(feats[f"{n}/keypoints"], fixed[n])
        np.testing.assert_array_equal(
            feats[f"{n}/scores"], np.arange(1, len(fixed[n]) + 1, dtype="f4") / 10
        )
    assert "d.png" not in {k.split("/")[0] for k in feats}
    fx = {n: np.array(fixed[n]) for n in ("b.png", "c.png")}
    q = quantize_pairs(STORED[:3], data[:3], fx)
    np.testing.assert_array_equal(
        feats["a.png/keypoints"], q.keypoints["a.png"].astype("f4")
    )
    matches = h5_content(m)
    for (n0, n1), m0 in zip(q.pairs, q.matches0):
        np.testing.assert_array_equal(matches[f"{n0}/{n1}/matches0"], m0)
    # the next run: a, b, c fixed from f.h5 (not from the refs), d from ref_a
    first = h5_content(f)
    before = h5_content(m)
    f, m, summary = run(tmp_path, LINES, features_ref=[ref_b, ref_a])
    assert (summary.images_built, summary.images_fixed, summary.pairs) == (0, 2, 1)
    feats = h5_content(f)
    for k, v in first.items():
        np.testing.assert_array_equal(feats[k], v)
    np.testing.assert_array_equal(feats["d.png/keypoints"], fixed["d.png"])
    np.testing.assert_array_equal(feats["d.png/scores"], [1, 1])
    fx = {n: feats[f"{n}/keypoints"] for n in ("b.png", "d.png")}
    q = quantize_pairs(STORED[3:], data[3:], fx)
    after = h5_content(m)
    np.testing.assert_array_equal(after["d.png/b.png/matches0"], q.matches0[0])
    for k, v in before.items():
        np.testing.assert_array_equal(after[k], v)


def test_fixed_image_of_another_size_is_named(tmp_path):
    make_raw(tmp_path / "raw")
    ref = tmp_path / "ref.h5"
    write_ref(ref, "c.png", [[1.0, 1]], size=(50, 27))
    with pytest.raises(
        H5Error,
        match=r"ref.h5: image c.png has size \[50, 27\] but its raw "
        r"matches \[50, 26\]: not the same image",
    ):
        run(tmp_path, features_ref=[ref])
    assert not (tmp_path / "out/f.h5").exists()
    assert listing(tmp_path / "out") == ["f.h5.lock", "m.h5.lock"]


def test_a_run_with_nothing_to_do(tmp_path):
    """No pairs (or all done, in either direction): valid files, unchanged."""
    make_raw(tmp_path / "raw")
    f, m, summary = run(tmp_path, [("a.png", "a.png")])
    assert summary == step.Summary()
    assert h5_content(f) == {} and h5_content(m) == {}
    assert listing(f.parent) == CLEAN
    run(tmp_path, LINES[:2])
    before = f.read_bytes(), m.read_bytes()
    _, _, summary = run(tmp_path, [p[::-1] for p in LINES[:2]])
    assert summary.pairs == 0 and (f.read_bytes(), m.read_bytes()) == before


def test_missing_and_duplicated_pairs_are_named(tmp_path):
    data = make_raw(tmp_path / "raw")
    with pytest.raises(
        RawMatchesError,
        match=r"^RAW: no raw matches for 4 of the 8 pairs, e\.g\. "
        r"\('a\.png', 'd\.png'\), \('c\.png', 'd\.png'\), \('a\.png', 'e\.png'\)$",
    ):
        extra = [("a.png", "d.png"), ("c.png", "d.png"), ("a.png", "e.png")]
        run(tmp_path, LINES + extra + [("b.png", "e.png")])
    np.savez(tmp_path / "raw/z.npz", **{**data[1], "name0": "a.png", "name1": "c.png"})
    with pytest.raises(
        RawMatchesError,
        match=r"z\.npz and .*1\.npz both hold the pair \(a\.png, c\.png\); remove one",
    ):
        run(tmp_path)
    (tmp_path / "raw/z.npz").unlink()
    np.savez(tmp_path / "raw/z.npz", **{**data[1], "name0": "e.png", "size1": (3, 4)})
    with pytest.raises(
        RawMatchesError,
        match=r"z\.npz: image a\.png has size \[3, 4\], elsewhere \[40, 30\]$",
    ):
        run(tmp_path, LINES + [("e.png", "a.png")])
    np.savez(tmp_path / "raw/z.npz", **{**data[1], "name1": "e.png", "size0": (3, 4)})
    with pytest.raises(
        RawMatchesError, match=r"z\.npz: image c\.png has size \[3, 4\], elsewhere"
    ):
        run(tmp_path, [("e.png", "c.png")] + LINES)
    with pytest.raises(RawMatchesError, match=rf"^{tmp_path / 'raw'}: no raw matches"):
        main(pairs_file(tmp_path / "q.txt", [("a.png", "e.png")]), tmp_path / "raw",
             tmp_path / "out/f.h5", tmp_path / "out/m.h5")  # fmt: skip
    assert listing(tmp_path / "out") == ["f.h5.lock", "m.h5.lock"]


def test_overwrite_replaces_pairs_in_either_direction(tmp_path):
    """overwrite: the run's pairs are redone (the old entry removed whichever
    its direction) and its images rebuilt."""
    make_raw(tmp_path / "raw")
    f, m, _ = run(tmp_path, LINES[:2])
    (tmp_path / "raw/0.npz").unlink()  # a/b now stored as b/a
    np.savez(tmp_path / "raw/0.npz", **raw_data("b.png", "a.png", 7))
    f, m, s = run(tmp_path, LINES[:2], overwrite=True, min_score=0.4)
    assert (s.pairs, s.images_built, s.images_fixed) == (2, 3, 0)
    data = [raw_data("b.png", "a.png", 7), raw_data("c.png", "a.png", 1)]
    q = quantize_pairs([("b.png", "a.png"), ("c.png", "a.png")], data, min_score=0.4)
    feats, matches = h5_content(f), h5_content(m)
    assert {k.rsplit("/", 1)[0] for k in matches} == {"b.png/a.png", "c.png/a.png"}
    for n, kps in q.keypoints.items():
        np.testing.assert_array_equal(feats[f"{n}/keypoints"], kps.astype("f4"))
    np.testing.assert_array_equal(matches["b.png/a.png/matches0"], q.matches0[0])


def test_overwrite_keeps_images_that_other_pairs_use(tmp_path, logs):
    """Images of names with '/' that a pair of another matches file (in
    another folder, recorded in the features file) or a pair of this file
    outside the run refers to keep their keypoints; the others are rebuilt."""
    names = {"a.png": "db/a.png", "b.png": "db/b.png", "c.png": "q/c.png"}
    root = tmp_path / "raw"
    root.mkdir()
    stored = [("a.png", "b.png"), ("c.png", "a.png"), ("b.png", "c.png")]
    for k, (n0, n1) in enumerate(stored):
        d = raw_data(n0, n1, k)
        np.savez(root / f"{k}.npz", **{**d, "name0": names[n0], "name1": names[n1]})
    f, m = tmp_path / "f.h5", tmp_path / "m.h5"
    other = tmp_path / "sub/other.h5"
    lines = [(names[a], names[b]) for a, b in stored]
    main(pairs_file(tmp_path / "p0.txt", lines[:1]), root, f, m)
    main(pairs_file(tmp_path / "p1.txt", lines[1:2]), root, f, other)
    with h5py.File(f, "r") as h:
        assert json.loads(h.attrs[step.REGISTRY]) == ["m.h5", "sub/other.h5"]

    def redo(min_score, kept, rebuilt):
        """a/b again into m.h5 with overwrite and another min_score."""
        before = h5_content(f)
        main(pairs_file(tmp_path / "p0.txt", lines[:1]), root, f, m,
             min_score=min_score, overwrite=True)  # fmt: skip
        after = h5_content(f)
        for k in kept:
            np.testing.assert_array_equal(
                after[f"{k}/keypoints"], before[f"{k}/keypoints"]
            )
        for k in rebuilt:
            assert not np.array_equal(after[f"{k}/keypoints"], before[f"{k}/keypoints"])

    # a is used by other.h5's c/a, b is free
    redo(0.6, ["db/a.png"], ["db/b.png"])
    assert "1 images keep their keypoints" in logs.text
    assert "db/a.png" in logs.text and "other.h5" in logs.text
    assert "q-c.png/db-a.png" in logs.text
    # b/c joins m.h5; redo a/b again: b is now used by b/c of m.h5 itself
    main(pairs_file(tmp_path / "p2.txt", lines[2:]), root, f, m)
    logs.clear()
    other.unlink()  # dropped from the registry
    redo(0.3, ["db/b.png"], ["db/a.png"])
    assert "1 images keep their keypoints" in logs.text and "m.h5" in logs.text
    assert "db-b.png/q-c.png" in logs.text
    with h5py.File(f, "r") as h:
        assert json.loads(h.attrs[step.REGISTRY]) == ["m.h5"]
    # the run's own pair a/b in another matches file too: a and b are kept
    main(pairs_file(tmp_path / "p0.txt", lines[:1]), root, f, tmp_path / "m2.h5")
    logs.clear()
    redo(0.7, ["db/a.png", "db/b.png"], [])
    assert "2 images keep their keypoints" in logs.text and "m2.h5" in logs.text


def test_leftovers_of_stopped_runs_are_removed(tmp_path):
    make_raw(tmp_path / "raw")
    out = tmp_path / "out"
    out.mkdir()
    for name in ("f.h5.tmp-1-ab", "m.h5.tmp-2-cd", "m.h5.tmp", "f.h5.tmp",
                 "m.h5.pending.json.tmp-3-ef", "f.h5.spill-9"):  # fmt: skip
        (out / name).write_bytes(b"x")
    (out / "m.h5.spill-4-aa").mkdir()
    (out / "m.h5.spill-4-aa/data-1").write_bytes(b"x")
    (out / "keep.h5.tmp-1").write_bytes(b"x")
    (tmp_path / "data").mkdir()
    (tmp_path / "data/x").write_bytes(b"x")
    (out / "m.h5.spill-5-bb").symlink_to(tmp_path / "data")
    run(tmp_path)
    assert listing(out) == sorted(CLEAN + ["keep.h5.tmp-1", "m.h5.spill-5-bb"])
    assert listing(tmp_path / "data") == ["x"]  # a link is not followed


def test_stopped_at_any_rename_the_rerun_gives_the_same_files(tmp_path, monkeypatch):
    """A copy of the output folder at each rename (what a run killed there
    leaves: temporary files, the spill folder, the record), and a run stopped
    between its two renames: each rerun removes what was left and gives the
    files of a run that did not stop. The record lists the images built (not
    the fixed ones) and the pairs as stored."""
    make_raw(tmp_path / "raw")
    for out in ("clean", "out"):
        run(tmp_path, LINES[:1], out=out, max_kps=6)
    clean_f, clean_m, _ = run(tmp_path, out="clean", max_kps=6)
    out = tmp_path / "out"
    snapshots = []
    real_path, real_os = Path.replace, os.replace

    def snapshot():
        snapshots.append(tmp_path / f"killed{len(snapshots)}")
        shutil.copytree(out, snapshots[-1])

    def path_replace(self, target):
        snapshot()
        if self.name.startswith("m.h5.tmp-"):
            raise KeyboardInterrupt  # the process dies before the second rename
        return real_path(self, target)

    def os_replace(a, b):
        snapshot()
        return real_os(a, b)

    monkeypatch.setattr(Path, "replace", path_replace)
    monkeypatch.setattr(step.os, "replace", os_replace)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, max_kps=6)
    monkeypatch.undo()
    assert len(snapshots) >= 3
    assert [p for p in listing(snapshots[0]) if "tmp-" in p or "spill-" in p]
    # the copies of the raw matches are readable by their owner only
    data = list(snapshots[0].glob("m.h5.spill-*/data-*"))
    assert data and all(stat.S_IMODE(d.stat().st_mode) == 0o600 for d in data)
    names, pairs = read_pending(out / "m.h5")
    assert names == {"c.png", "d.png"} and pairs == STORED[1:]
    record = json.loads((out / "m.h5.pending.json").read_text())
    assert record["names"] == ["c.png", "d.png"]
    assert listing(out) == [
        "f.h5",
        "f.h5.lock",
        "m.h5",
        "m.h5.lock",
        "m.h5.pending.json",
    ]
    for folder in [out] + snapshots:
        f, m, s = run(tmp_path, out=folder.name, max_kps=6)
        assert (s.images_built, s.images_fixed) == (2, 2)
        assert listing(folder) == CLEAN
        assert_same_h5(f, clean_f)
        assert_same_h5(m, clean_m)


def test_a_record_of_pairs_already_written_is_dropped(tmp_path, logs):
    """A record whose pairs are all in the matches file (the run got to its
    last rename): removed, its images keep their keypoints."""
    make_raw(tmp_path / "raw")
    f, m, _ = run(tmp_path, LINES[:2])
    before = h5_content(f)
    pending = tmp_path / "out/m.h5.pending.json"
    pending.write_text(json.dumps({"names": ["a.png", "c.png"], "pairs": STORED[:2]}))
    f, m, s = run(tmp_path, LINES)
    assert not pending.exists()
    assert (s.images_built, s.images_fixed) == (1, 2)
    assert "keep their keypoints" not in logs.text
    for k, v in before.items():
        np.testing.assert_array_equal(h5_content(f)[k], v)
    # a record with a pair not written yet: its images are rebuilt
    pending.write_text(json.dumps({"names": ["d.png"], "pairs": [STORED[3]]}))
    with h5py.File(m, "a") as h:
        del h["d.png/b.png"]
    f, m, s = run(tmp_path, LINES)
    assert not pending.exists()
    assert (s.pairs, s.images_built, s.images_fixed) == (1, 1, 1)


@pytest.mark.parametrize(
    "text, error",
    [
        ("{", "JSONDecodeError"),
        ("[]", "TypeError"),
        ('{"names": []}', "KeyError"),
        ('{"names": [], "pairs": [["a"]]}', "IndexError"),
        ("\xff", "UnicodeDecodeError"),
    ],
)
def test_a_corrupt_record_is_named(tmp_path, text, error):
    make_raw(tmp_path / "raw")
    (tmp_path / "out").mkdir()
    pending = tmp_path / "out/m.h5.pending.json"
    pending.write_bytes(text.encode("latin-1"))
    with pytest.raises(InputError) as e:
        run(tmp_path)
    assert str(e.value).startswith(f"corrupt {pending} ({error}: ")
    assert str(e.value).endswith(
        "; it lists what a run stopped while writing its outputs was adding: "
        "delete it to resume (the keypoints that run already wrote are then kept "
        "as they are)"
    )
    assert read_pending(tmp_path / "none.h5") == (set(), [])


def test_not_enough_space(tmp_path, monkeypatch):
    """The space needed: 64 MiB, 4.5 times the raw files and both files; the
    error comes before anything is read or written."""
    make_raw(tmp_path / "raw")
    f, m, _ = run(tmp_path, LINES[:1])
    free = []
    real = step.shutil.disk_usage
    monkeypatch.setattr(
        step.shutil, "disk_usage", lambda p: real(p)._replace(free=free[-1])
    )
    raw = sum(p.stat().st_size for p in (tmp_path / "raw").glob("*.npz"))
    free.append((64 << 20) + 4.2 * raw + 0.3 * raw)  # no files yet: just enough
    run(tmp_path, LINES[:1], out="new")
    need = (64 << 20) + (4.2 * raw + m.stat().st_size) + (0.3 * raw + f.stat().st_size)
    free.append(need - 1)
    with pytest.raises(step.DiskSpaceError, match=r"0\.1 GiB needed"):
        run(tmp_path, LINES[:3])
    free.append(need)
    assert run(tmp_path, LINES[:3])[2].pairs == 2
    os.truncate(m, 1 << 30)  # h5 reads files longer than their data
    os.truncate(f, 1 << 29)
    os.truncate(tmp_path / "raw/3.npz", 3 << 30)  # not read: the check comes first
    free.append(3 << 30)
    with pytest.raises(
        step.DiskSpaceError,
        match=rf"^not enough free space in {tmp_path / 'out'} for the write phase: "
        r"about 15\.1 GiB needed \(copies of f\.h5 and m\.h5, about 4\.5x the "
        r"3\.00 GiB of raw matches\), 3\.0 GiB free$",
    ):
        run(tmp_path)
    assert listing(tmp_path / "out") == CLEAN


def test_command_line_options_reach_the_step(tmp_path):
    """``python -m p2p_hloc.quantize`` (in-process): the defaults are those
    of ``main``, every option is passed on, ``--features_ref`` takes several
    files; a missing required option is a usage error (exit 2)."""
    make_raw(tmp_path / "raw")
    ref = tmp_path / "ref.h5"
    write_ref(ref, "c.png", [[10.0, 5], [40, 20]])
    p = pairs_file(tmp_path / "p.txt", LINES)
    cli = partial(run_cli, step.parser(), lambda a: main(**vars(a)))
    base = ["--pairs", p, "--raw", tmp_path / "raw"]
    out = tmp_path / "cli"
    assert cli(list(map(str, base + ["--features", out / "f.h5", "--matches",
                                     out / "m.h5"]))) == 0  # fmt: skip
    main(p, tmp_path / "raw", tmp_path / "api/f.h5", tmp_path / "api/m.h5")
    for name in ("f.h5", "m.h5"):
        assert_same_h5(out / name, tmp_path / "api" / name)
    options = ["--radius", "2.5", "--min_score", "0.3", "--max_kps", "4"]
    options += ["--method", "immatch", "--psize", "8", "--workers", "1"]
    options += ["--features_ref", tmp_path / "none.h5", ref, "--overwrite"]
    options += ["--features", out / "f.h5", "--matches", out / "m.h5"]
    assert cli(list(map(str, base + options))) == 0
    kw = dict(radius=2.5, min_score=0.3, max_kps=4, method="immatch", psize=8)
    data = make_raw(tmp_path / "raw")
    fixed = {"c.png": np.array([[10.0, 5], [40, 20]])}
    q = quantize_pairs(STORED, data, fixed, **kw)
    q48 = quantize_pairs(STORED, data, fixed, **{**kw, "psize": 48})
    assert not np.array_equal(q.keypoints["a.png"], q48.keypoints["a.png"])
    feats, matches = h5_content(out / "f.h5"), h5_content(out / "m.h5")
    for n, kps in q.keypoints.items():
        np.testing.assert_array_equal(feats[f"{n}/keypoints"], kps.astype("f4"))
    for (n0, n1), m0 in zip(q.pairs, q.matches0):
        np.testing.assert_array_equal(matches[f"{n0}/{n1}/matches0"], m0)
    with pytest.raises(SystemExit) as e:
        cli(list(map(str, base + ["--features", out / "f.h5"])))
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        cli(list(map(str, base + ["--features", "f", "--matches", "m", "--method",
                                  "x"])))  # fmt: skip


def test_main_takes_one_or_several_reference_files(tmp_path):
    make_raw(tmp_path / "raw")
    ref = tmp_path / "ref.h5"
    write_ref(ref, "c.png", [[10.0, 5], [40, 20]])
    p = pairs_file(tmp_path / "p.txt", LINES)
    for i, refs in enumerate((ref, str(ref), [tmp_path / "none.h5", str(ref)])):
        out = tmp_path / str(i)
        f, m = main(
            p, tmp_path / "raw", str(out / "f.h5"), out / "m.h5", features_ref=refs
        )
        assert (f, m) == (out / "f.h5", out / "m.h5")
        np.testing.assert_array_equal(
            h5_content(f)["c.png/keypoints"], [[10, 5], [40, 20]]
        )


def test_a_features_file_of_another_program(tmp_path):
    """hloc's own features file (no record of matches files, descriptors):
    its images keep their group untouched; an image without keypoints (a
    global descriptor) is built; a reference image without a stored size is
    copied with the size of its raw matches."""
    data = make_raw(tmp_path / "raw")
    f = tmp_path / "out/f.h5"
    f.parent.mkdir()
    kps = np.array([[5.0, 5], [20, 30], [30, 10]], np.float32)
    with h5py.File(f, "w") as h:
        h["b.png/keypoints"] = kps
        h["b.png/descriptors"] = np.ones((4, 3), np.float32)
        h["b.png/image_size"] = SIZES["b.png"]
        h["a.png/global_descriptor"] = np.ones(8, np.float32)
    ref = tmp_path / "ref.h5"
    with h5py.File(ref, "w") as h:
        h["a.png/global_descriptor"] = np.ones(8, np.float32)
        h["d.png/keypoints"] = [[3.0, 3], [20, 20]]
    f, m, s = run(tmp_path, features_ref=[ref])
    assert (s.images_built, s.images_fixed) == (2, 2)
    feats = h5_content(f)
    np.testing.assert_array_equal(feats["b.png/keypoints"], kps)
    np.testing.assert_array_equal(feats["b.png/descriptors"], np.ones((4, 3)))
    assert "b.png/scores" not in feats
    np.testing.assert_array_equal(feats["d.png/image_size"], SIZES["d.png"])
    fx = {"b.png": kps, "d.png": np.array([[3.0, 3], [20, 20]])}
    q = quantize_pairs(STORED, data, fx)
    np.testing.assert_array_equal(
        feats["a.png/keypoints"], q.keypoints["a.png"].astype("f4")
    )
    for (n0, n1), m0 in zip(q.pairs, q.matches0):
        np.testing.assert_array_equal(h5_content(m)[f"{n0}/{n1}/matches0"], m0)
    with h5py.File(f, "r") as h:
        assert json.loads(h.attrs[step.REGISTRY]) == ["m.h5"]


def many_pairs(root: Path):
    """40 pairs of 10 images (most stored reversed), 4 raw matches each, and
    3 raw files of a pair outside the run: ``(stored, data, lines)``."""
    rng = np.random.default_rng(0)
    names = [f"i{k}.png" for k in range(10)]
    stored = [(a, b) for a in names for b in names if a < b][:40]
    stored = [p[::-1] if k % 3 else p for k, p in enumerate(stored)]
    root.mkdir()
    data = []
    for k, (n0, n1) in enumerate(stored + [("x.png", "y.png")] * 3):
        data.append(
            {
                "name0": n0,
                "name1": n1,
                "keypoints0": rng.integers(0, 3, (4, 2)) * 9.0 + 2,
                "keypoints1": rng.integers(0, 3, (4, 2)) * 9.0 + 2,
                "scores": rng.uniform(0, 1, 4),
                "size0": (30, 30),
                "size1": (30, 30),
            }
        )
        np.savez(root / f"{k:02d}.npz", **data[-1])
    return stored, data, sorted(tuple(sorted(p)) for p in stored)


def test_many_pairs_and_files(tmp_path, capsys):
    """More raw files and pairs than one task takes (``BATCH``), with raw
    files of other pairs among them: the arrays of ``quantize_pairs``; the
    progress bars count files, images and pairs."""
    stored, data, lines = many_pairs(tmp_path / "raw")
    f, m, s = run(tmp_path, lines)
    q = quantize_pairs(stored, data[:40])
    assert s.pairs == 40
    feats, matches = h5_content(f), h5_content(m)
    for n, kps in q.keypoints.items():
        np.testing.assert_array_equal(feats[f"{n}/keypoints"], kps.astype("f4"))
    for (n0, n1), m0, d in zip(q.pairs, q.matches0, data):
        np.testing.assert_array_equal(matches[f"{n0}/{n1}/matches0"], m0)
        np.testing.assert_array_equal(
            matches[f"{n0}/{n1}/scores"], d["scores"].astype("f4")
        )
    err = capsys.readouterr().err
    for bar in (
        "raw files: 100%.* 43/43 ",
        "images: 100%.* 10/10 ",
        "pairs: 100%.* 40/40 ",
    ):
        assert re.search(bar, err), bar


def test_worker_processes_give_the_same_files(tmp_path):
    """``workers=2``: the files of one process."""
    many_pairs(tmp_path / "raw")
    lines = sorted(tuple(sorted(p)) for p in many_pairs(tmp_path / "x")[0])
    one = run(tmp_path, lines, out="one")
    two = run(tmp_path, lines, out="two", workers=2)
    assert one[2].pairs == two[2].pairs == 40
    for a, b in zip(one[:2], two[:2]):
        assert_same_h5(a, b)


def test_command_line_parser():
    """Options, their types and defaults (those of ``main``), the required
    ones, and the help text of each."""
    p = step.parser()
    required = ["--pairs", "p", "--raw", "r", "--features", "f", "--matches", "m"]
    assert vars(p.parse_args(required)) == {
        "pairs": Path("p"),
        "raw": Path("r"),
        "features": Path("f"),
        "matches": Path("m"),
        "radius": 4.0,
        "min_score": 0.0,
        "method": "cluster",
        "psize": 48,
        "max_kps": None,
        "features_ref": None,
        "overwrite": False,
        "workers": 1,
    }
    args = p.parse_args(required + ["--features_ref", "a", "b", "--max_kps", "3"])
    assert args.features_ref == [Path("a"), Path("b")] and args.max_kps == 3
    for i in range(0, 8, 2):
        with pytest.raises(SystemExit) as e:
            p.parse_args(required[:i] + required[i + 2 :])
        assert e.value.code == 2
    text = " ".join(p.format_help().split())
    assert text.startswith("usage: python -m p2p_hloc.quantize [-h] --pairs PAIRS")
    for part in (
        "Quantize raw pair matches (one .npz per pair, see docs/raw-format.md) "
        "into hloc's features and matches files.",
        "--raw RAW raw-match folder",
        "--psize PSIZE cell size of immatch",
        "--max_kps MAX_KPS keypoints kept per new image",
        "--workers WORKERS processes (default 1)",
    ):
        assert part in text


def test_main_defaults(tmp_path):
    """``main`` adds only the pairs not in the files yet; ``immatch`` cells
    of 48 px: two points 0.6 px apart on either side of x = 48 stay apart."""
    make_raw(tmp_path / "raw")
    p = pairs_file(tmp_path / "p.txt", LINES)
    f, m = main(p, tmp_path / "raw", tmp_path / "f.h5", tmp_path / "m.h5")
    before = h5_content(f), h5_content(m)
    main(p, tmp_path / "raw", f, m, min_score=0.9)
    for a, b in zip(before, (h5_content(f), h5_content(m))):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    raw = tmp_path / "cells"
    raw.mkdir()
    xy = np.array([[47.7, 10.0], [48.3, 10.0]])
    np.savez(raw / "0.npz", name0="x.png", name1="y.png", keypoints0=xy,
             keypoints1=xy, scores=[1.0, 1.0], size0=(100, 100), size1=(100, 100))  # fmt: skip
    p = pairs_file(tmp_path / "q.txt", [("x.png", "y.png")])
    f, _ = main(p, raw, tmp_path / "i/f.h5", tmp_path / "i/m.h5", method="immatch")
    np.testing.assert_array_equal(h5_content(f)["x.png/keypoints"], xy.astype("f4"))
    todo, g, n = [("x.png", "y.png")], tmp_path / "w/f.h5", tmp_path / "w/m.h5"
    step.write_phase(todo, [raw / "0.npz"], g, n, method="immatch")
    np.testing.assert_array_equal(h5_content(g)["x.png/keypoints"], xy.astype("f4"))
    with pytest.raises(RawMatchesError, match=r"^the raw matches: no raw matches"):
        step.write_phase(todo + [("x.png", "z.png")], [raw / "0.npz"], g, n)


@pytest.mark.skipif(
    not Path("/dev/shm").is_dir()
    or os.stat("/dev/shm").st_dev == os.stat(tempfile.gettempdir()).st_dev,
    reason="needs a second file system (/dev/shm)",
)
def test_space_on_two_file_systems(tmp_path, monkeypatch):
    """Features and matches on different file systems: each needs room for
    its own file only."""
    make_raw(tmp_path / "raw")
    shm = Path(tempfile.mkdtemp(dir="/dev/shm"))
    try:
        raw = sum(p.stat().st_size for p in (tmp_path / "raw").glob("*.npz"))
        need = {tmp_path: (64 << 20) + 0.3 * raw, shm: (64 << 20) + 4.2 * raw}
        real = step.shutil.disk_usage
        monkeypatch.setattr(
            step.shutil, "disk_usage", lambda p: real(p)._replace(free=need[Path(p)])
        )
        p = pairs_file(tmp_path / "p.txt", LINES)
        main(p, tmp_path / "raw", tmp_path / "f.h5", shm / "m.h5")
        assert len(h5_content(shm / "m.h5")) == 4 * 5
    finally:
        shutil.rmtree(shm)


def test_a_spill_file_cut_short_is_named(tmp_path):
    """Raw matches read back from a temporary data file that lost its end
    (disk trouble): an error naming it, not arrays of the wrong length."""
    settings = spill.Settings(str(tmp_path), frozenset(), 4.0, 0.0, "cluster", 48, None)
    pool = spill.Workers(settings, 1)
    try:
        (tmp_path / "data-1").write_bytes(bytes(28))
        record = spill.Record("data-1", 4, 3, "<f4", "<f4")
        with pytest.raises(OSError, match=rf"^short read in {tmp_path}/data-1$"):
            spill.side(record, 0)
    finally:
        pool.close()


def test_min_score_applies_to_fixed_images(tmp_path):
    """Raw matches below ``min_score`` do not snap to fixed keypoints."""
    data = make_raw(tmp_path / "raw")
    f, _, _ = run(tmp_path, out="ref")
    fixed = {n: h5_content(f)[f"{n}/keypoints"] for n in ("a.png", "c.png")}
    f, m, _ = run(tmp_path, LINES[1:2], features_ref=[f], min_score=0.8)
    q = quantize_pairs(STORED[1:2], data[1:2], fixed, min_score=0.8)
    q0 = quantize_pairs(STORED[1:2], data[1:2], fixed)
    assert not np.array_equal(q.matches0[0], q0.matches0[0])  # c/a: both fixed
    for (n0, n1), m0 in zip(q.pairs, q.matches0):
        np.testing.assert_array_equal(h5_content(m)[f"{n0}/{n1}/matches0"], m0)
