from .checkpoint import CheckpointError, load_model, save_checkpoint  # noqa: F401
from .patch2pix import Patch2Pix, RegressorConfig, select_matches  # noqa: F401
