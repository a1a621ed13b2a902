"""Plain reference forms of NCNet steps that the model computes fused (the
full 4D correlation, the 4D max-pool with its argmax): for tests only."""

from typing import Callable, Tuple

import torch

from p2p_hloc.model.ncnet import decode_argmax


def correlation_4d(feat0: torch.Tensor, feat1: torch.Tensor) -> torch.Tensor:
    """Dot products of all cell pairs: ``(B, C, H1, W1)``, ``(B, C, H2, W2)`` ->
    ``(B, 1, H1, W1, H2, W2)``."""
    b, c, h1, w1 = feat0.shape
    h2, w2 = feat1.shape[-2:]
    a = feat0.permute(0, 2, 3, 1).reshape(b, h1 * w1, c)
    corr = torch.bmm(a, feat1.reshape(b, c, h2 * w2))
    return corr.view(b, 1, h1, w1, h2, w2)


def maxpool4d(corr: torch.Tensor, k: int = 2) -> Tuple[torch.Tensor, torch.Tensor]:
    """Max over each ``k^4`` block of a ``(1, 1, H1, W1, H2, W2)`` volume.

    Returns the pooled volume ``(1, 1, H1/k, W1/k, H2/k, W2/k)`` and the argmax
    offsets ``(4, 1, 1, H1/k, W1/k, H2/k, W2/k)`` (int64, order di, dj, dk, dl),
    with the official candidate order ``((di*k + dj)*k + dk)*k + dl`` (the
    first maximum on ties).
    """
    h1, w1, h2, w2 = corr.shape[2:]
    if h1 % k or w1 % k or h2 % k or w2 % k:
        raise ValueError(f"sizes not divisible by {k}: {tuple(corr.shape)}")
    v = corr[0, 0].reshape(h1 // k, k, w1 // k, k, h2 // k, k, w2 // k, k)
    v = v.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(
        h1 // k, w1 // k, h2 // k, w2 // k, k**4
    )
    pooled, idx = v.max(dim=-1)
    return pooled[None, None], decode_argmax(idx[None, None], k)


def argmax_lookup(
    offsets: torch.Tensor, k: int = 2
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``maxpool4d``'s per-axis offsets as the argmax function that
    ``ncnet.coarse_matches`` takes (flat pooled cells -> flat candidates)."""
    di, dj, dk, dl = offsets.reshape(4, -1)
    h1, w1, h2, w2 = offsets.shape[-4:]
    flat = (((di * k + dj) * k + dk) * k + dl).view(h1 * w1, h2 * w2)
    return lambda cells0, cells1: flat[cells0, cells1]
