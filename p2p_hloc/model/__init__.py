"""The Patch2Pix network (``Patch2Pix``), its checkpoint format and the switch
of its fast CPU forms (``fast_forms``)."""

from .checkpoint import CheckpointError, load_model, save_checkpoint  # noqa: F401
from .ops import fast_forms  # noqa: F401
from .patch2pix import Patch2Pix, RegressorConfig, select_matches  # noqa: F401
