"""Match sources behind one small interface.

``build_matcher(conf)`` returns an object with
- ``prepare(path) -> Any``: the per-image work (load, preprocess, features),
  cacheable across the pairs of an image; it is ``extract(load(path))``, where
  ``load`` needs no model (it runs in DataLoader workers) and returns a dict
  with at least ``size``, the original ``(W, H)``;
- ``match(prep0, prep1) -> dict``: ``keypoints0``, ``keypoints1`` ``(N, 2)``
  float64 in original pixels, corner convention (COLMAP's and Patch2Pix's:
  the top-left pixel centre is at (0.5, 0.5)), and ``scores`` ``(N,)``.

One module per proposal source (``conf["model"]["name"]``): ``patch2pix``
(NCNet proposals, refined or coarse only), ``sift``, ``lightglue``,
``hloc_file``. ``conf["refine"]`` adds Patch2Pix refinement to any of them.
"""

import importlib
from pathlib import Path
from typing import Optional

from .base import BaseMatcher  # noqa: F401


def build_matcher(
    conf: dict, weights: Optional[Path] = None, device=None
) -> BaseMatcher:
    """The matcher of a conf (``model``, ``preprocessing``, optional ``refine``).

    ``weights`` overrides the Patch2Pix checkpoint named in the conf (that of
    the model, or of the refinement)."""
    module = importlib.import_module(f"{__name__}.{conf['model']['name']}")
    refine = conf.get("refine")
    matcher = module.Matcher(
        conf["model"],
        conf["preprocessing"],
        weights=None if refine else weights,
        device=device,
    )
    if refine:
        from .refine import Refined

        matcher = Refined(matcher, refine, weights=weights, device=device)
    return matcher
