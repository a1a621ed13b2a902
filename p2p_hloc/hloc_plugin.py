"""Registration of Patch2Pix into an installed hloc (the only module that
imports hloc; hloc is not on PyPI, install it from its repository).

``register()`` creates the module ``hloc.matchers.patch2pix`` with one
``BaseModel`` subclass whose ``__module__`` is that module's name (the rule of
hloc's ``dynamic_load``), adds our Patch2Pix confs to
``hloc.match_dense.confs`` and makes ``hloc.match_dense.main`` run
``p2p_hloc.match_dense.main`` (same signature and return value) for them, so
that hloc's scripts get the Patch2Pix 4-px quantization with duplicate
removal in both passes::

    from p2p_hloc.hloc_plugin import register
    register()
    from hloc import match_dense
    conf = match_dense.confs["patch2pix_aachen"]
    features, sfm_matches = match_dense.main(conf, sfm_pairs, images, outputs)
    features, loc_matches = match_dense.main(
        conf, loc_pairs, images, outputs,
        features=features, matches=sfm_matches, max_kps=None)

Other confs run hloc's own code. ``register(hloc_aggregation=True)`` leaves
``main`` alone: hloc aggregates Patch2Pix matches with its grid
(``max_error``, ``cell_size``). hloc's ``triangulation.main`` yields no 3D
point on pycolmap 4.x: ``register(fix_triangulation=True)`` replaces it by
``p2p_hloc.triangulation.main`` (same signature); otherwise a warning says so
and an empty triangulation is logged as an error.
"""

import functools
import sys
import types
from typing import Callable, Sequence

import torch

from . import logger
from .confs import confs

MODULE = "hloc.matchers.patch2pix"
HLOC_CONFS = ("patch2pix", "patch2pix_aachen", "patch2pix_inloc", "ncnet")
FIX = (
    "Use p2p_hloc.triangulation.main (same signature) or "
    "p2p_hloc.hloc_plugin.register(fix_triangulation=True)."
)
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


def is_ours(conf: dict) -> bool:
    """A conf that ``p2p_hloc.match_dense`` runs: a Patch2Pix model with our
    quantization settings (a conf without them keeps hloc's aggregation)."""
    return conf.get("model", {}).get("name") == "patch2pix" and "quantization" in conf


def dispatch_match_dense(own: Callable) -> Callable:
    """``hloc.match_dense.main`` that runs ``p2p_hloc.match_dense.main`` for
    our confs and hloc's ``own`` for the others."""

    def main(conf, *args, **kwargs):
        if not is_ours(conf):
            return own(conf, *args, **kwargs)
        from . import match_dense

        return match_dense.main(conf, *args, **kwargs)

    # not a decorator: mutmut (tools/mutation.py) skips decorated functions
    return functools.update_wrapper(main, own)


def check_triangulation(own: Callable) -> Callable:
    """``hloc.triangulation.main`` that logs an error when the model it
    returns has no 3D point."""

    def main(*args, **kwargs):
        reconstruction = own(*args, **kwargs)
        if reconstruction is not None and reconstruction.num_points3D() == 0:
            logger.error("hloc.triangulation produced no 3D points. %s", FIX)
        return reconstruction

    return functools.update_wrapper(main, own)  # as above


def pycolmap_major() -> int:
    import pycolmap

    return int(pycolmap.__version__.split(".")[0])


def register(
    names: Sequence[str] = HLOC_CONFS,
    *,
    hloc_aggregation: bool = False,
    fix_triangulation: bool = False,
) -> types.ModuleType:
    """Put ``hloc.matchers.patch2pix`` in place, our confs ``names`` into
    ``hloc.match_dense.confs`` and, unless ``hloc_aggregation``, our
    quantization behind ``hloc.match_dense.main``; with
    ``fix_triangulation``, ``hloc.triangulation.main`` becomes ours. Calling
    it again is harmless. Returns the matcher module."""
    try:
        import hloc.match_dense
        import hloc.matchers
        import hloc.triangulation
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

    own = hloc_main(hloc.match_dense)
    hloc.match_dense.main = own if hloc_aggregation else dispatch_match_dense(own)
    own = hloc_main(hloc.triangulation)
    if fix_triangulation:
        from . import triangulation

        hloc.triangulation.main = triangulation.main
    elif pycolmap_major() >= 4:
        logger.warning(
            "pycolmap %s: hloc.triangulation writes two-view geometries that "
            "pycolmap 4 skips, so its models get no 3D points. %s",
            pycolmap_major(),
            FIX,
        )
        hloc.triangulation.main = check_triangulation(own)
    else:
        hloc.triangulation.main = own
    return sys.modules[MODULE]


def hloc_main(module: types.ModuleType) -> Callable:
    """hloc's own ``module.main``, kept on the module the first time
    ``register`` replaces it."""
    return vars(module).setdefault("_p2p_hloc_original_main", module.main)
