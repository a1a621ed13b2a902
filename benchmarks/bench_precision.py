"""Accuracy cost of the low-precision modes against fp32 on the golden pairs.

For each golden pair (default setting: imsize 1024, threshold 0.25) prints the
proposal counts, and over the proposals both runs share: the max and median
change of the fine matches (original pixels, both images) and of the fine
scores, and the final match counts (``score > 0.25``). Usage::

    python3 benchmarks/bench_precision.py                 # bf16 on CPU
    python3 benchmarks/bench_precision.py --precisions bf16 fp16 --device cuda
"""

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from p2p_hloc.model import load_model  # noqa: E402
from p2p_hloc.preprocess import load_image  # noqa: E402

GOLDEN = Path(os.environ.get("P2P_GOLDEN", ROOT.parent / "shared" / "golden"))


def run(model, pair: str, device: str, precision: str) -> dict:
    model.precision = precision
    (x0, s0, _), (x1, s1, _) = [
        load_image(GOLDEN / f"pair{pair}_{i}.png", 1024) for i in (1, 2)
    ]
    data = {"image0": x0[None].to(device), "image1": x1[None].to(device)}
    with torch.no_grad():
        pred = model(data, stages=True)
    scale = np.concatenate([s0, s1])
    return {
        "coarse": pred["coarse_matches"].cpu().numpy(),
        "fine": pred["fine_matches"].cpu().double().numpy() * scale,
        "scores": pred["scores"].float().cpu().numpy(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--precisions", nargs="+", default=["bf16"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    model = load_model(GOLDEN / "patch2pix_random_fp16.pth", args.device)
    print(f"device {args.device}; vs fp32; coordinates in original pixels")
    head = "pair prec   N32  Nlow shared  dxy_max  dxy_med  dsc_max  dsc_med  M32 Mlow"
    print(head)
    for pair in "AB":
        ref = run(model, pair, args.device, "fp32")
        keys = {tuple(r): i for i, r in enumerate(ref["coarse"])}
        for prec in args.precisions:
            low = run(model, pair, args.device, prec)
            idx = [
                (keys[tuple(r)], j)
                for j, r in enumerate(low["coarse"])
                if tuple(r) in keys
            ]
            i, j = np.array(idx).T
            dxy = np.abs(ref["fine"][i] - low["fine"][j]).max(1)
            dsc = np.abs(ref["scores"][i] - low["scores"][j])
            print(
                f"{pair:>4} {prec:>4} {len(ref['coarse']):>5} {len(low['coarse']):>5} "
                f"{len(idx):>6} {dxy.max():8.3f} {np.median(dxy):8.3f} {dsc.max():8.4f} "
                f"{np.median(dsc):8.4f} {int((ref['scores'] > 0.25).sum()):>4} "
                f"{int((low['scores'] > 0.25).sum()):>4}"
            )


if __name__ == "__main__":
    main()
