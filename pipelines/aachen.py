"""Aachen Day-Night v1.0 with Patch2Pix: a results file for visuallocalization.net.

python -m pipelines.aachen --dataset datasets/aachen --pairs pairs/aachen \
    --outputs outputs/aachen [--conf patch2pix_aachen] [--weights PATH]

Steps (each skipped when its output exists): NVM -> COLMAP reference model;
match the database pairs (pairs-db-covis20); triangulate; match the query
pairs (pairs-query-netvlad30) with the database keypoints fixed; localize
(RANSAC 12 px, covisibility clustering), as in the Patch2Pix paper.
"""

import argparse
from pathlib import Path
from typing import Optional

from p2p_hloc import (
    colmap_from_nvm,
    localize_sfm,
    logger,
    match_pairs,
    triangulation,
    tune_malloc,
)
from p2p_hloc.confs import confs

QUERIES = "queries/*_time_queries_with_intrinsics.txt"


def run(
    reference: Path,
    images: Path,
    queries: Path,
    db_pairs: Path,
    loc_pairs: Path,
    outputs: Path,
    results: Path,
    conf_name: str,
    weights: Optional[Path],
    ransac_thresh: float,
    covisibility_clustering: bool,
) -> Path:
    """Match, triangulate and localize; shared by the Aachen pipelines."""
    for path in (reference, images, db_pairs, loc_pairs):
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: see datasets/README.md")
    conf = confs[conf_name]
    features, sfm_matches = match_pairs.main(
        conf, db_pairs, images, export_dir=outputs, weights=weights
    )
    sfm = triangulation.main(
        outputs / f"sfm_{conf['output']}",
        reference,
        images,
        db_pairs,
        features,
        sfm_matches,
    )
    _, loc_matches = match_pairs.main(
        conf, loc_pairs, images, export_dir=outputs, features=features, weights=weights
    )
    return localize_sfm.main(
        sfm,
        queries,
        loc_pairs,
        features,
        loc_matches,
        results,
        ransac_thresh=ransac_thresh,
        covisibility_clustering=covisibility_clustering,
    )


def main(
    dataset: Path,
    pairs: Path,
    outputs: Path,
    conf: str = "patch2pix_aachen",
    weights: Optional[Path] = None,
    num_covis: int = 20,
    num_loc: int = 30,
) -> Path:
    outputs.mkdir(parents=True, exist_ok=True)
    reference = colmap_from_nvm.main(
        dataset / "3D-models/aachen_cvpr2018_db.nvm",
        dataset / "3D-models/database_intrinsics.txt",
        outputs / "sfm_sift",
        database=dataset / "aachen.db",
    )
    results = run(
        reference,
        dataset / "images_upright",
        dataset / QUERIES,
        pairs / f"pairs-db-covis{num_covis}.txt",
        pairs / f"pairs-query-netvlad{num_loc}.txt",
        outputs,
        outputs / f"Aachen_p2p_{conf}_netvlad{num_loc}.txt",
        conf,
        weights,
        ransac_thresh=12.0,
        covisibility_clustering=True,
    )
    logger.info("Submit %s to visuallocalization.net (Aachen Day-Night).", results)
    return results


def parser(
    dataset: str, pairs: str, outputs: str, conf: str
) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", type=Path, default=Path(dataset))
    p.add_argument(
        "--pairs", type=Path, default=Path(pairs), help="hloc's pairs folder"
    )
    p.add_argument("--outputs", type=Path, default=Path(outputs))
    p.add_argument("--conf", choices=list(confs), default=conf)
    p.add_argument("--weights", type=Path)
    return p


if __name__ == "__main__":
    tune_malloc()
    p = parser("datasets/aachen", "pairs/aachen", "outputs/aachen", "patch2pix_aachen")
    p.add_argument("--num_covis", type=int, default=20)
    p.add_argument("--num_loc", type=int, default=30)
    main(**vars(p.parse_args()))
