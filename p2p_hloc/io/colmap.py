"""COLMAP models read with pycolmap, with errors that name the folder."""

from pathlib import Path
from typing import Union

from ..console import InputError


class ModelError(InputError):
    """A COLMAP model folder that pycolmap cannot read."""


def read_model(path: Union[str, Path]):
    """``pycolmap.Reconstruction`` of the model (binary or text) in ``path``.

    Raises:
        ModelError: the folder is missing, lacks the model files, or pycolmap
            cannot parse them (the message names the folder and pycolmap's reason).
    """
    import pycolmap

    path = Path(path)
    if not path.is_dir():
        raise ModelError(f"COLMAP model folder not found: {path}")
    try:
        return pycolmap.Reconstruction(path)
    except (ValueError, RuntimeError) as e:
        raise ModelError(f"cannot read the COLMAP model in {path}: {e}") from e
