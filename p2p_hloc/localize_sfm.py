"""Register queries in a triangulated model from their matches (pycolmap 4.x).

For each query (name and intrinsics), the retrieved database images give
2D-3D correspondences through the matches to their triangulated keypoints;
``pycolmap.estimate_and_refine_absolute_pose`` (LO-RANSAC + refinement)
estimates the pose. With covisibility clustering, the retrieved images are
split into groups that share 3D points and the group with most inliers wins.

Fallback: a query whose PnP fails (or that has no 2D-3D correspondence) gets
the pose of its first retrieved database image in the model, so that the
results file has one line per query; it is logged as a fallback, counted in
the summary and marked ``"fallback"`` in the log. A query without any
retrieved image in the model gets no line and an error message.
"""

import argparse
import logging
import pickle
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import pycolmap
from tqdm import tqdm

from .console import InputError, run_cli
from .io import (
    H5Error,
    from_hloc_coords,
    get_keypoints,
    get_matches,
    get_raw_matches,
    parse_queries,
    parse_retrieval,
    read_model,
    write_poses,
)
from .quantize import assign_fixed

logger = logging.getLogger("p2p_hloc")

RANSAC_THRESHOLDS = {"aachen": 12.0, "aachen_v1.1": 20.0, "inloc": 48.0}


def pose_tuple(rigid: pycolmap.Rigid3d) -> Tuple[np.ndarray, np.ndarray]:
    """(qvec wxyz, tvec) of a pycolmap pose."""
    return rigid.rotation.quat[[3, 0, 1, 2]], np.array(rigid.translation)


def _merge(base: Dict[str, Any], update: Dict[str, Any]) -> Dict[str, Any]:
    """``base`` updated key by key (nested dicts merged, not replaced)."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            value = _merge(out[key], value)
        out[key] = value
    return out


def pose_config(
    ransac_thresh: float,
    config: Optional[Dict[str, Any]] = None,
    seed: Optional[int] = 0,
) -> Dict[str, Any]:
    """``{"estimation": ..., "refinement": ...}`` pycolmap options: the RANSAC
    threshold and seed (None: pycolmap's unseeded -1), updated by ``config``
    key by key; checked against pycolmap."""
    ransac = dict(
        max_error=float(ransac_thresh), random_seed=-1 if seed is None else seed
    )
    merged = _merge({"estimation": {"ransac": ransac}}, config or {})
    unknown = set(merged) - {"estimation", "refinement"}
    try:
        if unknown:
            raise KeyError(f"unknown keys {sorted(unknown)}")
        pycolmap.AbsolutePoseEstimationOptions(merged["estimation"])
        pycolmap.AbsolutePoseRefinementOptions(merged.get("refinement", {}))
    except (KeyError, AttributeError, RuntimeError, TypeError) as e:
        raise InputError(f"bad localization config {config!r}: {e}") from e
    return merged


def estimate_pose(
    points2D: np.ndarray,
    points3D: np.ndarray,
    camera: pycolmap.Camera,
    config: Dict[str, Any],
) -> Optional[Dict[str, Any]]:
    """PnP with LO-RANSAC and refinement (``config`` from ``pose_config``;
    ``points2D`` ``(N, 2)`` corner convention, ``points3D`` ``(N, 3)``); None
    if it fails or has fewer than 3 correspondences."""
    if len(points2D) < 3:
        return None
    return pycolmap.estimate_and_refine_absolute_pose(
        points2D.astype(np.float64),
        points3D.astype(np.float64),
        camera,
        estimation_options=pycolmap.AbsolutePoseEstimationOptions(config["estimation"]),
        refinement_options=pycolmap.AbsolutePoseRefinementOptions(
            config.get("refinement", {})
        ),
    )


def covisibility_clusters(
    reconstruction: pycolmap.Reconstruction, image_ids: Sequence[int]
) -> List[List[int]]:
    """Connected components of ``image_ids`` linked by shared 3D points,
    largest first (order within a component follows ``image_ids``)."""
    parent = {i: i for i in image_ids}

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: Dict[int, int] = {}
    for i in image_ids:
        for p in reconstruction.images[i].points2D:
            if not p.has_point3D():
                continue
            if p.point3D_id in owner:
                parent[find(i)] = find(owner[p.point3D_id])
            else:
                owner[p.point3D_id] = i
    clusters: Dict[int, List[int]] = defaultdict(list)
    for i in image_ids:
        clusters[find(i)].append(i)
    return sorted(clusters.values(), key=len, reverse=True)


class QueryLocalizer:
    """2D-3D correspondences of a query from its matches, then PnP.

    ``raw``: instead of the query's keypoints, each raw query point of a dense
    pair (``keypoints0``/``keypoints1``/``scores`` beside ``matches0``, with
    ``score >= min_score``) is its own observation of the 3D point of the
    database keypoint nearest to its raw partner, within ``radius`` px (the
    keypoint quantization assigned it to, since database keypoints are fixed).
    """

    def __init__(
        self,
        reconstruction: pycolmap.Reconstruction,
        features: Path,
        matches: Path,
        config: Dict[str, Any],
        raw: bool = False,
        radius: float = 4.0,
        min_score: float = 0.0,
    ):
        self.rec = reconstruction
        self.features, self.matches = features, matches
        self.config = config
        self.raw, self.radius, self.min_score = raw, radius, min_score
        self._point_ids: Dict[int, np.ndarray] = {}
        self._keypoints: Dict[str, np.ndarray] = {}

    def point3D_ids(self, image_id: int) -> np.ndarray:
        """Per keypoint of a database image, its 3D point id or -1."""
        if image_id not in self._point_ids:
            self._point_ids[image_id] = np.array(
                [
                    p.point3D_id if p.has_point3D() else -1
                    for p in self.rec.images[image_id].points2D
                ],
                np.int64,
            )
        return self._point_ids[image_id]

    def correspondences(
        self, query: str, db_ids: Sequence[int]
    ) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray], int]:
        """Query points ``(N, 2)`` (corner convention) with the ids of their
        3D points ``(N,)`` (unique pairs), the query keypoint indices (None in
        raw mode) and the number of matches read; pairs missing from the match
        file are warned about."""
        found, num_matches = [], 0
        for i in db_ids:
            name = self.rec.images[i].name
            try:
                read = self.raw_pair if self.raw else self.keypoint_pair
                xy, ids = read(query, name, self.point3D_ids(i))
            except H5Error:
                logger.warning("No matches for pair (%s, %s): skipped.", query, name)
                continue
            num_matches += len(ids)
            valid = ids >= 0
            found.append(np.concatenate([xy[valid], ids[valid, None]], -1))
        if not found:
            return np.zeros((0, 2)), np.zeros(0, int), None, num_matches
        rows = np.unique(np.concatenate(found), axis=0)
        ids = rows[:, -1].astype(np.int64)
        if self.raw:
            return rows[:, :2], ids, None, num_matches
        kp_idx = rows[:, 0].astype(np.int64)
        keypoints = from_hloc_coords(get_keypoints(self.features, query))
        return keypoints[kp_idx], ids, kp_idx, num_matches

    def keypoint_pair(
        self, query: str, name: str, point_ids: np.ndarray
    ) -> Tuple[np.ndarray, np.ndarray]:
        """Matched query keypoint indices ``(M, 1)`` and 3D point ids ``(M,)``
        (-1: none) of a pair, from ``matches0``."""
        m, _ = get_matches(self.matches, query, name)
        m = m[m[:, 1] < len(point_ids)]
        return m[:, :1].astype(np.float64), point_ids[m[:, 1]]

    def raw_pair(
        self, query: str, name: str, point_ids: np.ndarray
    ) -> Tuple[np.ndarray, np.ndarray]:
        """Raw query points ``(M, 2)`` (corner convention) and 3D point ids
        ``(M,)`` (-1: none) of a pair."""
        raw = get_raw_matches(self.matches, query, name)
        if raw is None:
            raise InputError(
                f"pair ({query}, {name}) of {self.matches} has no raw matches "
                "(keypoints0, keypoints1, scores): raw query points need a dense "
                "matcher's matches file"
            )
        kq, kr, scores = raw
        keep = scores >= self.min_score
        if name not in self._keypoints:
            self._keypoints[name] = get_keypoints(self.features, name)
        ref = self._keypoints[name][: len(point_ids)]
        idx = assign_fixed(kr[keep], ref, self.radius)
        ids = np.where(idx >= 0, point_ids[idx], -1)
        return from_hloc_coords(kq[keep]), ids

    def localize(
        self, query: str, camera: pycolmap.Camera, db_ids: Sequence[int]
    ) -> Dict[str, Any]:
        """PnP from the matches to ``db_ids``: a log entry with ``ret`` (the
        pycolmap result or None)."""
        points2D, p3d_ids, kp_idx, num_matches = self.correspondences(query, db_ids)
        points3D = np.array([self.rec.points3D[j].xyz for j in p3d_ids]).reshape(-1, 3)
        ret = estimate_pose(points2D, points3D, camera, self.config)
        return dict(
            db=[self.rec.images[i].name for i in db_ids],
            num_matches=num_matches,
            num_correspondences=len(points2D),
            keypoints_query=points2D.astype(np.float32),
            keypoint_indices=kp_idx,
            points3D_ids=p3d_ids,
            num_inliers=0 if ret is None else int(ret["num_inliers"]),
            inlier_mask=None if ret is None else np.asarray(ret["inlier_mask"]),
            ret=ret,
        )


def localize_query(
    localizer: QueryLocalizer,
    query: str,
    camera: pycolmap.Camera,
    db_ids: Sequence[int],
    covisibility_clustering: bool,
) -> Dict[str, Any]:
    """Best PnP over the covisibility clusters (or over all retrieved images)."""
    groups = (
        covisibility_clusters(localizer.rec, db_ids)
        if covisibility_clustering
        else [db_ids]
    )
    best = None
    for group in groups:
        log = localizer.localize(query, camera, group)
        if log["ret"] is not None and (
            best is None or log["num_inliers"] > best["num_inliers"]
        ):
            best = log
    best = best or log  # every group failed: keep the last log
    best["num_clusters"] = len(groups)
    return best


def read_queries(queries: Path) -> List[Tuple[str, Dict[str, Any]]]:
    """``(name, camera dict)`` of every query of ``queries``, a file or a glob
    in the file name (files in sorted order)."""
    queries = Path(queries)
    files = sorted(queries.parent.glob(queries.name))
    if not files:
        raise FileNotFoundError(f"no queries file matches {queries}")
    query_list = [q for path in files for q in parse_queries(path)]
    if not query_list:
        raise InputError(f"no queries in {', '.join(map(str, files))}")
    return query_list


def check_inputs(*paths: Optional[Path]) -> None:
    """Every given input file exists (before any work)."""
    for path in paths:
        if path is not None and not Path(path).exists():
            raise FileNotFoundError(f"{path} not found")


def check_writable(results: Path) -> None:
    """Create the folder of ``results`` and make sure a file can be written
    there, before any query is localized."""
    try:
        results.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=results.parent, prefix=results.name):
            pass
    except OSError as e:
        raise InputError(f"cannot write the results {results}: {e}") from e


def main(
    reference_sfm: Union[Path, pycolmap.Reconstruction],
    queries: Path,
    retrieval: Path,
    features: Path,
    matches: Path,
    results: Path,
    ransac_thresh: float = 12,
    covisibility_clustering: bool = False,
    prepend_camera_name: bool = False,
    config: Optional[Dict[str, Any]] = None,
    *,
    overwrite: bool = False,
    seed: Optional[int] = 0,
    raw_query_points: bool = False,
    radius: float = 4.0,
    min_score: float = 0.0,
) -> Path:
    """Localize the queries of ``queries`` (``name MODEL W H params`` lines; a
    glob in the file name reads several files, e.g.
    ``queries/*_time_queries_with_intrinsics.txt``) and write ``results``
    (submission format) and ``{results}_logs.pkl``; hloc's signature.

    ``config``: pycolmap options as dicts, ``{"estimation":
    AbsolutePoseEstimationOptions, "refinement": AbsolutePoseRefinementOptions}``,
    merged key by key into the defaults (``ransac_thresh`` is
    ``estimation.ransac.max_error``, ``seed`` its ``random_seed``: a rerun
    gives the same file; None: unseeded). ``prepend_camera_name``: results
    name queries ``camera/basename``. ``raw_query_points``: the query side is
    not quantized (see ``QueryLocalizer``; ``radius`` and ``min_score`` as in
    the matching conf's quantization). Returns the results path (hloc: None).
    """
    results = Path(results)
    if results.exists() and not overwrite:
        logger.info("Results exist at %s: skipping.", results)
        return results
    check_inputs(retrieval, features, matches)
    config = pose_config(ransac_thresh, config, seed)
    query_list = read_queries(queries)
    retrieval_dict = parse_retrieval(retrieval)
    check_writable(results)
    rec = reference_sfm
    if not isinstance(rec, pycolmap.Reconstruction):
        rec = read_model(reference_sfm)
    if rec.num_points3D() == 0:
        raise ValueError(
            f"reference model {reference_sfm} has no 3D points: triangulate first"
        )
    name_to_id = {image.name: i for i, image in rec.images.items() if image.has_pose}
    localizer = QueryLocalizer(
        rec, features, matches, config, raw_query_points, radius, min_score
    )

    poses, logs = {}, {}
    failed, fallback = [], []
    for name, camera_dict in tqdm(query_list, desc="localize"):
        retrieved = retrieval_dict.get(name, [])
        db_ids = [name_to_id[r] for r in retrieved if r in name_to_id]
        if len(db_ids) < len(retrieved):
            logger.warning(
                "Query %s: %d of %d retrieved images are not in the model: skipped.",
                name,
                len(retrieved) - len(db_ids),
                len(retrieved),
            )
        if not db_ids:
            logger.error(
                "Query %s has no retrieved image in the model: no pose written.", name
            )
            failed.append(name)
            logs[name] = dict(db=retrieved, ret=None, num_inliers=0, status="no_pose")
            continue
        camera = pycolmap.Camera(**camera_dict)
        try:
            log = localize_query(
                localizer, name, camera, db_ids, covisibility_clustering
            )
        except H5Error as e:
            logger.error("Query %s: %s", name, e)
            log = dict(db=retrieved, ret=None, num_inliers=0)
        if log["ret"] is None:
            logger.warning(
                "Query %s: PnP failed; falling back to the pose of %s.",
                name,
                rec.images[db_ids[0]].name,
            )
            fallback.append(name)
            poses[name] = pose_tuple(rec.images[db_ids[0]].cam_from_world())
            log["status"] = "fallback"
        else:
            poses[name] = pose_tuple(log["ret"]["cam_from_world"])
            log["status"] = "localized"
        logs[name] = log

    settings = dict(
        ransac_thresh=ransac_thresh,
        covisibility_clustering=covisibility_clustering,
        config=config,
        raw_query_points=raw_query_points,
        radius=radius,
        min_score=min_score,
    )
    return write_results(
        results,
        poses,
        logs,
        len(query_list),
        failed,
        fallback,
        settings,
        prepend_camera_name,
    )


def write_results(
    results: Path,
    poses: Dict[str, Tuple[np.ndarray, np.ndarray]],
    logs: Dict[str, Any],
    num_queries: int,
    failed: List[str],
    fallback: List[str],
    settings: Dict[str, Any],
    prepend_camera_name: bool = False,
) -> Path:
    """Summarize a localization run, write the results file and its
    ``<results>_logs.pkl`` (per-query logs, failures, settings)."""
    for name, log in logs.items():  # keep plain arrays, not pycolmap objects
        if log.get("ret") is not None:
            log["ret"] = dict(qvec=poses[name][0], tvec=poses[name][1])
    n_ok = num_queries - len(failed) - len(fallback)
    logger.info("Localized %d / %d queries.", n_ok, num_queries)
    if fallback:
        logger.warning(
            "%d queries got the fallback pose (PnP failed), e.g. %s.",
            len(fallback),
            fallback[0],
        )
    if failed:
        logger.error(
            "%d queries have no pose in the results, e.g. %s.", len(failed), failed[0]
        )
    logs_path = Path(f"{results}_logs.pkl")
    tmp = logs_path.with_name(logs_path.name + ".tmp")
    with open(tmp, "wb") as f:
        pickle.dump(dict(loc=logs, failed=failed, fallback=fallback, **settings), f)
    write_poses(results, poses, prepend_camera_name)
    tmp.replace(logs_path)
    logger.info("Wrote %d poses to %s.", len(poses), results)
    return results


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference_sfm", type=Path, required=True)
    p.add_argument("--queries", type=Path, required=True)
    p.add_argument("--features", type=Path, required=True)
    p.add_argument("--matches", type=Path, required=True)
    p.add_argument("--retrieval", type=Path, required=True)
    p.add_argument("--results", type=Path, required=True)
    p.add_argument("--ransac_thresh", type=float, default=12.0)
    p.add_argument("--covisibility_clustering", action="store_true")
    p.add_argument("--prepend_camera_name", action="store_true")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--seed", type=int, default=0, help="RANSAC seed; -1: unseeded")
    p.add_argument(
        "--raw_query_points",
        action="store_true",
        help="each raw query point of a dense matcher is its own observation",
    )
    p.add_argument("--radius", type=float, default=4.0)
    p.add_argument("--min_score", type=float, default=0.0)
    return p


if __name__ == "__main__":
    sys.exit(run_cli(parser(), lambda args: main(**vars(args))))
