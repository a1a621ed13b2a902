"""hloc's text files: pairs, retrieval lists, queries with intrinsics, results."""

from collections import defaultdict
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np


class PairsError(ValueError):
    """A malformed line in a pairs or queries file."""


def parse_pairs(path: Path) -> List[Tuple[str, str]]:
    """``name0 name1`` lines; blank lines and ``#`` comments are skipped.

    Image names may not contain whitespace (hloc's format splits on it); a line
    with other than two fields raises an error naming the file and line.
    """
    pairs = []
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) != 2:
            raise PairsError(
                f"{path}:{i}: expected 'name0 name1', got {len(fields)} fields: {line!r} "
                "(names with spaces are not supported by hloc's pairs format)"
            )
        pairs.append((fields[0], fields[1]))
    return pairs


def parse_retrieval(path: Path) -> Dict[str, List[str]]:
    """``{query: [references...]}`` from a pairs file, in file order."""
    retrieval: Dict[str, List[str]] = defaultdict(list)
    for q, r in parse_pairs(path):
        retrieval[q].append(r)
    return dict(retrieval)


def write_pairs(path: Path, pairs: Sequence[Tuple[str, str]]) -> Path:
    """Write ``name0 name1`` lines (hloc writes no trailing newline)."""
    Path(path).write_text("\n".join(" ".join(p) for p in pairs))
    return Path(path)


@lru_cache(maxsize=None)
def camera_models() -> Dict[str, str]:
    """``{model name: its parameters, e.g. "f, cx, cy"}`` of every camera model
    pycolmap knows."""
    import pycolmap

    return {
        name: pycolmap.Camera.create_from_model_name(1, name, 1.0, 1, 1).params_info
        for name in pycolmap.CameraModelId.__members__
        if name != "INVALID"
    }


def parse_queries(path: Path) -> List[Tuple[str, Dict]]:
    """``name MODEL W H params...`` lines -> ``[(name, camera_dict)]`` with
    ``model``, ``width``, ``height``, ``params`` (pycolmap's Camera fields).

    Blank lines and ``#`` comments are skipped. The model must be one of
    pycolmap's (``camera_models``) with its number of parameters, the size
    positive and the parameters finite; otherwise an error names the file and
    line."""
    queries = []
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        f = line.split()
        where = f"{path}:{i}"
        models = camera_models()
        if len(f) < 4:
            raise PairsError(f"{where}: expected 'name MODEL W H params...': {line!r}")
        if f[1] not in models:
            raise PairsError(
                f"{where}: unknown camera model {f[1]!r} (pycolmap's models: "
                f"{', '.join(models)})"
            )
        info = models[f[1]]
        try:
            width, height = int(f[2]), int(f[3])
            params = np.array(f[4:], float)
        except ValueError as e:
            raise PairsError(f"{where}: {e}: {line!r}") from e
        if width <= 0 or height <= 0:
            raise PairsError(f"{where}: image size {width} x {height}: {line!r}")
        if len(params) != len(info.split(",")) or not np.isfinite(params).all():
            raise PairsError(
                f"{where}: {f[1]} takes {len(info.split(','))} finite parameters "
                f"({info}), got {len(params)}: {line!r}"
            )
        queries.append(
            (f[0], dict(model=f[1], width=width, height=height, params=params))
        )
    return queries


def write_poses(
    path: Path,
    poses: Dict[str, Tuple[np.ndarray, np.ndarray]],
    prepend_camera_name: bool = False,
) -> Path:
    """Write a results file: ``basename qw qx qy qz tx ty tz`` per query
    (world-to-camera, quaternion w first), atomically; ``prepend_camera_name``
    writes ``parent/basename`` instead (hloc's option, for RobotCar)."""
    lines = []
    for name, (qvec, tvec) in poses.items():
        vals = " ".join(str(float(v)) for v in (*qvec, *tvec))
        parts = name.split("/")
        name = "/".join(parts[-2:]) if prepend_camera_name else parts[-1]
        lines.append(f"{name} {vals}")
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + ("\n" if lines else ""))
    tmp.replace(path)
    return path
