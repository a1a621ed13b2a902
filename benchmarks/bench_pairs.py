"""Time per pair of Patch2Pix over a pairs list where images repeat.

``--queries`` query images are each paired with ``--db`` database images
(default 2 x 20: every query is in 20 pairs), hloc's localization layout.
Images are random similarity warps of the golden photos at ``size x 3/4
size``. Two runners, each configuration in a fresh subprocess (peak RSS):

- ``runner``: ``p2p_hloc.match_pairs.main`` with the ``patch2pix`` conf and
  the golden weights (pairs in cache order, features cached per image,
  quantization, h5 files);
- ``loop``: a plain loop over the model's ``forward`` in file order with an LRU
  cache of backbone features (4 images);

each at every ``--precisions`` value.

Usage::

    python3 benchmarks/bench_pairs.py
    python3 benchmarks/bench_pairs.py --queries 1 --db 20 --modes loop
"""

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from pathlib import Path
from typing import List

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GOLDEN = Path(os.environ.get("P2P_GOLDEN", ROOT.parent / "shared" / "golden"))
WEIGHTS = GOLDEN / "patch2pix_random_fp16.pth"


def make_dataset(folder: Path, queries: int, db: int, size: int) -> Path:
    """Write the images and the pairs file; returns the pairs file."""
    from PIL import Image

    rng = random.Random(0)
    bases = [
        Image.open(GOLDEN / f"pair{p}_{i}.png").convert("RGB")
        for p in "AB"
        for i in (1, 2)
    ]
    names = [f"q{i:02d}.png" for i in range(queries)] + [
        f"db{i:02d}.png" for i in range(db)
    ]
    for name in names:
        im = rng.choice(bases).resize((size, size * 3 // 4), Image.BICUBIC)
        angle, scale = rng.uniform(-10, 10), rng.uniform(0.9, 1.1)
        im = im.rotate(angle, Image.BILINEAR, translate=(rng.uniform(-30, 30), 0))
        w, h = im.size
        crop = im.crop((0, 0, int(w / scale), int(h / scale))) if scale > 1 else im
        crop.resize((w, h), Image.BICUBIC).save(folder / name)
    pairs = folder / "pairs.txt"
    pairs.write_text(
        "".join(f"{q} {d}\n" for q in names[:queries] for d in names[queries:])
    )
    return pairs


def run_runner(folder: Path, pairs: Path, precision: str) -> dict:
    from p2p_hloc import match_pairs
    from p2p_hloc.confs import confs

    conf = dict(confs["patch2pix"])
    conf["model"] = {**conf["model"], "precision": precision}
    t = time.perf_counter()
    match_pairs.main(
        conf,
        pairs,
        folder,
        folder / f"out_{precision}",
        weights=WEIGHTS,
        overwrite=True,
    )
    return {"seconds": time.perf_counter() - t}


@torch.no_grad()
def run_loop(folder: Path, pairs: Path, precision: str, size: int) -> dict:
    from p2p_hloc.model import load_model, select_matches
    from p2p_hloc.preprocess import load_image

    model = load_model(WEIGHTS)
    model.precision = precision
    cache: OrderedDict = OrderedDict()
    extracted = 0
    t = time.perf_counter()
    for line in pairs.read_text().splitlines():
        names = line.split()
        for name in names:
            if name in cache:
                cache.move_to_end(name)
                continue
            x, scale, _ = load_image(folder / name, size)
            cache[name] = (model.extract_features(x[None].to(model.device)), scale)
            extracted += 1
            if len(cache) > 4:
                cache.popitem(last=False)
        (f0, s0), (f1, s1) = cache[names[0]], cache[names[1]]
        select_matches(model({"features0": f0, "features1": f1}), s0, s1, 0.25)
    return {"seconds": time.perf_counter() - t, "extracted": extracted}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--queries", type=int, default=2)
    p.add_argument("--db", type=int, default=20)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--modes", nargs="+", default=["runner", "loop"])
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    p.add_argument(
        "--default-malloc",
        action="store_true",
        help="leave glibc's malloc as it is (the CLIs call p2p_hloc.tune_malloc)",
    )
    p.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        if not args.default_malloc:
            from p2p_hloc import tune_malloc

            tune_malloc()
        mode, precision, folder = args.worker
        load = os.getloadavg()[0]
        pairs = Path(folder) / "pairs.txt"
        if mode == "runner":
            out = run_runner(Path(folder), pairs, precision)
        else:
            out = run_loop(Path(folder), pairs, precision, args.size)
        n = len(pairs.read_text().splitlines())
        out.update(mode=mode, precision=precision, pairs=n, per_pair=out["seconds"] / n)
        out.update(
            rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, load=load
        )
        print(json.dumps(out))
        return
    rows: List[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        make_dataset(Path(tmp), args.queries, args.db, args.size)
        jobs = [(mode, prec) for mode in args.modes for prec in args.precisions]
        for mode, precision in jobs:
            cmd = [sys.executable, __file__, "--worker", mode, precision, tmp]
            cmd += ["--default-malloc"] if args.default_malloc else []
            res = subprocess.run(
                cmd + ["--size", str(args.size)], capture_output=True, text=True
            )
            if res.returncode:
                print(res.stderr[-3000:], file=sys.stderr)
                continue
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(f"done {mode} {precision}", file=sys.stderr)
    print(
        f"{args.queries} queries x {args.db} db images at {args.size} px, cpu threads "
        f"{torch.get_num_threads()}"
    )
    print(
        f"{'mode':>8} {'prec':>6} {'pairs':>6} {'s/pair':>8} {'total':>8} "
        f"{'rss_mb':>7} {'load':>5}"
    )
    for r in rows:
        print(
            f"{r['mode']:>8} {r['precision']:>6} {r['pairs']:>6} {r['per_pair']:>8.2f} "
            f"{r['seconds']:>8.1f} {r['rss_mb']:>7.0f} {r['load']:>5.1f}"
        )
    print("ratios to the official code: benchmarks/side_by_side.py")


if __name__ == "__main__":
    main()
