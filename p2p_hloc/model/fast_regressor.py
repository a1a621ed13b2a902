"""The eval-mode forms of a regressor on the CPU (an implementation detail of
``FeatRegressNet``, tested against its plain layers).

- BatchNorm folded into each conv (weights channels-last).
- The last conv, when 3x3 with stride 1 and padding 1, as a Winograd
  transform with the global max-pool (``winograd.conv3x3_amax``).
- The first conv split by feature level: the per-pixel levels go through the
  direct conv, the coarse levels (stride ``>= P/4``) through ``CellShare``,
  computed per feature cell.
"""

from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .ops import cpu_float32, matmul_nt
from .patches import PatchTable, cell_index
from .winograd import conv3x3_amax, transform_weight

# (channels, stride) of each feature level the regressor reads
Layout = Tuple[Tuple[int, int], ...]


class FoldedConv(NamedTuple):
    """An eval-mode conv with its BatchNorm folded in: ``weight`` ``(O, C, k,
    k)`` (channels-last), ``bias`` ``(O,)`` and, for a last conv that allows
    it, the ``(36, O, C)`` Winograd kernel (``winograd.transform_weight``)."""

    conv: nn.Conv2d
    weight: torch.Tensor
    bias: torch.Tensor
    winograd: Optional[torch.Tensor] = None


def _winograd_shape(conv: nn.Conv2d) -> bool:
    return (
        conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.padding == (1, 1)
    )


def _winograd_input(x: torch.Tensor) -> bool:
    """float32 CPU maps whose sides are multiples of the tile (elsewhere, and
    under autocast, the direct conv is the faster one)."""
    h, w = x.shape[-2:]
    return cpu_float32(x) and h % 4 == w % 4 == 0


@torch.no_grad()
def fold_convs(conv: nn.Sequential) -> List[FoldedConv]:
    """The ``Conv2d, BatchNorm2d, ..., ReLU, MaxPool2d`` layers of a regressor
    as folded convs, the last one also as a Winograd kernel when its shape
    allows it."""
    layers = list(conv)
    out = []
    for c, bn in zip(layers[:-2:2], layers[1:-2:2]):
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        weight = c.weight * scale[:, None, None, None]
        wino = None
        if out and c is layers[-4] and _winograd_shape(c):
            wino = transform_weight(weight)
        weight = weight.contiguous(memory_format=torch.channels_last)
        out.append(FoldedConv(c, weight, bn.bias - bn.running_mean * scale, wino))
    return out


class CellShare:
    """The first conv's share of one coarse level, computed per feature cell.

    A level of stride ``s`` holds one feature for each ``s x s`` cell, so a
    patch reads at most ``m = (P-1)//s + 2`` cells per axis. Its share of the
    first conv's output at ``o`` is ``sum_t W_t f(cell(p_t)) / n(p_t)`` over
    the kernel taps ``t`` (``p_t`` the pixel that tap reads, ``n`` the
    per-pixel norm of all levels). With ``Q[cell, t] = W_t f(cell)`` computed
    once per cell and tap (one matrix product), each output is a weighted sum
    of 9 rows of ``Q`` (``embedding_bag``) instead of the convolution over the
    level's channels at every pixel: the same sum, in another order, with
    ``H' W' / m^2`` times fewer multiply-adds (``H' x W'`` the conv's output).
    """

    def __init__(self, weight: torch.Tensor, conv: nn.Conv2d, psize: int, stride: int):
        """weight: ``(K, C, k, k)`` first-conv weight of the level's channels."""
        k = weight.shape[-1]
        self.k, self.s, self.psize = k, stride, psize
        self.m = (psize - 1) // stride + 2
        # rows (ty, tx, K): Q = f @ w.T gives (cells, k*k*K)
        self.w = weight.permute(2, 3, 0, 1).reshape(-1, weight.shape[1]).contiguous()
        (cs, _), (pad, _) = conv.stride, conv.padding
        size = (psize + 2 * pad - k) // cs + 1
        # p[o, t]: the patch pixel that output o reads with tap t
        self.p = cs * torch.arange(size)[:, None] + torch.arange(k) - pad

    def __call__(
        self,
        table: PatchTable,
        points: torch.Tensor,
        image_size: Tuple[int, int],
        inv_norm: torch.Tensor,
    ) -> torch.Tensor:
        """table: the level's ``PatchTable``; points ``(N, 2)`` patch centres;
        inv_norm ``(N, P, P)`` from ``gather_patches``.
        Returns the share ``(N, H', W', K)``."""
        n, s, m, k = len(points), self.s, self.m, self.k
        dev = points.device
        p = self.p.to(dev)
        size = p.shape[0]
        origin = points - self.psize // 2  # (N, 2) pixel of patch index 0
        base = torch.div(origin, s, rounding_mode="floor")
        # the m x m window of cells from the first, in pixels (s * cell)
        win = (base[:, :, None] + torch.arange(m, device=dev)) * s
        cells = cell_index(win[:, 0], win[:, 1], table, image_size)  # (N, m, m)
        q = matmul_nt(F.embedding(cells, table.rows).view(n * m * m, -1), self.w)
        q = q.view(n * m * m * k * k, -1)  # rows (patch, cy, cx, ty, tx)
        # the window cell of each (output, tap) per axis: (N, 2, o, t)
        rel = torch.div(origin[:, :, None, None] + p, s, rounding_mode="floor")
        rel = (rel - base[:, :, None, None]).clamp_(0, m - 1)
        ry, rx = rel[:, 1, :, None, :, None], rel[:, 0, None, :, None, :]
        tap = torch.arange(k * k, device=dev).view(k, k)
        first = torch.arange(n, device=dev).view(n, 1, 1, 1, 1) * m
        rows = ((first + ry) * m + rx) * (k * k) + tap  # (N, oy, ox, ty, tx)
        # 1 / n(p_t), zero where the tap reads the conv's zero padding
        valid = (p >= 0) & (p < self.psize)
        pc = p.clamp(0, self.psize - 1)
        scale = inv_norm[:, pc[:, None, :, None], pc[None, :, None, :]]
        scale = scale * (valid[:, None, :, None] & valid[None, :, None, :])
        out = F.embedding_bag(
            rows.view(-1, k * k),
            q,
            mode="sum",
            per_sample_weights=scale.view(-1, k * k),
        )
        return out.view(n, size, size, -1)


class FastRegressor:
    """The eval-mode form of a regressor (its ``conv`` and ``fc`` layers) for
    patches of size ``psize`` gathered from levels of the given ``layout``
    (None: the patches come whole, every channel through the direct conv).

    ``written`` levels are gathered per pixel; ``shares`` adds the others'
    part of the first conv; the call runs the convs and the ``fc`` layers.
    """

    def __init__(
        self,
        conv: nn.Sequential,
        fc: nn.Sequential,
        psize: int,
        layout: Optional[Layout] = None,
    ):
        self.fc = fc
        self.convs = fold_convs(conv)
        self.cell_shares: List[List[Tuple[int, CellShare]]] = [[], []]
        self.written = 0 if layout is None else len(layout)
        if layout is None:
            return
        dims = [c for c, _ in layout]
        self.written = sum(s < psize // 4 for _, s in layout)
        if self.written == len(layout):
            return
        first = self.convs[0]
        d, dp = sum(dims), sum(dims[: self.written])
        keep = list(range(dp)) + list(range(d, d + dp))
        plain = first.weight[:, keep].contiguous(memory_format=torch.channels_last)
        self.convs[0] = FoldedConv(first.conv, plain, first.bias)
        for side in range(2):
            start = side * d + dp
            for level in range(self.written, len(layout)):
                w = first.weight[:, start : start + dims[level]]
                share = CellShare(w, first.conv, psize, layout[level][1])
                self.cell_shares[side].append((level, share))
                start += dims[level]

    def shares(
        self,
        side: int,
        tables: Sequence[PatchTable],
        points: torch.Tensor,
        image_size: Tuple[int, int],
        inv_norm: torch.Tensor,
        acc: Optional[torch.Tensor] = None,
    ) -> Optional[torch.Tensor]:
        """``acc`` plus the first conv's share ``(N, H', W', K)`` of the
        levels of image ``side`` that are not gathered (None if none)."""
        for level, share in self.cell_shares[side]:
            part = share(tables[level], points, image_size, inv_norm)
            acc = part if acc is None else acc.add_(part)
        return acc

    def __call__(
        self, patches: torch.Tensor, extra: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """patches: ``(N, C', P, P)`` (channels-last memory is fastest), the
        gathered channels; extra: ``shares`` of the others. Returns ``(N, 5)``."""
        x = patches
        for i, (conv, weight, bias, wino) in enumerate(self.convs):
            if wino is not None and _winograd_input(x):
                # the last conv with its global max-pool, never assembled
                pooled = conv3x3_amax(x.permute(0, 2, 3, 1), wino).add_(bias)
                break
            x = F.conv2d(x, weight, bias, conv.stride, conv.padding)
            if i == 0 and extra is not None:
                x.permute(0, 2, 3, 1).add_(extra)
        else:
            pooled = x.amax((2, 3))
        # the global max-pool commutes with the ReLU
        return self.fc(pooled.relu())
