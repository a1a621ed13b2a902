"""Patch2Pix as a matcher for hloc."""

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

from .model import Patch2Pix, load_model  # noqa: E402,F401
from .runtime import tune_malloc  # noqa: E402,F401
