"""Epipolar supervision of Patch2Pix: Sampson distance, patch expansion and
the classification / geometric losses of the official training."""

from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F


def sampson_distance(matches: torch.Tensor, fmat: torch.Tensor) -> torch.Tensor:
    """Sampson distance of ``(N, 4)`` matches ``[x1, y1, x2, y2]`` to the
    fundamental matrix ``(3, 3)`` (``x2^T F x1 = 0``), in squared pixels ``(N,)``.
    """
    m = matches.double()  # float32 loses the epipolar residual of small F entries
    fmat = fmat.to(m)
    ones = m.new_ones(len(m), 1)
    x1 = torch.cat([m[:, :2], ones], 1)  # (N, 3)
    x2 = torch.cat([m[:, 2:], ones], 1)
    l2 = x1 @ fmat.T  # epipolar lines in image 2: F x1
    l1 = x2 @ fmat  # epipolar lines in image 1: F^T x2
    num = (x2 * l2).sum(1) ** 2
    den = l2[:, 0] ** 2 + l2[:, 1] ** 2 + l1[:, 0] ** 2 + l1[:, 1] ** 2
    return (num / den.clamp(min=1e-30)).to(matches.dtype)


def expand_patches(matches: torch.Tensor, shift: int = 8) -> torch.Tensor:
    """Local patch expansion: each ``(N, 4)`` match becomes 8 anchors,
    4 moving point 1 by ``(+-shift, +-shift)`` with point 2 fixed, then 4
    moving point 2. The original match is not kept. Returns ``(8N, 4)``,
    the 8 anchors of a match contiguous."""
    d = torch.tensor([[-1, -1], [1, -1], [-1, 1], [1, 1]], device=matches.device)
    d = (d * shift).to(matches.dtype)
    zero = torch.zeros_like(d)
    offsets = torch.cat([torch.cat([d, zero], 1), torch.cat([zero, d], 1)])  # (8, 4)
    return (matches[:, None] + offsets).reshape(-1, 4)


def sample_proposals(
    matches: torch.Tensor, num: int, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """Shuffle ``(N, 4)`` proposals and cut or tile them to ``num`` rows
    (``num <= 0``: all of them, unshuffled)."""
    if num <= 0 or len(matches) == 0:
        return matches
    perm = torch.randperm(len(matches), generator=generator)
    reps = -(-num // len(matches))
    return matches[perm.repeat(reps)[:num].to(matches.device)]


def weighted_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with positives weighted ``Nneg / Npos`` and
    negatives 1, averaged over all ``(N,)`` samples."""
    npos = labels.sum()
    weights = labels * (len(labels) - npos) / npos.clamp(min=1) + (1 - labels)
    return F.binary_cross_entropy_with_logits(logits, labels, weights)


def pair_losses(
    fmat: torch.Tensor,
    anchors: torch.Tensor,
    pred: Dict[str, torch.Tensor],
    cls_thresholds: Sequence[float] = (50.0, 5.0),
    geo_thresholds: Sequence[float] = (50.0, 5.0),
) -> Optional[Dict[str, torch.Tensor]]:
    """Losses of one pair from the Sampson distances (squared px).

    Args:
        fmat: ``(3, 3)`` fundamental matrix of the network-input images.
        anchors: ``(N, 4)`` proposals fed to the mid regressor.
        pred: the model's stages on them (``Patch2Pix.forward(...,
            stages=True)``): ``mid_matches``, ``fine_matches`` ``(N, 4)`` and
            ``mid_logits``, ``fine_logits`` ``(N, 5)`` (the confidence logit
            is the last column).
    Returns:
        ``cls_mid``, ``cls_fine``, ``geo_mid``, ``geo_fine`` (scalars) and the
        counts ``pos_mid``, ``pos_fine``, ``sel_mid``, ``sel_fine``; None when the
        pair gives no positive at one level or no match to regress (as the
        official code, which skips such pairs).
    """
    d_coarse = sampson_distance(anchors.float(), fmat)
    d_mid = sampson_distance(pred["mid_matches"], fmat)
    d_fine = sampson_distance(pred["fine_matches"], fmat)
    with torch.no_grad():
        pos_mid = (d_coarse < cls_thresholds[0]).float()
        pos_fine = (d_mid < cls_thresholds[1]).float()
        sel_mid = d_coarse < geo_thresholds[0]
        sel_fine = d_mid < geo_thresholds[1]
    if pos_mid.sum() == 0 or pos_fine.sum() == 0:
        return None
    if not (sel_mid.any() or sel_fine.any()):
        return None
    zero = d_mid.new_zeros(())
    return {
        "cls_mid": weighted_bce(pred["mid_logits"][:, 4], pos_mid),
        "cls_fine": weighted_bce(pred["fine_logits"][:, 4], pos_fine),
        "geo_mid": d_mid[sel_mid].mean() if sel_mid.any() else zero,
        "geo_fine": d_fine[sel_fine].mean() if sel_fine.any() else zero,
        "pos_mid": pos_mid.sum(),
        "pos_fine": pos_fine.sum(),
        "sel_mid": sel_mid.sum().float(),
        "sel_fine": sel_fine.sum().float(),
    }
