"""Training of the Patch2Pix regressors (MegaDepth or generated scenes)."""

from .trainer import default_conf, evaluate, main  # noqa: F401
