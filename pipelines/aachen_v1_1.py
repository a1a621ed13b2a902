"""Aachen Day-Night v1.1 with Patch2Pix: a results file for visuallocalization.net.

python -m pipelines.aachen_v1_1 [--dataset datasets/aachen_v1.1] \
    [--pairs pairs/aachen_v1.1] [--outputs outputs/aachen_v1.1] [--weights PATH]

The steps of hloc's dense-matcher pipeline (hloc/pipelines/Aachen_v1_1/
pipeline_loftr.py) with the same calls and output names; the reference model
is the shipped COLMAP model ``3D-models/aachen_v_1_1``. See pipelines.aachen
for the retrieval pairs and the paper's settings.
"""

import argparse
import sys
from pathlib import Path

from p2p_hloc import logger, tune_malloc
from p2p_hloc.console import run_cli

from .aachen import map_and_localize, parser


def run(args: argparse.Namespace) -> Path:
    """hloc's Aachen v1.1 steps; returns the results file."""
    args.outputs.mkdir(parents=True, exist_ok=True)
    sift_sfm = args.dataset / "3D-models/aachen_v_1_1"
    results = map_and_localize(args, sift_sfm, "Aachen-v1.1")
    logger.info("Submit %s to visuallocalization.net (Aachen Day-Night v1.1).", results)
    return results


if __name__ == "__main__":
    tune_malloc()
    p = parser(
        "datasets/aachen_v1.1", "pairs/aachen_v1.1", "outputs/aachen_v1.1", __doc__
    )
    sys.exit(run_cli(p, run))
