"""The quantization step on files: raw-match files in, hloc's features and
matches files out, in memory that follows the largest image, not the run.

1. Under the locks of both outputs (``io.lock.file_lock``), pairs already in
   ``matches`` are skipped and the images that keep their keypoints are found
   (in ``features``, then ``features_ref``).
2. Every raw file is read once; its matches go to a temporary spill file.
3. One image at a time: its points in all pairs are clustered (or snapped to
   its fixed keypoints); the label of every point goes to the spill.
4. One pair at a time: ``matches0`` from the labels of both sides.
5. Both outputs are written to temporary copies and renamed; a record of the
   images and pairs being added (``<matches>.pending.json``) lets a run
   killed between the two renames rebuild exactly those images.
"""

import argparse
import json
import os
import secrets
import shutil
import time
from collections import defaultdict
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple, Union

import h5py
import numpy as np
from tqdm import tqdm

from .. import logger
from ..console import InputError
from ..io.h5 import (
    H5Error,
    MatchesWriter,
    names_to_pair,
    open_h5,
    write_keypoints,
)
from ..io.lock import file_lock
from ..io.raw import RawMatchesError, raw_files
from ..io.text import parse_pairs
from .core import METHODS, Pair, unique_pairs
from .in_memory import note_size
from .spill import Record, Settings, Workers, image_task, pairs_task, read_files

REGISTRY = "p2p_hloc_matches_files"  # attribute of a features file
BATCH = 32  # files or pairs per task


class DiskSpaceError(OSError):
    """Not enough free space for the write phase."""


@dataclass
class Summary:
    """What a write phase did; ``seconds`` per phase."""

    pairs: int = 0
    raw_matches: int = 0
    images_built: int = 0
    images_fixed: int = 0
    keypoints: int = 0
    matches: int = 0
    seconds: Dict[str, float] = field(default_factory=dict)


def _pair_keys(path: Path) -> Set[str]:
    """The ``name0/name1`` keys of a matches file (two levels of groups)."""
    if not path.exists():
        return set()
    keys = set()
    with open_h5(path) as f:
        for a, g in f.items():
            if isinstance(g, h5py.Group):
                keys.update(f"{a}/{b}" for b in g)
    return keys


def _is_done(keys: Set[str], n0: str, n1: str) -> bool:
    return names_to_pair(n0, n1) in keys or names_to_pair(n1, n0) in keys


def _temporary(path: Path, kind: str = "tmp") -> Path:
    return path.with_name(f"{path.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")


def _remove_stale(features: Path, matches: Path) -> None:
    """Temporary files of runs that died while holding the locks we hold now
    (and ``<file>.tmp`` of older versions)."""
    for path in (features, matches):
        stale = list(path.parent.glob(f"{path.name}.tmp-*"))
        stale += list(path.parent.glob(f"{path.name}.spill-*"))
        stale += list(path.parent.glob(f"{path.name}.pending.json.tmp-*"))
        stale += [path.with_name(path.name + ".tmp")]
        for p in stale:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            elif p.exists():
                logger.info("Removing %s, left by a run that was stopped.", p)
                p.unlink(missing_ok=True)


def _pending_path(matches: Path) -> Path:
    return matches.with_name(matches.name + ".pending.json")


def read_pending(matches: Path) -> Tuple[Set[str], List[Pair]]:
    """The images and pairs that a write phase into ``matches`` was adding
    when it stopped between its two renames (``<matches>.pending.json``);
    empty when none. A corrupt record raises ``InputError`` naming it."""
    path = _pending_path(Path(matches))
    if not path.is_file():
        return set(), []
    try:
        data = json.loads(path.read_text())
        return set(data["names"]), [(p[0], p[1]) for p in data["pairs"]]
    except (ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError) as e:
        raise InputError(
            f"corrupt {path} ({type(e).__name__}: {e}); it lists what a run "
            "stopped while writing its outputs was adding: delete it to resume "
            "(the keypoints that run already wrote are then kept as they are)"
        ) from e


def _write_pending(matches: Path, names: Iterable[str], pairs: Iterable[Pair]):
    path = _pending_path(matches)
    tmp = _temporary(path)
    tmp.write_text(json.dumps({"names": sorted(names), "pairs": list(pairs)}))
    os.replace(tmp, path)


def _registry(features: Path) -> List[Path]:
    """The matches files recorded in ``features`` as referring to it."""
    if not features.exists():
        return []
    with open_h5(features) as f:
        entries = json.loads(f.attrs.get(REGISTRY, "[]"))
    return [(features.parent / p).resolve() for p in entries]


def _dependants(
    names: Set[str], features: Path, matches: Path, todo: Sequence[Pair]
) -> Dict[str, Tuple[Path, str]]:
    """Of ``names``, the images that a pair outside ``todo`` refers to, in
    ``matches`` or another matches file recorded in ``features``:
    ``{name: (file, pair key)}``."""
    if not names:
        return {}
    flat = {n.replace("/", "-"): n for n in names}
    skip = {names_to_pair(*q) for p in todo for q in (p, p[::-1])}
    found: Dict[str, Tuple[Path, str]] = {}
    files = [matches] + [p for p in _registry(features) if p != matches.resolve()]
    for path in files:
        for key in sorted(_pair_keys(path) - (skip if path == matches else set())):
            for part in key.split("/"):
                if part in flat and flat[part] not in found:
                    found[flat[part]] = (path, key)
    return found


def _fixed_sources(names: Set[str], files: Sequence[Path]) -> Dict[str, int]:
    """``{name: index of the first file of files with its keypoints}``."""
    where: Dict[str, int] = {}
    for i, path in enumerate(files):
        if not path.exists():
            continue
        with open_h5(path) as f:
            for name in sorted(names - set(where)):
                if name in f and "keypoints" in f[name]:
                    where[name] = i
    return where


def _check_space(features: Path, matches: Path, raw_bytes: int) -> None:
    """Raise ``DiskSpaceError`` unless there is room for copies of both files,
    the temporary folder and the new data: about 4.5 times the raw files
    (the spill 1.4x, the new pairs of hloc's format 2.7x, new keypoints)."""
    need: Dict[int, list] = {}
    for path, size in ((matches, 4.2 * raw_bytes), (features, 0.3 * raw_bytes)):
        folder = path.parent
        device = os.stat(folder).st_dev
        size += path.stat().st_size if path.exists() else 0
        need.setdefault(device, [folder, 64 << 20])[1] += size
    for folder, size in need.values():
        free = shutil.disk_usage(folder).free
        if free < size:
            raise DiskSpaceError(
                f"not enough free space in {folder} for the write phase: about "
                f"{size / 2**30:.1f} GiB needed (copies of {features.name} and "
                f"{matches.name}, about 4.5x the {raw_bytes / 2**30:.2f} GiB of "
                f"raw matches), {free / 2**30:.1f} GiB free"
            )


def _check_fixed(f: h5py.File, name: str, size: np.ndarray, out: h5py.File) -> None:
    """The stored size of a fixed image must be its raw matches' size; an
    image from a ``features_ref`` file is copied into the output."""
    g = f[name]
    if "image_size" in g and not np.array_equal(g["image_size"][()], size):
        raise H5Error(
            f"{f.filename}: image {name} has size {g['image_size'][()].tolist()} "
            f"but its raw matches {size.tolist()}: not the same image"
        )
    if name not in out:
        scores = next((g[k][()] for k in ("scores", "keypoint_scores") if k in g), None)
        write_keypoints(out, name, g["keypoints"][()], size, scores)


def _empty_h5(path: Path) -> None:
    """A valid empty h5 file at ``path`` unless one exists (atomic)."""
    if not path.exists():
        tmp = _temporary(path)
        h5py.File(tmp, "w").close()
        os.replace(tmp, path)


@contextmanager
def _timed(seconds: Dict[str, float], key: str):
    t = time.perf_counter()
    try:
        yield
    finally:
        seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - t


def write_phase(
    pairs: Sequence[Pair],
    files: Iterable[Path],
    features: Path,
    matches: Path,
    features_ref: Sequence[Path] = (),
    *,
    radius: float = 4.0,
    min_score: float = 0.0,
    method: str = "cluster",
    psize: float = 48,
    max_kps: Optional[int] = None,
    overwrite: bool = False,
    source: str = "the raw matches",
    workers: int = 1,
) -> Summary:
    """Quantize the raw matches of ``pairs`` into ``features`` and ``matches``.

    Args:
        pairs: unique pairs (``core.unique_pairs``); those already in
            ``matches`` (either direction) are skipped unless ``overwrite``.
        files: raw-match files (``io.raw``) holding at least those pairs, in
            either direction (others are ignored). Read once.
        features, matches: hloc's files, created or added to. Images already
            in ``features`` keep their keypoints, then those in
            ``features_ref`` (copied into ``features``); the others are built.
        radius, min_score, method, psize, max_kps: as ``quantize_pairs``.
        overwrite: redo the pairs already in ``matches`` and rebuild this
            run's images in ``features``, except the images that other pairs
            (in ``matches`` or in another matches file written with
            ``features``) refer to: those keep their keypoints (logged).
        source: how errors name the raw files (e.g. the raw folder).
        workers: processes that share the reading, the images and the pairs
            (the calling process writes the files). More than one pays on a
            machine with idle cores only: measured on a busy 2-core machine,
            2 processes were slower than 1 (docs/performance.md).
    """
    if method not in METHODS:
        raise ValueError(f"unknown quantization method {method!r}")
    features, matches = Path(features), Path(matches)
    refs = [Path(p) for p in features_ref]
    summary = Summary()
    timed = partial(_timed, summary.seconds)
    with ExitStack() as stack:
        # the matches file's lock first, as match_pairs takes it
        stack.enter_context(file_lock(matches, f"writing {matches.name}"))
        stack.enter_context(file_lock(features, f"writing {features.name}"))
        _remove_stale(features, matches)
        pending_names, pending_pairs = read_pending(matches)
        keys = _pair_keys(matches)
        if pending_pairs and all(_is_done(keys, *p) for p in pending_pairs):
            _pending_path(matches).unlink()  # that run got to its last rename
            pending_names = set()
        todo = [p for p in pairs if overwrite or not _is_done(keys, *p)]
        if not todo:
            for path in (features, matches):
                _empty_h5(path)
            return summary
        names = {n for p in todo for n in p}
        in_features = set(_fixed_sources(names, [features]))
        rebuild = in_features & (pending_names | (names if overwrite else set()))
        kept = _dependants(rebuild, features, matches, todo)
        if kept:
            name, (path, key) = next(iter(sorted(kept.items())))
            logger.warning(
                "%d images keep their keypoints in %s because pairs outside this "
                "run refer to them (e.g. %s in %s, pair %s); remove those pairs "
                "to rebuild them.",
                len(kept),
                features,
                name,
                path,
                key,
            )
        rebuild -= set(kept)
        fixed = {n: 0 for n in in_features - rebuild}
        fixed.update(
            {n: i + 1 for n, i in _fixed_sources(names - set(fixed), refs).items()}
        )
        sources = [features] + refs
        files = [str(f) for f in files]
        _check_space(features, matches, sum(os.stat(f).st_size for f in files))

        # 1. every raw file once, into the temporary folder
        folder = _temporary(matches, "spill")
        folder.mkdir()
        stack.callback(shutil.rmtree, folder, True)
        settings = Settings(
            str(folder),
            frozenset(todo) | frozenset(p[::-1] for p in todo),
            radius,
            min_score,
            method,
            psize,
            max_kps,
        )
        pool = Workers(settings, max(1, workers))
        stack.callback(pool.close)
        want = {p: i for i, p in enumerate(todo)}
        want.update({p[::-1]: i for i, p in enumerate(todo)})
        found: List[Optional[Record]] = [None] * len(todo)
        where: Dict[int, str] = {}  # the file of each pair, for messages
        flip = np.zeros(len(todo), bool)  # stored in the other direction
        sizes: Dict[str, np.ndarray] = {}
        batches = [files[i : i + BATCH] for i in range(0, len(files), BATCH)]
        with timed("read"), tqdm(total=len(files), desc="raw files") as bar:
            for batch in pool.map(read_files, ((b,) for b in batches)):
                bar.update(len(batch))
                for f in filter(None, batch):
                    p = want[f.name0, f.name1]
                    if found[p] is not None:
                        raise RawMatchesError(
                            f"{f.path} and {where[p]} both hold the pair "
                            f"({f.name0}, {f.name1}); remove one"
                        )
                    note_size(sizes, f.name0, f.size0, f.path)
                    note_size(sizes, f.name1, f.size1, f.path)
                    found[p], where[p] = f.record, f.path
                    flip[p] = (f.name0, f.name1) != todo[p]
        missing = [todo[p] for p, f in enumerate(found) if f is None]
        if missing:
            raise RawMatchesError(
                f"{source}: no raw matches for {len(missing)} of the "
                f"{len(todo)} pairs, e.g. {', '.join(map(str, missing[:3]))}"
            )
        del want, where
        start = np.cumsum([0] + [8 * r.count for r in found])  # in "labels"
        records = [r._replace(labels=int(o)) for r, o in zip(found, start)]
        oriented = [p[::-1] if f else p for p, f in zip(todo, flip)]
        summary.raw_matches = sum(r.count for r in records)
        del found, start, flip
        chunks: Dict[str, List[Tuple[Record, int]]] = defaultdict(list)
        for r, pair in zip(records, oriented):  # in pairs order
            for side, name in enumerate(pair):
                chunks[name].append((r, side))

        # 2. one image at a time
        ftmp = _temporary(features)
        stack.callback(ftmp.unlink, missing_ok=True)
        mtmp = _temporary(matches)
        stack.callback(mtmp.unlink, missing_ok=True)
        with timed("copy"):
            for path, tmp in ((features, ftmp), (matches, mtmp)):
                if path.exists():
                    shutil.copyfile(path, tmp)
        n_kps: Dict[str, int] = {}
        names = sorted(chunks)
        tasks = (
            (
                n,
                sizes[n],
                chunks.pop(n),
                str(sources[fixed[n]]) if n in fixed else None,
            )
            for n in names
        )
        with ExitStack() as opened, timed("images"):
            out = opened.enter_context(open_h5(ftmp, "a"))
            src = [
                opened.enter_context(open_h5(p)) if p.exists() else None
                for p in sources
            ]
            results = pool.map(image_task, tasks)
            for name, (kps, scores) in zip(
                tqdm(names, desc="images", smoothing=0.1), results
            ):
                n_kps[name] = len(kps)
                if scores is not None:
                    with timed("features_h5"):
                        write_keypoints(out, name, kps, sizes[name], scores)
                    summary.images_built += 1
                    summary.keypoints += len(kps)
                else:
                    summary.images_fixed += 1
                    _check_fixed(src[fixed[name]], name, sizes[name], out)
            registry = [p for p in _registry(features) if p.exists()]
            registry = sorted({*map(str, registry), str(matches.resolve())})
            out.attrs[REGISTRY] = json.dumps(
                [os.path.relpath(p, features.parent.resolve()) for p in registry]
            )

        # 3. one pair at a time
        tasks = (
            (
                [
                    (r, sizes[n0], sizes[n1], n_kps[n0])
                    for r, (n0, n1) in zip(
                        records[i : i + BATCH], oriented[i : i + BATCH]
                    )
                ],
            )
            for i in range(0, len(records), BATCH)
        )
        with open_h5(mtmp, "a") as out, timed("pairs"):
            writer = MatchesWriter(out)
            pairs_out = (x for batch in pool.map(pairs_task, tasks) for x in batch)
            for (n0, n1), (m0, s0, kp0, kp1, sc) in zip(
                tqdm(oriented, desc="pairs", smoothing=0.1), pairs_out
            ):
                summary.matches += int((m0 >= 0).sum())
                with timed("matches_h5"):
                    for key in (names_to_pair(n0, n1), names_to_pair(n1, n0)):
                        if key in keys:  # overwrite: the pair's old entry
                            del out[key]
                    writer.add(
                        n0,
                        n1,
                        m0,
                        s0,
                        replace=False,
                        keypoints0=kp0,
                        keypoints1=kp1,
                        scores=sc,
                    )
        summary.pairs = len(oriented)
        pool.close()

        # 4. the renames
        with timed("rename"):
            _write_pending(matches, [n for n in n_kps if n not in fixed], oriented)
            ftmp.replace(features)
            mtmp.replace(matches)
            _pending_path(matches).unlink()
    logger.info(
        "Quantized %d raw matches of %d pairs: %d keypoints in %d new images "
        "(%d fixed), %d matches. Seconds: %s.",
        summary.raw_matches,
        summary.pairs,
        summary.keypoints,
        summary.images_built,
        summary.images_fixed,
        summary.matches,
        ", ".join(f"{k} {v:.1f}" for k, v in summary.seconds.items()),
    )
    return summary


def main(
    pairs: Path,
    raw: Path,
    features: Path,
    matches: Path,
    radius: float = 4.0,
    min_score: float = 0.0,
    method: str = "cluster",
    features_ref: Optional[Union[Path, Sequence[Path]]] = None,
    *,
    psize: float = 48,
    max_kps: Optional[int] = None,
    overwrite: bool = False,
    workers: int = 1,
) -> Tuple[Path, Path]:
    """Quantize a raw folder (any tree of raw-match ``.npz`` files, the format
    of ``io.raw``) for the pairs of a pairs file into hloc's files.

    Args:
        pairs: hloc pairs file; self-pairs and repeats are skipped, pairs
            already in ``matches`` (either direction) too.
        raw: the raw folder; it must hold every pair (either direction).
        features, matches: outputs, created or added to (``write_phase``).
        radius, min_score, method, psize, max_kps: as ``quantize_pairs``.
        features_ref: feature files whose keypoints stay fixed.
        overwrite, workers: see ``write_phase``.
    Returns:
        The paths of the features and matches files.
    """
    if isinstance(features_ref, (str, Path)):
        features_ref = [features_ref]
    write_phase(
        unique_pairs(parse_pairs(pairs)),
        raw_files(raw),
        features,
        matches,
        [Path(p) for p in features_ref or []],
        radius=radius,
        min_score=min_score,
        method=method,
        psize=psize,
        max_kps=max_kps,
        overwrite=overwrite,
        source=str(raw),
        workers=workers,
    )
    return Path(features), Path(matches)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m p2p_hloc.quantize",
        description="Quantize raw pair matches (one .npz per pair, see "
        "docs/raw-format.md) into hloc's features and matches files.",
    )
    p.add_argument("--pairs", type=Path, required=True)
    p.add_argument("--raw", type=Path, required=True, help="raw-match folder")
    p.add_argument("--features", type=Path, required=True)
    p.add_argument("--matches", type=Path, required=True)
    p.add_argument("--radius", type=float, default=4.0)
    p.add_argument("--min_score", type=float, default=0.0)
    p.add_argument("--method", choices=METHODS, default="cluster")
    p.add_argument("--psize", type=float, default=48, help="cell size of immatch")
    p.add_argument("--max_kps", type=int, help="keypoints kept per new image")
    p.add_argument("--features_ref", type=Path, nargs="+")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    return p
