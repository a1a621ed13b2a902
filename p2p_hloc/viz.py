"""Match plots with matplotlib (Agg backend: no display needed)."""

from pathlib import Path
from typing import Optional

import numpy as np


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
    (red 0 -> green 1). Coordinates: corner convention, original pixels.
    Saves to ``path`` when given; returns the figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h0, w0 = image0.shape[:2]
    h1, w1 = image1.shape[:2]
    fig, axes = plt.subplots(1, 2, figsize=(12, 6 * max(h0 / w0, h1 / w1)), dpi=100)
    for ax, im in zip(axes, (image0, image1)):
        ax.imshow(im, cmap="gray" if im.ndim == 2 else None)
        ax.set_axis_off()
    n = len(kpts0)
    idx = np.arange(n)
    if n > max_lines:
        idx = np.random.default_rng(0).choice(n, max_lines, replace=False)
    s = np.ones(n) if scores is None else np.clip(np.asarray(scores, float), 0, 1)
    colors = plt.cm.RdYlGn(s[idx])
    # imshow puts pixel centres at integers: shift corner coordinates by -0.5
    p0, p1 = np.asarray(kpts0)[idx] - 0.5, np.asarray(kpts1)[idx] - 0.5
    fig.canvas.draw()
    t0, t1 = axes[0].transData, axes[1].transData
    inv = fig.transFigure.inverted()
    for a, b, c in zip(
        inv.transform(t0.transform(p0)), inv.transform(t1.transform(p1)), colors
    ):
        fig.add_artist(plt.Line2D((a[0], b[0]), (a[1], b[1]), color=c, linewidth=0.6))
    axes[0].scatter(p0[:, 0], p0[:, 1], c=colors, s=2)
    axes[1].scatter(p1[:, 0], p1[:, 1], c=colors, s=2)
    fig.suptitle(title or f"{n} matches")
    if path is not None:
        fig.savefig(path, bbox_inches="tight")
        plt.close(fig)
    return fig
