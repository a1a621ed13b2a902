"""Localize InLoc queries against database cutouts with per-pixel 3D points.

Each retrieved cutout ``database/cutouts/{floor}/{scan}/{name}.jpg`` has a
``{name}.jpg.mat`` holding ``XYZcut`` (H x W x 3, scan coordinates, NaN where
the scan has no point) and its scan is placed in the world by the 4x4
``P_after_GICP`` on lines 7-10 of
``database/alignments/{floor}/transformations/{building}_trans_{scan}.txt``.
Matched cutout keypoints are lifted to 3D (bilinear, nearest where bilinear
meets NaN), moved to the world, and the query pose is estimated by PnP with a
SIMPLE_PINHOLE camera (f = 4032 * 28 / 36 = 3136 px, centred principal point).

Matches come from hloc files (``features`` + ``matches``) or from a matcher
run on the fly (``conf``: ``.match(path0, path1)`` per pair, no quantization).
Sturdier than hloc: a pair with a missing or unreadable file is skipped, and a
query that fails is logged and gets a fallback pose (the position of its first
retrieved scan, world axes as rotation, marked ``"fallback"`` in the log) or,
if no cutout was usable, no line; the run never stops on one query.
"""

import argparse
import logging
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import pycolmap
import scipy.io
from PIL import Image
from scipy.io.matlab import MatReadError
from tqdm import tqdm

from .console import run_cli
from .io import H5Error, from_hloc_coords, get_keypoints, get_matches, parse_retrieval
from .localize_sfm import (
    check_inputs,
    check_writable,
    estimate_pose,
    pose_config,
    pose_tuple,
    write_results,
)

logger = logging.getLogger("p2p_hloc")

INLOC_FOCAL = 4032 * 28 / 36  # iPhone 7 at full resolution, as in hloc
PairFn = Callable[[str, str], Tuple[np.ndarray, np.ndarray]]


class InLocError(RuntimeError):
    """A cutout whose 3D points or scan alignment cannot be read."""


def interpolate_scan(
    xyz: np.ndarray, keypoints: np.ndarray
) -> Tuple[np.ndarray, np.ndarray]:
    """3D points ``(M, 3)`` at ``(N, 2)`` keypoints (corner convention, pixels
    of the cutout, which ``xyz`` ``(H, W, 3)`` covers one value per pixel) and
    the mask ``(N,)`` of keypoints that got one: bilinear, nearest where a
    bilinear neighbour is NaN; keypoints outside the pixel centres' hull or
    still NaN are dropped."""
    h, w = xyz.shape[:2]
    x, y = keypoints[:, 0] - 0.5, keypoints[:, 1] - 0.5  # pixel-centre indices
    inside = (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)
    x, y = np.clip(x, 0, w - 1), np.clip(y, 0, h - 1)
    x0 = np.clip(np.floor(x).astype(int), 0, max(w - 2, 0))
    y0 = np.clip(np.floor(y).astype(int), 0, max(h - 2, 0))
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    points = (
        xyz[y0, x0] * (1 - fx) * (1 - fy)
        + xyz[y0, x1] * fx * (1 - fy)
        + xyz[y1, x0] * (1 - fx) * fy
        + xyz[y1, x1] * fx * fy
    )
    nan = np.isnan(points).any(-1)
    points[nan] = xyz[np.round(y[nan]).astype(int), np.round(x[nan]).astype(int)]
    valid = inside & ~np.isnan(points).any(-1)
    return points[valid], valid


def read_xyz(path: Path) -> np.ndarray:
    """``XYZcut`` of a cutout's ``.mat`` file."""
    try:
        xyz = scipy.io.loadmat(str(path))["XYZcut"]
    except (OSError, ValueError, KeyError, TypeError, MatReadError) as e:
        raise InLocError(f"cannot read XYZcut from {path}: {e!r}") from e
    if xyz.ndim != 3 or xyz.shape[2] != 3:
        raise InLocError(f"XYZcut of {path} has shape {xyz.shape}, expected (H, W, 3)")
    return xyz.astype(np.float64)


def scan_alignment(dataset_dir: Path, cutout: str) -> np.ndarray:
    """4x4 world_from_scan (``P_after_GICP``) of the scan a cutout comes from,
    e.g. ``database/cutouts/DUC1/024/DUC_cutout_024_0_0.jpg`` ->
    ``database/alignments/DUC1/transformations/DUC_trans_024.txt``."""
    parts = cutout.split("/")
    if len(parts) < 3:
        raise InLocError(f"cannot parse floor and scan from cutout name {cutout!r}")
    floor, scan, building = parts[-3], parts[-2], parts[-1][:3]
    path = dataset_dir / "database/alignments" / floor / "transformations"
    path = path / f"{building}_trans_{scan}.txt"
    try:
        lines = path.read_text().splitlines()[7:11]
        T = np.array([[float(v) for v in line.split()] for line in lines])
    except (OSError, ValueError) as e:
        raise InLocError(f"cannot read the scan alignment {path}: {e!r}") from e
    if T.shape != (4, 4):
        raise InLocError(f"{path}: lines 7-10 are not a 4x4 matrix")
    return T


class Cutouts:
    """World 3D points of cutout keypoints (``.mat`` files and alignments cached)."""

    def __init__(self, dataset_dir: Path):
        self.dataset_dir = Path(dataset_dir)
        self.xyz = lru_cache(maxsize=64)(
            lambda name: read_xyz(self.dataset_dir / (name + ".mat"))
        )
        self.alignment = lru_cache(maxsize=None)(
            lambda name: scan_alignment(self.dataset_dir, name)
        )

    def points3D(
        self, name: str, keypoints: np.ndarray
    ) -> Tuple[np.ndarray, np.ndarray]:
        """World points of ``keypoints`` and the mask of those that got one."""
        points, valid = interpolate_scan(self.xyz(name), keypoints)
        T = self.alignment(name)
        return points @ T[:3, :3].T + T[:3, 3], valid


def h5_pairs(features: Path, matches: Path) -> PairFn:
    """Matched keypoints (corner convention) of a pair from hloc files."""

    def pair(query: str, ref: str) -> Tuple[np.ndarray, np.ndarray]:
        m, _ = get_matches(matches, query, ref)
        kq = from_hloc_coords(get_keypoints(features, query))
        kr = from_hloc_coords(get_keypoints(features, ref))
        return kq[m[:, 0]], kr[m[:, 1]]

    return pair


def matcher_pairs(matcher, dataset_dir: Path) -> PairFn:
    """Matched keypoints of a pair from a matcher run on the fly
    (``p2p_hloc.matchers`` interface; recent images' preparations cached)."""
    prepare = lru_cache(maxsize=8)(lambda name: matcher.prepare(dataset_dir / name))

    def pair(query: str, ref: str) -> Tuple[np.ndarray, np.ndarray]:
        pred = matcher.match(prepare(query), prepare(ref))
        return np.asarray(pred["keypoints0"]), np.asarray(pred["keypoints1"])

    return pair


def query_camera(path: Path, focal_length: float) -> pycolmap.Camera:
    """SIMPLE_PINHOLE with the image's size (as stored: no EXIF rotation,
    the way our matchers read it) and a centred principal point."""
    with Image.open(path) as im:
        w, h = im.size
    return pycolmap.Camera(
        model="SIMPLE_PINHOLE", width=w, height=h, params=[focal_length, w / 2, h / 2]
    )


def localize_query(
    query: str,
    refs: List[str],
    camera: pycolmap.Camera,
    pair_fn: PairFn,
    cutouts: Cutouts,
    skip_matches: Optional[int],
    config: Dict[str, Any],
) -> Dict[str, Any]:
    """Concatenated 2D-3D correspondences over the usable cutouts, then PnP."""
    points2D, points3D, used = [], [], []
    for ref in refs:
        try:
            kq, kr = pair_fn(query, ref)
            if skip_matches and len(kq) < skip_matches:
                logger.debug(
                    "Pair (%s, %s): %d matches < %d: skipped.",
                    query,
                    ref,
                    len(kq),
                    skip_matches,
                )
                continue
            p3d, valid = cutouts.points3D(ref, kr)
        except (H5Error, InLocError) as e:
            logger.warning("Pair (%s, %s) skipped: %s", query, ref, e)
            continue
        points2D.append(kq[valid])
        points3D.append(p3d)
        used.append(ref)
    points2D = np.concatenate(points2D) if points2D else np.zeros((0, 2))
    points3D = np.concatenate(points3D) if points3D else np.zeros((0, 3))
    ret = estimate_pose(points2D, points3D, camera, config)
    return dict(
        db=used,
        num_correspondences=len(points2D),
        num_inliers=0 if ret is None else int(ret["num_inliers"]),
        inlier_mask=None if ret is None else np.asarray(ret["inlier_mask"]),
        ret=ret,
    )


def fallback_pose(
    cutouts: Cutouts, refs: List[str]
) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """Camera at the first readable retrieved scan's origin, world axes."""
    for ref in refs:
        try:
            center = cutouts.alignment(ref)[:3, 3]
        except InLocError:
            continue
        return np.array([1.0, 0, 0, 0]), -center
    return None


def main(
    dataset_dir: Path,
    retrieval: Path,
    features: Optional[Path],
    matches: Optional[Path],
    results: Path,
    skip_matches: Optional[int] = None,
    *,
    matcher: Optional[Any] = None,
    conf: Optional[Dict[str, Any]] = None,
    weights: Optional[Path] = None,
    ransac_thresh: float = 48.0,
    focal_length: float = INLOC_FOCAL,
    overwrite: bool = False,
    seed: Optional[int] = 0,
) -> Path:
    """Localize the queries of ``retrieval`` (its first column) and write
    ``results`` (submission format, basenames) and ``{results}_logs.pkl``;
    hloc's signature. Matches: ``features`` + ``matches`` h5 files, or (both
    None) a ``matcher`` (or its ``conf`` and ``weights``) run on each pair on
    the fly. ``skip_matches``: pairs with fewer matches are not used (hloc's
    InLoc notebook: 20). ``seed``: the RANSAC seed (a rerun gives the same
    file; None: unseeded). Returns the results path (hloc: None)."""
    results = Path(results)
    if results.exists() and not overwrite:
        logger.info("Results exist at %s: skipping.", results)
        return results
    dataset_dir = Path(dataset_dir)
    check_inputs(dataset_dir, retrieval, features, matches)
    config = pose_config(ransac_thresh, seed=seed)
    retrieval_dict = parse_retrieval(retrieval)
    check_writable(results)
    if matcher is None and conf is not None:
        from .matchers import build_matcher

        matcher = build_matcher(conf, weights)
    if matcher is not None:
        pair_fn = matcher_pairs(matcher, dataset_dir)
    elif features is not None and matches is not None:
        pair_fn = h5_pairs(features, matches)
    else:
        raise ValueError("give either features and matches files or a matcher conf")
    cutouts = Cutouts(dataset_dir)

    poses, logs, failed, fallback = {}, {}, [], []
    for query, refs in tqdm(retrieval_dict.items(), desc="localize"):
        try:
            camera = query_camera(dataset_dir / query, focal_length)
            log = localize_query(
                query, refs, camera, pair_fn, cutouts, skip_matches, config
            )
        except Exception as e:  # one query never stops the run
            logger.exception("Query %s failed: %s", query, e)
            log = dict(db=[], ret=None, num_inliers=0, error=repr(e))
        if log["ret"] is not None:
            poses[query] = pose_tuple(log["ret"]["cam_from_world"])
            log["status"] = "localized"
        elif (pose := fallback_pose(cutouts, refs)) is not None:
            logger.warning(
                "Query %s: PnP failed (%d correspondences); fallback pose.",
                query,
                log.get("num_correspondences", 0),
            )
            poses[query], log["status"] = pose, "fallback"
            fallback.append(query)
        else:
            logger.error(
                "Query %s: PnP failed and no scan is readable: no pose written.", query
            )
            log["status"] = "no_pose"
            failed.append(query)
        logs[query] = log

    settings = dict(
        skip_matches=skip_matches,
        ransac_thresh=ransac_thresh,
        focal_length=focal_length,
        config=config,
    )
    return write_results(
        results, poses, logs, len(retrieval_dict), failed, fallback, settings
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset_dir", type=Path, required=True)
    p.add_argument("--retrieval", type=Path, required=True)
    p.add_argument("--features", type=Path, required=True)
    p.add_argument("--matches", type=Path, required=True)
    p.add_argument("--results", type=Path, required=True)
    p.add_argument("--skip_matches", type=int)
    p.add_argument("--ransac_thresh", type=float, default=48.0)
    p.add_argument("--focal_length", type=float, default=INLOC_FOCAL)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--seed", type=int, default=0, help="RANSAC seed; -1: unseeded")
    return p


if __name__ == "__main__":
    sys.exit(run_cli(parser(), lambda args: main(**vars(args))))
