"""The work of the quantization step on its temporary folder, in worker
processes (or in the calling process when ``workers == 1``).

The folder holds the raw matches of the run, pair after pair (each process
appends to its own ``data-<pid>`` file: ``keypoints0``, ``keypoints1``,
``scores`` as read, float32 or float64), and ``labels``: the keypoint of every
raw point (int32, both sides of a pair after each other). Three tasks:

- ``read_files``: raw files -> records (``Record``);
- ``image_task``: one image -> its keypoints; writes the labels of its points;
- ``pairs_task``: pairs -> hloc's ``matches0`` and the clipped raw matches.

Each task needs memory for one image or a few pairs, whatever the run's size.
"""

import multiprocessing
import os
from collections import deque
from concurrent.futures import Executor, ProcessPoolExecutor
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional

import numpy as np

from ..io.h5 import open_h5
from ..io.raw import read_raw
from .core import build_image, clip_to_image, fixed_labels, pair_matches


class Record(NamedTuple):
    """Where the raw matches of one pair are in the folder."""

    file: str  # data file name
    offset: int
    count: int
    kdtype: str  # of the keypoints
    sdtype: str  # of the scores
    labels: int = -1  # byte offset of its labels (after ``read_files``)


class Found(NamedTuple):
    """A raw file that holds a pair of the run."""

    path: str
    name0: str
    name1: str
    size0: np.ndarray
    size1: np.ndarray
    record: Record


class Settings(NamedTuple):
    folder: str
    wanted: frozenset  # pairs of the run, both directions
    radius: float
    min_score: float
    method: str
    psize: float
    max_kps: Optional[int]


_settings: Optional[Settings] = None
_files: Dict[str, int] = {}  # open descriptors of this process
_h5: Dict[str, object] = {}  # open feature files of this process


def _start(settings: Settings) -> None:
    global _settings
    _stop()
    _settings = settings


def _stop() -> None:
    global _settings
    for fd in _files.values():
        os.close(fd)
    for f in _h5.values():
        f.close()
    _files.clear()
    _h5.clear()
    _settings = None


def _fd(name: str, flags: int = os.O_RDWR) -> int:
    if name not in _files:
        _files[name] = os.open(Path(_settings.folder) / name, flags | os.O_CREAT, 0o600)
    return _files[name]


def _read(record: Record, start: int, dtype: str, n: int) -> np.ndarray:
    dtype = np.dtype(dtype)
    size = n * dtype.itemsize
    buf = os.pread(_fd(record.file), size, record.offset + start)
    if len(buf) != size:
        raise OSError(f"short read in {_settings.folder}/{record.file}")
    return np.frombuffer(buf, dtype)


def side(record: Record, side: int):
    """``(M, 2)`` points of one side of a record and ``(M,)`` scores."""
    n, k = record.count, np.dtype(record.kdtype).itemsize
    kp = _read(record, side * 2 * n * k, record.kdtype, 2 * n).reshape(n, 2)
    return kp, _read(record, 4 * n * k, record.sdtype, n)


def read_files(paths: List[str]) -> List[Optional[Found]]:
    """Read raw files; append those of the run's pairs to this process's data
    file. ``None`` for a file of another pair."""
    out = []
    name = f"data-{os.getpid()}"
    fd = _fd(name, os.O_RDWR | os.O_APPEND)
    for path in paths:
        r = read_raw(Path(path))
        if (r["name0"], r["name1"]) not in _settings.wanted:
            out.append(None)
            continue
        dtype = np.result_type(r["keypoints0"], r["keypoints1"])  # no loss
        kp = np.stack([r["keypoints0"], r["keypoints1"]]).astype(dtype, copy=False)
        offset = os.fstat(fd).st_size
        os.write(fd, kp.tobytes() + np.ascontiguousarray(r["scores"]).tobytes())
        record = Record(name, offset, len(kp[0]), dtype.str, r["scores"].dtype.str)
        out.append(Found(path, r["name0"], r["name1"], r["size0"], r["size1"], record))
    return out


def image_task(name: str, size: np.ndarray, chunks: list, fixed: Optional[str]):
    """Keypoints of one image from its ``chunks`` (``(record, side)`` in pairs
    order); writes the label of each point. ``fixed``: the feature file whose
    keypoints it keeps. Returns ``(keypoints (K, 2), scores (K,))``, scores
    ``None`` when fixed."""
    s = _settings
    cs = []
    for record, i in chunks:
        kp, sc = side(record, i)
        cs.append((clip_to_image(kp, size), sc))
    if fixed is None:
        kps, scores, ids = build_image(
            cs, s.radius, s.min_score, s.method, s.psize, s.max_kps
        )
    else:
        if fixed not in _h5:
            _h5[fixed] = open_h5(Path(fixed))
        kps = _h5[fixed][name]["keypoints"][()].astype(np.float64)
        ids = fixed_labels(cs, kps, s.radius, s.min_score)
        scores = None
    fd = _fd("labels")
    for (record, i), labels in zip(chunks, ids):
        data = np.asarray(labels, np.int32).tobytes()
        os.pwrite(fd, data, record.labels + i * 4 * record.count)
    return kps, scores


def pairs_task(items: list) -> list:
    """Per ``(record, size0, size1, n0)``: ``matches0``, ``matching_scores0``
    (``pair_matches`` on the labels) and the clipped float32 ``keypoints0``,
    ``keypoints1`` and ``scores``."""
    out = []
    for record, size0, size1, n0 in items:
        n, k = record.count, np.dtype(record.kdtype).itemsize
        kp = _read(record, 0, record.kdtype, 4 * n).reshape(2, n, 2)
        scores = _read(record, 4 * n * k, record.sdtype, n)
        buf = os.pread(_fd("labels"), 8 * n, record.labels)
        labels = np.frombuffer(buf, np.int32).astype(np.int64).reshape(2, n)
        m0, s0 = pair_matches(labels[0], labels[1], scores, n0)
        out.append(
            (
                m0,
                s0,
                clip_to_image(kp[0], size0).astype(np.float32),
                clip_to_image(kp[1], size1).astype(np.float32),
                scores.astype(np.float32),
            )
        )
    return out


class Workers:
    """``workers`` processes (spawned, so safe beside torch's threads) or the
    calling process, all with the same ``Settings``."""

    def __init__(self, settings: Settings, workers: int):
        self.pool: Optional[Executor] = None
        if workers > 1:
            self.pool = ProcessPoolExecutor(
                workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start,
                initargs=(settings,),
            )
            self.window = 4 * workers
        else:
            _start(settings)

    def map(self, fn: Callable, tasks: Iterable[tuple]) -> Iterator:
        """``fn(*task)`` for each task, in order; a few tasks ahead at most,
        so that results wait in memory only for a moment."""
        if self.pool is None:
            for task in tasks:
                yield fn(*task)
            return
        ahead: deque = deque()
        for task in tasks:
            ahead.append(self.pool.submit(fn, *task))
            if len(ahead) >= self.window:
                yield ahead.popleft().result()
        while ahead:
            yield ahead.popleft().result()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
        else:
            _stop()
