"""hloc-style configurations for ``p2p_hloc.match_pairs`` (data, not code).

Each conf has:
- ``output``: file-name stem encoding the key parameters;
- ``model``: the proposal source (``name``: a module of ``p2p_hloc.matchers``)
  and its settings; for ``patch2pix`` the model itself (``weights``: an official
  file name looked up by ``p2p_hloc.weights`` or a path; ``threshold``: keep
  ``score > threshold``; ``coarse_only``: NCNet proposals only);
- ``preprocessing``: ``resize_max`` (larger side, never upsampled) and
  ``dfactor`` (sides floored to a multiple of it; 1: any size), ``grayscale``
  (False: Patch2Pix takes RGB; read by hloc's ``match_dense`` when registered),
  optional ``official_16bit`` (parity only: 16-bit images clipped at 255 as the
  official code reads them, instead of scaled to 8 bits);
- ``refine``: None, or Patch2Pix refinement of the proposals
  (``weights``, ``resize_max``, ``threshold``, ``official_16bit``);
- ``quantization``: ``method`` (``cluster``: ours, deterministic;
  ``immatch``: the authors' running midpoint in ``psize`` cells), ``radius``
  (merge distance, px), ``min_score`` (raw matches below it are dropped);
- ``max_error``, ``cell_size``: read by hloc's own ``match_dense`` only.
"""

_PATCH2PIX = {"name": "patch2pix", "weights": "patch2pix_pretrained.pth", "ksize": 2}
_QUANT = {"method": "cluster", "radius": 4.0, "min_score": 0.0}
_HLOC_QUANT = {"max_error": 4, "cell_size": 4}


def _prep(resize_max: int, dfactor: int = 16) -> dict:
    return {"resize_max": resize_max, "dfactor": dfactor, "grayscale": False}


confs = {
    # Patch2Pix with NCNet proposals, the authors' default setting
    "patch2pix": {
        "output": "matches-patch2pix-r1024-t0.25",
        "model": {**_PATCH2PIX, "threshold": 0.25},
        "preprocessing": _prep(1024),
        "refine": None,
        "quantization": _QUANT,
        **_HLOC_QUANT,
    },
    # Aachen: keep all raw matches, quantize those with score >= 0.25
    "patch2pix_aachen": {
        "output": "matches-patch2pix-r1024-t0-q4sc0.25",
        "model": {**_PATCH2PIX, "threshold": 0.0},
        "preprocessing": _prep(1024),
        "refine": None,
        "quantization": {**_QUANT, "min_score": 0.25},
        **_HLOC_QUANT,
    },
    # the authors' exact quantization (order-dependent), for parity runs
    "patch2pix_aachen_immatch": {
        "output": "matches-patch2pix-r1024-t0-qt48d4sc0.25",
        "model": {**_PATCH2PIX, "threshold": 0.0},
        "preprocessing": _prep(1024),
        "refine": None,
        "quantization": {
            "method": "immatch",
            "radius": 4.0,
            "psize": 48,
            "min_score": 0.25,
        },
        **_HLOC_QUANT,
    },
    "patch2pix_inloc": {
        "output": "matches-patch2pix-inloc-r1024-t0.25",
        "model": {**_PATCH2PIX, "threshold": 0.25},
        "preprocessing": _prep(1024),
        "refine": None,
        "quantization": _QUANT,
        **_HLOC_QUANT,
    },
    # refine matches read from an existing hloc features + matches pair of
    # files (e.g. SuperPoint + SuperGlue); pass them as ``proposals``
    "patch2pix_refine": {
        "output": "matches-patch2pix-refine-r1600-t0.1",
        "model": {"name": "hloc_file"},
        "preprocessing": _prep(1600, 1),
        "refine": {
            "weights": "patch2pix_pretrained.pth",
            "resize_max": 1600,
            "threshold": 0.1,
        },
        "quantization": _QUANT,
        **_HLOC_QUANT,
    },
    # the adapted NCNet, coarse matches only
    "ncnet": {
        "output": "matches-ncnet-r1024-t0.9",
        "model": {
            "name": "patch2pix",
            "weights": "ncn_ivd_5ep.pth",
            "ksize": 2,
            "threshold": 0.9,
            "coarse_only": True,
        },
        "preprocessing": _prep(1024),
        "refine": None,
        "quantization": _QUANT,
        **_HLOC_QUANT,
    },
    # proposal sources that need no Patch2Pix weights
    "sift": {
        "output": "matches-sift-r1600-n4096",
        "model": {"name": "sift", "max_keypoints": 4096, "ratio": 0.8},
        "preprocessing": _prep(1600, 1),
        "refine": None,
        "quantization": _QUANT,
        **_HLOC_QUANT,
    },
    "lightglue_aliked": {
        "output": "matches-aliked-lightglue-r1024-n2048",
        "model": {"name": "lightglue", "features": "aliked", "max_keypoints": 2048},
        "preprocessing": _prep(1024, 1),
        "refine": None,
        "quantization": _QUANT,
        **_HLOC_QUANT,
    },
    "lightglue_disk": {
        "output": "matches-disk-lightglue-r1024-n2048",
        "model": {"name": "lightglue", "features": "disk", "max_keypoints": 2048},
        "preprocessing": _prep(1024, 1),
        "refine": None,
        "quantization": _QUANT,
        **_HLOC_QUANT,
    },
}

# the same proposals refined by Patch2Pix: ``<name>_patch2pix``
_REFINE = {"weights": "patch2pix_pretrained.pth", "resize_max": 1024, "threshold": 0.25}
for _name in ("sift", "lightglue_aliked", "lightglue_disk"):
    confs[f"{_name}_patch2pix"] = {
        **confs[_name],
        "output": confs[_name]["output"] + "-patch2pix-r1024-t0.25",
        "refine": _REFINE,
    }
