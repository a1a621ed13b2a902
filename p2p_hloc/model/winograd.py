"""Winograd F(4x4, 3x3) for the regressors' second convolution (inference).

A 3x3 convolution (stride 1, zero padding 1) followed by a global max-pool is
computed on 6x6 input tiles as ``A^T [(G w G^T) * (B^T d B)] A`` with the
transforms of Lavin & Gray (2016, interpolation points 0, +-1, +-2, inf): 36
matrix products per tile grid instead of a direct convolution, 4x fewer
multiply-adds. The transforms are additions and small multiples, written as
whole-tensor operations on strided views; the 4x4 output tiles are reduced
with a running maximum and never assembled.

In float32 the result differs from a direct convolution by about 1e-5 of the
output magnitude (docs/performance.md gives the effect on the golden matches).
"""

from typing import List

import torch

from .ops import matmul_nt

TILE = 4  # output tile side; input tiles are TILE + 2

# G of F(4, 3): the kernel transform (rows: the 6 interpolation points)
_G = torch.tensor(
    [
        [1 / 4, 0, 0],
        [-1 / 6, -1 / 6, -1 / 6],
        [-1 / 6, 1 / 6, -1 / 6],
        [1 / 24, 1 / 12, 1 / 6],
        [1 / 24, -1 / 12, 1 / 6],
        [0, 0, 1],
    ],
    dtype=torch.float64,
)


def transform_weight(weight: torch.Tensor) -> torch.Tensor:
    """``(O, C, 3, 3)`` kernel -> ``(36, O, C)`` Winograd-domain kernel
    ``G w G^T`` (computed in float64), row-major over the 6x6 positions."""
    g = _G.to(weight.device)
    u = torch.einsum("ik,ockl,jl->ijoc", g, weight.double(), g)
    return u.to(weight.dtype).reshape(36, *weight.shape[:2]).contiguous()


def _input_transform(d: torch.Tensor, dim: int, out: torch.Tensor) -> None:
    """``B^T`` along ``dim`` of size ``4T`` (zero padding 1 implied) into
    ``out`` ``(6, ...)`` whose ``dim`` has the ``T`` tiles: tile ``t`` reads
    entries ``4t - 1 .. 4t + 4``, ``d0 .. d5``."""
    tiles = d.shape[dim] // TILE

    def taps(start: int, count: int) -> torch.Tensor:  # start, start + 4, ...
        v = d.narrow(dim, start, TILE * (count - 1) + 1)
        return v[(slice(None),) * dim + (slice(None, None, TILE),)]

    d1, d2, d3, d4 = (taps(k, tiles) for k in range(4))
    torch.mul(d2, -5, out=out[0]).add_(d4)
    torch.add(d3 + d4, d1 + d2, alpha=-4, out=out[1])
    torch.add(d4 - d3, d1 - d2, alpha=4, out=out[2])
    e, f = d4 - d2, d3 - d1
    torch.add(e, f, alpha=2, out=out[3])
    torch.add(e, f, alpha=-2, out=out[4])
    torch.mul(d3, -5, out=out[5]).add_(d1, alpha=4)
    if tiles > 1:  # d0 and d5 where they are not padding
        out[0].narrow(dim, 1, tiles - 1).add_(taps(3, tiles - 1), alpha=4)
        out[5].narrow(dim, 0, tiles - 1).add_(taps(4, tiles - 1))


def _output_transform(m: List[torch.Tensor]) -> List[torch.Tensor]:
    """``A^T`` over 6 tensors -> the 4 outputs (consumes ``m``'s buffers)."""
    m0, m1, m2, m3, m4, m5 = m
    p12, d12 = m1 + m2, m1.sub_(m2)
    p34, d34 = m3 + m4, m3.sub_(m4)
    return [
        (p12 + p34).add_(m0),
        torch.add(d12, d34, alpha=2),
        p12.add_(p34, alpha=4),
        d12.add_(d34, alpha=8).add_(m5),
    ]


def conv3x3_amax(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Global max of a 3x3 convolution (stride 1, zero padding 1, no bias).

    Args:
        x: ``(N, H, W, C)`` input (channels last), ``H`` and ``W`` multiples of 4.
        weight: ``(36, O, C)`` from ``transform_weight``.
    Returns:
        ``(N, O)``: ``conv2d(x, w, padding=1).amax((2, 3))``.
    """
    n, h, w, c = x.shape
    ty, tx = h // TILE, w // TILE
    u = x.new_empty(6, n, h, tx, c)
    _input_transform(x, 2, u)
    v = x.new_empty(6, 6, n, ty, tx, c)
    _input_transform(u, 2, v)
    v = v.view(36, n * ty * tx, c)
    m = [matmul_nt(v[i], weight[i]) for i in range(36)]  # (N*T, O) each
    rows = [_output_transform(m[6 * i : 6 * i + 6]) for i in range(6)]
    out = None
    for col in range(TILE):
        for y in _output_transform([r[col] for r in rows]):
            out = y if out is None else torch.maximum(out, y, out=out)
    return out.view(n, ty * tx, -1).amax(1)
