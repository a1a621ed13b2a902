"""hloc's text files: pairs, retrieval lists, queries with intrinsics, results."""

from collections import defaultdict
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


def parse_queries(path: Path) -> List[Tuple[str, Dict]]:
    """``name MODEL W H params...`` lines -> ``[(name, camera_dict)]`` with
    ``model``, ``width``, ``height``, ``params`` (pycolmap's Camera fields)."""
    queries = []
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        f = line.split()
        try:
            cam = dict(
                model=f[1],
                width=int(f[2]),
                height=int(f[3]),
                params=np.array(f[4:], float),
            )
        except (IndexError, ValueError) as e:
            raise PairsError(
                f"{path}:{i}: expected 'name MODEL W H params...': {line!r}"
            ) from e
        queries.append((f[0], cam))
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
