"""Pose errors of localization results against ground truth.

Poses are world-to-camera (COLMAP ``cam_from_world``) with quaternions w first,
as in the results files; the translation error is the distance between the
camera centres (metres), the rotation error the angle of ``R_gt^T R_est``.
"""

import argparse
import json
import logging
from pathlib import Path
from typing import Dict, Sequence, Tuple

import numpy as np
from scipy.spatial.transform import Rotation

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
            raise ValueError(
                f"{path}:{i}: expected 'name qw qx qy qz tx ty tz': {line!r}"
            )
        v = np.array(fields[1:], float)
        poses[fields[0]] = (v[:4], v[4:])
    return poses


def qvec_to_matrix(qvec: np.ndarray) -> np.ndarray:
    w, x, y, z = qvec
    return Rotation.from_quat([x, y, z, w]).as_matrix()


def pose_error(est: Pose, gt: Pose) -> Tuple[float, float]:
    """(translation error in metres, rotation error in degrees)."""
    R_est, R_gt = qvec_to_matrix(est[0]), qvec_to_matrix(gt[0])
    c_est, c_gt = -R_est.T @ est[1], -R_gt.T @ gt[1]
    cos = np.clip((np.trace(R_gt.T @ R_est) - 1) / 2, -1.0, 1.0)
    return float(np.linalg.norm(c_est - c_gt)), float(np.degrees(np.arccos(cos)))


def evaluate(
    results: Path, ground_truth: Path, thresholds: Sequence[Tuple[float, float]]
) -> Dict:
    """Per-query errors (keyed by basename; a missing query has infinite
    errors) and the share of queries within each (metres, degrees) threshold."""
    est = {k.split("/")[-1]: v for k, v in read_poses(results).items()}
    gt = {k.split("/")[-1]: v for k, v in read_poses(ground_truth).items()}
    errors = {}
    for name, pose in gt.items():
        if name in est:
            t, r = pose_error(est[name], pose)
        else:
            logger.warning("Query %s has no pose in %s.", name, results)
            t, r = float("inf"), float("inf")
        errors[name] = dict(translation_m=t, rotation_deg=r)
    t, r = (
        np.array([e[k] for e in errors.values()])
        for k in ("translation_m", "rotation_deg")
    )
    recall = {
        f"{dt}m,{dr}deg": float(np.mean((t <= dt) & (r <= dr))) for dt, dr in thresholds
    }
    return dict(errors=errors, recall=recall)


def format_report(report: Dict) -> str:
    """A table of per-query errors and the recalls."""
    lines = [f"{'query':<24} {'t (m)':>10} {'R (deg)':>10}"]
    for name, e in report["errors"].items():
        lines.append(
            f"{name:<24} {e['translation_m']:>10.4f} {e['rotation_deg']:>10.4f}"
        )
    lines += [f"within {k}: {100 * v:.1f}%" for k, v in report["recall"].items()]
    return "\n".join(lines)


def main(
    results: Path, ground_truth: Path, benchmark: str = "aachen", output: Path = None
) -> Dict:
    """Evaluate ``results`` against ``ground_truth``; write JSON to ``output``."""
    report = evaluate(results, ground_truth, THRESHOLDS[benchmark])
    logger.info("Pose errors:\n%s", format_report(report))
    if output is not None:
        Path(output).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--ground_truth", type=Path, required=True)
    parser.add_argument("--benchmark", choices=list(THRESHOLDS), default="aachen")
    parser.add_argument("--output", type=Path)
    main(**vars(parser.parse_args()))
