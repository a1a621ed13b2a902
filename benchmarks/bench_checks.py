"""Cost of the checks ``match_pairs`` makes before matching (``match_checks``).

Generates ``--images`` JPEGs of 1024x768 and ``--per_image`` pairs per image in a
temporary folder, writes a features file with keypoints for all of them, and
times the header reads (``read_image_sizes``), the stored-size check
(``check_features``) and the checkpoint checksum of ``raw_provenance`` (first
call: SHA-256 of the file; later calls: cached). Usage::

    python3 benchmarks/bench_checks.py
    python3 benchmarks/bench_checks.py --images 2000 --weights ../shared/golden/patch2pix_random_fp16.pth
"""

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from p2p_hloc.confs import confs
from p2p_hloc.io import write_keypoints
from p2p_hloc.match_checks import check_features, raw_provenance, read_image_sizes


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=500)
    p.add_argument("--per_image", type=int, default=50)
    p.add_argument("--weights", type=Path)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    image = (rng.random((768, 1024, 3)) * 255).astype(np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        names = [f"db/im{i:05d}.jpg" for i in range(args.images)]
        (root / "db").mkdir()
        features = root / "feats.h5"
        for name in names:
            cv2.imwrite(str(root / name), image)
            write_keypoints(features, name, rng.random((2000, 2)) * 700, (1024, 768))
        pairs = [
            (names[i], names[j])
            for i in range(len(names))
            for j in range(i + 1, min(len(names), i + 1 + args.per_image))
        ]
        sizes, t_sizes = timed(read_image_sizes, pairs, root, root / "pairs.txt")
        _, t_feats = timed(check_features, [features], sizes, root)
        print(f"{len(pairs)} pairs, {len(names)} images")
        print(
            f"read_image_sizes: {t_sizes:.3f} s ({t_sizes / len(names) * 1e3:.2f} ms/image)"
        )
        print(
            f"check_features:   {t_feats:.3f} s ({t_feats / len(names) * 1e3:.2f} ms/image)"
        )
    if args.weights is not None:
        conf = confs["patch2pix"]
        _, first = timed(raw_provenance, conf, args.weights, None)
        _, again = timed(raw_provenance, conf, args.weights, None)
        size = args.weights.stat().st_size / 2**20
        print(
            f"raw_provenance ({size:.0f} MiB checkpoint): {first:.3f} s, cached {again * 1e3:.2f} ms"
        )


if __name__ == "__main__":
    main()
