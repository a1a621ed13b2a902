"""A refinement level of Patch2Pix: the regressor and everything around it.

``FeatRegressNet.refine(tables0, tables1, matches, size0, size1)`` gathers the
patches around the matches, runs the regressor in batches (in the autocast
``precision``; on the CPU in eval mode its fast form, ``fast_regressor``) and
turns its outputs into refined matches and confidences.
"""

import contextlib
from typing import ContextManager, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .fast_regressor import FastRegressor, Layout
from .ops import use_fast_forms, version_key
from .patches import PatchTable, gather_patches

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(value: str) -> str:
    if value not in PRECISIONS:
        raise ValueError(
            f"precision must be one of {sorted(PRECISIONS)}, got {value!r}"
        )
    return value


class FeatRegressNet(nn.Module):
    """Regressor of a patch pair: ``(N, 2*D, P, P)`` -> ``(N, 5)`` logits
    (4 offsets ``x1, y1, x2, y2`` and a confidence).

    Layer indices follow the official ``conv.*`` / ``fc.*`` Sequentials.
    ``precision``: ``'fp32'`` or an autocast mode (``'bf16'``, ``'fp16'``),
    set by ``Patch2Pix.precision``.
    """

    chunk = 64  # proposals per batch at inference: cache-sized, changes no result
    train_chunk = 128  # proposals per batch in train mode: the BatchNorm batch

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
        self.psize = psize
        self.precision = "fp32"
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
        self.to(memory_format=torch.channels_last)  # oneDNN's fast conv layout
        self._fast: Dict = {}  # layout -> (version_key, FastRegressor)

    def autocast(self, device: torch.device) -> ContextManager:
        """The autocast context of ``precision`` (a no-op for fp32)."""
        dtype = PRECISIONS[check_precision(self.precision)]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=dtype)

    def _fast_form(self, layout: Optional[Layout] = None) -> FastRegressor:
        """The fast form for ``layout``, rebuilt when a weight changes."""
        key = version_key(self)
        cached = self._fast.get(layout)
        if cached is None or cached[0] != key:
            cached = (key, FastRegressor(self.conv, self.fc, self.psize, layout))
            self._fast[layout] = cached
        return cached[1]

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """patches: ``(N, 2*D, P, P)``, image-0 channels first (channels-last
        memory is fastest on CPU). Returns the ``(N, 5)`` logits."""
        if use_fast_forms(self, patches):
            return self._fast_form()(patches)
        return self.fc(self.conv(patches).flatten(1))

    def refine(
        self,
        tables0: Sequence[PatchTable],
        tables1: Sequence[PatchTable],
        matches: torch.Tensor,
        size0: Tuple[int, int],
        size1: Tuple[int, int],
    ) -> Dict[str, torch.Tensor]:
        """Refine ``(N, 4)`` matches ``[x0, y0, x1, y1]`` (input pixels).

        Patches are centred on the truncated matches; the offsets are added to
        the untruncated ones. ``tables0``, ``tables1``: both images' levels
        (``patches.patch_tables``); ``size0``, ``size1``: their ``(W, H)``.
        Returns ``matches`` ``(N, 4)`` float32, ``scores`` ``(N,)`` and
        ``logits`` ``(N, 5)``.
        """
        rows = tables0[0].rows
        if len(matches) == 0:
            return {
                "matches": matches.float().reshape(0, 4),
                "scores": rows.new_zeros(0, dtype=torch.float32),
                "logits": rows.new_zeros((0, 5), dtype=torch.float32),
            }
        psize = self.psize
        fast = None
        if use_fast_forms(self, rows):
            fast = self._fast_form(tuple((t.rows.shape[1], t.stride) for t in tables0))
        written = fast.written if fast else len(tables0)
        dim = sum(t.rows.shape[1] for t in tables0[:written])
        logits = []
        for chunk in matches.split(self.train_chunk if self.training else self.chunk):
            centres = chunk.long()
            # (n, P, P, 2 * dim): image-0 then image-1 channels, each normalised
            x = rows.new_empty(len(chunk), psize, psize, 2 * dim)
            extra = None
            for side, (tables, size) in enumerate(((tables0, size0), (tables1, size1))):
                pts = centres[:, 2 * side : 2 * side + 2]
                dst = x[..., side * dim : (side + 1) * dim]
                _, inv = gather_patches(tables, pts, size, psize, dst, written)
                if fast:
                    extra = fast.shares(side, tables, pts, size, inv, extra)
            x = x.permute(0, 3, 1, 2)
            with self.autocast(x.device):
                out = fast(x, extra) if fast else self.fc(self.conv(x).flatten(1))
            logits.append(out.float())
        logits = torch.cat(logits)
        new, scores = parse_output(logits, matches, size0 + size1, psize)
        return {"matches": new, "scores": scores, "logits": logits}


def parse_output(
    logits: torch.Tensor,
    matches: torch.Tensor,
    sizes: Tuple[int, int, int, int],
    psize: int = 16,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Regressor logits to refined matches and confidences.

    ``offset = P * tanh(relu(logits[:, :4])) - P/2`` is added to the float
    input matches ``(N, 4)``; results are clamped to ``[0, W]`` / ``[0, H]``
    with ``sizes = (W1, H1, W2, H2)`` of the network inputs.
    Returns ``(N, 4)`` matches and ``(N,)`` sigmoid confidences.
    """
    offset = psize * torch.tanh(torch.relu(logits[:, :4])) - psize // 2
    new = matches.float() + offset
    upper = torch.tensor(sizes, dtype=new.dtype, device=new.device)
    new = torch.minimum(new.clamp(min=0), upper)
    return new, torch.sigmoid(logits[:, 4])
