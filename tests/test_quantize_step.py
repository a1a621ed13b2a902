"""The quantization step on raw folders: same arrays as the in-memory API,
bounded memory, locks, crashes, disk full, overwrite, bad raw files."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import assert_same_h5, h5_content

from p2p_hloc.io.h5 import H5Error, names_to_pair, write_keypoints
from p2p_hloc.io.lock import file_lock
from p2p_hloc.io.raw import RawMatchesError
from p2p_hloc.quantize import main, quantize_pairs, step

REPO = Path(__file__).resolve().parents[1]
SIZES = [np.array([96, 64]), np.array([80, 120])]


def raw_pair(rng, n0: str, n1: str, i0: int, i1: int, n: int = 60) -> dict:
    """Raw matches around 25 points per image (so that pairs share points),
    some outside the image (clipped), float32 or float64."""
    data = {"name0": n0, "name1": n1}
    for side, i in enumerate((i0, i1)):
        size = SIZES[i % 2]
        # 25 points per image, some up to a pixel outside (clipped)
        pool = np.random.default_rng(i).uniform(0, 1, (25, 2)) * (size + 2) - 1
        xy = pool[rng.integers(0, 25, n)] + rng.normal(0, 0.8, (n, 2))
        data[f"keypoints{side}"] = xy.astype(np.float32 if i % 3 else np.float64)
        data[f"size{side}"] = size
    data["scores"] = rng.uniform(0, 1, n).round(2).astype(np.float32)
    return data


def make_raw(root: Path, pairs, seed: int = 0, layout: str = "nested") -> list:
    """A raw folder of ``pairs`` (image ``im<i>.png``); returns the data."""
    rng = np.random.default_rng(seed)
    out = []
    for k, (a, b) in enumerate(pairs):
        data = raw_pair(rng, f"im{a}.png", f"im{b}.png", a, b)
        folder = root / (f"x{k % 3}/y" if layout == "nested" else "")
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(folder / f"p{k}.npz", **data)
        out.append(data)
    return out


def write_pairs(path: Path, pairs) -> Path:
    path.write_text("\n".join(f"im{a}.png im{b}.png" for a, b in pairs))
    return path


PAIRS = [(0, 1), (0, 2), (1, 2), (2, 3), (3, 4), (4, 0), (1, 5), (5, 6)]


def check_consistent(features: Path, matches: Path) -> None:
    """Every pair's matches0 fits the keypoints of both images."""
    with h5py.File(features, "r") as ff, h5py.File(matches, "r") as fm:
        n = 0
        for a in fm:
            for b in fm[a]:
                k0 = ff[a]["keypoints"].shape[0]
                k1 = ff[b]["keypoints"].shape[0]
                m0 = fm[a][b]["matches0"][()]
                assert len(m0) == k0 and m0.max(initial=-1) < k1, (a, b)
                n += 1
    assert n > 0


@pytest.mark.parametrize("workers", [1, 2])
def test_step_equals_in_memory(tmp_path, workers):
    """``python -m p2p_hloc.quantize`` gives exactly the arrays of
    ``quantize_pairs``, with fixed images (features_ref), min_score and
    max_kps; duplicates and reversed lines of the pairs file are handled."""
    data = make_raw(tmp_path / "raw", PAIRS)
    fixed = {"im6.png": np.array([[10.0, 10], [40, 50], [70, 100]])}
    ref = tmp_path / "ref.h5"
    write_keypoints(ref, "im6.png", fixed["im6.png"], SIZES[0])
    lines = PAIRS + [(1, 0), (3, 3)]  # a repeat (reversed) and a self-pair
    pairs_file = write_pairs(tmp_path / "pairs.txt", lines)
    out = tmp_path / "out"
    step.write_phase(
        step.unique_pairs(step.parse_pairs(pairs_file)),
        step.raw_files(tmp_path / "raw"),
        out / "f.h5",
        out / "m.h5",
        [ref],
        min_score=0.2,
        max_kps=20,
        workers=workers,
    )
    names = [(d["name0"], d["name1"]) for d in data]
    q = quantize_pairs(names, data, fixed, min_score=0.2, max_kps=20)
    feats, matches = h5_content(out / "f.h5"), h5_content(out / "m.h5")
    assert {k.rsplit("/", 1)[0] for k in feats} == {f"im{i}.png" for i in range(7)}
    for name, kps in q.keypoints.items():
        np.testing.assert_array_equal(
            feats[f"{name}/keypoints"], kps.astype(np.float32)
        )
        np.testing.assert_array_equal(
            feats[f"{name}/scores"], q.scores[name].astype(np.float32)
        )
        assert len(kps) <= 20
    np.testing.assert_array_equal(
        feats["im6.png/keypoints"], fixed["im6.png"].astype(np.float32)
    )
    for (n0, n1), m0, s0, d in zip(q.pairs, q.matches0, q.scores0, data):
        key = names_to_pair(n0, n1)
        np.testing.assert_array_equal(matches[f"{key}/matches0"], m0)
        np.testing.assert_array_equal(
            matches[f"{key}/matching_scores0"], s0.astype(np.float16)
        )
        assert matches[f"{key}/keypoints0"].dtype == np.float32
        w, h = d["size0"]
        kp = matches[f"{key}/keypoints0"]
        assert np.all((kp > 0) & (kp < [w - 1, h - 1]))  # clipped inside
    check_consistent(out / "f.h5", out / "m.h5")
    assert sorted(os.listdir(out)) == ["f.h5", "f.h5.lock", "m.h5", "m.h5.lock"]


def test_order_of_pairs_and_files_does_not_matter(tmp_path):
    make_raw(tmp_path / "a/raw", PAIRS, layout="nested")
    # other file names and folders, pairs in another order and direction
    make_raw(tmp_path / "b/raw", PAIRS, layout="flat")
    for k, f in enumerate(sorted((tmp_path / "b/raw").glob("*.npz"))):
        f.rename(f.with_name(f"z{len(PAIRS) - k}.npz"))
    shuffled = [PAIRS[i] for i in (3, 1, 7, 0, 2, 6, 4, 5)]
    shuffled[0] = shuffled[0][::-1]
    for run, pairs in (("a", PAIRS), ("b", shuffled)):
        out = tmp_path / run
        main(write_pairs(out / "p.txt", pairs), out / "raw", out / "f.h5", out / "m.h5")
    assert_same_h5(tmp_path / "a/f.h5", tmp_path / "b/f.h5")
    assert_same_h5(tmp_path / "a/m.h5", tmp_path / "b/m.h5")


def test_immatch_follows_pairs_order(tmp_path):
    data = make_raw(tmp_path / "raw", PAIRS)
    main(
        write_pairs(tmp_path / "p.txt", PAIRS),
        tmp_path / "raw",
        tmp_path / "f.h5",
        tmp_path / "m.h5",
        method="immatch",
    )
    q = quantize_pairs([(d["name0"], d["name1"]) for d in data], data, method="immatch")
    feats = h5_content(tmp_path / "f.h5")
    for name, kps in q.keypoints.items():
        np.testing.assert_array_equal(
            feats[f"{name}/keypoints"], kps.astype(np.float32)
        )


def test_adds_to_existing_files(tmp_path):
    """A second run adds its pairs; images already in the features file keep
    their keypoints (localization mode), a run with nothing new changes
    nothing; the result equals one in-memory run with those images fixed."""
    data = make_raw(tmp_path / "raw", PAIRS)
    f, m = tmp_path / "f.h5", tmp_path / "m.h5"
    main(write_pairs(tmp_path / "a.txt", PAIRS[:4]), tmp_path / "raw", f, m)
    first = h5_content(f)
    main(write_pairs(tmp_path / "b.txt", PAIRS), tmp_path / "raw", f, m)
    feats = h5_content(f)
    for k, v in first.items():
        np.testing.assert_array_equal(feats[k], v)
    fixed = {
        n: first[f"{n}/keypoints"] for n in ("im0.png", "im1.png", "im2.png", "im3.png")
    }
    q = quantize_pairs([(d["name0"], d["name1"]) for d in data[4:]], data[4:], fixed)
    matches = h5_content(m)
    for (n0, n1), m0 in zip(q.pairs, q.matches0):
        np.testing.assert_array_equal(matches[f"{names_to_pair(n0, n1)}/matches0"], m0)
    check_consistent(f, m)
    before = (f.read_bytes(), m.read_bytes())
    main(write_pairs(tmp_path / "c.txt", PAIRS[::-1]), tmp_path / "raw", f, m)
    assert (f.read_bytes(), m.read_bytes()) == before


def test_bad_raw_files_are_named(tmp_path):
    make_raw(tmp_path / "raw", PAIRS[:2])
    pairs = write_pairs(tmp_path / "p.txt", PAIRS[:2])
    f, m = tmp_path / "out/f.h5", tmp_path / "out/m.h5"
    bad = tmp_path / "raw/bad.npz"
    good = dict(np.load(next((tmp_path / "raw").rglob("p0.npz"))))
    cases = [
        ({k: v for k, v in good.items() if k != "size1"}, "missing size1"),
        ({**good, "scores": good["scores"][:-1]}, "differ in length"),
        ({**good, "keypoints0": good["keypoints0"][:, :1]}, "shape"),
        ({**good, "keypoints1": np.full_like(good["keypoints1"], np.nan)}, "NaN"),
        ({**good, "size0": np.array([96.5, 64])}, "size0"),
    ]
    for data, message in cases:
        np.savez(bad, **data)
        with pytest.raises(RawMatchesError, match=f"bad.npz.*{message}"):
            main(pairs, tmp_path / "raw", f, m)
    with pytest.raises(RawMatchesError, match="bad.npz.*size0"):  # from a worker
        main(pairs, tmp_path / "raw", f, m, workers=2)
    bad.write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(RawMatchesError, match="bad.npz"):
        main(pairs, tmp_path / "raw", f, m)
    np.savez(bad, **good)  # the same pair twice
    with pytest.raises(
        RawMatchesError, match="bad.npz and .*p0.npz|p0.npz and .*bad.npz"
    ):
        main(pairs, tmp_path / "raw", f, m)
    bad.unlink()
    with pytest.raises(
        RawMatchesError, match=r"raw: no raw matches for 1 of the 3 pairs"
    ):
        main(write_pairs(tmp_path / "q.txt", PAIRS[:3]), tmp_path / "raw", f, m)
    np.savez(
        bad,
        **{**good, "name0": "im7.png", "name1": "im0.png", "size1": np.array([5, 5])},
    )
    with pytest.raises(
        RawMatchesError, match=r"npz: image im0.png has size .* elsewhere"
    ):
        main(
            write_pairs(tmp_path / "r.txt", PAIRS[:2] + [(7, 0)]),
            tmp_path / "raw",
            f,
            m,
        )
    bad.unlink()
    # a fixed image whose stored size is not its raw matches' size
    write_keypoints(tmp_path / "ref.h5", "im0.png", np.ones((2, 2)), (10, 10))
    with pytest.raises(H5Error, match=r"ref.h5: image im0.png has size \[10, 10\]"):
        main(pairs, tmp_path / "raw", f, m, features_ref=tmp_path / "ref.h5")
    assert not (tmp_path / "out").exists() or set(os.listdir(tmp_path / "out")) <= {
        "f.h5.lock",
        "m.h5.lock",
    }


def test_cli_one_error_line(tmp_path):
    make_raw(tmp_path / "raw", PAIRS[:2])
    (tmp_path / "raw/x0/y/p0.npz").write_bytes(b"garbage")
    cmd = [
        sys.executable,
        "-m",
        "p2p_hloc.quantize",
        "--pairs",
        write_pairs(tmp_path / "p.txt", PAIRS[:2]),
    ]
    cmd += [
        "--raw",
        tmp_path / "raw",
        "--features",
        tmp_path / "f.h5",
        "--matches",
        tmp_path / "m.h5",
    ]
    p = subprocess.run(
        list(map(str, cmd)),
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert p.returncode == 2
    assert (
        p.stderr.strip()
        .splitlines()[-1]
        .startswith("python -m p2p_hloc.quantize: error: corrupt raw-match file")
    )
    assert "p0.npz" in p.stderr and "Traceback" not in p.stderr


def test_public_format_gives_the_files_of_match_pairs(tmp_path):
    """A raw folder written by another program (a flat folder, our matcher's
    output in hloc's convention, as a LoFTR user would write it) gives the
    files of ``match_pairs`` itself."""
    from test_match_pairs import make_scene

    from p2p_hloc.confs import confs
    from p2p_hloc.io import to_hloc_coords
    from p2p_hloc.match_pairs import main as match_pairs
    from p2p_hloc.matchers import build_matcher

    names = make_scene(tmp_path / "images", 3)
    pairs = [(names[0], names[1]), (names[2], names[0]), (names[1], names[2])]
    pairs_file = tmp_path / "pairs.txt"
    pairs_file.write_text("\n".join(" ".join(p) for p in pairs))
    conf = confs["sift"]
    f, m = match_pairs(conf, pairs_file, tmp_path / "images", tmp_path / "ours")
    matcher = build_matcher(conf, None, "cpu")
    (tmp_path / "raw").mkdir()
    for k, (n0, n1) in enumerate(pairs):
        p0, p1 = (matcher.prepare(tmp_path / "images" / n) for n in (n0, n1))
        pred = matcher.match(p0, p1)
        np.savez(
            tmp_path / "raw" / f"{k}.npz",
            name0=n0,
            name1=n1,
            keypoints0=to_hloc_coords(pred["keypoints0"]),
            keypoints1=to_hloc_coords(pred["keypoints1"]),
            scores=pred["scores"],
            size0=p0["size"],
            size1=p1["size"],
        )
    q = conf["quantization"]
    f2, m2 = main(
        pairs_file,
        tmp_path / "raw",
        tmp_path / "step/f.h5",
        tmp_path / "step/m.h5",
        radius=q["radius"],
        min_score=q["min_score"],
        method=q["method"],
    )
    assert_same_h5(f, f2)
    assert_same_h5(m, m2)


def ring(n_images: int, k: int):
    """Each image paired with its ``k`` next ones: ``2 k`` pairs an image."""
    return [(i, (i + d) % n_images) for i in range(n_images) for d in range(1, k + 1)]


MEASURE = """
import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True, capture_output=True)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def peak_rss_mb(args) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.split()[-1]) / 1024


def test_memory_follows_the_largest_image_not_the_run(tmp_path):
    """Peak RSS of the step in a subprocess: 100 pairs (200,000 raw matches)
    and 400 pairs (800,000, 1.6 million points) with the same number of
    pairs per image. Limit: 15 MB more for 4x the pairs (holding the raw
    matches alone would take 4 x 2000 x 20 B = 48 MB more), and 120 MB above
    a process that only imports the step."""
    rng = np.random.default_rng(0)
    base = peak_rss_mb([sys.executable, "-c", "import p2p_hloc.quantize.step"])
    peaks = []
    for n_images in (25, 100):
        pairs = ring(n_images, 2)
        raw = tmp_path / f"raw{n_images}"
        raw.mkdir()
        for k, (a, b) in enumerate(pairs):
            size = SIZES[0]
            np.savez(
                raw / f"{k}.npz",
                name0=f"im{a}.png",
                name1=f"im{b}.png",
                keypoints0=rng.uniform(0, 95, (2000, 2)).astype(np.float32),
                keypoints1=rng.uniform(0, 63, (2000, 2)).astype(np.float32),
                scores=rng.uniform(0, 1, 2000).astype(np.float32),
                size0=size,
                size1=size,
            )
        args = [sys.executable, "-m", "p2p_hloc.quantize", "--raw", raw]
        args += ["--pairs", write_pairs(tmp_path / f"p{n_images}.txt", pairs)]
        args += ["--features", tmp_path / f"f{n_images}.h5"]
        args += ["--matches", tmp_path / f"m{n_images}.h5"]
        peaks.append(peak_rss_mb(args))
    print(
        f"peak RSS: import only {base:.0f} MB, 100 pairs {peaks[0]:.0f} MB, "
        f"400 pairs {peaks[1]:.0f} MB"
    )
    assert peaks[1] - peaks[0] < 15
    assert peaks[1] - base < 120


def test_two_runs_share_a_features_file(tmp_path):
    """Two processes write the same features file with different pairs (and
    matches files) at the same time: the second waits for the first's lock;
    both exit 0, the features file has every image and every ``matches0``
    fits its images' keypoints."""
    make_raw(tmp_path / "raw", PAIRS)
    f = tmp_path / "feats.h5"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs, logs = [], []
    with file_lock(f, "the test"):
        for i, part in enumerate((PAIRS[:5], PAIRS[3:])):
            cmd = [sys.executable, "-m", "p2p_hloc.quantize", "--raw", tmp_path / "raw"]
            cmd += ["--pairs", write_pairs(tmp_path / f"p{i}.txt", part)]
            cmd += ["--features", f, "--matches", tmp_path / f"m{i}.h5"]
            logs.append(tmp_path / f"log{i}")
            with open(logs[-1], "w") as log:
                procs.append(subprocess.Popen(list(map(str, cmd)), env=env, stderr=log))
        t = time.time()
        while not all("Waiting for" in p.read_text() for p in logs):
            assert time.time() - t < 120 and all(p.poll() is None for p in procs)
            time.sleep(0.1)
    assert [p.wait() for p in procs] == [0, 0]
    with h5py.File(f, "r") as h:
        assert set(h) == {f"im{i}.png" for i in range(7)}
    for i in range(2):
        check_consistent(f, tmp_path / f"m{i}.h5")
    assert not [p for p in os.listdir(tmp_path) if "tmp" in p or "spill" in p]


def test_killed_anywhere_the_rerun_gives_the_same_files(tmp_path):
    """SIGKILL while the temporary files are written, and a stop between the
    two renames: the rerun removes what was left and gives the files of an
    uninterrupted run."""
    pairs = ring(40, 3)
    make_raw(tmp_path / "raw", pairs)
    pairs_file = write_pairs(tmp_path / "p.txt", pairs)
    clean = main(
        pairs_file, tmp_path / "raw", tmp_path / "clean/f.h5", tmp_path / "clean/m.h5"
    )
    out = tmp_path / "killed"
    out.mkdir()
    cmd = [sys.executable, "-m", "p2p_hloc.quantize", "--raw", tmp_path / "raw"]
    cmd += [
        "--pairs",
        pairs_file,
        "--features",
        out / "f.h5",
        "--matches",
        out / "m.h5",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(list(map(str, cmd)), env=env, stderr=subprocess.DEVNULL)
    t = time.time()
    while not list(out.glob("m.h5.tmp-*")) and proc.poll() is None:
        assert time.time() - t < 120
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "m.h5").exists(), "the run was not killed mid-way"
    left = [p for p in os.listdir(out) if "tmp" in p or "spill" in p]
    assert left  # what kill -9 leaves; the rerun removes it
    main(pairs_file, tmp_path / "raw", out / "f.h5", out / "m.h5")
    assert sorted(os.listdir(out)) == ["f.h5", "f.h5.lock", "m.h5", "m.h5.lock"]
    for a, b in zip(clean, (out / "f.h5", out / "m.h5")):
        assert_same_h5(a, b)


def test_stopped_between_the_renames(tmp_path, monkeypatch):
    """A run stopped after renaming the features file, before the matches
    file, is finished by the rerun as if it had not stopped: the images it
    had built are rebuilt, not taken as fixed (``<matches>.pending.json``),
    also when the files held other images and pairs before."""
    make_raw(tmp_path / "raw", PAIRS)
    pairs_file = write_pairs(tmp_path / "p.txt", PAIRS)
    start = tmp_path / "start"
    main(
        write_pairs(tmp_path / "a.txt", PAIRS[:2]),
        tmp_path / "raw",
        start / "f.h5",
        start / "m.h5",
    )
    real = Path.replace

    def stop(self, target):
        if self.name.startswith("m.h5.tmp-"):
            raise KeyboardInterrupt  # the process dies before the second rename
        return real(self, target)

    for with_start in (False, True):
        runs = []
        for name in ("clean", "stopped"):
            out = tmp_path / f"{name}-{with_start}"
            if with_start:
                shutil.copytree(start, out)
            if name == "stopped":
                monkeypatch.setattr(Path, "replace", stop)
                with pytest.raises(KeyboardInterrupt):
                    main(pairs_file, tmp_path / "raw", out / "f.h5", out / "m.h5")
                monkeypatch.setattr(Path, "replace", real)
                assert (out / "m.h5.pending.json").exists()
            main(pairs_file, tmp_path / "raw", out / "f.h5", out / "m.h5")
            assert not (out / "m.h5.pending.json").exists()
            runs.append(out)
        for file in ("f.h5", "m.h5"):
            assert_same_h5(runs[0] / file, runs[1] / file)
        check_consistent(runs[1] / "f.h5", runs[1] / "m.h5")


def test_disk_full(tmp_path, monkeypatch):
    """Not enough free space: a clear error before anything is written; a
    write that fails with ENOSPC half-way: no temporary file is left and the
    existing files are unchanged."""
    make_raw(tmp_path / "raw", PAIRS)
    pairs_file = write_pairs(tmp_path / "p.txt", PAIRS)
    f, m = tmp_path / "out/f.h5", tmp_path / "out/m.h5"
    main(write_pairs(tmp_path / "a.txt", PAIRS[:3]), tmp_path / "raw", f, m)
    before = (f.read_bytes(), m.read_bytes())
    real = shutil.disk_usage
    monkeypatch.setattr(
        step.shutil, "disk_usage", lambda p: real(p)._replace(free=10 << 20)
    )
    with pytest.raises(step.DiskSpaceError, match=r"not enough free space in .*out"):
        main(pairs_file, tmp_path / "raw", f, m)
    monkeypatch.setattr(step.shutil, "disk_usage", real)
    calls = []

    def full(*args, **kw):
        calls.append(1)
        if len(calls) > 2:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(step.MatchesWriter, "add", full)
    with pytest.raises(OSError, match="No space left"):
        main(pairs_file, tmp_path / "raw", f, m)
    assert sorted(os.listdir(f.parent)) == ["f.h5", "f.h5.lock", "m.h5", "m.h5.lock"]
    assert (f.read_bytes(), m.read_bytes()) == before


def test_overwrite_redoes_this_runs_pairs_and_keeps_shared_images(tmp_path, logs):
    """``overwrite`` never deletes the shared features file: the images that
    another matches file uses keep their keypoints (and it says so); the
    others are rebuilt, and the run's pairs are redone."""
    make_raw(tmp_path / "raw", PAIRS)
    f, m_db, m_q = tmp_path / "f.h5", tmp_path / "db.h5", tmp_path / "q.h5"
    db, q = PAIRS[:5], PAIRS[6:]  # q: im1, im5, im6; shares im1 with db
    main(write_pairs(tmp_path / "db.txt", db), tmp_path / "raw", f, m_db)
    main(write_pairs(tmp_path / "q.txt", q), tmp_path / "raw", f, m_q)
    before = h5_content(f)
    main(
        write_pairs(tmp_path / "db.txt", db),
        tmp_path / "raw",
        f,
        m_db,
        min_score=0.5,
        overwrite=True,
    )
    assert "1 images keep their keypoints" in logs.text and "q.h5" in logs.text
    after = h5_content(f)
    np.testing.assert_array_equal(
        after["im1.png/keypoints"], before["im1.png/keypoints"]
    )
    check_consistent(f, m_db)
    check_consistent(f, m_q)
    fresh = tmp_path / "fresh"
    main(
        write_pairs(tmp_path / "db.txt", db),
        tmp_path / "raw",
        fresh / "f.h5",
        fresh / "m.h5",
        min_score=0.5,
    )
    rebuilt = h5_content(fresh / "f.h5")
    for n in ("im0.png", "im2.png", "im3.png", "im4.png"):
        assert not np.array_equal(after[f"{n}/keypoints"], before[f"{n}/keypoints"])
        np.testing.assert_array_equal(
            after[f"{n}/keypoints"], rebuilt[f"{n}/keypoints"]
        )
