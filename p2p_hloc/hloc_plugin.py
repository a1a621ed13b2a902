"""Registration of Patch2Pix into an installed hloc (the only module that
imports hloc; hloc is not on PyPI, install it from its repository).

``register()`` creates the module ``hloc.matchers.patch2pix`` with one
``BaseModel`` subclass whose ``__module__`` is that module's name (the rule of
hloc's ``dynamic_load``), and adds our Patch2Pix confs to
``hloc.match_dense.confs``; then::

    from p2p_hloc.hloc_plugin import register
    register()
    from hloc import match_dense
    match_dense.main(match_dense.confs["patch2pix_aachen"], pairs, images, outputs)

runs Patch2Pix inside hloc's own pipeline (hloc's quantization: ``max_error``,
``cell_size``; not ours). hloc resizes with OpenCV (area) and torchvision,
not the official PIL bicubic resize, so matches differ slightly from
``p2p_hloc.match_pairs``.
"""

import sys
import types
from typing import Sequence

import torch

from .confs import confs

MODULE = "hloc.matchers.patch2pix"
HLOC_CONFS = ("patch2pix", "patch2pix_aachen", "patch2pix_inloc", "ncnet")
INSTALL = (
    "hloc is not installed (it is not on PyPI): git clone --recursive "
    "https://github.com/cvg/Hierarchical-Localization && "
    "python -m pip install -e Hierarchical-Localization"
)


def hloc_conf(name: str) -> dict:
    """One of our confs as hloc's ``match_dense`` reads it; the raw-match
    score filter of our quantization moves into the model."""
    conf = confs[name]
    model = {**conf["model"], "min_score": conf["quantization"].get("min_score", 0.0)}
    return {**conf, "model": model}


def make_model_class(base: type) -> type:
    """The hloc model: ``[1, C, H, W]`` images in [0, 1] (sides multiples of
    16) -> ``keypoints0``, ``keypoints1`` in the resized frame with hloc's
    integer pixel centres, and ``scores`` (``score > threshold`` and
    ``>= min_score``)."""
    from .io import to_hloc_coords
    from .matchers.patch2pix import load_network

    class Patch2Pix(base):
        default_conf = {
            "weights": "patch2pix_pretrained.pth",
            "threshold": 0.25,
            "min_score": 0.0,
            "coarse_only": False,
        }
        required_inputs = ["image0", "image1"]

        def _init(self, conf):
            self.net = load_network(
                conf["weights"], device="cpu", coarse_only=conf["coarse_only"]
            ).requires_grad_(
                False
            )  # inference only: the fast CPU forms apply

        def _forward(self, data):
            pred = self.net({"image0": data["image0"], "image1": data["image1"]})
            scores = pred["scores"]
            keep = (scores > self.conf["threshold"]) & (
                scores >= self.conf["min_score"]
            )

            def hloc_coords(xy: torch.Tensor) -> torch.Tensor:
                xy = to_hloc_coords(xy[keep].cpu().double().numpy())
                return torch.from_numpy(xy).float()

            return {
                "keypoints0": hloc_coords(pred["keypoints0"]),
                "keypoints1": hloc_coords(pred["keypoints1"]),
                "scores": scores[keep].float().cpu(),
            }

    Patch2Pix.__module__ = MODULE
    Patch2Pix.__qualname__ = "Patch2Pix"
    return Patch2Pix


def register(names: Sequence[str] = HLOC_CONFS) -> types.ModuleType:
    """Put ``hloc.matchers.patch2pix`` in place and our confs ``names`` into
    ``hloc.match_dense.confs``; returns the module."""
    try:
        import hloc.match_dense
        import hloc.matchers
        from hloc.utils.base_model import BaseModel
    except ImportError as e:
        raise ImportError(INSTALL) from e
    if MODULE not in sys.modules:
        module = types.ModuleType(MODULE, "Patch2Pix (p2p_hloc) as an hloc matcher.")
        module.Patch2Pix = make_model_class(BaseModel)
        sys.modules[MODULE] = module
        hloc.matchers.patch2pix = module
    for name in names:
        hloc.match_dense.confs[name] = hloc_conf(name)
    return sys.modules[MODULE]
