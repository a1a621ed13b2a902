"""Localization demo on a generated scene: match, triangulate, localize, evaluate.

python -m pipelines.demo --outputs DIR [--proposals patch2pix|sift|lightglue] \
    [--weights PATH] [--device cpu|cuda] [--precision fp32|bf16|fp16] [--plots N]

The steps of hloc's dense-matcher pipelines on a room rendered from known
cameras: match_dense (mapping), triangulation, match_dense (localization with
the mapping files), localize_sfm. Writes ``DIR/results.txt`` (submission
format), ``DIR/pose_errors.json`` (per query: translation in metres, rotation
in degrees, the recalls at the Aachen thresholds), the per-query table
``DIR/results.txt_queries.tsv`` and localization pictures of the N worst
queries in ``DIR/plots`` (inlier matches green, others red). Without
``--proposals``, the matcher is Patch2Pix (its NCNet proposals), which needs
the official weights.
"""

import argparse
import sys
from pathlib import Path
from typing import Optional

from p2p_hloc import (
    localize_sfm,
    logger,
    match_dense,
    triangulation,
    tune_malloc,
    visualize,
)
from p2p_hloc.confs import confs
from p2p_hloc.console import add_model_args, run_cli
from p2p_hloc.eval import poses as pose_eval
from p2p_hloc.match_pairs import with_precision
from p2p_hloc.synthetic import generate_scene
from p2p_hloc.weights import WeightsNotFoundError, get_weights

from .aachen import add_plots_arg

PROPOSALS = {"patch2pix": "patch2pix", "sift": "sift", "lightglue": "lightglue_aliked"}


def main(
    outputs: Path,
    proposals: str = "patch2pix",
    weights: Optional[Path] = None,
    num_queries: int = 4,
    device: Optional[str] = None,
    precision: str = "fp32",
    plots: int = 2,
) -> dict:
    """Run the demo; returns the pose-error report. Steps whose outputs exist
    in ``outputs`` are skipped: use an empty folder to start afresh."""
    outputs = Path(outputs)
    conf = confs[PROPOSALS[proposals]]
    if proposals == "patch2pix":
        weights = get_weights(path=weights)  # raises with instructions when absent
    conf = with_precision(conf, precision)
    scene = generate_scene(outputs / "scene", num_queries=num_queries)
    model = dict(weights=weights, device=device)
    features, sfm_matches = match_dense.main(
        conf, scene["pairs_db"], scene["images"], outputs, **model
    )
    reference_sfm = outputs / f"sfm_{conf['output']}"
    triangulation.main(
        reference_sfm,
        scene["reference"],
        scene["images"],
        scene["pairs_db"],
        features,
        sfm_matches,
    )
    features, loc_matches = match_dense.main(  # database keypoints stay fixed
        conf,
        scene["pairs_query"],
        scene["images"],
        outputs,
        features=features,
        matches=sfm_matches,
        max_kps=None,
        **model,
    )
    results = localize_sfm.main(
        reference_sfm,
        scene["queries"],
        scene["pairs_query"],
        features,
        loc_matches,
        outputs / "results.txt",
    )
    report = pose_eval.main(
        results, scene["ground_truth"], "aachen", outputs / "pose_errors.json"
    )
    if plots:
        visualize.main(
            results,
            scene["images"],
            reference_sfm,
            outputs / "plots",
            features,
            loc_matches,
            ground_truth=scene["ground_truth"],
            num_queries=plots,
        )
    logger.info(
        "Results in %s, pose errors in %s.", results, outputs / "pose_errors.json"
    )
    return report


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--outputs", type=Path, required=True)
    p.add_argument("--proposals", choices=list(PROPOSALS), default="patch2pix")
    add_model_args(p)
    p.add_argument("--num_queries", type=int, default=4)
    add_plots_arg(p, default=2)
    return p


def run(args: argparse.Namespace) -> None:
    try:
        main(**vars(args))
    except WeightsNotFoundError as e:
        raise WeightsNotFoundError(
            f"{e}\nOr run the demo without weights: --proposals sift (or lightglue)."
        ) from e


if __name__ == "__main__":
    tune_malloc()
    sys.exit(run_cli(parser(), run))
