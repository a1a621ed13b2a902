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
import multiprocessing
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
    return (rng.uniform(0, 1, (pool, 2)) * (size - 1)).astype(np.float32), size


def _generate(job) -> None:
    root, start, pairs, index, n_matches, pool, seed = job
    rng = np.random.default_rng([seed, start])
    cache = {}
    for k, (n0, n1) in enumerate(pairs, start):
        data = {"name0": n0, "name1": n1}
        for side, name in enumerate((n0, n1)):
            if name not in cache:
                cache[name] = image_points(index[name], pool, seed)
            pts, size = cache[name]
            xy = pts[rng.integers(0, pool, n_matches)]
            xy += rng.normal(0, 0.7, xy.shape).astype(np.float32)
            data[f"keypoints{side}"] = xy
            data[f"size{side}"] = size
        data["scores"] = rng.uniform(0, 1, n_matches).astype(np.float32)
        folder = root / str(k // 1000)
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(folder / f"{k}.npz", **data)


def generate(
    root: Path,
    pairs: List[Tuple[str, str]],
    index: dict,
    n_matches: int,
    pool: int,
    seed: int,
) -> None:
    """One ``.npz`` per pair under ``root/<k // 1000>/<k>.npz``, written by
    two processes."""
    step = 2000
    jobs = [
        (root, s, pairs[s : s + step], index, n_matches, pool, seed)
        for s in range(0, len(pairs), step)
    ]
    with multiprocessing.get_context("fork").Pool(2) as p:
        p.map(_generate, jobs, chunksize=1)


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
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print("MAXRSS_KB", r.ru_maxrss, "CPU_S", r.ru_utime + r.ru_stime, file=sys.stderr)
sys.exit(code)
"""


def run(cmd: List[str]) -> Tuple[float, float, float, str]:
    """Wall time, CPU time (all its processes), peak RSS (MB, the largest
    ``ru_maxrss`` of its processes) and output of a subprocess."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t = time.perf_counter()
    p = subprocess.run(
        [sys.executable, "-c", WRAP, *cmd], capture_output=True, text=True, env=env
    )
    wall = time.perf_counter() - t
    if p.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{p.stderr[-3000:]}")
    rss, cpu = re.findall(r"MAXRSS_KB (\d+) CPU_S ([\d.]+)", p.stderr)[-1]
    return wall, float(cpu), int(rss) / 1024, p.stdout + p.stderr


def split(log: str) -> dict:
    """The step's ``Seconds: read 1.0, ...`` log line as a dict."""
    m = re.findall(r"Seconds: (.*)\.", log)
    return {k: float(v) for k, v in (s.rsplit(" ", 1) for s in m[-1].split(", "))}


def step(pairs: Path, raw: Path, out: Path, args) -> dict:
    """Run the step (fresh process) into ``out/feats.h5``, ``matches.h5``."""
    cmd = [sys.executable, "-m", "p2p_hloc.quantize", "--pairs", str(pairs)]
    cmd += ["--raw", str(raw), "--features", str(out / "feats.h5")]
    cmd += ["--matches", str(out / "matches.h5"), "--min_score", str(args.min_score)]
    cmd += ["--workers", str(args.workers)]
    wall, cpu, rss, log = run(cmd)
    return {
        "step_s": round(wall, 1),
        "step_cpu_s": round(cpu, 1),
        "peak_rss_mb": round(rss),
        "phases_s": {k: round(v, 1) for k, v in split(log).items()},
        "features_mb": round((out / "feats.h5").stat().st_size / 2**20),
        "matches_mb": round((out / "matches.h5").stat().st_size / 2**20),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", type=Path, default=Path("/tmp/bench_quantize"))
    p.add_argument("--images", type=int, default=4328)
    p.add_argument("--sides", type=float, default=26.2, help="pairs per image")
    p.add_argument("--matches", type=int, default=1300, help="raw matches per pair")
    p.add_argument("--pool", type=int, default=8000, help="points per image")
    p.add_argument("--min_score", type=float, default=0.25)
    p.add_argument("--workers", type=int, default=1, help="of the step")
    p.add_argument("--queries", type=int, default=0, help="localization run")
    p.add_argument("--per_query", type=int, default=30)
    p.add_argument("--reuse", action="store_true", help="keep generated data")
    p.add_argument("--generate_only", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    root = args.root
    db = [f"db/{i:05d}.jpg" for i in range(args.images)]
    index = {n: i for i, n in enumerate(db)}
    pairs = [(db[a], db[b]) for a, b in pair_graph(args.images, args.sides, args.seed)]
    queries = [f"query/{q:04d}.jpg" for q in range(args.queries)]
    index.update({q: args.images + i for i, q in enumerate(queries)})
    rng = np.random.default_rng(args.seed + 1)
    qpairs = [
        (q, db[r])
        for q in queries
        for r in rng.choice(args.images, args.per_query, replace=False)
    ]
    if not (args.reuse and (root / "pairs-db.txt").exists()):
        shutil.rmtree(root, ignore_errors=True)
        t = time.perf_counter()
        for name, prs in (("db", pairs), ("query", qpairs)):
            generate(
                root / f"raw-{name}", prs, index, args.matches, args.pool, args.seed
            )
            (root / f"pairs-{name}.txt").write_text("\n".join(map(" ".join, prs)))
        print(
            f"generated {len(pairs) + len(qpairs)} pairs in "
            f"{time.perf_counter() - t:.0f} s"
        )
    raw = root / "raw-db"
    size = sum(f.stat().st_size for f in raw.rglob("*.npz"))
    print(
        f"{args.images} images, {len(pairs)} pairs ({2 * len(pairs) / args.images:.1f}"
        f" pair sides per image), {args.matches} raw matches per pair, scores "
        f"U(0, 1), min_score {args.min_score}: {size / 2**30:.2f} GiB of raw files"
    )
    if args.generate_only:
        return
    for f in raw.rglob("*.npz"):  # both timings with the files in the page cache
        f.read_bytes()
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    read, read_cpu, _, log = run([sys.executable, "-c", READ, str(raw)])
    out = root / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    result = {"read_only_s": round(read, 1), "read_only_cpu_s": round(read_cpu, 1)}
    result.update(step(root / "pairs-db.txt", raw, out, args))
    result["ratio"] = round(result["step_s"] / read, 2)
    result["cpu_ratio"] = round(result["step_cpu_s"] / read_cpu, 2)
    result["load_average_after"] = round(os.getloadavg()[0], 1)
    print(json.dumps(result, indent=1))
    if qpairs:
        loc = step(root / "pairs-query.txt", root / "raw-query", out, args)
        print(json.dumps({"localization_pairs": len(qpairs), **loc}, indent=1))


if __name__ == "__main__":
    main()
