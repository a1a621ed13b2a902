"""Patch2Pix as a matcher for hloc.

``Patch2Pix``, ``load_model`` and ``tune_malloc`` are imported on first use
(PEP 562), so that the modules that need no model (``io``, ``quantize``, the
pycolmap steps) import without torch.
"""

import importlib
import logging

__version__ = "0.1.0"

logger = logging.getLogger("p2p_hloc")
if not logger.handlers:
    _handler = logging.StreamHandler()
    _handler.setFormatter(
        logging.Formatter(
            "[%(asctime)s p2p_hloc %(levelname)s] %(message)s", "%Y/%m/%d %H:%M:%S"
        )
    )
    logger.addHandler(_handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False

_LAZY = {
    "Patch2Pix": ".model",
    "load_model": ".model",
    "tune_malloc": ".runtime",
}
__all__ = ["logger", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
