"""InLoc with Patch2Pix: a results file for visuallocalization.net.

python -m pipelines.inloc --dataset datasets/inloc --pairs pairs/inloc \
    --outputs outputs/inloc [--weights PATH]

Each query is matched to its retrieved cutouts on the fly (no quantization),
pairs with fewer than 20 matches are skipped, 3D points come from the
cutouts' XYZcut, PnP uses RANSAC 48 px (retrieval: netvlad40-temporal).
"""

from pathlib import Path
from typing import Optional

from p2p_hloc import localize_inloc, logger, tune_malloc
from p2p_hloc.confs import confs

from .aachen import parser


def main(
    dataset: Path,
    pairs: Path,
    outputs: Path,
    conf: str = "patch2pix_inloc",
    weights: Optional[Path] = None,
    retrieval: str = "netvlad40-temporal",
    skip_matches: int = 20,
    focal_length: float = localize_inloc.INLOC_FOCAL,
) -> Path:
    loc_pairs = pairs / f"pairs-query-{retrieval}.txt"
    for path in (dataset / "database/cutouts", dataset / "query", loc_pairs):
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: see datasets/README.md")
    outputs.mkdir(parents=True, exist_ok=True)
    results = localize_inloc.main(
        dataset,
        loc_pairs,
        None,  # features and matches: the matcher runs on each pair
        None,
        outputs / f"InLoc_p2p_{conf}_{retrieval}.txt",
        conf=confs[conf],
        weights=weights,
        skip_matches=skip_matches,
        ransac_thresh=48.0,
        focal_length=focal_length,
    )
    logger.info("Submit %s to visuallocalization.net (InLoc).", results)
    return results


if __name__ == "__main__":
    tune_malloc()
    p = parser("datasets/inloc", "pairs/inloc", "outputs/inloc", "patch2pix_inloc")
    p.add_argument("--retrieval", default="netvlad40-temporal")
    p.add_argument("--skip_matches", type=int, default=20)
    p.add_argument("--focal_length", type=float, default=localize_inloc.INLOC_FOCAL)
    main(**vars(p.parse_args()))
