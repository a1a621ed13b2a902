"""Structure-from-motion from scratch with pycolmap's incremental mapper.

A fresh database gets the images (``pycolmap.import_images``), our keypoints
and matches (imported as in :mod:`p2p_hloc.triangulation`), two-view geometries
verified by RANSAC, and ``pycolmap.incremental_mapping`` reconstructs; the
largest model is written to ``sfm_dir`` once complete.
"""

import argparse
import logging
import shutil
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import pycolmap
from tqdm import tqdm

from .console import run_cli
from .triangulation import (
    TriangulationError,
    colmap_log,
    import_features,
    model_exists,
    move_model,
    parse_option_args,
    read_pair_matches,
    verify_with_ransac,
    write_matches_and_geometries,
)

logger = logging.getLogger("p2p_hloc")


class ReconstructionError(TriangulationError):
    """A reconstruction that imported no image or registered no model."""


def create_db_from_images(
    database: Path,
    image_dir: Path,
    camera_mode: Union[str, pycolmap.CameraMode],
    image_list: Optional[List[str]] = None,
    image_options: Optional[Dict[str, Any]] = None,
) -> Dict[str, int]:
    """A fresh database with the images of ``image_dir`` (all, or those of
    ``image_list``, named relative to ``image_dir``) and cameras set by
    ``camera_mode`` and ``image_options`` (``pycolmap.ImageReaderOptions``);
    returns ``{image name: image id}``."""
    database.unlink(missing_ok=True)
    pycolmap.Database.open(database).close()
    pycolmap.import_images(
        database,
        image_dir,
        pycolmap.CameraMode(camera_mode),
        image_names=image_list or [],
        options=pycolmap.ImageReaderOptions(image_options or {}),
    )
    with pycolmap.Database.open(database) as db:
        images = db.read_all_images()
        logger.info(
            "Imported %d images with %d cameras.", len(images), db.num_cameras()
        )
    if not images:
        raise ReconstructionError(f"no image could be imported from {image_dir}")
    return {image.name: image.image_id for image in images}


def run_mapper(
    database: Path,
    image_dir: Path,
    output: Path,
    num_images: int,
    mapper_options: Optional[Dict[str, Any]] = None,
) -> Dict[int, pycolmap.Reconstruction]:
    """``pycolmap.incremental_mapping``; model ``i`` is written to ``output/i``."""
    options = pycolmap.IncrementalPipelineOptions(mapper_options or {})
    with tqdm(total=num_images, desc="incremental mapping", unit="image") as pbar:
        return pycolmap.incremental_mapping(
            database,
            image_dir,
            output,
            options=options,
            initial_image_pair_callback=lambda: pbar.update(2),
            next_image_callback=lambda: pbar.update(1),
        )


def main(
    sfm_dir: Path,
    image_dir: Path,
    pairs: Path,
    features: Path,
    matches: Path,
    camera_mode: Union[str, pycolmap.CameraMode] = pycolmap.CameraMode.AUTO,
    verbose: bool = False,
    skip_geometric_verification: bool = False,
    min_match_score: Optional[float] = None,
    image_list: Optional[List[str]] = None,
    image_options: Optional[Dict[str, Any]] = None,
    mapper_options: Optional[Dict[str, Any]] = None,
    *,
    overwrite: bool = False,
) -> pycolmap.Reconstruction:
    """Reconstruct the images of ``image_dir`` from the matches of ``pairs`` and
    write the largest model (and ``database.db``) to ``sfm_dir``; returns it.

    Args (hloc's, in hloc's order):
        camera_mode: ``pycolmap.CameraMode`` or its name (``AUTO``, ``SINGLE``,
            ``PER_FOLDER``, ``PER_IMAGE``).
        verbose: COLMAP's own messages.
        skip_geometric_verification: take every match as an inlier
            (UNCALIBRATED geometries) instead of verifying with RANSAC.
        min_match_score: drop matches with a score not above it.
        image_list: the images to use (names relative to ``image_dir``).
        image_options: ``pycolmap.ImageReaderOptions`` settings.
        mapper_options: ``pycolmap.IncrementalPipelineOptions`` settings.
    Keyword-only (ours):
        overwrite: reconstruct again when ``sfm_dir`` holds a model.
    Raises:
        ReconstructionError: no image imported or no model registered.
    """
    sfm_dir = Path(sfm_dir)
    if model_exists(sfm_dir) and not overwrite:
        logger.info("Reconstruction exists at %s: skipping.", sfm_dir)
        return pycolmap.Reconstruction(sfm_dir)
    for p in (image_dir, pairs, features, matches):
        if not Path(p).exists():
            raise FileNotFoundError(f"input of the reconstruction not found: {p}")
    sfm_dir.mkdir(parents=True, exist_ok=True)
    database = sfm_dir / "database.db"
    tmp = sfm_dir / "models.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        with colmap_log(verbose):
            all_ids = create_db_from_images(
                database, image_dir, camera_mode, image_list, image_options
            )
            image_ids = import_features(all_ids, database, features)
            pair_matches = read_pair_matches(image_ids, pairs, matches, min_match_score)
            unverified = pycolmap.TwoViewGeometryConfiguration.UNCALIBRATED
            write_matches_and_geometries(
                None,
                image_ids,
                database,
                features,
                pair_matches,
                verified=unverified if skip_geometric_verification else None,
            )
            if not skip_geometric_verification:
                verify_with_ransac(
                    database, pair_matches, sfm_dir / "pairs-verified.txt"
                )
            models = run_mapper(
                database, image_dir, tmp, len(image_ids), mapper_options
            )
        if not models:
            raise ReconstructionError(
                f"incremental mapping registered no model from the {len(pair_matches)} "
                f"pairs of {pairs} with {features} and {matches} (see {database}): "
                "check that the pairs overlap and that the matches are correct"
            )
        best = max(models, key=lambda i: models[i].num_reg_images())
        move_model(tmp / str(best), sfm_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rec = models[best]
    logger.info(
        "Largest of %d models: %d of %d images registered.\n%s",
        len(models),
        rec.num_reg_images(),
        len(all_ids),
        rec.summary(),
    )
    return rec


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m p2p_hloc.reconstruction", description=__doc__.splitlines()[0]
    )
    p.add_argument("--sfm_dir", type=Path, required=True)
    p.add_argument("--image_dir", type=Path, required=True)
    p.add_argument("--pairs", type=Path, required=True)
    p.add_argument("--features", type=Path, required=True)
    p.add_argument("--matches", type=Path, required=True)
    p.add_argument(
        "--camera_mode", default="AUTO", choices=list(pycolmap.CameraMode.__members__)
    )
    p.add_argument("--skip_geometric_verification", action="store_true")
    p.add_argument("--min_match_score", type=float)
    p.add_argument("--verbose", action="store_true")
    for name, options in (
        ("image_options", "ImageReaderOptions"),
        ("mapper_options", "IncrementalPipelineOptions"),
    ):
        p.add_argument(
            f"--{name}",
            nargs="+",
            default=[],
            metavar="KEY=VALUE",
            help=f"pycolmap.{options} settings",
        )
    p.add_argument("--overwrite", action="store_true")
    return p


def run(args: argparse.Namespace) -> None:
    kwargs = vars(args)
    kwargs["image_options"] = parse_option_args(
        kwargs["image_options"], pycolmap.ImageReaderOptions()
    )
    kwargs["mapper_options"] = parse_option_args(
        kwargs["mapper_options"], pycolmap.IncrementalPipelineOptions()
    )
    main(**kwargs)


if __name__ == "__main__":
    sys.exit(run_cli(parser(), run))
