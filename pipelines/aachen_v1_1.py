"""Aachen Day-Night v1.1 with Patch2Pix: a results file for visuallocalization.net.

python -m pipelines.aachen_v1_1 --dataset datasets/aachen_v1.1 \
    --pairs pairs/aachen_v1.1 --outputs outputs/aachen_v1.1 [--weights PATH]

The shipped COLMAP model (3D-models/aachen_v_1_1) is the reference; pairs
pairs-db-covis20 and pairs-query-netvlad50; RANSAC 20 px, no clustering.
"""

from pathlib import Path
from typing import Optional

from p2p_hloc import logger, tune_malloc

from .aachen import QUERIES, parser, run


def main(
    dataset: Path,
    pairs: Path,
    outputs: Path,
    conf: str = "patch2pix_aachen",
    weights: Optional[Path] = None,
    num_covis: int = 20,
    num_loc: int = 50,
) -> Path:
    outputs.mkdir(parents=True, exist_ok=True)
    results = run(
        dataset / "3D-models/aachen_v_1_1",
        dataset / "images_upright",
        dataset / QUERIES,
        pairs / f"pairs-db-covis{num_covis}.txt",
        pairs / f"pairs-query-netvlad{num_loc}.txt",
        outputs,
        outputs / f"Aachen-v1.1_p2p_{conf}_netvlad{num_loc}.txt",
        conf,
        weights,
        ransac_thresh=20.0,
        covisibility_clustering=False,
    )
    logger.info("Submit %s to visuallocalization.net (Aachen Day-Night v1.1).", results)
    return results


if __name__ == "__main__":
    tune_malloc()
    p = parser(
        "datasets/aachen_v1.1",
        "pairs/aachen_v1.1",
        "outputs/aachen_v1.1",
        "patch2pix_aachen",
    )
    p.add_argument("--num_covis", type=int, default=20)
    p.add_argument("--num_loc", type=int, default=50)
    main(**vars(p.parse_args()))
