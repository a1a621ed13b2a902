"""Mid/fine-level regressors and the local patch features they read."""

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .ops import matmul_nt


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

    def folded_convs(self) -> List[Tuple[nn.Conv2d, torch.Tensor, torch.Tensor]]:
        """Each conv with the eval-mode BatchNorm after it folded in:
        ``(conv, weight, bias)``, weights channels-last."""
        layers = list(self.conv)
        out = []
        for conv, bn in zip(layers[:-2:2], layers[1:-2:2]):
            scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
            weight = conv.weight * scale[:, None, None, None]
            weight = weight.contiguous(memory_format=torch.channels_last)
            out.append((conv, weight, bn.bias - bn.running_mean * scale))
        return out

    def forward(
        self,
        patches: torch.Tensor,
        folded: Optional[List[Tuple[nn.Conv2d, torch.Tensor, torch.Tensor]]] = None,
        first_extra: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """patches: ``(N, 2*D, P, P)``, image-1 channels first (channels-last
        memory is fastest on CPU). In eval mode ``folded`` (``folded_convs``,
        computed once for many calls) replaces the convs and BatchNorms, and
        ``first_extra`` ``(N, H', W', C')`` is added to the first conv's output
        (the share of input channels that ``folded`` leaves out, see
        ``CellShare``)."""
        if self.training:
            return self.fc(self.conv(patches).flatten(1))
        x = patches
        for i, (conv, weight, bias) in enumerate(folded or self.folded_convs()):
            x = F.conv2d(x, weight, bias, conv.stride, conv.padding)
            if i == 0 and first_extra is not None:
                x.permute(0, 2, 3, 1).add_(first_extra)
        # the global max-pool commutes with the ReLU
        return self.fc(x.amax((2, 3)).relu())


def patch_grid(psize: int, device=None) -> torch.Tensor:
    """Offsets ``-P/2 .. P/2-1`` of a patch, ``(P,)`` int64."""
    return torch.arange(psize, device=device) - psize // 2


def patch_tables(
    feats: Sequence[torch.Tensor],
) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """Per level ``(C_l, H_l, W_l)`` map: the row table ``(H_l * W_l, C_l)``
    (a free view of a channels-last map) and its squared row norms."""
    tables = []
    for f in feats:
        table = f.permute(1, 2, 0).reshape(-1, f.shape[0])
        tables.append((table, (table * table).sum(1)))
    return tables


def gather_patches(
    tables: Sequence[Tuple[torch.Tensor, torch.Tensor]],
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
    w, h = image_size
    written = len(tables) if written is None else written
    d = patch_grid(psize, points.device)
    xs = points[:, 0, None] + d  # (N, P)
    ys = points[:, 1, None] + d
    dim = sum(t.shape[1] for t, _ in tables[:written])
    if out is None:
        out = tables[0][0].new_empty(len(points), psize, psize, dim)
    sq, off = 0.0, 0
    for level, ((table, norm2), s) in enumerate(zip(tables, strides)):
        wl = w // s
        xi = torch.div(xs, s, rounding_mode="floor").clamp_(0, wl - 1)
        yi = torch.div(ys, s, rounding_mode="floor").clamp_(0, h // s - 1)
        idx = yi[:, :, None] * wl + xi[:, None, :]  # (N, P, P)
        if level < written:
            c = table.shape[1]
            out[..., off : off + c] = F.embedding(idx, table)
            off += c
        sq = sq + norm2[idx]
    inv = torch.rsqrt(sq + 1e-6)
    return out.mul_(inv[..., None]), inv


class CellShare:
    """The first conv's share of one coarse level, computed per feature cell.

    A level of stride ``s >= P/2`` holds one feature for each ``s x s`` cell,
    so a patch reads at most ``m = (P-1)//s + 2`` cells per axis. Its share of
    the first conv's output is ``sum_t W_t f(cell(p_t)) / n(p_t)`` over the
    kernel taps ``t`` (``p_t`` the pixel the tap reads, ``n`` the per-pixel
    norm of all levels): with ``Q = f(cells) W_t`` computed once per cell and
    tap, it is one small matrix product per patch, ``S @ Q``, ``S`` holding the
    ``1 / n(p_t)`` of the taps, instead of the convolution over those channels
    at every pixel (the same sum, in another order).
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
        table: torch.Tensor,
        points: torch.Tensor,
        image_size: Tuple[int, int],
        inv_norm: torch.Tensor,
    ) -> torch.Tensor:
        """table: the level's ``(H_l * W_l, C)`` rows; points ``(N, 2)`` patch
        centres; inv_norm ``(N, P, P)`` from ``gather_patches``.
        Returns the share ``(N, H', W', K)``."""
        n, s, m, k = len(points), self.s, self.m, self.k
        wl, hl = image_size[0] // s, image_size[1] // s
        p = self.p.to(points.device)
        size = p.shape[0]
        origin = points - self.psize // 2  # (N, 2) pixel of patch index 0
        base = torch.div(origin, s, rounding_mode="floor")
        win = base[:, :, None] + torch.arange(m, device=points.device)  # (N, 2, m)
        cx, cy = win[:, 0].clamp(0, wl - 1), win[:, 1].clamp(0, hl - 1)
        cells = cy[:, :, None] * wl + cx[:, None, :]  # (N, m, m)
        q = matmul_nt(F.embedding(cells, table).view(n * m * m, -1), self.w)
        q = q.view(n, m * m * k * k, -1)  # rows (cy, cx, ty, tx)
        # per axis: the window cell of each (o, t), as a one-hot (N, o, m, t)
        valid = (p >= 0) & (p < self.psize)
        rel = torch.div(origin[:, :, None, None] + p, s, rounding_mode="floor")
        rel = rel - base[:, :, None, None]  # (N, 2, o, t)
        hot = (rel[..., None] == torch.arange(m, device=points.device)) & valid[
            ..., None
        ]
        hot = hot.to(inv_norm.dtype).transpose(-1, -2)  # (N, 2, o, m, t)
        pc = p.clamp(0, self.psize - 1)
        scale = inv_norm[:, pc[:, :, None, None], pc[None, None]]  # (N, oy, ty, ox, tx)
        scale = scale.permute(0, 1, 3, 2, 4)[:, :, :, None, None]
        hy = hot[:, 1][:, :, None, :, None, :, None]  # (N, oy, 1, cy, 1, ty, 1)
        hx = hot[:, 0][:, None, :, None, :, None, :]  # (N, 1, ox, 1, cx, 1, tx)
        sel = (scale * hy * hx).reshape(n, size * size, -1)
        return torch.bmm(sel, q).view(n, size, size, -1)


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
