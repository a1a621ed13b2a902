"""Pose errors of localization results against ground truth.

Poses are world-to-camera (COLMAP ``cam_from_world``) with quaternions w first,
as in the results files; the translation error is the distance between the
camera centres (metres), the rotation error the angle of ``R_gt^T R_est``.

The evaluated queries are those of a queries file (or list of names) when one
is given, a query without a pose in the results counting as a failure;
otherwise those of the results file. Names are compared by their last path
components, as many as the results file writes (1: hloc's basenames; 2 with
``prepend_camera_name``).
"""

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from scipy.spatial.transform import Rotation

from ..console import InputError, run_cli

logger = logging.getLogger("p2p_hloc")

THRESHOLDS = {  # (metres, degrees), as reported by visuallocalization.net
    "aachen": [(0.25, 2.0), (0.5, 5.0), (5.0, 10.0)],
    "inloc": [(0.25, 10.0), (0.5, 10.0), (1.0, 10.0)],
}

Pose = Tuple[np.ndarray, np.ndarray]


def read_poses(path: Path) -> Dict[str, Pose]:
    """``{name: (qvec wxyz, tvec)}`` from a results file."""
    poses = {}
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 8:
            raise InputError(
                f"{path}:{i}: expected 'name qw qx qy qz tx ty tz': {line!r}"
            )
        v = np.array(fields[1:], float)
        poses[fields[0]] = (v[:4], v[4:])
    return poses


def read_query_names(queries: Path) -> List[str]:
    """Query names of a file (a glob in the file name reads several): the
    first field of every line that is not blank or a ``#`` comment, once each
    (a list with intrinsics, an image list, or a retrieval pairs file)."""
    queries = Path(queries)
    files = sorted(queries.parent.glob(queries.name))
    if not files:
        raise FileNotFoundError(f"no queries file matches {queries}")
    names = []
    for path in files:
        for line in path.read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                names.append(line.split()[0])
    return list(dict.fromkeys(names))


def qvec_to_matrix(qvec: np.ndarray) -> np.ndarray:
    w, x, y, z = qvec
    return Rotation.from_quat([x, y, z, w]).as_matrix()


def pose_error(est: Pose, gt: Pose) -> Tuple[float, float]:
    """(translation error in metres, rotation error in degrees)."""
    R_est, R_gt = qvec_to_matrix(est[0]), qvec_to_matrix(gt[0])
    c_est, c_gt = -R_est.T @ est[1], -R_gt.T @ gt[1]
    cos = np.clip((np.trace(R_gt.T @ R_est) - 1) / 2, -1.0, 1.0)
    return float(np.linalg.norm(c_est - c_gt)), float(np.degrees(np.arccos(cos)))


def _key(name: str, depth: int) -> str:
    return "/".join(name.split("/")[-depth:])


def _keyed(names: Sequence[str], depth: int, what: str) -> Dict[str, str]:
    """``{last depth components: name}``; two names with the same key are an
    error (the results could not tell them apart)."""
    keyed: Dict[str, str] = {}
    for name in names:
        key = _key(name, depth)
        if key in keyed and keyed[key] != name:
            raise InputError(
                f"{what}: {keyed[key]} and {name} are both written as {key} in "
                "the results (use prepend_camera_name)"
            )
        keyed[key] = name
    return keyed


def _ground_truth(path: Path, keyed: Dict[str, str], depth: int) -> Dict[str, Pose]:
    """The ground-truth pose of each query of ``keyed``: by its full name, or
    by its key when a single ground-truth name has that key."""
    gt = read_poses(path)
    by_key: Dict[str, List[str]] = {}
    for name in gt:
        by_key.setdefault(_key(name, depth), []).append(name)
    poses, absent = {}, []
    for key, name in keyed.items():
        if name in gt:
            poses[key] = gt[name]
        elif len(by_key.get(key, [])) == 1:
            poses[key] = gt[by_key[key][0]]
        else:
            absent.append((name, by_key.get(key, [])))
    if absent:
        name, candidates = absent[0]
        which = f" (ambiguous: {', '.join(candidates)})" if candidates else ""
        raise InputError(
            f"{path} has no pose for {len(absent)} of the {len(keyed)} queries, "
            f"e.g. {name}{which}"
        )
    return poses


def evaluate(
    results: Path,
    ground_truth: Path,
    thresholds: Sequence[Tuple[float, float]],
    queries: Optional[Union[Path, Sequence[str]]] = None,
) -> Dict:
    """Per-query errors and the share of the evaluated queries within each
    (metres, degrees) threshold.

    ``queries``: a file (``read_query_names``) or names; each one missing
    from the results has infinite errors. Without it, the queries of the
    results are evaluated. The report has ``errors`` (keyed as in the
    results), ``recall``, ``num_queries`` (evaluated) and ``missing``."""
    est = read_poses(results)
    depth = max((len(name.split("/")) for name in est), default=1)
    if queries is None:
        names = list(est)
    elif isinstance(queries, (str, Path)):
        names = read_query_names(Path(queries))
    else:
        names = list(queries)
    keyed = _keyed(names, depth, str(queries or results))
    gt = _ground_truth(Path(ground_truth), keyed, depth)
    errors, missing = {}, []
    for key in keyed:
        if key in est:
            t, r = pose_error(est[key], gt[key])
        else:
            missing.append(key)
            t, r = float("inf"), float("inf")
        errors[key] = dict(translation_m=t, rotation_deg=r)
    if missing:
        logger.warning(
            "%d of %d queries have no pose in %s (failures), e.g. %s.",
            len(missing),
            len(keyed),
            results,
            missing[0],
        )
    t, r = (
        np.array([e[k] for e in errors.values()])
        for k in ("translation_m", "rotation_deg")
    )
    recall = {
        f"{dt}m,{dr}deg": float(np.mean((t <= dt) & (r <= dr))) if len(t) else 0.0
        for dt, dr in thresholds
    }
    return dict(errors=errors, recall=recall, num_queries=len(keyed), missing=missing)


def format_report(report: Dict) -> str:
    """A table of per-query errors and the recalls."""
    lines = [f"{'query':<24} {'t (m)':>10} {'R (deg)':>10}"]
    for name, e in report["errors"].items():
        lines.append(
            f"{name:<24} {e['translation_m']:>10.4f} {e['rotation_deg']:>10.4f}"
        )
    lines.append(
        f"{report['num_queries']} queries evaluated, "
        f"{len(report['missing'])} without a pose (counted as failures)"
    )
    lines += [f"within {k}: {100 * v:.1f}%" for k, v in report["recall"].items()]
    return "\n".join(lines)


def main(
    results: Path,
    ground_truth: Path,
    benchmark: str = "aachen",
    output: Optional[Path] = None,
    queries: Optional[Path] = None,
) -> Dict:
    """Evaluate ``results`` against ``ground_truth`` (the queries of
    ``queries`` if given); write JSON to ``output``."""
    report = evaluate(results, ground_truth, THRESHOLDS[benchmark], queries)
    logger.info("Pose errors:\n%s", format_report(report))
    if output is not None:
        Path(output).write_text(json.dumps(report, indent=2))
    return report


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, required=True)
    p.add_argument("--ground_truth", type=Path, required=True)
    p.add_argument(
        "--queries",
        type=Path,
        help="queries file or glob (missing queries count as failures)",
    )
    p.add_argument("--benchmark", choices=list(THRESHOLDS), default="aachen")
    p.add_argument("--output", type=Path)
    return p


if __name__ == "__main__":
    sys.exit(run_cli(parser(), lambda args: main(**vars(args))))
