"""hloc's text files: pairs, retrieval lists, queries with intrinsics, results."""

import logging
from collections import defaultdict
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

logger = logging.getLogger("p2p_hloc")


class PairsError(ValueError):
    """A malformed line in a pairs or queries file."""


def canonical_name(name: str) -> str:
    """An image name as HDF5 (and so hloc) reads it back: ``./a.png`` and
    ``x//y.png`` name the groups ``a.png`` and ``x/y.png``, but hloc's pair
    keys (``names_to_pair``) would differ. Removes ``.`` and empty components.

    Raises:
        ValueError: for an absolute name, a ``..`` component (outside the
            image folder, or another spelling of a name) or an empty name.
    """
    if name.startswith("/"):
        raise ValueError(f"{name!r} is an absolute path (names are relative)")
    parts = name.split("/")
    if ".." in parts:
        raise ValueError(f"{name!r} has a '..' component")
    canonical = "/".join(p for p in parts if p not in ("", "."))
    if not canonical:
        raise ValueError(f"{name!r} names no file")
    return canonical


def _lines(path: Path) -> List[str]:
    """The lines of a UTF-8 text file; an error names the file and line."""
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise PairsError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x}); "
            "save the file as UTF-8"
        ) from e
    return text.splitlines()


def parse_pairs(path: Path) -> List[Tuple[str, str]]:
    """``name0 name1`` lines; blank lines and lines starting with ``#`` are
    skipped. Names are returned in canonical form (``canonical_name``).

    Image names may not contain whitespace (hloc's format splits on it) and a
    ``#`` after the names is not a comment (hloc reads it as a third field);
    errors name the file and line.
    """
    pairs, rewritten = [], []
    for i, line in enumerate(_lines(path), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) > 2 and fields[2].startswith("#"):
            raise PairsError(
                f"{path}:{i}: a '#' comment must have a line of its own (hloc's "
                f"pairs format has no comments after the names): {line!r}"
            )
        if len(fields) != 2:
            raise PairsError(
                f"{path}:{i}: expected 'name0 name1', got {len(fields)} fields: {line!r} "
                "(names with spaces are not supported by hloc's pairs format)"
            )
        try:
            pair = tuple(canonical_name(n) for n in fields)
        except ValueError as e:
            raise PairsError(f"{path}:{i}: {e}") from e
        if pair != tuple(fields):
            rewritten.append((i, fields, pair))
        pairs.append(pair)
    if rewritten:
        i, fields, pair = rewritten[0]
        logger.warning(
            "%s: %d lines name images in non-canonical form, read as HDF5 reads "
            "them back (e.g. line %d: %s -> %s); hloc's own tools look pairs up "
            "as written, so write the names this way.",
            path,
            len(rewritten),
            i,
            " ".join(fields),
            " ".join(pair),
        )
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
    line. Names are returned in canonical form (``canonical_name``), as the
    pairs files' are, so that the two agree."""
    queries = []
    for i, line in enumerate(_lines(path), 1):
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
        try:
            name = canonical_name(f[0])
        except ValueError as e:
            raise PairsError(f"{where}: {e}") from e
        queries.append(
            (name, dict(model=f[1], width=width, height=height, params=params))
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
