"""Checks of a matching run's inputs, all made before any pair is matched.

- the images of the pairs exist and their headers give their sizes;
- keypoints already stored for them (``features``, ``features_ref``) are
  readable and were computed on images of those sizes;
- the pairs already in ``matches`` have their keypoints;
- raw matches of a stopped run (``RawMatches``) are resumed only by the
  settings that produced them (``raw_provenance``: conf, checkpoint checksums,
  proposal files) and are complete files of their pair.
"""

import importlib
import itertools
import json
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import Dict, Optional, Sequence, Set, Tuple

import h5py
import numpy as np
from PIL import Image

from . import logger, matchers
from .console import InputError
from .io.h5 import H5Error, open_h5
from .io.raw import RawMatches, RawMatchesError
from .matchers.refine import Refined
from .preprocess import ImageError
from .weights import resolve, sha256sum

Pair = Tuple[str, str]


def read_image_sizes(
    pairs: Sequence[Pair], image_dir: Path, pairs_path: Path
) -> Dict[str, Tuple[int, int]]:
    """``(W, H)`` of every image of ``pairs``, read from the file headers.

    Raises:
        ImageError: naming the missing images with their pairs, or an image
            whose header cannot be read.
    """
    names = sorted({n for p in pairs for n in p})
    missing = {n for n in names if not (image_dir / n).is_file()}
    if missing:
        examples = itertools.islice(
            ((p, n) for p in pairs for n in p if n in missing), 5
        )
        lines = "\n".join(
            f"  pair ({a}, {b}): {image_dir / n}" for (a, b), n in examples
        )
        raise ImageError(f"{pairs_path}: {len(missing)} missing images, e.g.:\n{lines}")
    sizes = {}
    for name in names:
        try:
            with Image.open(image_dir / name) as image:
                sizes[name] = image.size
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise ImageError(f"cannot read image {image_dir / name}: {e}") from e
    return sizes


def check_features(
    paths: Sequence[Path], sizes: Dict[str, Tuple[int, int]], image_dir: Path
) -> Set[str]:
    """Check the stored keypoints of the images of ``sizes`` in the feature
    files ``paths``: readable, ``(N, 2)``, and an ``image_size`` equal to the
    image's. Returns the images that have keypoints in any of the files.

    Raises:
        H5Error: a corrupt file or entry.
        InputError: a file computed from other images (another size).
    """
    found = set()
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"features file not found: {path}")
        with open_h5(path) as f:
            for name, size in sizes.items():
                try:
                    g = f.get(name)
                    keypoints = (
                        g.get("keypoints") if isinstance(g, h5py.Group) else None
                    )
                    if keypoints is None:
                        continue
                    shape = keypoints.shape
                    stored = g.get("image_size")
                    stored = None if stored is None else stored[()]
                except (OSError, KeyError, RuntimeError, TypeError) as e:
                    raise H5Error(f"{path}: cannot read image {name!r}: {e}") from e
                if len(shape) != 2 or shape[1] != 2:
                    raise H5Error(f"{path}: keypoints of {name!r} have shape {shape}")
                if stored is not None and tuple(int(v) for v in stored) != size:
                    raise InputError(
                        f"{path}: image {name!r} has image_size {stored[0]}x"
                        f"{stored[1]} but {image_dir / name} is {size[0]}x{size[1]}"
                        ": the file was computed from other images; use another "
                        "features file (or delete it)"
                    )
                found.add(name)
    return found


def check_done_pairs(
    done: Set[Pair], features: Path, matches: Path, have: Set[str]
) -> None:
    """The images of the pairs already in ``matches`` must have keypoints."""
    lacking = sorted({n for p in done for n in p} - have)
    if lacking:
        raise InputError(
            f"{matches} holds pairs of images without keypoints in {features} "
            f"({len(lacking)} images, e.g. {lacking[0]!r}): the two files were "
            "not written together; use the matching features file (or a new "
            "matches file)"
        )


@lru_cache(maxsize=None)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    return sha256sum(Path(path))


def weights_files(conf: Dict, weights: Optional[Path]) -> Dict[str, Path]:
    """The checkpoint each part of a conf (``model``, ``refine``) loads, as
    ``build_matcher`` resolves it (``weights`` replaces the refinement's, or
    else the model's)."""
    parts = {"model": conf["model"], "refine": conf.get("refine")}
    files = {}
    for part, c in parts.items():
        if not c:
            continue
        if part == "refine":
            cls = Refined
        else:
            cls = importlib.import_module(f"{matchers.__name__}.{c['name']}").Matcher
        name = {**getattr(cls, "default_conf", {}), **c}.get("weights")
        if name is None:
            continue
        if weights is not None and part == ("refine" if parts["refine"] else "model"):
            name = weights
        files[part] = resolve(name)
    return files


def raw_provenance(
    conf: Dict, weights: Optional[Path], proposals: Optional[Tuple[Path, Path]]
) -> Dict:
    """What raw matches depend on: the proposal source, preprocessing and
    refinement settings, the checkpoints (size and SHA-256, computed once per
    file version) and the proposal files (size and modification time)."""
    files = {}
    for part, path in weights_files(conf, weights).items():
        st = path.stat()
        files[part] = {
            "size": st.st_size,
            "sha256": _sha256(str(path.resolve()), st.st_size, st.st_mtime_ns),
        }
    sources = []
    for path in proposals or ():
        st = Path(path).stat()
        sources.append(
            {
                "path": str(Path(path).resolve()),
                "size": st.st_size,
                "mtime_ns": st.st_mtime_ns,
            }
        )
    meta = {
        "model": conf["model"],
        "preprocessing": conf["preprocessing"],
        "refine": conf.get("refine"),
        "weights": files,
        "proposals": sources,
    }
    return json.loads(json.dumps(meta, default=str))  # as stored: lists, str paths


def _flatten(d: Dict, prefix: str = "") -> Dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def describe_changes(old: Dict, new: Dict, most: int = 4) -> str:
    """``key: old -> new`` for the entries (dotted keys) that differ."""
    a, b = _flatten(old), _flatten(new)
    keys = sorted(
        k for k in a.keys() | b.keys() if a.get(k, "unset") != b.get(k, "unset")
    )
    text = "; ".join(
        f"{k}: {a.get(k, 'unset')} -> {b.get(k, 'unset')}" for k in keys[:most]
    )
    return text + (f" and {len(keys) - most} more" if len(keys) > most else "")


def check_provenance(raw: RawMatches, provenance: Dict, discard: bool) -> None:
    """Raw matches are resumed only by the settings that produced them. A
    store with other (or unknown) settings is refused, or with ``discard``
    removed."""
    stored = raw.meta()
    if stored == provenance or not raw.root.is_dir():
        return
    if not any(p.name != "meta.json" for p in raw.root.iterdir()):
        return  # nothing stored yet
    if stored is None:
        what = (
            f"{raw.root} does not record what produced its raw matches (an "
            "older version wrote it)"
        )
    else:
        changes = describe_changes(stored, provenance)
        what = (
            f"the raw matches in {raw.root} were made with other settings ({changes})"
        )
    if not discard:
        raise RawMatchesError(
            f"{what}: this run cannot resume them. Rerun with --discard_raw "
            "(discard_raw=True) to recompute them, or write another matches file"
        )
    logger.warning("Discarding stale raw matches: %s.", what)
    raw.remove()


RAW_KEYS = ("name0", "name1", "keypoints0", "keypoints1", "scores", "size0", "size1")


def check_raw(
    raw: RawMatches, pairs: Sequence[Pair], sizes: Dict[str, Tuple[int, int]]
) -> None:
    """Stored raw matches of ``pairs`` (stored orientation) are complete files
    of that pair, computed on images of today's sizes. Reads only the names
    and sizes."""
    for n0, n1 in pairs:
        path = raw.path(n0, n1)
        try:
            with np.load(path) as f:
                lacking = [k for k in RAW_KEYS if k not in f.files]
                names = (str(f["name0"]), str(f["name1"])) if not lacking else None
                stored = (
                    [tuple(int(v) for v in f[k]) for k in ("size0", "size1")]
                    if not lacking
                    else None
                )
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            problem = f"is corrupt ({e})"
        else:
            if lacking:
                problem = f"lacks {', '.join(lacking)}"
            elif names != (n0, n1):
                problem = f"holds the pair {names}"
            elif stored != [sizes[n0], sizes[n1]]:
                was, now = (
                    " and ".join("x".join(map(str, wh)) for wh in two)
                    for two in (stored, (sizes[n0], sizes[n1]))
                )
                problem = f"was computed on images of {was} px, now {now} px"
            else:
                continue
        raise RawMatchesError(
            f"{path}: the raw matches of the pair ({n0}, {n1}) {problem}; delete "
            "it to recompute the pair (or rerun with --discard_raw)"
        )
