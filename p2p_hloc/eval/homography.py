"""Homography metrics: match reprojection error, MMA, estimation, corner error.

Points are ``(N, 2)`` arrays of ``(x, y)`` pixel coordinates and homographies
map image-0 pixels to image-1 pixels (HPatches ``H_1_k`` convention).
"""

from typing import Optional, Sequence, Tuple

import cv2
import numpy as np
import pydegensac

SOLVERS = ("degensac", "opencv")


def warp_points(H: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 3x3 homography to ``(N, 2)`` points."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    homog = np.concatenate([points, np.ones((len(points), 1))], axis=1) @ H.T
    return homog[:, :2] / homog[:, 2:]


def scale_homography(H: np.ndarray, scale0: Sequence[float], scale1: Sequence[float]):
    """Express ``H`` (original pixels) between images resized by ``scale``.

    ``scale = original / resized`` per axis, so resized pixels are
    ``original / scale``: ``H' = diag(1/s1) @ H @ diag(s0)``.
    """
    S0 = np.diag([scale0[0], scale0[1], 1.0])
    S1_inv = np.diag([1.0 / scale1[0], 1.0 / scale1[1], 1.0])
    return S1_inv @ H @ S0


def match_errors(kpts0: np.ndarray, kpts1: np.ndarray, H: np.ndarray) -> np.ndarray:
    """Distance in image 1 between ``H(kpts0)`` and ``kpts1`` for each match."""
    if len(kpts0) == 0:
        return np.zeros(0)
    return np.linalg.norm(warp_points(H, kpts0) - np.asarray(kpts1), axis=1)


def mma(errors: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """Share of matches with an error within each threshold (0 without matches)."""
    errors = np.asarray(errors, dtype=np.float64)
    if errors.size == 0:
        return np.zeros(len(thresholds))
    return np.array([np.mean(errors <= t) for t in thresholds])


def estimate_homography(
    kpts0: np.ndarray,
    kpts1: np.ndarray,
    solver: str = "degensac",
    threshold: float = 2.0,
    seed: int = 0,
) -> Tuple[Optional[np.ndarray], np.ndarray]:
    """Robustly fit ``H`` with ``kpts1 ~ H(kpts0)``.

    ``seed``: of DEGENSAC's sampling (-1: unseeded, different in every
    process); OpenCV's RANSAC has a fixed internal seed. Returns
    ``(H, inlier_mask)``; ``H`` is None when there are fewer than 4 matches or
    the solver fails or returns a degenerate matrix.
    """
    kpts0 = np.ascontiguousarray(kpts0, dtype=np.float64).reshape(-1, 2)
    kpts1 = np.ascontiguousarray(kpts1, dtype=np.float64).reshape(-1, 2)
    inliers = np.zeros(len(kpts0), dtype=bool)
    if len(kpts0) < 4:
        return None, inliers
    if solver == "degensac":
        H, mask = pydegensac.findHomography(kpts0, kpts1, threshold, seed=seed)
    elif solver == "opencv":
        H, mask = cv2.findHomography(kpts0, kpts1, cv2.RANSAC, threshold)
    else:
        raise ValueError(f"unknown homography solver {solver!r}, use one of {SOLVERS}")
    if H is None or H.shape != (3, 3) or not np.all(np.isfinite(H)):
        return None, inliers
    if abs(np.linalg.det(H)) < 1e-12 or abs(H[2, 2]) < 1e-12:
        return None, inliers
    return H / H[2, 2], np.asarray(mask, dtype=bool).reshape(-1)


def image_corners(width: float, height: float) -> np.ndarray:
    """The 4 corners ``(x, y)`` of a ``width x height`` image.

    The 2021 toolbox swapped w and h here (fixed upstream in 2022); this is the
    correct version and the typo is deliberately not reproduced.
    """
    w, h = width - 1, height - 1
    return np.array([[0, 0], [0, h], [w, 0], [w, h]], dtype=np.float64)


def corner_error(
    H_gt: np.ndarray, H_est: Optional[np.ndarray], width: float, height: float
) -> float:
    """Mean distance of the 4 image-0 corners warped by ``H_gt`` and ``H_est``.

    A failed estimate (None) gives ``inf``, i.e. incorrect at any threshold.
    """
    if H_est is None:
        return float("inf")
    corners = image_corners(width, height)
    err = np.linalg.norm(
        warp_points(H_gt, corners) - warp_points(H_est, corners), axis=1
    )
    mean = float(np.mean(err))
    return mean if np.isfinite(mean) else float("inf")


def correctness(errors: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """Share of pairs whose corner error is within each threshold."""
    errors = np.asarray(errors, dtype=np.float64)
    if errors.size == 0:
        return np.full(len(thresholds), np.nan)
    return np.array([np.mean(errors <= t) for t in thresholds])


def error_auc(errors: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """Area under the cumulative error curve up to each threshold, in [0, 1].

    Failures (``inf``) count as errors above every threshold.
    """
    errors = np.sort(np.asarray(errors, dtype=np.float64))
    n = len(errors)
    if n == 0:
        return np.full(len(thresholds), np.nan)
    recall = np.arange(1, n + 1) / n
    errors = np.concatenate([[0.0], errors])
    recall = np.concatenate([[0.0], recall])
    aucs = []
    for t in thresholds:
        last = np.searchsorted(errors, t)
        x = np.concatenate([errors[:last], [t]])
        y = np.concatenate([recall[:last], [recall[last - 1]]])
        aucs.append(np.trapezoid(y, x) / t)
    return np.array(aucs)
