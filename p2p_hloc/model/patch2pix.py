"""Patch2Pix: NCNet patch proposals refined to pixel matches by two regressors.

All coordinates here are pixels of the network inputs (the resized images),
``[x1, y1, x2, y2]`` with image 0 first, in the official convention (coarse
cell centres at ``8 * cell + 4``). ``match`` can scale them to original pixels.
"""

import contextlib
from dataclasses import dataclass, field
from functools import partial
from typing import ContextManager, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .backbone import ResNet34Features
from .ncnet import (
    NeighConsensus,
    coarse_matches,
    correlation_maxpool,
    l2_normalize,
    mutual_filter,
    mutual_matching,
    pool_argmax,
)
from .regressor import (
    CellShare,
    FeatRegressNet,
    FoldedConv,
    PatchTable,
    gather_patches,
    parse_output,
    patch_tables,
)

Features = List[torch.Tensor]

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class RegressorConfig:
    """The official ``regressor_config`` fields that shape the regressors."""

    conv_dims: Sequence[int] = (512, 512)
    conv_kers: Sequence[int] = (3, 3)
    conv_strs: Sequence[int] = (2, 1)
    fc_dims: Sequence[int] = (512, 256)
    psize: Sequence[int] = (16, 16)
    shared: bool = False
    feat_idx: Sequence[int] = field(default_factory=lambda: [0, 1, 2, 3])


class Patch2Pix(nn.Module):
    """The Patch2Pix network; ``regressor=None`` builds the coarse-only NCNet.

    State-dict keys are those of the official model (``extract.*``, ``ncn.*``,
    ``regress_mid.*``, ``regress_fine.*``) without ``extract.layer4.*``.

    ``precision`` is ``'fp32'`` (default, the official results) or an opt-in
    autocast mode for the regressors, the largest cost: ``'bf16'`` (CPUs with
    bf16 support, GPUs) or ``'fp16'`` (GPUs). The backbone and NCNet stay
    float32, so the proposals do not change (in bf16 their argmax decisions
    do); outputs are float32. docs/performance.md gives the accuracy cost.
    """

    ksize = 2  # 4D max-pool size
    stride = 8  # feature stride of layer3 after the stride change
    regr_batch = 64  # proposals per regressor call at inference (cache-sized)
    train_batch = 128  # proposals per call in train mode (a BatchNorm batch)

    def __init__(
        self,
        regressor: Optional[RegressorConfig] = RegressorConfig(),
        precision: str = "fp32",
    ):
        super().__init__()
        self.precision = precision
        self.extract = ResNet34Features()
        self.ncn = NeighConsensus()
        self.regressor = regressor
        if regressor is not None:
            self.feat_idx = list(regressor.feat_idx)
            dim = sum(ResNet34Features.channels[i] for i in self.feat_idx)
            kw = dict(
                feat_dim=dim,
                conv_dims=regressor.conv_dims,
                conv_kers=regressor.conv_kers,
                conv_strs=regressor.conv_strs,
                fc_dims=regressor.fc_dims,
            )
            self.regress_mid = FeatRegressNet(psize=regressor.psize[0], **kw)
            self.regress_fine = (
                self.regress_mid
                if regressor.shared
                else FeatRegressNet(psize=regressor.psize[1], **kw)
            )
            for net in (self.regress_mid, self.regress_fine):
                net.to(memory_format=torch.channels_last)  # oneDNN's fast conv layout
        self.eval()

    @property
    def coarse_only(self) -> bool:
        return self.regressor is None

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def precision(self) -> str:
        return self._precision

    @precision.setter
    def precision(self, value: str) -> None:
        if value not in PRECISIONS:
            raise ValueError(
                f"precision must be one of {sorted(PRECISIONS)}, got {value!r}"
            )
        self._precision = value

    def autocast(self) -> ContextManager:
        """The autocast context of ``precision`` (a no-op for fp32)."""
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    @classmethod
    def from_checkpoint(cls, path, device: Optional[str] = None) -> "Patch2Pix":
        """Build from an official checkpoint file (``patch2pix_pretrained.pth``,
        ``ncn_ivd_5ep.pth``) or one written by our trainer."""
        from .checkpoint import load_model

        return load_model(path, device)

    # ---------------------------------------------------------------- stages
    def extract_features(self, image: torch.Tensor) -> Features:
        """``(1, 3, H, W)`` normalised image -> the five feature levels
        (channels-last memory: the regressors read them as row tables)."""
        return [
            f.contiguous(memory_format=torch.channels_last) for f in self.extract(image)
        ]

    def coarse(
        self,
        feats0: Features,
        feats1: Features,
        ncn_threshold: float = 0.0,
        mutual: bool = True,
    ) -> Dict[str, torch.Tensor]:
        """NCNet proposals from the layer3 maps of both images (batch 1).

        Returns ``matches`` ``(N, 4)`` int64 and ``scores`` ``(N,)``, mutual
        and sorted as in the official code, plus the raw two-direction lists.
        """
        for f in (feats0[-1], feats1[-1]):
            if f.shape[-1] % self.ksize or f.shape[-2] % self.ksize:
                raise ValueError(
                    f"image sides must be multiples of {self.ksize * self.stride} px, "
                    f"got features {tuple(f.shape[-2:])}"
                )
        f0, f1 = l2_normalize(feats0[-1], 1), l2_normalize(feats1[-1], 1)
        corr = correlation_maxpool(f0, f1, self.ksize)
        corr = mutual_matching(self.ncn(mutual_matching(corr)))
        argmax = partial(pool_argmax, f0, f1, k=self.ksize)
        raw, raw_scores = coarse_matches(corr, argmax, self.stride)
        raw_np, raw_scores_np = raw.cpu().numpy(), raw_scores.cpu().numpy()
        if mutual:
            m, s = mutual_filter(raw_np, raw_scores_np, ncn_threshold)
        else:
            keep = raw_scores_np > ncn_threshold
            m, s = raw_np[keep], raw_scores_np[keep]
        dev = raw.device
        return {
            "matches": torch.from_numpy(m).to(dev),
            "scores": torch.from_numpy(s).to(dev),
            "raw_matches": raw,
            "raw_scores": raw_scores,
        }

    def patch_tables(self, feats: Features) -> List[PatchTable]:
        """The regressor levels of one image as row tables (``PatchTable``)."""
        cl = torch.channels_last  # makes the row tables free views
        return patch_tables(
            [feats[i].contiguous(memory_format=cl)[0] for i in self.feat_idx]
        )

    def regress(
        self,
        level: str,
        feats0: Features,
        feats1: Features,
        matches: torch.Tensor,
        tables: Optional[Tuple[List[PatchTable], List[PatchTable]]] = None,
    ) -> Dict[str, torch.Tensor]:
        """One refinement level (``'mid'`` or ``'fine'``) on ``(N, 4)`` matches.

        Patches are centred on the truncated matches; the offsets are added to
        the untruncated ones. ``tables``: both images' ``patch_tables`` when
        already computed. Returns ``matches`` ``(N, 4)`` float, ``scores``
        ``(N,)`` and ``raw`` ``(N, 5)``.
        """
        net = self.regress_mid if level == "mid" else self.regress_fine
        psize = self.regressor.psize[0 if level == "mid" else 1]
        tables0, tables1 = tables or (
            self.patch_tables(feats0),
            self.patch_tables(feats1),
        )
        strides = [ResNet34Features.strides[i] for i in self.feat_idx]
        size0 = (feats0[0].shape[-1], feats0[0].shape[-2])
        size1 = (feats1[0].shape[-1], feats1[0].shape[-2])
        dims = [t.rows.shape[1] for t in tables0]
        if not net.fast_path():
            folded, shares, written = None, [[], []], len(dims)
        else:
            folded, shares, written = self._split_first_conv(net, dims, strides, psize)
        dim = sum(dims[:written])
        raws = []
        for chunk in matches.split(
            self.train_batch if net.training else self.regr_batch
        ):
            centres = chunk.long()
            # (n, P, P, 2 * dim): image-0 then image-1 channels, each normalised
            x = tables0[0].rows.new_empty(len(chunk), psize, psize, 2 * dim)
            extra = None
            for side, (tables, size) in enumerate(((tables0, size0), (tables1, size1))):
                pts = centres[:, 2 * side : 2 * side + 2]
                dst = x[..., side * dim : (side + 1) * dim]
                _, inv = gather_patches(tables, strides, pts, size, psize, dst, written)
                for level, share in shares[side]:
                    part = share(tables[level], pts, size, inv)
                    extra = part if extra is None else extra.add_(part)
            with self.autocast():
                raws.append(net(x.permute(0, 3, 1, 2), folded, extra).float())
        raw = (
            torch.cat(raws) if raws else matches.new_zeros((0, 5), dtype=torch.float32)
        )
        new, scores = parse_output(raw, matches, size0 + size1, psize)
        return {"matches": new, "scores": scores, "raw": raw}

    @staticmethod
    def _split_first_conv(
        net: FeatRegressNet, dims: List[int], strides: List[int], psize: int
    ) -> Tuple[list, list, int]:
        """Eval-mode first conv split into the per-pixel levels (a direct conv)
        and the levels of stride ``>= P/4`` (``CellShare``, per image side).
        Returns the folded convs (first one on the per-pixel channels), the
        shares ``[[(level, CellShare)], [...]]`` and the number of per-pixel
        levels."""
        folded = net.folded_convs()
        written = sum(s < psize // 4 for s in strides)
        if written == len(dims):
            return folded, [[], []], written
        conv, weight, bias, _ = folded[0]
        d, dp = sum(dims), sum(dims[:written])
        keep = list(range(dp)) + list(range(d, d + dp))
        plain = weight[:, keep].contiguous(memory_format=torch.channels_last)
        shares = []
        for side in range(2):
            start = side * d + dp
            side_shares = []
            for level in range(written, len(dims)):
                w = weight[:, start : start + dims[level]]
                side_shares.append((level, CellShare(w, conv, psize, strides[level])))
                start += dims[level]
            shares.append(side_shares)
        return [FoldedConv(conv, plain, bias)] + folded[1:], shares, written

    def refine_features(
        self, feats0: Features, feats1: Features, proposals: torch.Tensor
    ) -> Dict[str, torch.Tensor]:
        """Mid then fine regression of ``(N, 4)`` proposals (input pixels)."""
        if self.coarse_only:
            raise RuntimeError(
                "this is a coarse-only (NCNet) model: it has no regressors"
            )
        tables = self.patch_tables(feats0), self.patch_tables(feats1)
        mid = self.regress("mid", feats0, feats1, proposals, tables)
        fine = self.regress("fine", feats0, feats1, mid["matches"], tables)
        return {
            "mid_matches": mid["matches"],
            "mid_scores": mid["scores"],
            "mid_raw": mid["raw"],
            "matches": fine["matches"],
            "scores": fine["scores"],
            "fine_raw": fine["raw"],
        }

    # ------------------------------------------------------------ public API
    @torch.no_grad()
    def forward_pair(
        self,
        image0: torch.Tensor,
        image1: torch.Tensor,
        proposals: Optional[torch.Tensor] = None,
        coarse_only: bool = False,
        ncn_threshold: float = 0.0,
    ) -> Dict[str, torch.Tensor]:
        """All stages for one pair of ``(1, 3, H, W)`` normalised images.

        With ``proposals`` ``(N, 4)`` (input pixels) NCNet is skipped and the
        images may have any size. Returns a dict of ``(N, ...)`` tensors in
        input pixels: ``coarse_matches``, ``coarse_scores`` and, unless coarse
        only, ``mid_*`` and the final ``matches``, ``scores``.
        """
        feats0 = self.extract_features(image0)
        feats1 = self.extract_features(image1)
        return self.forward_features(
            feats0, feats1, proposals, coarse_only, ncn_threshold
        )

    def forward_features(
        self,
        feats0: Features,
        feats1: Features,
        proposals: Optional[torch.Tensor] = None,
        coarse_only: bool = False,
        ncn_threshold: float = 0.0,
    ) -> Dict[str, torch.Tensor]:
        """``forward_pair`` on features from ``extract_features`` (reusable
        across the pairs of an image)."""
        out: Dict[str, torch.Tensor] = {}
        if proposals is None:
            c = self.coarse(feats0, feats1, ncn_threshold)
            out.update(
                coarse_matches=c["matches"],
                coarse_scores=c["scores"],
                raw_coarse_matches=c["raw_matches"],
                raw_coarse_scores=c["raw_scores"],
            )
            proposals = c["matches"]
        else:
            out["coarse_matches"] = proposals
        if coarse_only or self.coarse_only:
            out["matches"] = out["coarse_matches"].float()
            out["scores"] = out.get(
                "coarse_scores", torch.ones(len(proposals), device=proposals.device)
            )
            return out
        out.update(self.refine_features(feats0, feats1, proposals.float()))
        return out

    @torch.no_grad()
    def match(
        self,
        image0: torch.Tensor,
        image1: torch.Tensor,
        scale0: Optional[Sequence[float]] = None,
        scale1: Optional[Sequence[float]] = None,
        threshold: float = 0.25,
        coarse_only: bool = False,
        keep_all_if_none: bool = False,
        proposals: Optional[torch.Tensor] = None,
        return_stages: bool = False,
    ) -> Dict[str, torch.Tensor]:
        """Match two ``(1, 3, H, W)`` normalised images.

        Args:
            scale0, scale1: per-axis ``(sx, sy)`` original/resized factors; the
                outputs are multiplied by them (official, no half-pixel shift).
            threshold: keep matches with ``score > threshold`` (strict).
            keep_all_if_none: the official rule: if no match passes, return all.
            proposals: ``(N, 4)`` matches in input pixels to refine instead of
                the NCNet proposals (the images may then have any size).
            return_stages: also return ``coarse``/``mid`` matches and scores.
        Returns:
            ``keypoints0`` ``(M, 2)``, ``keypoints1`` ``(M, 2)``, ``scores`` ``(M,)``
            (and the stages when asked, filtered like the final matches).
        """
        pred = self.forward_pair(image0, image1, proposals, coarse_only)
        return select_matches(
            pred, scale0, scale1, threshold, keep_all_if_none, return_stages
        )

    @torch.no_grad()
    def refine(
        self,
        image0: torch.Tensor,
        image1: torch.Tensor,
        proposals: torch.Tensor,
        **kwargs,
    ) -> Dict[str, torch.Tensor]:
        """``match`` with given ``(N, 4)`` proposals in input pixels."""
        return self.match(image0, image1, proposals=proposals, **kwargs)


def _scale_vector(scale0, scale1, ref: torch.Tensor) -> torch.Tensor:
    s0 = (1.0, 1.0) if scale0 is None else tuple(scale0)
    s1 = (1.0, 1.0) if scale1 is None else tuple(scale1)
    return torch.tensor(s0 + s1, dtype=torch.float64, device=ref.device)


def select_matches(
    pred: Dict[str, torch.Tensor],
    scale0=None,
    scale1=None,
    threshold: float = 0.25,
    keep_all_if_none: bool = False,
    return_stages: bool = False,
) -> Dict[str, torch.Tensor]:
    """Threshold the final scores (strict ``>``) and scale to original pixels.

    Matches become float64 ``matches * [sx0, sy0, sx1, sy1]`` as in the
    official ``estimate_matches``."""
    scores = pred["scores"]
    keep = scores > threshold
    if keep_all_if_none and not keep.any():
        keep = torch.ones_like(keep)
    s = _scale_vector(scale0, scale1, scores)
    m = pred["matches"][keep].double() * s
    out = {"keypoints0": m[:, :2], "keypoints1": m[:, 2:], "scores": scores[keep]}
    if return_stages:
        out["coarse_matches"] = pred["coarse_matches"][keep].double() * s
        if "coarse_scores" in pred:
            out["coarse_scores"] = pred["coarse_scores"][keep]
        if "mid_matches" in pred:
            out["mid_matches"] = pred["mid_matches"][keep].double() * s
            out["mid_scores"] = pred["mid_scores"][keep]
    return out
