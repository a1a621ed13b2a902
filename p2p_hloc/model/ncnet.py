"""NCNet coarse matching: 4D correlation, 4D max-pool, mutual matching,
neighbourhood consensus and coarse match extraction.

Shapes: a 4D correlation volume is ``(B, 1, H1, W1, H2, W2)`` (image-1 cells
first). Coordinates follow the official code: column ``j`` is x, row ``i`` is y.
The full-resolution volume is never stored: correlation and 4D max-pool run
together in tiles (``correlation_maxpool``).
"""

from typing import Callable, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .ops import matmul_nt


def l2_normalize(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``x / sqrt(sum(x^2) + 1e-6)`` along ``dim`` (the official eps placement)."""
    return x / torch.sqrt(torch.sum(x * x, dim=dim, keepdim=True) + 1e-6)


def decode_argmax(idx: torch.Tensor, k: int = 2) -> torch.Tensor:
    """Flat candidate indices -> ``(4, *idx.shape)`` int64 offsets di, dj, dk, dl."""
    idx = idx.long()
    return torch.stack([(idx // k**p) % k for p in (3, 2, 1, 0)])


def correlation_maxpool(
    feat0: torch.Tensor, feat1: torch.Tensor, k: int = 2, chunk: int = 1 << 20
) -> torch.Tensor:
    """The 4D correlation of two feature maps max-pooled over ``k^4`` blocks
    (the official ``correlation`` then ``maxpool4d``), computed in tiles so
    that at most about ``chunk`` full-resolution entries exist at a time (not
    differentiable). The argmax is not kept: ``pool_argmax`` gives
    it at the few cells where it is needed.

    Args: ``(1, C, H1, W1)``, ``(1, C, H2, W2)`` features (batch 1).
    Returns: ``(1, 1, H1/k, W1/k, H2/k, W2/k)``.
    """
    _, c, h1, w1 = feat0.shape
    h2, w2 = feat1.shape[-2:]
    if h1 % k or w1 % k or h2 % k or w2 % k:
        raise ValueError(
            f"4D max-pool needs sizes divisible by {k}, got {h1, w1, h2, w2}"
        )
    kk, q1 = k * k, h2 // k * (w2 // k)  # candidates per image, pooled image-2 cells
    # Image-1 rows ordered (pooled column, di, dj), image-2 columns (dk, dl,
    # pooled cell): the k^4 candidates of a pooled cell are then k^4 rows of
    # one (pooled column, k^4, pooled cells) view, reduced with one amax.
    b = feat1[0].reshape(c, h2 // k, k, w2 // k, k).permute(2, 4, 1, 3, 0)
    b = b.reshape(kk, q1, c)
    a = feat0[0].permute(1, 2, 0)  # (H1, W1, C)
    step = max(1, min(q1, chunk // (k * w1 * kk)))  # pooled image-2 cells a tile
    tiles = [
        (s, b[:, s : s + step].reshape(-1, c).contiguous()) for s in range(0, q1, step)
    ]
    pooled = a.new_empty(h1 // k, w1 // k, q1)
    for r in range(h1 // k):
        rows = a[k * r : k * r + k].view(k, w1 // k, k, c).transpose(0, 1)
        rows = rows.reshape(-1, c)  # (W1/k * k * k, C)
        for s, tile in tiles:
            out = matmul_nt(rows, tile).view(w1 // k, kk * kk, -1)
            torch.amax(out, 1, out=pooled[r, :, s : s + out.shape[-1]])
    return pooled.view(1, 1, h1 // k, w1 // k, h2 // k, w2 // k)


def pool_argmax(
    feat0: torch.Tensor,
    feat1: torch.Tensor,
    cells0: torch.Tensor,
    cells1: torch.Tensor,
    k: int = 2,
) -> torch.Tensor:
    """The 4D max-pool argmax at given pooled cells, from the features.

    Args:
        feat0, feat1: the ``(1, C, H, W)`` features of ``correlation_maxpool``.
        cells0, cells1: ``(R,)`` flat pooled-cell indices (row-major) in each image.
    Returns:
        ``(R,)`` int64 flat candidate indices ``((di*k + dj)*k + dk)*k + dl``
        (the first maximum on ties, as the official ``maxpool4d``); see
        ``decode_argmax``.
    """
    c, w1 = feat0.shape[1], feat0.shape[-1]
    w2 = feat1.shape[-1]
    d = torch.arange(k, device=feat0.device)

    def candidates(feat, cells, w):
        i = (cells // (w // k))[:, None, None] * k + d[None, :, None]
        j = (cells % (w // k))[:, None, None] * k + d[None, None, :]
        return feat[0].permute(1, 2, 0)[i, j].reshape(len(cells), k * k, c)

    v = torch.bmm(
        candidates(feat0, cells0, w1), candidates(feat1, cells1, w2).transpose(1, 2)
    )
    return v.reshape(len(cells0), -1).max(1).indices


def mutual_matching(corr: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Soft mutual nearest-neighbour filtering of ``(B, 1, H1, W1, H2, W2)``."""
    b, _, h1, w1, h2, w2 = corr.shape
    max_b = (
        corr.view(b, h1 * w1, h2, w2).amax(dim=1, keepdim=True).view(b, 1, 1, 1, h2, w2)
    )
    max_a = (
        corr.view(b, h1, w1, h2 * w2).amax(dim=3, keepdim=True).view(b, 1, h1, w1, 1, 1)
    )
    return corr * (torch.div(corr, max_a + eps).mul_(corr / (max_b + eps)))


class Conv4d(nn.Module):
    """Parameters of a 4D cross-correlation (stride 1, zero padding ``k // 2``).

    The weight is stored in the official pre-permuted layout
    ``(kI, C_out, C_in, kJ, kK, kL)`` so that official checkpoints load as they
    are; ``kernel`` gives the usual ``(C_out, C_in, kI, kJ, kK, kL)``. The
    computation lives in ``NeighConsensus``.
    """

    def __init__(self, cin: int, cout: int, k: int = 3):
        super().__init__()
        self.k = k
        self.weight = nn.Parameter(torch.empty(k, cout, cin, k, k, k))
        self.bias = nn.Parameter(torch.zeros(cout))
        nn.init.kaiming_uniform_(self.weight)

    @property
    def kernel(self) -> torch.Tensor:
        return self.weight.permute(1, 2, 0, 3, 4, 5)


def _with_swapped(kernel: torch.Tensor) -> torch.Tensor:
    """Stack a ``(O, C, a, b, e, f)`` kernel and its image-swapped copy
    ``K'[a, b, e, f] = K[e, f, a, b]`` on the output axis."""
    return torch.cat([kernel, kernel.permute(0, 1, 4, 5, 2, 3)])


class NeighConsensus(nn.Module):
    """Symmetric neighbourhood consensus ``f(x) + f(x^T)^T`` with
    ``f = Conv4d(1->16), ReLU, Conv4d(16->1), ReLU`` (official key names).

    Both directions run together: transposing a 4D conv's input and output is
    the conv with the kernel's image axes swapped, so the layers become one
    conv 1->32 and one grouped conv 32->2 on the untransposed volume. Each is a
    2D convolution over image-2 cells batched over image-1 cells: layer 1 reads
    the 9 image-1 neighbours as input channels, layer 2 writes one channel per
    image-1 tap, summed afterwards with shifts, a block of image-1 cells at a
    time.
    """

    # volume cells per block (image-1 cells of one row): the layer-1 output
    # of a block stays in the cache
    block = 1 << 16

    def __init__(self, kernel_sizes=(3, 3), channels=(16, 1)):
        super().__init__()
        if tuple(kernel_sizes) != (3, 3) or len(channels) != 2 or channels[1] != 1:
            raise ValueError(
                "only the official NCNet layout (k=3, 1->C->1) is supported"
            )
        self.conv = nn.Sequential(
            Conv4d(1, channels[0], 3), nn.ReLU(), Conv4d(channels[0], 1, 3), nn.ReLU()
        )

    def forward(self, corr: torch.Tensor) -> torch.Tensor:
        """``(1, 1, H1, W1, H2, W2)`` -> same shape."""
        l1, l2 = self.conv[0], self.conv[2]
        c = l1.weight.shape[1]
        # layer 1: input channels (a, b), kernel (e, f)
        w_1 = _with_swapped(l1.kernel).reshape(2 * c, 9, 3, 3)
        b_1 = torch.cat([l1.bias, l1.bias])
        k2 = _with_swapped(l2.kernel)  # (2, c, a, b, e, f)
        w_2 = k2.permute(0, 2, 3, 1, 4, 5).reshape(18, c, 3, 3)  # out: (dir, a, b)
        _, _, h1, w1, h2, w2 = corr.shape
        x = F.pad(corr[0, 0], (0, 0, 0, 0, 1, 1, 1, 1))  # (H1+2, W1+2, H2, W2)
        out = corr.new_empty(h1, w1, h2, w2)
        # output rows r - 1, r, r + 1 take input row r: a ring of 3 padded
        # output rows (two directions each), finished one row behind
        acc = corr.new_empty(3, w1 + 2, h2, w2, 2)
        acc[:2].zero_()
        blocks = -(-w1 * h2 * w2 // self.block)
        step = -(-w1 // blocks)

        def finish(row: int) -> None:
            done = acc[(row + 1) % 3, 1:-1].add_(l2.bias).relu_()
            torch.add(done[..., 0], done[..., 1], out=out[row])

        for r in range(h1):
            acc[(r + 2) % 3].zero_()  # output row r + 1 (padded index r + 2)
            for j in range(0, w1, step):
                n = min(step, w1 - j)
                taps = [x[r + a, j + b : j + b + n] for a in range(3) for b in range(3)]
                inp = torch.stack(taps, -1).permute(0, 3, 1, 2)  # (n, 9, H2, W2) CL
                hid = F.conv2d(inp, w_1, b_1, padding=1).relu_()
                z = F.conv2d(hid, w_2, None, padding=1, groups=2)  # (n, 18, H2, W2)
                z = z.permute(0, 2, 3, 1).reshape(n, h2, w2, 2, 9)  # CL: no copy
                for ab in range(9):  # cell q feeds output q - (a - 1, b - 1)
                    a, b = divmod(ab, 3)
                    acc[(r + 2 - a) % 3, j + 2 - b : j + 2 - b + n] += z[..., ab]
            if r:
                finish(r - 1)
        finish(h1 - 1)
        return out[None, None]


def coarse_matches(
    corr: torch.Tensor,
    argmax: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    stride: int = 8,
    k: int = 2,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Raw matches of both directions from a pooled volume (batch size 1).

    Args:
        corr: ``(1, 1, h1, w1, h2, w2)`` pooled correlation after NC.
        argmax: the max-pool argmax: a function of the ``(R,)`` flat pooled
            cells of both images giving flat candidate indices (``pool_argmax``).
    Returns:
        matches ``(h2*w2 + h1*w1, 4)`` int64 ``[x1, y1, x2, y2]`` pixels of the
        network input (``stride * cell + stride // 2``), direction B->A first;
        scores ``(R,)`` the softmax maxima.
    """
    _, _, h1, w1, h2, w2 = corr.shape
    dev = corr.device
    corr = corr.reshape(h1 * w1, h2 * w2)
    # Direction 1: for every image-2 cell, softmax over the image-1 cells.
    s1, a1 = F.softmax(corr, dim=0).max(dim=0)
    b1 = torch.arange(h2 * w2, device=dev)
    # Direction 2: for every image-1 cell, softmax over the image-2 cells.
    s2, b2 = F.softmax(corr, dim=1).max(dim=1)
    a2 = torch.arange(h1 * w1, device=dev)
    ia, ib = torch.cat([a1, a2]), torch.cat([b1, b2])
    d = decode_argmax(argmax(ia, ib), k)
    iA, jA, iB, jB = ia // w1, ia % w1, ib // w2, ib % w2
    cells = torch.stack([jA * k + d[1], iA * k + d[0], jB * k + d[3], iB * k + d[2]], 1)
    return cells * stride + stride // 2, torch.cat([s1, s2])


def mutual_filter(
    matches: np.ndarray, scores: np.ndarray, threshold: float = 0.0
) -> Tuple[np.ndarray, np.ndarray]:
    """Keep rows present in both directions (lexicographically sorted, score of
    the first occurrence); if none is mutual, keep all; then ``score > threshold``.

    Args: matches ``(R, 4)`` int, scores ``(R,)``. Returns ``(N, 4)``, ``(N,)``.
    """
    uniq, first, counts = np.unique(
        matches, axis=0, return_index=True, return_counts=True
    )
    if (counts > 1).any():
        matches, scores = uniq[counts > 1], scores[first[counts > 1]]
    keep = scores > threshold
    return matches[keep], scores[keep]
