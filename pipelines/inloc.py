"""InLoc with Patch2Pix: a results file for visuallocalization.net.

python -m pipelines.inloc [--dataset datasets/inloc] [--pairs pairs/inloc] \
    [--outputs outputs/inloc] [--retrieval netvlad40] [--weights PATH]

The steps of hloc's InLoc pipeline (pipeline_InLoc.ipynb) with Patch2Pix as a
dense matcher: match_dense on hloc's retrieval pairs
``pairs/inloc/pairs-query-<retrieval>.txt`` (queries and cutouts quantized
together, all keypoints kept), then localize_inloc (pairs with fewer than 20
matches skipped, PnP RANSAC 48 px, f = 3136 px). The Patch2Pix paper used
``--retrieval netvlad40-temporal``.
"""

import argparse
import sys
from pathlib import Path

from p2p_hloc import localize_inloc, logger, match_dense, tune_malloc, visualize
from p2p_hloc.console import run_cli

from .aachen import add_plots_arg, common_parser, matcher


def run(args: argparse.Namespace) -> Path:
    """hloc's InLoc steps; returns the results file."""
    dataset, outputs = args.dataset, args.outputs
    loc_pairs = args.pairs / f"pairs-query-{args.retrieval}.txt"
    matcher_conf, method = matcher(args)
    results = outputs / f"InLoc_hloc_{method}_{args.retrieval}.txt"
    for path in (dataset / "database/cutouts", dataset / "query", loc_pairs):
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: see datasets/README.md")
    outputs.mkdir(parents=True, exist_ok=True)

    features, matches = match_dense.main(
        matcher_conf,
        loc_pairs,
        dataset,
        outputs,
        max_kps=None,
        weights=args.weights,
        device=args.device,
    )
    extra = {} if args.focal_length is None else {"focal_length": args.focal_length}
    localize_inloc.main(
        dataset,
        loc_pairs,
        features,
        matches,
        results,
        skip_matches=args.skip_matches,
        **extra,
    )
    if args.plots:
        visualize.main(
            results,
            dataset,
            None,
            outputs / "plots",
            features,
            matches,
            num_queries=args.plots,
        )
    logger.info("Submit %s to visuallocalization.net (InLoc).", results)
    return results


def parser() -> argparse.ArgumentParser:
    p = common_parser(
        __doc__.splitlines()[0],
        "datasets/inloc",
        "pairs/inloc",
        "outputs/inloc",
        "patch2pix_inloc",
    )
    p.add_argument(
        "--retrieval",
        default="netvlad40",
        help="retrieval pairs pairs-query-<retrieval>.txt, default: %(default)s",
    )
    p.add_argument(
        "--skip_matches",
        type=int,
        default=20,
        help="skip pairs with fewer matches, default: %(default)s",
    )
    p.add_argument(
        "--focal_length",
        type=float,
        help="query focal length in pixels (default: localize_inloc's, 3136)",
    )
    add_plots_arg(p)
    return p


if __name__ == "__main__":
    tune_malloc()
    sys.exit(run_cli(parser(), run))
