"""Aachen Day-Night v1.0 with Patch2Pix: a results file for visuallocalization.net.

python -m pipelines.aachen [--dataset datasets/aachen] [--pairs pairs/aachen] \
    [--outputs outputs/aachen] [--conf patch2pix_aachen] [--weights PATH]

The steps of hloc's Aachen pipeline (hloc/pipelines/Aachen/pipeline.py) with
hloc's output names and Patch2Pix as a dense matcher (as in hloc's
Aachen_v1_1/pipeline_loftr.py): NVM -> COLMAP model ``sfm_sift``; covisibility
pairs; match_dense (mapping, max_kps=8192); triangulation; retrieval pairs;
match_dense (localization: the mapping features and matches, max_kps=None);
localize_sfm. Steps whose output exists are skipped.

NetVLAD retrieval is not part of p2p_hloc: the retrieval pairs are hloc's
shipped ``pairs/aachen/pairs-query-netvlad<num_loc>.txt`` (``--pairs``),
copied into the outputs. The Patch2Pix paper's settings differ from hloc's
defaults: ``--num_loc 30 --covisibility_clustering`` (v1.0) or
``--ransac_thresh 20`` (v1.1).
"""

import argparse
import shutil
import sys
from pathlib import Path
from typing import Dict, Tuple

from p2p_hloc import (
    colmap_from_nvm,
    localize_sfm,
    logger,
    match_dense,
    pairs_from_covisibility,
    triangulation,
    tune_malloc,
    visualize,
)
from p2p_hloc.confs import confs
from p2p_hloc.console import add_model_args, run_cli
from p2p_hloc.match_pairs import with_precision

QUERIES = "queries/*_time_queries_with_intrinsics.txt"


def retrieval_pairs(pairs_dir: Path, loc_pairs: Path) -> Path:
    """hloc's shipped retrieval pairs (NetVLAD), copied to ``loc_pairs``."""
    shipped = Path(pairs_dir) / loc_pairs.name
    if not shipped.is_file():
        raise FileNotFoundError(
            f"{shipped} not found: copy the pairs/ folder of "
            "https://github.com/cvg/Hierarchical-Localization (see datasets/README.md)"
        )
    shutil.copyfile(shipped, loc_pairs)
    return loc_pairs


def matcher(args: argparse.Namespace) -> Tuple[Dict, str]:
    """The conf at ``--precision`` and the method name of the results file
    (the conf name, ``-<precision>`` unless fp32)."""
    suffix = "" if args.precision == "fp32" else f"-{args.precision}"
    return with_precision(confs[args.conf], args.precision), args.conf + suffix


def map_and_localize(
    args: argparse.Namespace, sift_sfm: Path, results_prefix: str
) -> Path:
    """The steps after the reference model, shared by Aachen v1.0 and v1.1:
    covisibility pairs, mapping, triangulation, retrieval pairs, localization
    matching and localization. Returns the results file."""
    dataset, outputs = args.dataset, args.outputs
    matcher_conf, method = matcher(args)
    model = dict(weights=args.weights, device=args.device)

    images = dataset / "images_upright/"
    reference_sfm = outputs / f"sfm_{matcher_conf['output']}"  # the model we build
    sfm_pairs = outputs / f"pairs-db-covis{args.num_covis}.txt"
    loc_pairs = outputs / f"pairs-query-netvlad{args.num_loc}.txt"
    results = outputs / f"{results_prefix}_hloc_{method}_netvlad{args.num_loc}.txt"

    pairs_from_covisibility.main(sift_sfm, sfm_pairs, num_matched=args.num_covis)
    features, sfm_matches = match_dense.main(
        matcher_conf, sfm_pairs, images, outputs, max_kps=8192, overwrite=False, **model
    )
    triangulation.main(
        reference_sfm, sift_sfm, images, sfm_pairs, features, sfm_matches
    )
    retrieval_pairs(args.pairs, loc_pairs)
    features, loc_matches = match_dense.main(
        matcher_conf,
        loc_pairs,
        images,
        outputs,
        features=features,
        max_kps=None,
        matches=sfm_matches,
        **model,
    )
    localize_sfm.main(
        reference_sfm,
        dataset / QUERIES,
        loc_pairs,
        features,
        loc_matches,
        results,
        ransac_thresh=args.ransac_thresh,
        covisibility_clustering=args.covisibility_clustering,
    )
    if args.plots:
        visualize.main(
            results,
            images,
            reference_sfm,
            outputs / "plots",
            features,
            loc_matches,
            num_queries=args.plots,
        )
    return results


def run(args: argparse.Namespace) -> Path:
    """hloc's Aachen v1.0 steps; returns the results file."""
    args.outputs.mkdir(parents=True, exist_ok=True)
    sift_sfm = args.outputs / "sfm_sift"  # from which we take the reference poses
    colmap_from_nvm.main(
        args.dataset / "3D-models/aachen_cvpr2018_db.nvm",
        args.dataset / "3D-models/database_intrinsics.txt",
        args.dataset / "aachen.db",
        sift_sfm,
    )
    results = map_and_localize(args, sift_sfm, "Aachen")
    logger.info("Submit %s to visuallocalization.net (Aachen Day-Night).", results)
    return results


def common_parser(
    description: str, dataset: str, pairs: str, outputs: str, conf: str
) -> argparse.ArgumentParser:
    """``--dataset``, ``--outputs`` (hloc's), ``--pairs``, ``--conf`` and the
    model's flags, with these defaults."""
    p = argparse.ArgumentParser(description=description)
    for flag, default, what in (
        ("--dataset", dataset, "Path to the dataset"),
        ("--outputs", outputs, "Path to the output directory"),
        ("--pairs", pairs, "hloc's pairs folder (retrieval pairs)"),
    ):
        p.add_argument(
            flag, type=Path, default=Path(default), help=f"{what}, default: %(default)s"
        )
    p.add_argument(
        "--conf", choices=list(confs), default=conf, help="default: %(default)s"
    )
    add_model_args(p)
    return p


def parser(
    dataset: str, pairs: str, outputs: str, description: str = __doc__
) -> argparse.ArgumentParser:
    """The flags of hloc's Aachen pipelines and ours (``--pairs``, the matcher
    and its model, the paper's localization settings, ``--plots``)."""
    p = common_parser(
        description.splitlines()[0], dataset, pairs, outputs, "patch2pix_aachen"
    )
    for flag, default, what in (
        ("--num_covis", 20, "Number of image pairs for SfM"),
        ("--num_loc", 50, "Number of image pairs for loc"),
    ):
        p.add_argument(
            flag, type=int, default=default, help=f"{what}, default: %(default)s"
        )
    p.add_argument(
        "--ransac_thresh",
        type=float,
        default=12.0,
        help="PnP RANSAC threshold in pixels, default: %(default)s",
    )
    p.add_argument("--covisibility_clustering", action="store_true")
    add_plots_arg(p)
    return p


def add_plots_arg(p: argparse.ArgumentParser, default: int = 0) -> None:
    p.add_argument(
        "--plots",
        type=int,
        default=default,
        metavar="N",
        help="localization pictures of the N worst queries (largest pose error, "
        "else fewest inliers) in <outputs>/plots, default: %(default)s",
    )


if __name__ == "__main__":
    tune_malloc()
    p = parser("datasets/aachen", "pairs/aachen", "outputs/aachen")
    sys.exit(run_cli(p, run))
