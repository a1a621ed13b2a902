"""Patch2Pix: NCNet patch proposals refined to pixel matches by two regressors.

Coordinates are pixels of the network inputs (the resized images) in the
corner convention (coarse cell centres at ``8 * cell + 4``); ``match`` scales
them to the original images.
"""

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from ..preprocess import load_image
from .backbone import ResNet34Features, normalize
from .ncnet import (
    NeighConsensus,
    coarse_matches,
    correlation_maxpool,
    l2_normalize,
    mutual_filter,
    mutual_matching,
    pool_argmax,
)
from .patches import PatchTable, patch_tables
from .regressor import FeatRegressNet, check_precision

Features = List[torch.Tensor]


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

    def __init__(
        self,
        regressor: Optional[RegressorConfig] = RegressorConfig(),
        precision: str = "fp32",
    ):
        super().__init__()
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
        self.precision = precision
        self.eval()

    @property
    def coarse_only(self) -> bool:
        """A model without regressors (built so by ``load_model(...,
        coarse_only=True)`` or from an NCNet checkpoint)."""
        return self.regressor is None

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def precision(self) -> str:
        return self._precision

    @precision.setter
    def precision(self, value: str) -> None:
        self._precision = check_precision(value)
        if not self.coarse_only:
            self.regress_mid.precision = self.regress_fine.precision = value

    # ---------------------------------------------------------------- stages
    def extract_features(self, image: torch.Tensor) -> Features:
        """``(1, 3, H, W)`` RGB image in [0, 1] (or ``(1, 1, H, W)`` gray) ->
        the five feature levels, the first being the normalised image
        (channels-last memory: the regressors read them as row tables)."""
        if image.ndim != 4 or len(image) != 1 or image.shape[1] not in (1, 3):
            raise ValueError(
                f"expected one (1, 3, H, W) image, got shape {tuple(image.shape)}"
            )
        return [
            f.contiguous(memory_format=torch.channels_last)
            for f in self.extract(normalize(image))
        ]

    def correlation(self, f0: torch.Tensor, f1: torch.Tensor) -> torch.Tensor:
        """4D correlation of L2-normalised layer3 maps, max-pooled over
        ``ksize^4`` blocks: ``(1, 1, h0, w0, h1, w1)``."""
        return correlation_maxpool(f0, f1, self.ksize)

    def consensus(self, corr: torch.Tensor) -> torch.Tensor:
        """Mutual matching, neighbourhood consensus, mutual matching."""
        return mutual_matching(self.ncn(mutual_matching(corr)))

    def extract_matches(
        self,
        corr: torch.Tensor,
        f0: torch.Tensor,
        f1: torch.Tensor,
        threshold: float = 0.0,
    ) -> Dict[str, torch.Tensor]:
        """Both directions' best matches of the volume, relocalised in the
        max-pool windows; mutual ones with score ``> threshold`` (sorted as
        in the official code), and the raw two-direction lists."""
        argmax = partial(pool_argmax, f0, f1, k=self.ksize)
        raw, raw_scores = coarse_matches(corr, argmax, self.stride, self.ksize)
        m, s = mutual_filter(raw.cpu().numpy(), raw_scores.cpu().numpy(), threshold)
        return {
            "matches": torch.from_numpy(m).to(raw.device),
            "scores": torch.from_numpy(s).to(raw.device),
            "raw_matches": raw,
            "raw_scores": raw_scores,
        }

    @torch.no_grad()
    def coarse(
        self, feats0: Features, feats1: Features, threshold: float = 0.0
    ) -> Dict[str, torch.Tensor]:
        """NCNet proposals from the layer3 maps of both images (not
        differentiable). Returns ``matches`` ``(N, 4)`` int64 and ``scores``
        ``(N,)`` (``extract_matches``), plus the raw two-direction lists
        ``raw_matches``, ``raw_scores``."""
        for f in (feats0[-1], feats1[-1]):
            if f.shape[-1] % self.ksize or f.shape[-2] % self.ksize:
                raise ValueError(
                    f"image sides must be multiples of {self.ksize * self.stride} px, "
                    f"got features {tuple(f.shape[-2:])}"
                )
        f0, f1 = l2_normalize(feats0[-1], 1), l2_normalize(feats1[-1], 1)
        corr = self.consensus(self.correlation(f0, f1))
        return self.extract_matches(corr, f0, f1, threshold)

    def patch_tables(self, feats: Features) -> List[PatchTable]:
        """The regressor levels of one image as row tables."""
        cl = torch.channels_last  # makes the row tables free views
        strides = [ResNet34Features.strides[i] for i in self.feat_idx]
        maps = [feats[i].contiguous(memory_format=cl)[0] for i in self.feat_idx]
        return patch_tables(maps, strides)

    def refine_features(
        self, feats0: Features, feats1: Features, proposals: torch.Tensor
    ) -> Dict[str, Dict[str, torch.Tensor]]:
        """Mid then fine regression of ``(N, 4)`` proposals (input pixels).

        Returns ``mid`` and ``fine``, each ``matches`` ``(N, 4)``, ``scores``
        ``(N,)`` and ``logits`` ``(N, 5)`` (``FeatRegressNet.refine``)."""
        if self.coarse_only:
            raise RuntimeError(
                "this is a coarse-only (NCNet) model: it has no regressors"
            )
        tables = self.patch_tables(feats0), self.patch_tables(feats1)
        sizes = [(f[0].shape[-1], f[0].shape[-2]) for f in (feats0, feats1)]
        mid = self.regress_mid.refine(*tables, proposals.float(), *sizes)
        fine = self.regress_fine.refine(*tables, mid["matches"], *sizes)
        return {"mid": mid, "fine": fine}

    # ------------------------------------------------------------ public API
    def forward(
        self, data: Dict[str, torch.Tensor], stages: bool = False
    ) -> Dict[str, torch.Tensor]:
        """Match one pair of images.

        Args:
            data: ``image0``, ``image1``: ``(1, 3, H, W)`` RGB in [0, 1], sides
                multiples of 16 (any size with ``proposals``); or
                ``features0``, ``features1`` from ``extract_features`` (to
                reuse an image's features across its pairs). Optional
                ``proposals`` ``(N, 4)`` ``[x0, y0, x1, y1]`` in input pixels
                to refine instead of the NCNet proposals.
            stages: also return the stages: ``coarse_matches`` ``(N, 4)`` (the
                proposals), ``coarse_scores``, ``raw_coarse_matches``,
                ``raw_coarse_scores`` (NCNet), ``mid_matches``, ``mid_scores``,
                ``mid_logits``, ``fine_matches``, ``fine_logits`` (refinement).
        Returns:
            ``keypoints0``, ``keypoints1`` ``(N, 2)`` float32 in input pixels,
            ``scores`` ``(N,)``: every proposal refined (or, coarse only, the
            proposals), unfiltered.
        """
        feats = []
        for i in (0, 1):
            f = data.get(f"features{i}")
            feats.append(self.extract_features(data[f"image{i}"]) if f is None else f)
        out: Dict[str, torch.Tensor] = {}
        proposals = data.get("proposals")
        if proposals is None:
            c = self.coarse(*feats)
            proposals, scores = c["matches"], c["scores"]
            out.update(
                coarse_scores=c["scores"],
                raw_coarse_matches=c["raw_matches"],
                raw_coarse_scores=c["raw_scores"],
            )
        else:
            scores = torch.ones(len(proposals), device=proposals.device)
        out["coarse_matches"] = proposals
        matches = proposals.float().reshape(-1, 4)
        if not self.coarse_only:
            r = self.refine_features(*feats, proposals)
            matches, scores = r["fine"]["matches"], r["fine"]["scores"]
            out.update(
                mid_matches=r["mid"]["matches"],
                mid_scores=r["mid"]["scores"],
                mid_logits=r["mid"]["logits"],
                fine_matches=matches,
                fine_logits=r["fine"]["logits"],
            )
        pred = {"keypoints0": matches[:, :2], "keypoints1": matches[:, 2:]}
        pred["scores"] = scores
        return {**pred, **out} if stages else pred

    @torch.inference_mode()
    def match(
        self,
        image0: Union[str, Path, object],
        image1: Union[str, Path, object],
        imsize: Optional[int] = 1024,
        threshold: float = 0.25,
        keep_all_if_none: bool = False,
        proposals: Optional[Union[np.ndarray, torch.Tensor]] = None,
        stages: bool = False,
    ) -> Dict[str, torch.Tensor]:
        """Match two original images; results in their pixels.

        Args:
            image0, image1: image files, PIL images, ``(H, W[, 3])`` uint8
                arrays or ``(3, H, W)`` tensors in [0, 1]; resized as the
                official code does (``preprocess.load_image``): larger side
                to ``imsize`` (``None`` or ``<= 0``: native; never upsampled).
            threshold: keep matches with ``score > threshold`` (strict).
            keep_all_if_none: the official rule: if no match passes, return all.
            proposals: ``(N, 4)`` matches in original pixels to refine instead
                of the NCNet proposals (the images then keep their aspect,
                any side length: the official refine path).
            stages: also return the stages (see ``forward``), filtered like
                the final matches and in original pixels.
        Returns:
            ``keypoints0`` ``(M, 2)``, ``keypoints1`` ``(M, 2)`` float64,
            ``scores`` ``(M,)``.
        """
        multiple = 16 if proposals is None else 1
        x0, s0, _ = load_image(image0, imsize, multiple)
        x1, s1, _ = load_image(image1, imsize, multiple)
        dev = self.device
        data = {"image0": x0[None].to(dev), "image1": x1[None].to(dev)}
        if proposals is not None:
            p = torch.as_tensor(proposals, dtype=torch.float64).reshape(-1, 4)
            data["proposals"] = (p / scale_vector(s0, s1, p)).float().to(dev)
        pred = self(data, stages=stages)
        return select_matches(pred, s0, s1, threshold, keep_all_if_none, stages)

    def refine(
        self, image0, image1, proposals: Union[np.ndarray, torch.Tensor], **kwargs
    ) -> Dict[str, torch.Tensor]:
        """``match`` of two original images with given ``(N, 4)`` proposals in
        their pixels."""
        return self.match(image0, image1, proposals=proposals, **kwargs)


def scale_vector(scale0, scale1, ref: torch.Tensor) -> torch.Tensor:
    """``[sx0, sy0, sx1, sy1]`` float64 (None: 1) on ``ref``'s device."""
    s0 = (1.0, 1.0) if scale0 is None else tuple(scale0)
    s1 = (1.0, 1.0) if scale1 is None else tuple(scale1)
    return torch.tensor(s0 + s1, dtype=torch.float64, device=ref.device)


def select_matches(
    pred: Dict[str, torch.Tensor],
    scale0=None,
    scale1=None,
    threshold: float = 0.25,
    keep_all_if_none: bool = False,
    stages: bool = False,
) -> Dict[str, torch.Tensor]:
    """Threshold ``forward``'s scores (strict ``>``) and scale to original
    pixels: coordinates become float64 ``x * [sx, sy]`` as in the official
    ``estimate_matches`` (``scale0``, ``scale1``: original / resized)."""
    scores = pred["scores"]
    keep = scores > threshold
    if keep_all_if_none and not keep.any():
        keep = torch.ones_like(keep)
    s = scale_vector(scale0, scale1, scores)
    out = {
        "keypoints0": pred["keypoints0"][keep].double() * s[:2],
        "keypoints1": pred["keypoints1"][keep].double() * s[2:],
        "scores": scores[keep],
    }
    if stages:
        for k, v in pred.items():
            if k in out or k.startswith("raw_"):
                continue
            v = v[keep]
            out[k] = v.double() * s if k.endswith("_matches") else v
    return out
