"""Localization demo on a generated scene: match, triangulate, localize, evaluate.

python -m pipelines.demo --outputs DIR [--proposals sift|lightglue] [--weights PATH]

Writes ``DIR/results.txt`` (submission format), ``DIR/pose_errors.json`` (per
query: translation in metres, rotation in degrees, and the recalls at the
Aachen thresholds) and ``DIR/matches.png``. Without ``--proposals`` the matcher
is Patch2Pix (its NCNet proposals), which needs the official weights.
"""

import argparse
import sys
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from p2p_hloc import localize_sfm, logger, match_pairs, triangulation, tune_malloc
from p2p_hloc.confs import confs
from p2p_hloc.eval import poses as pose_eval
from p2p_hloc.io import from_hloc_coords, get_keypoints, get_matches, parse_pairs
from p2p_hloc.synthetic import generate_scene
from p2p_hloc.viz import plot_matches
from p2p_hloc.weights import WeightsNotFoundError, get_weights

PROPOSALS = {"patch2pix": "patch2pix", "sift": "sift", "lightglue": "lightglue_aliked"}


def plot_pair(
    image_dir: Path, features: Path, matches: Path, name0: str, name1: str, path: Path
):
    """Save the matches of one pair as read back from the hloc files."""
    m, scores = get_matches(matches, name0, name1)
    kp0 = from_hloc_coords(get_keypoints(features, name0))[m[:, 0]]
    kp1 = from_hloc_coords(get_keypoints(features, name1))[m[:, 1]]
    images = [
        np.asarray(Image.open(image_dir / n).convert("RGB")) for n in (name0, name1)
    ]
    plot_matches(
        *images,
        kp0,
        kp1,
        scores.astype(float),
        path=path,
        title=f"{name0} - {name1}: {len(m)} matches",
    )


def main(
    outputs: Path,
    proposals: str = "patch2pix",
    weights: Optional[Path] = None,
    num_queries: int = 4,
) -> dict:
    """Run the demo; returns the pose-error report. Steps whose outputs exist
    in ``outputs`` are skipped: use an empty folder to start afresh."""
    outputs = Path(outputs)
    conf = confs[PROPOSALS[proposals]]
    if proposals == "patch2pix":
        weights = get_weights(path=weights)  # raises with instructions when absent
    scene = generate_scene(outputs / "scene", num_queries=num_queries)
    features, sfm_matches = match_pairs.main(
        conf,
        scene["pairs_db"],
        scene["images"],
        outputs,
        weights=weights,
    )
    sfm = triangulation.main(
        outputs / f"sfm_{proposals}",
        scene["reference"],
        scene["images"],
        scene["pairs_db"],
        features,
        sfm_matches,
    )
    _, matches = match_pairs.main(  # database keypoints stay fixed
        conf,
        scene["pairs_query"],
        scene["images"],
        outputs,
        features=features,
        weights=weights,
    )
    results = localize_sfm.main(
        sfm,
        scene["queries"],
        scene["pairs_query"],
        features,
        matches,
        outputs / "results.txt",
        ransac_thresh=12.0,
    )
    report = pose_eval.main(
        results, scene["ground_truth"], "aachen", outputs / "pose_errors.json"
    )
    query, ref = parse_pairs(scene["pairs_query"])[0]
    plot_pair(scene["images"], features, matches, query, ref, outputs / "matches.png")
    logger.info(
        "Results in %s, pose errors in %s.", results, outputs / "pose_errors.json"
    )
    return report


if __name__ == "__main__":
    tune_malloc()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outputs", type=Path, required=True)
    parser.add_argument("--proposals", choices=list(PROPOSALS), default="patch2pix")
    parser.add_argument(
        "--weights", type=Path, help="Patch2Pix checkpoint (default: the cache)"
    )
    parser.add_argument("--num_queries", type=int, default=4)
    args = parser.parse_args()
    try:
        main(**vars(args))
    except WeightsNotFoundError as e:
        sys.exit(
            f"{e}\nOr run the demo without weights: --proposals sift (or lightglue)."
        )
