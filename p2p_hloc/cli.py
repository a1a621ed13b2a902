"""``p2p-hloc`` command line: ``match`` two images, manage ``weights``."""

import argparse
import sys
from pathlib import Path
from typing import List, Optional

import numpy as np

from . import logger
from .console import InputError, add_argument, add_debug_flag, add_model_args, run_cli
from .runtime import tune_malloc
from .weights import DEFAULT, OFFICIAL


def cmd_match(args: argparse.Namespace) -> int:
    from .preprocess import image_size, read_image

    if args.out.is_dir():
        raise InputError(f"--out {args.out} is a folder: give the .npz file to write")
    for path in (args.image0, args.image1):
        image_size(path)  # readable, before the model loads

    from .model import load_model
    from .weights import get_weights

    weights = get_weights(
        "ncn_ivd_5ep.pth" if args.coarse_only and args.weights is None else DEFAULT,
        args.weights,
    )
    model = load_model(weights, args.device, coarse_only=args.coarse_only)
    model.precision = args.precision
    pred = model.match(
        args.image0,
        args.image1,
        args.imsize,
        threshold=args.threshold,
        keep_all_if_none=args.keep_all_if_none,
    )
    out = {k: pred[k].cpu().numpy() for k in ("keypoints0", "keypoints1", "scores")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp.npz")
    try:
        np.savez(tmp, **out)
        tmp.replace(args.out)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("%d matches written to %s", len(out["scores"]), args.out)
    if args.plot:
        from .viz import plot_matches

        im0, im1 = (np.asarray(read_image(p)) for p in (args.image0, args.image1))
        plot_matches(
            im0, im1, out["keypoints0"], out["keypoints1"], out["scores"], args.plot
        )
        logger.info("Plot saved to %s", args.plot)
    return 0


def cmd_weights(args: argparse.Namespace) -> int:
    from .weights import cache_dir, download

    if args.action == "download":
        for name in args.names or [DEFAULT]:
            download(name, sha256=args.sha256, force=args.force)
    else:
        print(f"cache folder: {cache_dir()}  (set P2P_HLOC_HOME to change it)")
        for name, info in OFFICIAL.items():
            state = "present" if (cache_dir() / name).is_file() else "missing"
            print(f"  {name:28s} {state:8s} {info.description}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="p2p-hloc", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("match", help="match two images, write an npz")
    m.add_argument("image0", type=Path)
    m.add_argument("image1", type=Path)
    m.add_argument("--imsize", type=int, default=1024, help="larger side; <= 0: native")
    m.add_argument("--threshold", type=float, default=0.25, help="keep score > T")
    add_argument(
        m,
        "--coarse_only",
        "--coarse-only",
        action="store_true",
        help="NCNet proposals only",
    )
    add_argument(
        m,
        "--keep_all_if_none",
        "--keep-all-if-none",
        action="store_true",
        help="the official rule: when no match passes the threshold, return all",
    )
    add_model_args(m)
    m.add_argument("--out", type=Path, required=True, help="output .npz")
    m.add_argument("--plot", type=Path, help="save a match plot (png)")
    m.set_defaults(func=cmd_match)

    w = sub.add_parser("weights", help="list or download the official checkpoints")
    w.add_argument("action", choices=["list", "download"])
    w.add_argument("names", nargs="*", help=f"files to download (default {DEFAULT})")
    w.add_argument("--sha256", help="expected SHA-256 of the file")
    w.add_argument("--force", action="store_true")
    w.set_defaults(func=cmd_weights)
    add_debug_flag(p)
    for sp in (m, w):  # also after the command; unset unless given there
        sp.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help="as above"
        )
    return p


def run(args: argparse.Namespace) -> int:
    tune_malloc()
    return args.func(args)


def main(argv: Optional[List[str]] = None) -> int:
    """The ``p2p-hloc`` command: one clean error line (exit 2 for bad input),
    ``--debug`` for the traceback."""
    return run_cli(parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
