"""Raw pair matches: the public format read by the quantization step, and our
store of them (``match_pairs`` writes one file per pair as pairs are matched).

The format (docs/raw-format.md): one ``.npz`` per pair holding ``name0``,
``name1`` (strings), ``keypoints0``, ``keypoints1`` ``(N, 2)`` float in hloc's
convention (pixel centres at integers, original image pixels), ``scores``
``(N,)`` and ``size0``, ``size1`` ``(2,)``: width and height of the original
images. Any folder tree of such files is a raw folder.

``RawMatches`` keeps them as ``root/ab/<sha1 of the names>.npz``, each written
to a temporary name and renamed, so a killed run leaves only complete pairs
(and maybe a stray ``.tmp``, ignored and overwritten), plus ``root/meta.json``,
a record of what produced them.
"""

import hashlib
import io
import json
import os
import re
import shutil
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Optional, Tuple

import numpy as np

from .h5 import to_hloc_coords

RAW_KEYS = ("name0", "name1", "keypoints0", "keypoints1", "scores", "size0", "size1")


class RawMatchesError(RuntimeError):
    """A raw-match file that is corrupt, does not follow the format or does not
    hold the expected pair; the message names the file."""


def validate_raw(data: Mapping[str, Any], where: str) -> Dict[str, Any]:
    """Check raw matches against the format; ``where`` names them in errors.

    Returns:
        ``name0``, ``name1`` as ``str``, ``size0``, ``size1`` as ``(2,)`` int64
        and the three arrays as given (floating: float32 or float64).
    Raises:
        RawMatchesError: a missing key, a wrong shape or dtype, a non-finite
            value, a size that is not two positive integers.
    """
    missing = [k for k in RAW_KEYS if k not in data]
    if missing:
        raise RawMatchesError(f"{where}: missing {', '.join(missing)}")
    out: Dict[str, Any] = {}
    for k in ("name0", "name1"):
        name = np.asarray(data[k])
        if name.shape != () or name.dtype.kind not in ("U", "S"):
            raise RawMatchesError(f"{where}: {k} is not a string")
        out[k] = name.item().decode() if name.dtype.kind == "S" else str(name)
    n = None
    for k, shape in (("keypoints0", (2,)), ("keypoints1", (2,)), ("scores", ())):
        a = np.asarray(data[k])
        if (
            a.dtype.kind not in ("f", "i", "u")
            or a.ndim != 1 + len(shape)
            or a.shape[1:] != shape
        ):
            raise RawMatchesError(
                f"{where}: {k} must be a float array of shape {('N',) + shape}, "
                f"got {a.dtype} {a.shape}"
            )
        if n is not None and len(a) != n:
            raise RawMatchesError(
                f"{where}: keypoints0, keypoints1 and scores differ in length"
            )
        n = len(a)
        if a.dtype.kind != "f" or a.dtype.itemsize not in (4, 8):
            a = a.astype(np.float64 if a.dtype.itemsize > 2 else np.float32)
        if not np.isfinite(a).all():
            raise RawMatchesError(f"{where}: {k} has NaN or infinite values")
        out[k] = a
    for k in ("size0", "size1"):
        s = np.asarray(data[k])
        if (
            s.shape != (2,)
            or s.dtype.kind not in ("f", "i", "u")
            or not np.all(np.isfinite(s))
            or not np.all(s == np.round(s))
            or not np.all(s > 1)
        ):
            raise RawMatchesError(
                f"{where}: {k} must be (width, height) of the image in pixels, "
                f"got {s.tolist()}"
            )
        out[k] = s.astype(np.int64)
    return out


def read_raw(path: Path) -> Dict[str, Any]:
    """Read and check one raw-match file (``validate_raw``); errors name it."""
    try:
        data = _read_npz(Path(path))
    except (OSError, ValueError, TypeError, EOFError, KeyError, RuntimeError,
            struct.error, zlib.error, zipfile.BadZipFile) as e:  # fmt: skip
        raise RawMatchesError(f"corrupt raw-match file {path}: {e}") from e
    return validate_raw(data, str(path))


_HEADER = re.compile(
    r"""\{'descr': '([^']+)', 'fortran_order': (True|False), 'shape': \(([\d, ]*)\), \}"""
)


def _read_npz(path: Path) -> Dict[str, np.ndarray]:
    """The ``RAW_KEYS`` arrays of an ``.npz`` file, as ``np.load`` reads them.

    ``np.load`` spends 1.5-3 ms per raw file in Python (zipfile, header
    parsing); at 57,000 files that would be a third of the quantization step. This
    reads the file at once and slices the members out of it (stored or
    deflated; CRC checked), falling back to ``np.load`` for anything else.
    """
    data = path.read_bytes()
    end = data.rfind(b"PK\x05\x06", max(0, len(data) - (1 << 16) - 22))
    if end < 0:
        raise zipfile.BadZipFile("not a zip file (truncated?)")
    count, _, start = struct.unpack_from("<HII", data, end + 10)
    out = {}
    pos = start
    for _ in range(count):
        if data[pos : pos + 4] != b"PK\x01\x02":
            raise zipfile.BadZipFile("bad central directory")
        method, _, _, crc, csize, size, nlen, xlen, clen = struct.unpack_from(
            "<HHHIIIHHH", data, pos + 10
        )
        (local,) = struct.unpack_from("<I", data, pos + 42)
        name = data[pos + 46 : pos + 46 + nlen].decode()
        pos += 46 + nlen + xlen + clen
        key = name[:-4] if name.endswith(".npy") else name
        if key not in RAW_KEYS:
            continue
        if 0xFFFFFFFF in (csize, size, local) or method not in (0, 8):
            return _load_npz(path)
        lnlen, lxlen = struct.unpack_from("<HH", data, local + 26)
        begin = local + 30 + lnlen + lxlen
        member = data[begin : begin + csize]
        if method == 8:
            member = zlib.decompress(member, -15)
        if len(member) != size or zlib.crc32(member) != crc:
            raise zipfile.BadZipFile(f"bad CRC or size of {name}")
        array = _npy(member)
        if array is None:
            return _load_npz(path)
        out[key] = array
    return out


def _npy(member: bytes) -> Optional[np.ndarray]:
    """A ``.npy`` member with a plain header (``None`` otherwise)."""
    if member[:6] != b"\x93NUMPY" or member[6] not in (1, 2, 3):
        raise ValueError("not a .npy member")
    if member[6] == 1:
        (hlen,) = struct.unpack_from("<H", member, 8)
        begin = 10
    else:
        (hlen,) = struct.unpack_from("<I", member, 8)
        begin = 12
    m = _HEADER.match(member[begin : begin + hlen].decode("latin1"))
    if m is None:
        return None
    dtype = np.dtype(m[1])
    if dtype.hasobject:
        raise ValueError("object arrays are not raw matches")
    shape = tuple(int(d) for d in m[3].split(",") if d.strip())
    n = int(np.prod(shape))
    if len(member) - begin - hlen != n * dtype.itemsize:
        raise ValueError("truncated array")
    array = np.frombuffer(member, dtype, n, begin + hlen)
    if m[2] == "True":
        return array.reshape(shape[::-1]).T
    return array.reshape(shape)


def _load_npz(path: Path) -> Dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files if k in RAW_KEYS}


def raw_files(root: Path) -> Iterator[Path]:
    """The ``.npz`` files of a folder tree, in sorted order."""
    root = Path(root)
    if not root.is_dir():
        raise RawMatchesError(f"raw-match folder {root} does not exist")
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if name.endswith(".npz"):
                yield Path(dirpath) / name


class RawMatches:
    """``root/ab/abcdef....npz`` per ordered pair ``(name0, name1)`` in the
    public format, and ``root/meta.json``."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, name0: str, name1: str) -> Path:
        h = hashlib.sha1(f"{name0}\0{name1}".encode()).hexdigest()
        return self.root / h[:2] / f"{h}.npz"

    def find(self, name0: str, name1: str) -> Optional[Tuple[str, str]]:
        """The stored orientation of a pair, or ``None``."""
        for pair in ((name0, name1), (name1, name0)):
            if self.path(*pair).is_file():
                return pair
        return None

    def write(self, name0: str, name1: str, pred: Mapping[str, np.ndarray]) -> None:
        """Store a matcher's prediction: ``keypoints0``, ``keypoints1``
        ``(N, 2)`` in the corner convention (converted to hloc's here),
        ``scores`` ``(N,)``, ``size0``, ``size1`` ``(2,)`` (W, H)."""
        data = {
            k: np.asarray(to_hloc_coords(pred[k]), _float_type(pred[k]))
            for k in ("keypoints0", "keypoints1")
        }
        data = {**pred, **data, "name0": name0, "name1": name1}
        validate_raw(data, f"raw matches of the pair ({name0}, {name1})")
        buf = io.BytesIO()
        np.savez(buf, **{k: data[k] for k in RAW_KEYS})
        _write_atomic(self.path(name0, name1), buf.getvalue())

    def read(self, name0: str, name1: str) -> Dict[str, Any]:
        """The checked raw matches of a pair (``validate_raw``, hloc's
        convention)."""
        path = self.path(name0, name1)
        try:
            data = read_raw(path)
        except RawMatchesError as e:
            raise RawMatchesError(
                f"{e} (pair ({name0}, {name1})); delete it to recompute the pair"
            ) from e
        if (data["name0"], data["name1"]) != (name0, name1):
            raise RawMatchesError(f"{path} does not hold the pair ({name0}, {name1})")
        return data

    def empty(self) -> bool:
        """True when the store holds no pair (it may have a ``meta.json``)."""
        if not self.root.is_dir():
            return True
        return next(raw_files(self.root), None) is None

    def meta(self) -> Optional[Dict[str, Any]]:
        """What produced the stored matches (``set_meta``), or ``None``."""
        path = self.root / "meta.json"
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise RawMatchesError(
                f"corrupt {path} ({e}); delete the folder {self.root} to recompute "
                "its pairs"
            ) from e

    def set_meta(self, meta: Mapping[str, Any]) -> None:
        """Record what produces the stored matches (JSON data), atomically."""
        data = json.dumps(meta, indent=1, sort_keys=True).encode()
        _write_atomic(self.root / "meta.json", data)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _float_type(a: np.ndarray) -> type:
    """float32 for float32 (or smaller) input, else float64."""
    a = np.asarray(a)
    return np.float32 if a.dtype.kind == "f" and a.dtype.itemsize <= 4 else np.float64


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
