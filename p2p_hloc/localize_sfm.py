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
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import pycolmap
from tqdm import tqdm

from .io import (
    H5Error,
    from_hloc_coords,
    get_keypoints,
    get_matches,
    parse_queries,
    parse_retrieval,
    write_poses,
)

logger = logging.getLogger("p2p_hloc")

RANSAC_THRESHOLDS = {"aachen": 12.0, "aachen_v1.1": 20.0, "inloc": 48.0}


def pose_tuple(rigid: pycolmap.Rigid3d) -> Tuple[np.ndarray, np.ndarray]:
    """(qvec wxyz, tvec) of a pycolmap pose."""
    return rigid.rotation.quat[[3, 0, 1, 2]], np.array(rigid.translation)


def estimate_pose(
    points2D: np.ndarray,
    points3D: np.ndarray,
    camera: pycolmap.Camera,
    ransac_thresh: float,
    refinement: Optional[Dict[str, Any]] = None,
) -> Optional[Dict[str, Any]]:
    """PnP with LO-RANSAC and refinement; None if it fails or has no input."""
    if len(points2D) < 3:
        return None
    options = pycolmap.AbsolutePoseEstimationOptions()
    options.ransac.max_error = ransac_thresh
    return pycolmap.estimate_and_refine_absolute_pose(
        points2D.astype(np.float64),
        points3D.astype(np.float64),
        camera,
        estimation_options=options,
        refinement_options=pycolmap.AbsolutePoseRefinementOptions(refinement or {}),
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
    """2D-3D correspondences of a query from its matches, then PnP."""

    def __init__(
        self,
        reconstruction: pycolmap.Reconstruction,
        features: Path,
        matches: Path,
        ransac_thresh: float,
        refinement: Optional[Dict[str, Any]] = None,
    ):
        self.rec = reconstruction
        self.features, self.matches = features, matches
        self.ransac_thresh, self.refinement = ransac_thresh, refinement
        self._point_ids: Dict[int, np.ndarray] = {}

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
    ) -> Tuple[np.ndarray, np.ndarray, int]:
        """Unique (query keypoint index, 3D point id) pairs and the number of
        matches read; pairs missing from the match file are warned about."""
        found, num_matches = [], 0
        for i in db_ids:
            name = self.rec.images[i].name
            try:
                m, _ = get_matches(self.matches, query, name)
            except H5Error:
                logger.warning("No matches for pair (%s, %s): skipped.", query, name)
                continue
            num_matches += len(m)
            ids = self.point3D_ids(i)
            m = m[m[:, 1] < len(ids)]
            ids = ids[m[:, 1]]
            valid = ids >= 0
            found.append(np.stack([m[valid, 0], ids[valid]], -1))
        if not found:
            return np.zeros(0, int), np.zeros(0, int), num_matches
        pairs = np.unique(np.concatenate(found), axis=0)
        return pairs[:, 0], pairs[:, 1], num_matches

    def localize(
        self, query: str, camera: pycolmap.Camera, db_ids: Sequence[int]
    ) -> Dict[str, Any]:
        """PnP from the matches to ``db_ids``: a log entry with ``ret`` (the
        pycolmap result or None)."""
        keypoints = from_hloc_coords(get_keypoints(self.features, query))
        kp_idx, p3d_ids, num_matches = self.correspondences(query, db_ids)
        points3D = np.array([self.rec.points3D[j].xyz for j in p3d_ids]).reshape(-1, 3)
        ret = estimate_pose(
            keypoints[kp_idx], points3D, camera, self.ransac_thresh, self.refinement
        )
        return dict(
            db=[self.rec.images[i].name for i in db_ids],
            num_matches=num_matches,
            num_correspondences=len(kp_idx),
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


def main(
    reference_sfm: Union[Path, pycolmap.Reconstruction],
    queries: Path,
    retrieval: Path,
    features: Path,
    matches: Path,
    results: Path,
    ransac_thresh: float = 12.0,
    covisibility_clustering: bool = False,
    refinement: Optional[Dict[str, Any]] = None,
    overwrite: bool = False,
) -> Path:
    """Localize the queries of ``queries`` (``name MODEL W H params`` lines, or
    several files given as a glob) and write ``results`` (submission format)
    and ``{results}_logs.pkl``."""
    results = Path(results)
    if results.exists() and not overwrite:
        logger.info("Results exist at %s: skipping.", results)
        return results
    rec = reference_sfm
    if not isinstance(rec, pycolmap.Reconstruction):
        rec = pycolmap.Reconstruction(reference_sfm)
    if rec.num_points3D() == 0:
        raise ValueError(
            f"reference model {reference_sfm} has no 3D points: triangulate first"
        )
    query_list = [
        q
        for path in sorted(Path(queries).parent.glob(Path(queries).name))
        for q in parse_queries(path)
    ]
    if not query_list:
        raise FileNotFoundError(f"no queries found in {queries}")
    retrieval_dict = parse_retrieval(retrieval)
    name_to_id = {image.name: i for i, image in rec.images.items() if image.has_pose}
    localizer = QueryLocalizer(rec, features, matches, ransac_thresh, refinement)

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
        ransac_thresh=ransac_thresh, covisibility_clustering=covisibility_clustering
    )
    return write_results(
        results, poses, logs, len(query_list), failed, fallback, settings
    )


def write_results(
    results: Path,
    poses: Dict[str, Tuple[np.ndarray, np.ndarray]],
    logs: Dict[str, Any],
    num_queries: int,
    failed: List[str],
    fallback: List[str],
    settings: Dict[str, Any],
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
    write_poses(results, poses)
    with open(f"{results}_logs.pkl", "wb") as f:
        pickle.dump(dict(loc=logs, failed=failed, fallback=fallback, **settings), f)
    logger.info("Wrote %d poses to %s.", len(poses), results)
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference_sfm", type=Path, required=True)
    parser.add_argument("--queries", type=Path, required=True)
    parser.add_argument("--retrieval", type=Path, required=True)
    parser.add_argument("--features", type=Path, required=True)
    parser.add_argument("--matches", type=Path, required=True)
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--ransac_thresh", type=float, default=12.0)
    parser.add_argument("--covisibility_clustering", action="store_true")
    parser.add_argument("--overwrite", action="store_true")
    main(**vars(parser.parse_args()))
