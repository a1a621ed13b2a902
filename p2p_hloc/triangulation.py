"""Triangulate 3D points in a reference model with known poses (pycolmap 4.x).

The database is built from the model (camera, rig, frame and image ids kept),
our keypoints (+0.5: hloc's integer centres to COLMAP's corner convention) and
matches are imported, pairs are verified with the known poses (epipolar
distance) or with RANSAC, and ``pycolmap.triangulate_points`` adds the points.
Verified geometries are written with the CALIBRATED configuration: pycolmap 4.x
silently skips UNDEFINED ones and would triangulate nothing.
"""

import argparse
import ast
import logging
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

import numpy as np
import pycolmap
from tqdm import tqdm

from .console import InputError, add_argument, run_cli
from .io import (
    H5Error,
    from_hloc_coords,
    get_keypoints,
    get_matches,
    parse_pairs,
    read_model,
)

logger = logging.getLogger("p2p_hloc")

MODEL_FILES = ("cameras.bin", "images.bin", "rigs.bin", "frames.bin", "points3D.bin")


class TriangulationError(RuntimeError):
    """A triangulation (or reconstruction) that cannot run or that produced no
    3D points."""


def create_db_from_model(
    reconstruction: pycolmap.Reconstruction, database: Path
) -> Dict[str, int]:
    """A fresh database with the model's cameras, rigs, frames and images (ids
    kept); returns ``{image name: image id}``."""
    database.unlink(missing_ok=True)
    with pycolmap.Database.open(database) as db:
        for camera in reconstruction.cameras.values():
            db.write_camera(camera, use_camera_id=True)
        for rig in reconstruction.rigs.values():
            db.write_rig(rig, use_rig_id=True)
        for frame in reconstruction.frames.values():
            db.write_frame(frame, use_frame_id=True)
        for image in reconstruction.images.values():
            db.write_image(image, use_image_id=True)
    return {image.name: i for i, image in reconstruction.images.items()}


def import_features(
    image_ids: Dict[str, int], database: Path, features: Path
) -> Dict[str, int]:
    """Write every image's keypoints; returns the ids of the images found (an
    image without keypoints is warned about and gets none)."""
    found, missing = {}, []
    with pycolmap.Database.open(database) as db:
        for name, image_id in tqdm(image_ids.items(), desc="import features"):
            try:
                keypoints = from_hloc_coords(get_keypoints(features, name))
            except H5Error:
                missing.append(name)
                continue
            db.write_keypoints(image_id, keypoints.astype(np.float32))
            found[name] = image_id
    if missing:
        logger.warning(
            "%d images have no keypoints in %s (e.g. %s); they get no points.",
            len(missing),
            features,
            missing[0],
        )
    return found


def read_pair_matches(
    image_ids: Dict[str, int],
    pairs: Path,
    matches: Path,
    min_match_score: Optional[float] = None,
) -> Dict[Tuple[str, str], np.ndarray]:
    """``{(name0, name1): (K, 2) keypoint indices}`` for the pairs of the file
    whose images have keypoints and whose matches exist; a pair seen in both
    directions is kept once. Skipped pairs are counted and reported."""
    out: Dict[Tuple[str, str], np.ndarray] = {}
    not_in_model, no_matches = [], []
    for name0, name1 in parse_pairs(pairs):
        if name0 not in image_ids or name1 not in image_ids:
            not_in_model.append((name0, name1))
            continue
        if (name0, name1) in out or (name1, name0) in out or name0 == name1:
            continue
        try:
            m, scores = get_matches(matches, name0, name1)
        except H5Error:
            no_matches.append((name0, name1))
            continue
        if min_match_score is not None:
            m = m[scores > min_match_score]
        if len(m) == 0:
            no_matches.append((name0, name1))
            continue
        out[name0, name1] = m
    if not_in_model:
        logger.warning(
            "Skipped %d pairs naming images absent from the model or without "
            "keypoints, e.g. %s.",
            len(not_in_model),
            not_in_model[0],
        )
    if no_matches:
        logger.warning(
            "Skipped %d pairs with no matches in %s, e.g. %s.",
            len(no_matches),
            matches,
            no_matches[0],
        )
    if not out:
        raise TriangulationError(f"no pair of {pairs} has matches between model images")
    return out


def epipolar_inliers(
    kp0: np.ndarray,
    kp1: np.ndarray,
    image0: pycolmap.Image,
    image1: pycolmap.Image,
    camera0: pycolmap.Camera,
    camera1: pycolmap.Camera,
    max_error: float = 4.0,
) -> np.ndarray:
    """Mask of matches whose distance to the epipolar line given by the known
    poses is below ``max_error`` pixels in both images."""
    cam1_from_cam0 = image1.cam_from_world() * image0.cam_from_world().inverse()
    R, t = cam1_from_cam0.rotation.matrix(), cam1_from_cam0.translation
    E = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]]) @ R
    x0 = np.c_[camera0.cam_from_img(kp0), np.ones(len(kp0))]
    x1 = np.c_[camera1.cam_from_img(kp1), np.ones(len(kp1))]
    l1, l0 = x0 @ E.T, x1 @ E  # epipolar lines in image 1 and image 0
    algebraic = np.abs(np.sum(x1 * l1, -1))
    d1 = algebraic / np.linalg.norm(l1[:, :2], axis=-1)
    d0 = algebraic / np.linalg.norm(l0[:, :2], axis=-1)
    return (d0 <= camera0.cam_from_img_threshold(max_error)) & (
        d1 <= camera1.cam_from_img_threshold(max_error)
    )


def write_matches_and_geometries(
    reference: Optional[pycolmap.Reconstruction],
    image_ids: Dict[str, int],
    database: Path,
    features: Path,
    pair_matches: Dict[Tuple[str, str], np.ndarray],
    max_error: float = 4.0,
    verified: Optional[pycolmap.TwoViewGeometryConfiguration] = None,
) -> None:
    """Write the raw matches and their two-view geometries: with a
    ``reference``, the matches consistent with its poses (CALIBRATED); with
    ``verified``, all matches as inliers with that configuration (hloc's
    ``skip_geometric_verification``); else none (RANSAC runs later)."""
    keypoints: Dict[str, np.ndarray] = {}

    def kps(name: str) -> np.ndarray:
        if name not in keypoints:
            keypoints[name] = from_hloc_coords(get_keypoints(features, name))
        return keypoints[name]

    ratios = []
    with pycolmap.Database.open(database) as db:
        for (name0, name1), m in tqdm(pair_matches.items(), desc="import matches"):
            id0, id1 = image_ids[name0], image_ids[name1]
            db.write_matches(id0, id1, m.astype(np.uint32))
            geometry = pycolmap.TwoViewGeometry()
            if verified is not None:
                # pycolmap 4.x skips UNDEFINED geometries (hloc's default)
                geometry.config = verified
                geometry.inlier_matches = m.astype(np.uint32)
            elif reference is not None:
                im0, im1 = reference.images[id0], reference.images[id1]
                keep = epipolar_inliers(
                    kps(name0)[m[:, 0]],
                    kps(name1)[m[:, 1]],
                    im0,
                    im1,
                    reference.cameras[im0.camera_id],
                    reference.cameras[im1.camera_id],
                    max_error,
                )
                geometry.config = pycolmap.TwoViewGeometryConfiguration.CALIBRATED
                geometry.inlier_matches = m[keep].astype(np.uint32)
                ratios.append(keep.mean())
            else:
                continue
            db.write_two_view_geometry(id0, id1, geometry)
    if ratios:
        logger.info(
            "Inlier ratio of the pose verification: "
            "mean %.3f, median %.3f, min %.3f, max %.3f.",
            np.mean(ratios),
            np.median(ratios),
            np.min(ratios),
            np.max(ratios),
        )


def verify_with_ransac(database: Path, pair_matches: Dict, pairs_path: Path) -> None:
    """Two-view geometries estimated by RANSAC (``pycolmap.verify_matches``)."""
    pairs_path.write_text("".join(f"{a} {b}\n" for a, b in pair_matches))
    options = pycolmap.TwoViewGeometryOptions()
    options.ransac.max_num_trials = 20000
    options.ransac.min_inlier_ratio = 0.1
    pycolmap.verify_matches(database, pairs_path, options=options)


@contextmanager
def colmap_log(verbose: bool) -> Iterator[None]:
    """COLMAP's INFO messages only if ``verbose``."""
    level = pycolmap.logging.minloglevel
    if not verbose:
        pycolmap.logging.minloglevel = pycolmap.logging.WARNING
    try:
        yield
    finally:
        pycolmap.logging.minloglevel = level


def parse_option_args(args: Sequence[str], defaults: Any) -> Dict[str, Any]:
    """``key=value`` strings (values as Python literals; ``a.b=value`` for a
    nested option) checked against the attributes and types of a pycolmap
    options object ``defaults``; returns the nested dict pycolmap takes."""
    options: Dict[str, Any] = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep:
            raise InputError(f"options are key=value pairs, not {arg!r}")
        *parents, leaf = key.split(".")
        target, node = options, defaults
        for name in parents:
            node = getattr(node, name, None)
            target = target.setdefault(name, {})
        if node is None or not hasattr(node, leaf):
            raise InputError(f"unknown option {key!r} of {type(defaults).__name__}")
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            pass  # a plain string
        expected = type(getattr(node, leaf))
        if expected is float and isinstance(value, int):
            value = float(value)
        if not isinstance(value, expected):
            raise InputError(
                f"option {key!r} must be {expected.__name__}, not {value!r}"
            )
        target[leaf] = value
    return options


def model_exists(path: Path) -> bool:
    return all((path / f).is_file() for f in MODEL_FILES)


def move_model(src: Path, dst: Path) -> None:
    """Move the model files of ``src`` into ``dst``; points3D.bin, removed first
    and moved last, marks a complete model."""
    (dst / MODEL_FILES[-1]).unlink(missing_ok=True)
    for f in MODEL_FILES:
        (src / f).replace(dst / f)


def main(
    sfm_dir: Path,
    reference_model: Path,
    image_dir: Path,
    pairs: Path,
    features: Path,
    matches: Path,
    skip_geometric_verification: bool = False,
    estimate_two_view_geometries: bool = False,
    min_match_score: Optional[float] = None,
    verbose: bool = False,
    mapper_options: Optional[Dict[str, Any]] = None,
    *,
    max_epipolar_error: float = 4.0,
    overwrite: bool = False,
) -> pycolmap.Reconstruction:
    """Triangulate the matches of ``pairs`` into ``reference_model``'s poses;
    the model (and ``database.db``) is written to ``sfm_dir`` and returned.

    Args (hloc's, in hloc's order):
        skip_geometric_verification: take every match as an inlier.
        estimate_two_view_geometries: verify with RANSAC instead of the known
            poses (epipolar distance <= ``max_epipolar_error`` px).
        min_match_score: drop matches with a score not above it.
        verbose: COLMAP's own messages.
        mapper_options: ``pycolmap.IncrementalPipelineOptions`` settings.
    Keyword-only (ours):
        max_epipolar_error: threshold of the pose verification, pixels.
        overwrite: triangulate again when ``sfm_dir`` holds a model.
    Raises:
        TriangulationError: no pair has matches, or no 3D point was made.
    """
    sfm_dir = Path(sfm_dir)
    if model_exists(sfm_dir) and not overwrite:
        logger.info("Triangulated model exists at %s: skipping.", sfm_dir)
        return pycolmap.Reconstruction(sfm_dir)
    for p in (reference_model, image_dir, pairs, features, matches):
        if not Path(p).exists():
            raise FileNotFoundError(f"input of the triangulation not found: {p}")
    sfm_dir.mkdir(parents=True, exist_ok=True)
    database = sfm_dir / "database.db"
    reference = read_model(reference_model)
    image_ids = create_db_from_model(reference, database)
    image_ids = import_features(image_ids, database, features)
    pair_matches = read_pair_matches(image_ids, pairs, matches, min_match_score)
    calibrated = pycolmap.TwoViewGeometryConfiguration.CALIBRATED
    ransac = estimate_two_view_geometries and not skip_geometric_verification
    write_matches_and_geometries(
        None if ransac else reference,
        image_ids,
        database,
        features,
        pair_matches,
        max_epipolar_error,
        verified=calibrated if skip_geometric_verification else None,
    )
    if ransac:
        verify_with_ransac(database, pair_matches, sfm_dir / "pairs-verified.txt")

    options = pycolmap.IncrementalPipelineOptions(mapper_options or {})
    tmp = sfm_dir / "triangulation.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    with colmap_log(verbose):
        rec = pycolmap.triangulate_points(
            reference, database, image_dir, tmp, options=options
        )
    logger.info("Triangulated model:\n%s", rec.summary())
    if rec.num_points3D() == 0:
        raise TriangulationError(
            f"triangulation produced no 3D points (see {database}): check that the "
            "matches are correct and that the pairs overlap"
        )
    move_model(tmp, sfm_dir)
    shutil.rmtree(tmp)
    return rec


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m p2p_hloc.triangulation", description=__doc__.splitlines()[0]
    )
    p.add_argument("--sfm_dir", type=Path, required=True)
    add_argument(
        p, "--reference_sfm_model", "--reference_model", type=Path, required=True
    )
    p.add_argument("--image_dir", type=Path, required=True)
    p.add_argument("--pairs", type=Path, required=True)
    p.add_argument("--features", type=Path, required=True)
    p.add_argument("--matches", type=Path, required=True)
    p.add_argument("--skip_geometric_verification", action="store_true")
    p.add_argument("--estimate_two_view_geometries", action="store_true")
    p.add_argument("--min_match_score", type=float)
    p.add_argument("--verbose", action="store_true")
    p.add_argument(
        "--mapper_options",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="pycolmap.IncrementalPipelineOptions settings",
    )
    p.add_argument("--max_epipolar_error", type=float, default=4.0)
    p.add_argument("--overwrite", action="store_true")
    return p


def run(args: argparse.Namespace) -> None:
    kwargs = vars(args)
    kwargs["reference_model"] = kwargs.pop("reference_sfm_model")
    kwargs["mapper_options"] = parse_option_args(
        kwargs["mapper_options"], pycolmap.IncrementalPipelineOptions()
    )
    main(**kwargs)


if __name__ == "__main__":
    sys.exit(run_cli(parser(), run))
