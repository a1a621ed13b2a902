"""Local patch features of the regressors: feature levels as row tables and
the L2-normalised patches gathered from them."""

from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F


class PatchTable(NamedTuple):
    """One feature level as rows: ``rows`` ``(H_l * W_l, C_l)``, their squared
    norms ``(H_l * W_l,)``, the map width ``W_l`` (the row stride) and the
    level's stride ``s_l`` in input pixels."""

    rows: torch.Tensor
    norm2: torch.Tensor
    width: int
    stride: int


def patch_tables(
    maps: Sequence[torch.Tensor], strides: Sequence[int]
) -> List[PatchTable]:
    """Per level, a ``(C_l, H_l, W_l)`` map (a free view when the map is
    channels-last) and its stride."""
    tables = []
    for f, s in zip(maps, strides):
        rows = f.permute(1, 2, 0).reshape(-1, f.shape[0])
        norm2 = torch.einsum("ij,ij->i", rows, rows)  # no (H*W, C) temporary
        tables.append(PatchTable(rows, norm2, f.shape[-1], s))
    return tables


def patch_grid(psize: int, device=None) -> torch.Tensor:
    """Offsets ``-P/2 .. P/2-1`` of a patch, ``(P,)`` int64."""
    return torch.arange(psize, device=device) - psize // 2


def cell_index(
    xs: torch.Tensor,
    ys: torch.Tensor,
    table: PatchTable,
    image_size: Tuple[int, int],
) -> torch.Tensor:
    """Row indices ``(N, len_y, len_x)`` of the cells under pixel columns
    ``xs`` ``(N, len_x)`` and rows ``ys`` ``(N, len_y)``: ``floor(p / s)``
    clamped to ``[0, W // s - 1]`` (``W``, ``H``: the network input size) as the
    official code does, which for sides that are not multiples of ``s`` is
    smaller than the map (its width stays the row stride)."""
    w, h = image_size
    s = table.stride
    xi = torch.div(xs, s, rounding_mode="floor").clamp_(0, w // s - 1)
    yi = torch.div(ys, s, rounding_mode="floor").clamp_(0, h // s - 1)
    return yi[:, :, None] * table.width + xi[:, None, :]


def gather_patches(
    tables: Sequence[PatchTable],
    points: torch.Tensor,
    image_size: Tuple[int, int],
    psize: int = 16,
    out: Optional[torch.Tensor] = None,
    written: Optional[int] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised nearest-neighbour patch features around integer points.

    Args:
        tables: ``patch_tables`` of one image's levels.
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
    if out is None:
        dim = sum(t.rows.shape[1] for t in tables[:written])
        out = tables[0].rows.new_empty(len(points), psize, psize, dim)
    sq, off = 0.0, 0
    for level, table in enumerate(tables):
        idx = cell_index(xs, ys, table, image_size)  # (N, P, P)
        if level < written:
            c = table.rows.shape[1]
            out[..., off : off + c] = F.embedding(idx, table.rows)
            off += c
        sq = sq + table.norm2[idx]
    inv = torch.rsqrt(sq + 1e-6)
    return out.mul_(inv[..., None]), inv
