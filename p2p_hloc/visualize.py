"""Localization pictures (the Patch2Pix paper's Figures 3-5) and a per-query
table from a localization run.

For each chosen query, the retrieved database images with the most PnP
inliers: inlier matches in green, the others in red, the inlier count (and,
with ground truth, the pose error) in the titles. The table
``<results>_queries.tsv`` lists every query: status, inliers, matches and,
with ground truth, the pose error.

Inliers come from ``<results>_logs.pkl``: with a reference model
(``localize_sfm``), a match is an inlier when its (query keypoint, 3D point)
correspondence is one of PnP's inliers; without one (``localize_inloc``,
``image_dir`` is the dataset), when its cutout point, lifted to 3D, projects
within the RANSAC threshold of the query keypoint with the estimated pose.

python -m p2p_hloc.visualize --results RESULTS --image_dir DIR \
    --features FEATS --matches MATCHES [--reference_sfm MODEL] \
    [--ground_truth GT] [--queries N | --names NAME ...] \
    [--selection worst|best|random] --out DIR
"""

import argparse
import logging
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import pycolmap
from PIL import Image

from .console import InputError, run_cli
from .eval.poses import pose_error, qvec_to_matrix, read_poses
from .io import from_hloc_coords, get_keypoints, get_matches, read_model

logger = logging.getLogger("p2p_hloc")

SELECTIONS = ("worst", "best", "random")


@dataclass
class PairInliers:
    """The matches of a query with one database image (corner convention)."""

    name: str
    keypoints_query: np.ndarray  # (N, 2)
    keypoints_db: np.ndarray  # (N, 2)
    inliers: np.ndarray  # (N,) bool


def read_logs(results: Path) -> Dict:
    path = Path(f"{results}_logs.pkl")
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the logs of a localization run")
    with open(path, "rb") as f:
        return pickle.load(f)


def matched_keypoints(features: Path, matches: Path, query: str, db: str):
    """``(K, 2)`` keypoint index pairs and both images' keypoints."""
    m, _ = get_matches(matches, query, db)
    kq = from_hloc_coords(get_keypoints(features, query))
    kd = from_hloc_coords(get_keypoints(features, db))
    return m, kq, kd


def sfm_inliers(
    query: str,
    log: Dict,
    reconstruction: pycolmap.Reconstruction,
    features: Path,
    matches: Path,
) -> List[PairInliers]:
    """Per database image of the log, its matches and which of them are PnP
    inliers (same query keypoint and 3D point as an inlier correspondence)."""
    if log.get("keypoint_indices") is None:
        raise InputError(f"the log of {query} has no query keypoint indices")
    mask = np.zeros(len(log["points3D_ids"]), bool)
    if log.get("inlier_mask") is not None:
        mask = np.asarray(log["inlier_mask"], bool)
    inliers = set(zip(log["keypoint_indices"][mask], log["points3D_ids"][mask]))
    out = []
    for name in log["db"]:
        image = reconstruction.find_image_with_name(name)
        m, kq, kd = matched_keypoints(features, matches, query, name)
        ids = np.array(
            [
                p.point3D_id if p.has_point3D() else -1
                for p in (image.points2D[j] for j in m[:, 1])
            ],
            np.int64,
        )
        mask = np.array([(i, p) in inliers for i, p in zip(m[:, 0], ids)], bool)
        out.append(PairInliers(name, kq[m[:, 0]], kd[m[:, 1]], mask))
    return out


def inloc_inliers(
    query: str,
    log: Dict,
    dataset: Path,
    features: Path,
    matches: Path,
    threshold: float,
    focal_length: float,
) -> List[PairInliers]:
    """Per cutout of the log, its matches and which of them are consistent
    with the estimated pose (cutout 3D point projected within ``threshold``
    px of the query keypoint)."""
    from .localize_inloc import Cutouts, query_camera

    camera = query_camera(dataset / query, focal_length)
    ret = log.get("ret")
    out = []
    for name in log["db"]:
        m, kq, kd = matched_keypoints(features, matches, query, name)
        kq, kd = kq[m[:, 0]], kd[m[:, 1]]
        mask = np.zeros(len(m), bool)
        if ret is not None:
            xyz, valid = Cutouts(dataset).points3D(name, kd)
            R, t = qvec_to_matrix(ret["qvec"]), np.asarray(ret["tvec"])
            cam = xyz @ R.T + t
            front = cam[:, 2] > 0
            err = np.full(len(cam), np.inf)
            err[front] = np.linalg.norm(
                camera.img_from_cam(cam[front]) - kq[valid][front], axis=-1
            )
            mask[np.flatnonzero(valid)] = err < threshold
        out.append(PairInliers(name, kq, kd, mask))
    return out


def query_table(logs: Dict, ground_truth: Optional[Path]) -> List[Dict]:
    """One row per query of the logs: status, inliers, matches and, with
    ground truth, the pose errors (infinite without a pose)."""
    gt = read_poses(ground_truth) if ground_truth else {}
    rows = []
    for query, log in logs["loc"].items():
        row = dict(
            query=query,
            status=log.get("status", ""),
            inliers=int(log.get("num_inliers", 0)),
            matches=int(log.get("num_matches", log.get("num_correspondences", 0))),
        )
        if ground_truth is not None:
            ret, key = log.get("ret"), query.split("/")[-1]
            if key not in gt:
                raise InputError(f"query {query} is not in {ground_truth}")
            t, r = (np.inf, np.inf)
            if ret is not None:
                t, r = pose_error((ret["qvec"], ret["tvec"]), gt[key])
            row.update(translation_m=t, rotation_deg=r)
        rows.append(row)
    return rows


def write_table(rows: List[Dict], path: Path) -> Path:
    """Tab-separated, one line per query."""
    columns = list(rows[0]) if rows else ["query"]
    lines = ["\t".join(columns)]
    for row in rows:
        lines.append(
            "\t".join(
                f"{v:.4f}" if isinstance(v, float) else str(v)
                for v in (row[c] for c in columns)
            )
        )
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)
    return path


def select_queries(
    rows: List[Dict], num_queries: int, selection: str, seed: int = 0
) -> List[str]:
    """``num_queries`` queries: the worst (largest pose error, else fewest
    inliers), the best, or a seeded random choice."""
    if selection not in SELECTIONS:
        raise InputError(f"selection must be one of {SELECTIONS}, not {selection!r}")
    if selection == "random":
        rng = np.random.default_rng(seed)
        picked = rng.permutation(len(rows))[:num_queries]
        return [rows[i]["query"] for i in sorted(picked)]

    def badness(row):
        if "translation_m" in row:
            return (row["translation_m"], row["rotation_deg"], -row["inliers"])
        return (-row["inliers"],)

    ranked = sorted(rows, key=badness, reverse=selection == "worst")
    return [row["query"] for row in ranked[:num_queries]]


def read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def plot_query(
    query: str,
    pairs: Sequence[PairInliers],
    row: Dict,
    image_dir: Path,
    path: Path,
    num_db: int,
) -> Path:
    """The ``num_db`` database images with the most inliers."""
    from .viz import plot_inliers

    pairs = sorted(pairs, key=lambda p: (-p.inliers.sum(), -len(p.inliers)))[:num_db]
    rows = [
        (
            read_rgb(image_dir / p.name),
            p.keypoints_query,
            p.keypoints_db,
            p.inliers,
            f"{p.name}: {int(p.inliers.sum())} inliers / {len(p.inliers)} matches",
        )
        for p in pairs
    ]
    title = f"{query}: {row['inliers']} PnP inliers, {row['status']}"
    if "translation_m" in row:
        title += (
            f"\npose error {row['translation_m'] * 100:.1f} cm, "
            f"{row['rotation_deg']:.2f} deg"
        )
    if not rows:
        raise InputError(f"query {query} has no retrieved database image in its log")
    plot_inliers(read_rgb(image_dir / query), rows, path, title)
    return path


def main(
    results: Path,
    image_dir: Path,
    reference_sfm: Optional[Path],
    out: Path,
    features: Path,
    matches: Path,
    ground_truth: Optional[Path] = None,
    num_queries: int = 3,
    names: Optional[Sequence[str]] = None,
    selection: str = "worst",
    num_db: int = 2,
) -> List[Path]:
    """Write the pictures of the chosen queries to ``out`` (one PNG each) and
    the per-query table next to ``results``; returns the PNG paths.

    Args:
        reference_sfm: the model of ``localize_sfm``; None for InLoc
            (``image_dir``: the dataset with cutouts and alignments).
        names: these queries instead of ``num_queries`` chosen by
            ``selection`` (``worst``, ``best`` or ``random``).
        num_db: database images per picture.
    """
    results, image_dir, out = Path(results), Path(image_dir), Path(out)
    logs = read_logs(results)
    rows = query_table(logs, ground_truth)
    table = write_table(rows, Path(f"{results}_queries.tsv"))
    logger.info("Per-query table: %s.", table)
    by_query = {row["query"]: row for row in rows}
    if names:
        unknown = [n for n in names if n not in by_query]
        if unknown:
            raise InputError(f"queries not in the logs of {results}: {unknown}")
        chosen = list(names)
    else:
        chosen = select_queries(rows, num_queries, selection)
    if reference_sfm is not None:
        reconstruction = read_model(reference_sfm)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, query in enumerate(chosen):
        log = logs["loc"][query]
        if reference_sfm is not None:
            pairs = sfm_inliers(query, log, reconstruction, features, matches)
        else:
            pairs = inloc_inliers(
                query,
                log,
                image_dir,
                features,
                matches,
                logs["ransac_thresh"],
                logs["focal_length"],
            )
        stem = query.replace("/", "-").rsplit(".", 1)[0]
        path = out / f"{i:02d}_{stem}.png"
        paths.append(plot_query(query, pairs, by_query[query], image_dir, path, num_db))
    logger.info("Wrote %d localization pictures to %s.", len(paths), out)
    return paths


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m p2p_hloc.visualize", description=__doc__.splitlines()[0]
    )
    p.add_argument("--results", type=Path, required=True)
    p.add_argument("--image_dir", type=Path, required=True)
    p.add_argument("--features", type=Path, required=True)
    p.add_argument("--matches", type=Path, required=True)
    p.add_argument(
        "--reference_sfm",
        type=Path,
        help="model of localize_sfm (without it: InLoc, image_dir = dataset)",
    )
    p.add_argument("--ground_truth", type=Path, help="poses in the results format")
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--queries", type=int, default=3, dest="num_queries", help="default: 3"
    )
    which.add_argument("--names", nargs="+", help="these queries")
    p.add_argument("--selection", choices=SELECTIONS, default="worst")
    p.add_argument("--num_db", type=int, default=2, help="database images per query")
    p.add_argument("--out", type=Path, required=True)
    return p


def run(args: argparse.Namespace) -> List[Path]:
    return main(**vars(args))


if __name__ == "__main__":
    sys.exit(run_cli(parser(), run))
