"""Mid/fine-level regressors and the local patch features they read."""

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn


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
    ) -> torch.Tensor:
        """patches: ``(N, 2*D, P, P)``, image-1 channels first (channels-last
        memory is fastest on CPU). In eval mode ``folded`` (``folded_convs``,
        computed once for many calls) replaces the convs and BatchNorms."""
        if self.training:
            return self.fc(self.conv(patches).flatten(1))
        x = patches
        for conv, weight, bias in folded or self.folded_convs():
            x = F.conv2d(x, weight, bias, conv.stride, conv.padding)
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
) -> torch.Tensor:
    """L2-normalised nearest-neighbour patch features around integer points.

    Args:
        tables: ``patch_tables`` of one image's levels.
        strides: the level strides ``s_l``.
        points: ``(N, 2)`` int64 ``(x, y)`` patch centres in input pixels.
        image_size: ``(W, H)`` of the network input.
        out: optional ``(N, P, P, D)`` destination (may be a channel slice of
            a larger buffer).
    Returns:
        ``(N, P, P, D)`` (channels last): the levels' features concatenated at
        each position and divided by ``sqrt(sum_l |f_l|^2 + 1e-6)``.
    """
    w, h = image_size
    d = patch_grid(psize, points.device)
    xs = points[:, 0, None] + d  # (N, P)
    ys = points[:, 1, None] + d
    dim = sum(t.shape[1] for t, _ in tables)
    if out is None:
        out = tables[0][0].new_empty(len(points), psize, psize, dim)
    sq, off = 0.0, 0
    for (table, norm2), s in zip(tables, strides):
        wl = w // s
        xi = torch.div(xs, s, rounding_mode="floor").clamp_(0, wl - 1)
        yi = torch.div(ys, s, rounding_mode="floor").clamp_(0, h // s - 1)
        idx = yi[:, :, None] * wl + xi[:, None, :]  # (N, P, P)
        c = table.shape[1]
        out[..., off : off + c] = F.embedding(idx, table)
        sq = sq + norm2[idx]
        off += c
    return out.div_(torch.sqrt(sq + 1e-6)[..., None])


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
