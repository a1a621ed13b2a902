"""hloc's HDF5 layout for keypoints and matches.

Coordinates: Patch2Pix works in COLMAP's corner convention (the top-left pixel
corner at (0, 0), its centre at (0.5, 0.5)); hloc files store pixel centres at
integer coordinates and add 0.5 on import into COLMAP. ``to_hloc_coords`` is the
one conversion between the two.
"""

from contextlib import nullcontext
from pathlib import Path
from typing import ContextManager, Dict, Optional, Set, Tuple, Union

import h5py
import numpy as np


class H5Error(RuntimeError):
    """An h5 file that is unreadable, truncated or lacks an expected entry."""


def to_hloc_coords(xy: np.ndarray) -> np.ndarray:
    """Corner convention (Patch2Pix, COLMAP) -> hloc's integer pixel centres."""
    return np.asarray(xy, dtype=np.float64) - 0.5


def from_hloc_coords(xy: np.ndarray) -> np.ndarray:
    """hloc's integer pixel centres -> corner convention (Patch2Pix, COLMAP)."""
    return np.asarray(xy, dtype=np.float64) + 0.5


def names_to_pair(name0: str, name1: str, separator: str = "/") -> str:
    """hloc's pair key: ``name0/name1`` with '/' inside names replaced by '-'."""
    return separator.join((name0.replace("/", "-"), name1.replace("/", "-")))


def open_h5(path: Path, mode: str = "r") -> h5py.File:
    """Open an h5 file, naming it in the error if it is truncated or corrupt."""
    try:
        return h5py.File(str(path), mode, libver="latest")
    except OSError as e:
        raise H5Error(f"cannot open {path} (truncated or corrupt h5 file?): {e}") from e


def list_h5_names(path: Path) -> Set[str]:
    """Names of the groups that hold datasets (images or ``n0/n1`` pair keys)."""
    names = set()
    with open_h5(path) as f:
        f.visititems(
            lambda key, obj: (
                names.add(obj.parent.name.strip("/"))
                if isinstance(obj, h5py.Dataset)
                else None
            )
        )
    return names


H5Target = Union[Path, str, h5py.File]


def _opened(target: H5Target) -> ContextManager[h5py.File]:
    """An open file as it is, a path opened for appending (and closed)."""
    if isinstance(target, h5py.File):
        return nullcontext(target)
    return open_h5(target, "a")


_CREATE = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
_CREATE.set_obj_track_times(False)  # as h5py: files do not depend on the time
_TYPES: Dict[np.dtype, h5py.h5t.TypeID] = {}


def _dataset(group: Union[h5py.Group, h5py.h5g.GroupID], name: str, array) -> None:
    """``group.create_dataset(name, data=array)`` through h5py's low-level
    API: the same contiguous dataset in a third less time, which counts at
    tens of thousands of pairs."""
    array = np.asarray(array, order="C")  # C order; a scalar stays a scalar
    if array.ndim:
        space = h5py.h5s.create_simple(array.shape)
    else:
        space = h5py.h5s.create(h5py.h5s.SCALAR)
    if array.dtype not in _TYPES:
        _TYPES[array.dtype] = h5py.h5t.py_create(array.dtype)
    dtype = _TYPES[array.dtype]
    gid = group if isinstance(group, h5py.h5g.GroupID) else group.id
    dset = h5py.h5d.create(gid, name.encode(), dtype, space, dcpl=_CREATE)
    if array.size:
        dset.write(h5py.h5s.ALL, h5py.h5s.ALL, array)


def write_keypoints(
    target: H5Target,
    name: str,
    keypoints: np.ndarray,
    image_size: Tuple[int, int],
    scores: Optional[np.ndarray] = None,
) -> None:
    """Write ``keypoints`` ``(N, 2)`` (hloc convention, original pixels),
    ``scores`` ``(N,)`` and ``image_size`` ``(W, H)`` of one image into a file
    (a path, or an open ``h5py.File`` to write many without reopening it)."""
    keypoints = np.asarray(keypoints, np.float32).reshape(-1, 2)
    if scores is None:
        scores = np.ones(len(keypoints), np.float32)
    with _opened(target) as f:
        if name in f:
            del f[name]
        g = f.create_group(name)
        _dataset(g, "keypoints", keypoints)
        _dataset(g, "scores", np.asarray(scores, np.float32))
        _dataset(g, "image_size", np.asarray(image_size, np.int64))


def write_matches(
    target: H5Target,
    name0: str,
    name1: str,
    matches0: np.ndarray,
    scores0: np.ndarray,
    **extra,
) -> None:
    """Write ``matches0`` ``(N0,)`` int32 (-1: unmatched) and
    ``matching_scores0`` ``(N0,)`` float16 under ``names_to_pair(name0, name1)``;
    ``extra`` arrays are stored beside them. ``target``: a path, or an open
    ``h5py.File`` (``MatchesWriter`` for many pairs)."""
    with _opened(target) as f:
        MatchesWriter(f).add(name0, name1, matches0, scores0, **extra)


class MatchesWriter:
    """Adds pairs to an open matches file, each first image's group looked up
    once (at tens of thousands of pairs the lookups count)."""

    def __init__(self, f: h5py.File):
        self.f = f
        self.groups: Dict[str, h5py.Group] = {}

    def add(
        self,
        name0: str,
        name1: str,
        matches0: np.ndarray,
        scores0: np.ndarray,
        replace: bool = True,
        **extra,
    ) -> None:
        """``write_matches`` into the open file; ``replace=False``: the pair
        is known to be absent (no lookup)."""
        a, b = (n.replace("/", "-") for n in (name0, name1))
        if replace and f"{a}/{b}" in self.f:
            del self.f[f"{a}/{b}"]
        if a not in self.groups:
            self.groups[a] = self.f.require_group(a)
        g = h5py.h5g.create(self.groups[a].id, b.encode())
        _dataset(g, "matches0", np.asarray(matches0, np.int32))
        _dataset(g, "matching_scores0", np.asarray(scores0, np.float16))
        for k, v in extra.items():
            _dataset(g, k, np.asarray(v))


def get_keypoints(path: Path, name: str) -> np.ndarray:
    """``(N, 2)`` keypoints of an image (hloc convention)."""
    with open_h5(path) as f:
        if name not in f or "keypoints" not in f[name]:
            raise H5Error(f"no keypoints for image {name!r} in {path}")
        return f[name]["keypoints"][()]


def find_pair(f: h5py.File, name0: str, name1: str) -> Tuple[str, bool]:
    """Key of a pair in an open match file and whether it is stored reversed
    (hloc's lookup order, old '_' keys included)."""
    for sep in ("/", "_"):
        for a, b, rev in ((name0, name1, False), (name1, name0, True)):
            key = names_to_pair(a, b, sep)
            if key in f:
                return key, rev
    raise H5Error(f"pair ({name0}, {name1}) not found in {f.filename}")


def get_matches(path: Path, name0: str, name1: str) -> Tuple[np.ndarray, np.ndarray]:
    """``(K, 2)`` keypoint-index pairs ``[idx0, idx1]`` and ``(K,)`` scores."""
    with open_h5(path) as f:
        key, reverse = find_pair(f, name0, name1)
        matches = f[key]["matches0"][()]
        scores = f[key]["matching_scores0"][()]
    idx = np.where(matches != -1)[0]
    pairs = np.stack([idx, matches[idx]], -1)
    if reverse:
        pairs = np.flip(pairs, -1)
    return pairs, scores[idx]


RAW_KEYS = ("keypoints0", "keypoints1", "scores")


def get_raw_matches(
    path: Path, name0: str, name1: str
) -> Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """A dense pair's raw matches stored beside ``matches0`` (hloc's
    ``match_dense`` layout): ``keypoints0`` of ``name0`` and ``keypoints1`` of
    ``name1`` ``(M, 2)`` (hloc convention, swapped if the pair is stored
    reversed) and ``scores`` ``(M,)``; None if the pair has none (a sparse
    matcher's file)."""
    with open_h5(path) as f:
        key, reverse = find_pair(f, name0, name1)
        if any(k not in f[key] for k in RAW_KEYS):
            return None
        kp0, kp1, scores = (f[key][k][()] for k in RAW_KEYS)
    return (kp1, kp0, scores) if reverse else (kp0, kp1, scores)
