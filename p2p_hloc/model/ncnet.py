"""NCNet coarse matching: 4D correlation, 4D max-pool, mutual matching,
neighbourhood consensus and coarse match extraction.

Shapes: a 4D correlation volume is ``(B, 1, H1, W1, H2, W2)`` (image-1 cells
first). Coordinates follow the official code: column ``j`` is x, row ``i`` is y.
"""

from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def l2_normalize(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``x / sqrt(sum(x^2) + 1e-6)`` along ``dim`` (the official eps placement)."""
    return x / torch.sqrt(torch.sum(x * x, dim=dim, keepdim=True) + 1e-6)


def correlation_4d(feat0: torch.Tensor, feat1: torch.Tensor) -> torch.Tensor:
    """Dot products of all cell pairs: ``(B, C, H1, W1)``, ``(B, C, H2, W2)`` ->
    ``(B, 1, H1, W1, H2, W2)``."""
    b, c, h1, w1 = feat0.shape
    h2, w2 = feat1.shape[-2:]
    corr = torch.bmm(feat0.reshape(b, c, h1 * w1).transpose(1, 2), feat1.reshape(b, c, -1))
    return corr.view(b, 1, h1, w1, h2, w2)


def maxpool4d(corr: torch.Tensor, k: int = 2) -> Tuple[torch.Tensor, torch.Tensor]:
    """Max over each ``k^4`` block of a ``(B, 1, H1, W1, H2, W2)`` volume.

    Returns the pooled volume ``(B, 1, H1/k, W1/k, H2/k, W2/k)`` and the argmax
    offsets ``(4, B, 1, H1/k, W1/k, H2/k, W2/k)`` (int64, order di, dj, dk, dl),
    with the official candidate order ``((di*k + dj)*k + dk)*k + dl``.
    """
    b, c, h1, w1, h2, w2 = corr.shape
    if h1 % k or w1 % k or h2 % k or w2 % k:
        raise ValueError(f"4D max-pool needs feature sizes divisible by {k}, got {corr.shape}")
    v = corr.view(b, c, h1 // k, k, w1 // k, k, h2 // k, k, w2 // k, k)
    v = v.permute(0, 1, 2, 4, 6, 8, 3, 5, 7, 9).reshape(
        b, c, h1 // k, w1 // k, h2 // k, w2 // k, k**4
    )
    pooled, idx = v.max(dim=-1)
    offsets = torch.stack([(idx // k**p) % k for p in (3, 2, 1, 0)])
    return pooled, offsets


def mutual_matching(corr: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Soft mutual nearest-neighbour filtering of ``(B, 1, H1, W1, H2, W2)``."""
    b, _, h1, w1, h2, w2 = corr.shape
    max_b = corr.view(b, h1 * w1, h2, w2).amax(dim=1, keepdim=True).view(b, 1, 1, 1, h2, w2)
    max_a = corr.view(b, h1, w1, h2 * w2).amax(dim=3, keepdim=True).view(b, 1, h1, w1, 1, 1)
    return corr * ((corr / (max_a + eps)) * (corr / (max_b + eps)))


class Conv4d(nn.Module):
    """4D cross-correlation, stride 1, zero padding ``k // 2`` on all four axes.

    The weight is stored in the official pre-permuted layout
    ``(kI, C_out, C_in, kJ, kK, kL)`` so that official checkpoints load as they are.
    """

    def __init__(self, cin: int, cout: int, k: int = 3):
        super().__init__()
        self.k = k
        self.weight = nn.Parameter(torch.empty(k, cout, cin, k, k, k))
        self.bias = nn.Parameter(torch.zeros(cout))
        nn.init.kaiming_uniform_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, H1, W1, H2, W2)`` -> ``(B, C_out, H1, W1, H2, W2)``."""
        return conv4d(x, self.weight, self.bias)


def conv4d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """4D convolution with a pre-permuted weight ``(kI, C_out, C_in, kJ, kK, kL)``:
    one conv3d per tap of the first axis, over all its positions at once."""
    k, cout, cin = weight.shape[:3]
    b, _, h1, w1, h2, w2 = x.shape
    p = k // 2
    xp = F.pad(x, (0, 0, 0, 0, 0, 0, p, p))  # pad H1 only; conv3d pads the others
    out = None
    for a in range(k):
        xa = xp[:, :, a : a + h1].transpose(1, 2).reshape(b * h1, cin, w1, h2, w2)
        ya = F.conv3d(xa, weight[a], bias if a == p else None, padding=p)
        out = ya if out is None else out + ya
    return out.view(b, h1, cout, w1, h2, w2).transpose(1, 2)


def swap_images(corr: torch.Tensor) -> torch.Tensor:
    """``(B, C, H1, W1, H2, W2)`` -> ``(B, C, H2, W2, H1, W1)``."""
    return corr.permute(0, 1, 4, 5, 2, 3)


class NeighConsensus(nn.Module):
    """Symmetric neighbourhood consensus ``f(x) + f(x^T)^T`` with
    ``f = Conv4d(1->16), ReLU, Conv4d(16->1), ReLU`` (official key names)."""

    def __init__(self, kernel_sizes=(3, 3), channels=(16, 1)):
        super().__init__()
        layers, cin = [], 1
        for k, c in zip(kernel_sizes, channels):
            layers += [Conv4d(cin, c, k), nn.ReLU(inplace=True)]
            cin = c
        self.conv = nn.Sequential(*layers)

    def forward(self, corr: torch.Tensor) -> torch.Tensor:
        return self.conv(corr) + swap_images(self.conv(swap_images(corr)))


def coarse_matches(
    corr: torch.Tensor, offsets: torch.Tensor, stride: int = 8
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Raw matches of both directions from a pooled volume (batch size 1).

    Args:
        corr: ``(1, 1, h1, w1, h2, w2)`` pooled correlation after NC.
        offsets: ``(4, 1, 1, h1, w1, h2, w2)`` max-pool argmax offsets.
    Returns:
        matches ``(h2*w2 + h1*w1, 4)`` int64 ``[x1, y1, x2, y2]`` pixels of the
        network input (``stride * cell + stride // 2``), direction B->A first;
        scores ``(R,)`` the softmax maxima.
    """
    _, _, h1, w1, h2, w2 = corr.shape
    dev = corr.device
    # Direction 1: for every image-2 cell, softmax over the image-1 cells.
    s1, a1 = F.softmax(corr.reshape(h1 * w1, h2 * w2), dim=0).max(dim=0)
    b1 = torch.arange(h2 * w2, device=dev)
    # Direction 2: for every image-1 cell, softmax over the image-2 cells.
    s2, b2 = F.softmax(corr.reshape(h1 * w1, h2 * w2), dim=1).max(dim=1)
    a2 = torch.arange(h1 * w1, device=dev)
    ia, ib = torch.cat([a1, a2]), torch.cat([b1, b2])
    iA, jA, iB, jB = ia // w1, ia % w1, ib // w2, ib % w2
    d = offsets.reshape(4, h1, w1, h2, w2)[:, iA, jA, iB, jB]
    k = 2
    cells = torch.stack([jA * k + d[1], iA * k + d[0], jB * k + d[3], iB * k + d[2]], 1)
    return cells * stride + stride // 2, torch.cat([s1, s2])


def mutual_filter(
    matches: np.ndarray, scores: np.ndarray, threshold: float = 0.0
) -> Tuple[np.ndarray, np.ndarray]:
    """Keep rows present in both directions (lexicographically sorted, score of
    the first occurrence); if none is mutual, keep all; then ``score > threshold``.

    Args: matches ``(R, 4)`` int, scores ``(R,)``. Returns ``(N, 4)``, ``(N,)``.
    """
    uniq, first, counts = np.unique(matches, axis=0, return_index=True, return_counts=True)
    if (counts > 1).any():
        matches, scores = uniq[counts > 1], scores[first[counts > 1]]
    keep = scores > threshold
    return matches[keep], scores[keep]
