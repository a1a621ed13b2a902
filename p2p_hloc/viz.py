"""Match plots with matplotlib (Agg backend: no display needed).

Coordinates: corner convention, original pixels (imshow puts pixel centres at
integers, so points are drawn 0.5 px up and left)."""

from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np

GREEN, RED = (0.1, 0.8, 0.1, 1.0), (0.9, 0.1, 0.1, 1.0)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def draw_matches(
    fig,
    axes: Tuple,
    image0: np.ndarray,
    image1: np.ndarray,
    kpts0: np.ndarray,
    kpts1: np.ndarray,
    colors: np.ndarray,
    linewidth: float = 0.6,
) -> None:
    """Show two images on ``axes`` and join the ``(N, 2)`` matches by lines of
    ``(N, 4)`` RGBA ``colors`` drawn across the figure."""
    plt = _pyplot()
    for ax, im in zip(axes, (image0, image1)):
        ax.imshow(im, cmap="gray" if im.ndim == 2 else None)
        ax.set_axis_off()
    p0, p1 = np.asarray(kpts0) - 0.5, np.asarray(kpts1) - 0.5
    fig.canvas.draw()
    t0, t1 = axes[0].transData, axes[1].transData
    inv = fig.transFigure.inverted()
    for a, b, c in zip(
        inv.transform(t0.transform(p0)), inv.transform(t1.transform(p1)), colors
    ):
        fig.add_artist(
            plt.Line2D((a[0], b[0]), (a[1], b[1]), color=c, linewidth=linewidth)
        )
    axes[0].scatter(p0[:, 0], p0[:, 1], c=colors, s=2)
    axes[1].scatter(p1[:, 0], p1[:, 1], c=colors, s=2)


def save(fig, path: Optional[Path]):
    if path is not None:
        fig.savefig(path, bbox_inches="tight")
        _pyplot().close(fig)
    return fig


def plot_matches(
    image0: np.ndarray,
    image1: np.ndarray,
    kpts0: np.ndarray,
    kpts1: np.ndarray,
    scores: Optional[np.ndarray] = None,
    path: Optional[Path] = None,
    title: str = "",
    max_lines: int = 2000,
):
    """Draw two images side by side with ``(N, 2)`` matches coloured by score
    (red 0 -> green 1). Saves to ``path`` when given; returns the figure."""
    plt = _pyplot()
    h0, w0 = image0.shape[:2]
    h1, w1 = image1.shape[:2]
    fig, axes = plt.subplots(1, 2, figsize=(12, 6 * max(h0 / w0, h1 / w1)), dpi=100)
    n = len(kpts0)
    idx = np.arange(n)
    if n > max_lines:
        idx = np.random.default_rng(0).choice(n, max_lines, replace=False)
    s = np.ones(n) if scores is None else np.clip(np.asarray(scores, float), 0, 1)
    colors = plt.cm.RdYlGn(s[idx])
    draw_matches(
        fig,
        axes,
        image0,
        image1,
        np.asarray(kpts0)[idx],
        np.asarray(kpts1)[idx],
        colors,
    )
    fig.suptitle(title or f"{n} matches")
    return save(fig, path)


def plot_inliers(
    query: np.ndarray,
    rows: Sequence[Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]],
    path: Optional[Path] = None,
    title: str = "",
):
    """One row per database image: the query left, the database image right,
    inlier matches in green and the others in red. ``rows``: ``(image,
    kpts_query (N, 2), kpts_db (N, 2), inlier mask (N,), row title)``. Saves
    to ``path`` when given; returns the figure."""
    plt = _pyplot()
    h, w = query.shape[:2]
    aspect = max([h / w] + [im.shape[0] / im.shape[1] for im, *_ in rows])
    fig, axes = plt.subplots(
        len(rows), 2, figsize=(12, 6 * aspect * len(rows)), dpi=100, squeeze=False
    )
    for ax, (image, kq, kd, inliers, row_title) in zip(axes, rows):
        inliers = np.asarray(inliers, bool)
        order = np.argsort(inliers, kind="stable")  # inliers drawn last, on top
        colors = np.array([GREEN if i else RED for i in inliers[order]]).reshape(-1, 4)
        draw_matches(fig, ax, query, image, kq[order], kd[order], colors)
        ax[1].set_title(row_title, fontsize=11)
    fig.suptitle(title, fontsize=12)
    return save(fig, path)
