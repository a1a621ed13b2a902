"""The quantization step at Aachen scale on generated raw matches.

Generates a raw folder (the public format, docs/raw-format.md) on a pair graph
like Aachen v1.0's database (4,328 images, about 26 pair sides per image:
each camera paired with its nearest cameras), 1,300 raw matches per pair with
scores U(0, 1), drawn around a fixed set of points per image so that the
pairs of an image share points as real matches do. Then, each in a fresh
subprocess: reading every raw file once (``np.load``, every array), and
``python -m p2p_hloc.quantize`` on it (``--min_score 0.25``); prints their
wall times, the ratio, the step's peak RSS and the split of its time.
``--queries`` adds a second run in localization mode (queries paired with
database images, whose keypoints stay fixed) that adds to the same files, to
time the copies of the existing files.

    python benchmarks/bench_quantize.py --root /tmp/bq            # full size
    python benchmarks/bench_quantize.py --root /tmp/bq --reuse    # keep data
    python benchmarks/bench_quantize.py --images 400 --root /tmp/bq-small
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Tuple

import numpy as np
from scipy.spatial import cKDTree

REPO = Path(__file__).resolve().parents[1]
SIZES = np.array([[1600, 1067], [1067, 1600], [1600, 1200], [1200, 1600]])


def pair_graph(n: int, sides: float, seed: int = 0) -> List[Tuple[int, int]]:
    """Pairs of ``n`` cameras at random places: each camera with its nearest
    ones, ``k`` chosen so that an image is in about ``sides`` pairs."""
    xy = np.random.default_rng(seed).uniform(0, 1, (n, 2))
    _, nn = cKDTree(xy).query(xy, int(sides) + 1)
    best = None
    for k in range(max(1, int(sides / 2)), int(sides) + 1):
        a = np.repeat(np.arange(n), k)
        b = nn[:, 1 : k + 1].ravel()
        pairs = np.unique(np.sort(np.stack([a, b], 1), 1), axis=0)
        if best is None or abs(2 * len(pairs) / n - sides) < abs(
            2 * len(best) / n - sides
        ):
            best = pairs
    return [tuple(map(int, p)) for p in best]


def image_points(i: int, pool: int, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """The points matches of image ``i`` are drawn around, and its size."""
    size = SIZES[i % len(SIZES)]
    rng = np.random.default_rng([seed, i])
    return rng.uniform(0, 1, (pool, 2)) * (size - 1), size


def generate(
    root: Path,
    pairs: List[Tuple[str, str]],
    index: dict,
    n_matches: int,
    pool: int,
    seed: int,
) -> None:
    """One ``.npz`` per pair under ``root/<k // 1000>/<k>.npz``."""
    rng = np.random.default_rng(seed)
    for k, (n0, n1) in enumerate(pairs):
        data = {"name0": n0, "name1": n1}
        for side, name in enumerate((n0, n1)):
            pts, size = image_points(index[name], pool, seed)
            xy = pts[rng.integers(0, pool, n_matches)]
            xy += rng.normal(0, 0.7, xy.shape)
            data[f"keypoints{side}"] = xy.astype(np.float32)
            data[f"size{side}"] = size
        data["scores"] = rng.uniform(0, 1, n_matches).astype(np.float32)
        folder = root / str(k // 1000)
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(folder / f"{k}.npz", **data)


READ = """
import sys, time, numpy as np
from pathlib import Path
t = time.perf_counter()
n = 0
for path in sorted(Path(sys.argv[1]).rglob("*.npz")):
    with np.load(path) as f:
        n += sum(f[k].size for k in f.files)
print(time.perf_counter() - t)
"""


WRAP = """
import resource, subprocess, sys
code = subprocess.run(sys.argv[1:]).returncode
print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)
sys.exit(code)
"""


def run(cmd: List[str]) -> Tuple[float, float, str]:
    """Wall time, peak RSS (MB, ``ru_maxrss`` of a fresh parent) and output
    of a subprocess."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t = time.perf_counter()
    p = subprocess.run(
        [sys.executable, "-c", WRAP, *cmd], capture_output=True, text=True, env=env
    )
    wall = time.perf_counter() - t
    if p.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{p.stderr[-3000:]}")
    rss = int(re.findall(r"MAXRSS_KB (\d+)", p.stderr)[-1])
    return wall, rss / 1024, p.stdout + p.stderr


def split(log: str) -> dict:
    """The step's ``Seconds: read 1.0, ...`` log line as a dict."""
    m = re.findall(r"Seconds: (.*)\.", log)
    return {k: float(v) for k, v in (s.rsplit(" ", 1) for s in m[-1].split(", "))}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", type=Path, default=Path("/tmp/bench_quantize"))
    p.add_argument("--images", type=int, default=4328)
    p.add_argument("--sides", type=float, default=26.2, help="pairs per image")
    p.add_argument("--matches", type=int, default=1300, help="raw matches per pair")
    p.add_argument("--pool", type=int, default=8000, help="points per image")
    p.add_argument("--min_score", type=float, default=0.25)
    p.add_argument("--queries", type=int, default=0, help="localization run")
    p.add_argument("--per_query", type=int, default=30)
    p.add_argument("--reuse", action="store_true", help="keep generated data")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    root = args.root
    db = [f"db/{i:05d}.jpg" for i in range(args.images)]
    index = {n: i for i, n in enumerate(db)}
    pairs = [(db[a], db[b]) for a, b in pair_graph(args.images, args.sides, args.seed)]
    raw = root / "raw"
    if not (args.reuse and (root / "pairs-db.txt").exists()):
        shutil.rmtree(root, ignore_errors=True)
        t = time.perf_counter()
        generate(raw, pairs, index, args.matches, args.pool, args.seed)
        (root / "pairs-db.txt").write_text("\n".join(" ".join(p) for p in pairs))
        print(f"generated {len(pairs)} pairs in {time.perf_counter() - t:.0f} s")
    sides = 2 * len(pairs) / args.images
    size = sum(f.stat().st_size for f in raw.rglob("*.npz"))
    print(
        f"{args.images} images, {len(pairs)} pairs ({sides:.1f} pair sides per "
        f"image), {args.matches} raw matches per pair, {size / 2**30:.2f} GiB"
    )
    out = root / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    read, _, log = run([sys.executable, "-c", READ, str(raw)])
    step = [
        sys.executable,
        "-m",
        "p2p_hloc.quantize",
        "--pairs",
        str(root / "pairs-db.txt"),
    ]
    step += ["--raw", str(raw), "--features", str(out / "feats.h5")]
    step += [
        "--matches",
        str(out / "matches-db.h5"),
        "--min_score",
        str(args.min_score),
    ]
    wall, rss, log = run(step)
    phases = split(log)
    result = {
        "read_only_s": round(read, 1),
        "step_s": round(wall, 1),
        "ratio": round(wall / read, 2),
        "peak_rss_mb": round(rss),
        "phases_s": phases,
        "features_mb": round((out / "feats.h5").stat().st_size / 2**20),
        "matches_mb": round((out / "matches-db.h5").stat().st_size / 2**20),
    }
    print(json.dumps(result, indent=1))
    if args.queries:
        rng = np.random.default_rng(args.seed + 1)
        qpairs, qindex = [], {}
        for q in range(args.queries):
            name = f"query/{q:04d}.jpg"
            qindex[name] = args.images + q
            for r in rng.choice(args.images, args.per_query, replace=False):
                qpairs.append((name, db[r]))
        qraw = root / "raw-query"
        shutil.rmtree(qraw, ignore_errors=True)
        generate(qraw, qpairs, {**index, **qindex}, args.matches, args.pool, args.seed)
        (root / "pairs-query.txt").write_text("\n".join(" ".join(p) for p in qpairs))
        step = [
            sys.executable,
            "-m",
            "p2p_hloc.quantize",
            "--pairs",
            str(root / "pairs-query.txt"),
        ]
        step += ["--raw", str(qraw), "--features", str(out / "feats.h5")]
        step += [
            "--matches",
            str(out / "matches-db.h5"),
            "--min_score",
            str(args.min_score),
        ]
        wall, rss, log = run(step)
        print(
            json.dumps(
                {
                    "localization_pairs": len(qpairs),
                    "step_s": round(wall, 1),
                    "phases_s": split(log),
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
