"""Mid/fine-level regressors and the local patch features they read."""

import itertools
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .ops import matmul_nt
from .winograd import conv3x3_amax, transform_weight


class FeatRegressNet(nn.Module):
    """Regressor of a patch pair: ``(N, 2*D, P, P)`` -> ``(N, 5)`` raw outputs
    (4 offset logits ``x1, y1, x2, y2`` and a confidence logit).

    Layer indices follow the official ``conv.*`` / ``fc.*`` Sequentials.
    """

    def __init__(
        self,
        feat_dim: int = 259,
        psize: int = 16,
        conv_dims: Sequence[int] = (512, 512),
        conv_kers: Sequence[int] = (3, 3),
        conv_strs: Sequence[int] = (2, 1),
        fc_dims: Sequence[int] = (512, 256),
        out_dim: int = 5,
    ):
        super().__init__()
        layers: List[nn.Module] = []
        cin, w = 2 * feat_dim, psize
        for cout, k, s in zip(conv_dims, conv_kers, conv_strs):
            layers += [nn.Conv2d(cin, cout, k, s, 1, bias=False), nn.BatchNorm2d(cout)]
            w = (w - k + 2) // s + 1
            cin = cout
        layers += [nn.ReLU(), nn.MaxPool2d(w)]
        self.conv = nn.Sequential(*layers)
        fcs: List[nn.Module] = []
        for cout in fc_dims:
            fcs += [nn.Linear(cin, cout), nn.BatchNorm1d(cout), nn.ReLU()]
            cin = cout
        fcs.append(nn.Linear(cin, out_dim))
        self.fc = nn.Sequential(*fcs)
        self._folded = None  # (parameter versions, folded convs)

    def fast_path(self) -> bool:
        """Eval mode with no gradient wanted for the parameters: the folded,
        ``CellShare`` and Winograd forms (not differentiable). Otherwise,
        e.g. training with frozen BatchNorm, the plain layers."""
        if self.training:
            return False
        return not torch.is_grad_enabled() or not any(
            p.requires_grad for p in self.parameters()
        )

    def folded_convs(self) -> List["FoldedConv"]:
        """The convs with the eval-mode BatchNorm after each folded in (weights
        channels-last), the last one also as a Winograd kernel when it is 3x3
        with stride 1 and padding 1. Cached until a parameter or buffer
        changes."""
        tensors = itertools.chain(self.parameters(), self.buffers())
        key = tuple((t.data_ptr(), t._version) for t in tensors)
        if self._folded is None or self._folded[0] != key:
            self._folded = (key, self._fold())
        return self._folded[1]

    @torch.no_grad()
    def _fold(self) -> List["FoldedConv"]:
        layers = list(self.conv)
        out = []
        for conv, bn in zip(layers[:-2:2], layers[1:-2:2]):
            scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
            weight = conv.weight * scale[:, None, None, None]
            wino = None
            if out and conv is layers[-4] and _winograd_shape(conv):
                wino = transform_weight(weight)
            weight = weight.contiguous(memory_format=torch.channels_last)
            out.append(
                FoldedConv(conv, weight, bn.bias - bn.running_mean * scale, wino)
            )
        return out

    def forward(
        self,
        patches: torch.Tensor,
        folded: Optional[List["FoldedConv"]] = None,
        first_extra: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """patches: ``(N, 2*D, P, P)``, image-1 channels first (channels-last
        memory is fastest on CPU). On the ``fast_path``, ``folded``
        (``folded_convs``, possibly with a narrower first conv) replaces the
        convs and BatchNorms, and ``first_extra`` ``(N, H', W', C')`` is added
        to the first conv's output (the share of input channels that
        ``folded`` leaves out, see ``CellShare``). Returns ``(N, 5)``."""
        if not self.fast_path():
            return self.fc(self.conv(patches).flatten(1))
        x, convs = patches, folded or self.folded_convs()
        for i, (conv, weight, bias, wino) in enumerate(convs):
            if wino is not None and _winograd_input(x):
                # the last conv with its global max-pool, never assembled
                pooled = conv3x3_amax(x.permute(0, 2, 3, 1), wino).add_(bias)
                break
            x = F.conv2d(x, weight, bias, conv.stride, conv.padding)
            if i == 0 and first_extra is not None:
                x.permute(0, 2, 3, 1).add_(first_extra)
        else:
            pooled = x.amax((2, 3))
        # the global max-pool commutes with the ReLU
        return self.fc(pooled.relu())


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
    return x.device.type == "cpu" and x.dtype == torch.float32 and h % 4 == w % 4 == 0


def patch_grid(psize: int, device=None) -> torch.Tensor:
    """Offsets ``-P/2 .. P/2-1`` of a patch, ``(P,)`` int64."""
    return torch.arange(psize, device=device) - psize // 2


class PatchTable(NamedTuple):
    """One feature level as rows: ``rows`` ``(H_l * W_l, C_l)``, their squared
    norms ``(H_l * W_l,)`` and the map width ``W_l`` (the row stride)."""

    rows: torch.Tensor
    norm2: torch.Tensor
    width: int


def patch_tables(feats: Sequence[torch.Tensor]) -> List[PatchTable]:
    """Per level ``(C_l, H_l, W_l)`` map (a free view of a channels-last map)."""
    tables = []
    for f in feats:
        rows = f.permute(1, 2, 0).reshape(-1, f.shape[0])
        norm2 = torch.einsum("ij,ij->i", rows, rows)  # no (H*W, C) temporary
        tables.append(PatchTable(rows, norm2, f.shape[-1]))
    return tables


def cell_index(
    xs: torch.Tensor,
    ys: torch.Tensor,
    table: PatchTable,
    stride: int,
    image_size: Tuple[int, int],
) -> torch.Tensor:
    """Row indices ``(N, len_y, len_x)`` of the cells under pixel columns
    ``xs`` ``(N, len_x)`` and rows ``ys`` ``(N, len_y)``: ``floor(p / s)``
    clamped to ``[0, W // s - 1]`` (``W``, ``H``: the network input size) as the
    official code does, which for sides that are not multiples of ``s`` is
    smaller than the map (its width stays the row stride)."""
    w, h = image_size
    xi = torch.div(xs, stride, rounding_mode="floor").clamp_(0, w // stride - 1)
    yi = torch.div(ys, stride, rounding_mode="floor").clamp_(0, h // stride - 1)
    return yi[:, :, None] * table.width + xi[:, None, :]


def gather_patches(
    tables: Sequence[PatchTable],
    strides: Sequence[int],
    points: torch.Tensor,
    image_size: Tuple[int, int],
    psize: int = 16,
    out: Optional[torch.Tensor] = None,
    written: Optional[int] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised nearest-neighbour patch features around integer points.

    Args:
        tables: ``patch_tables`` of one image's levels.
        strides: the level strides ``s_l``.
        points: ``(N, 2)`` int64 ``(x, y)`` patch centres in input pixels.
        image_size: ``(W, H)`` of the network input.
        out: optional ``(N, P, P, D')`` destination (may be a channel slice of
            a larger buffer).
        written: only the first ``written`` levels are written (default all);
            the others still count in the norm.
    Returns:
        ``(N, P, P, D')`` (channels last): the written levels' features
        concatenated at each position and divided by the norm of all levels
        ``sqrt(sum_l |f_l|^2 + 1e-6)``, and the ``(N, P, P)`` inverse norm.
    """
    written = len(tables) if written is None else written
    d = patch_grid(psize, points.device)
    xs = points[:, 0, None] + d  # (N, P)
    ys = points[:, 1, None] + d
    dim = sum(t.rows.shape[1] for t in tables[:written])
    if out is None:
        out = tables[0].rows.new_empty(len(points), psize, psize, dim)
    sq, off = 0.0, 0
    for level, (table, s) in enumerate(zip(tables, strides)):
        idx = cell_index(xs, ys, table, s, image_size)  # (N, P, P)
        if level < written:
            c = table.rows.shape[1]
            out[..., off : off + c] = F.embedding(idx, table.rows)
            off += c
        sq = sq + table.norm2[idx]
    inv = torch.rsqrt(sq + 1e-6)
    return out.mul_(inv[..., None]), inv


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
        cells = cell_index(win[:, 0], win[:, 1], table, s, image_size)  # (N, m, m)
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


def parse_output(
    raw: torch.Tensor,
    matches: torch.Tensor,
    sizes: Tuple[int, int, int, int],
    psize: int = 16,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Raw regressor outputs to refined matches and confidences.

    ``offset = P * tanh(relu(raw[:, :4])) - P/2`` is added to the float input
    matches ``(N, 4)``; results are clamped to ``[0, W]`` / ``[0, H]`` with
    ``sizes = (W1, H1, W2, H2)`` of the network inputs.
    Returns ``(N, 4)`` matches and ``(N,)`` sigmoid confidences.
    """
    offset = psize * torch.tanh(torch.relu(raw[:, :4])) - psize // 2
    new = matches.float() + offset
    upper = torch.tensor(sizes, dtype=new.dtype, device=new.device)
    new = torch.minimum(new.clamp(min=0), upper)
    return new, torch.sigmoid(raw[:, 4])
