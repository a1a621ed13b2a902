"""The quantization of a list of pairs held in memory (``quantize_pairs``)."""

from collections import defaultdict
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..io.raw import RawMatchesError, validate_raw
from .core import (
    Pair,
    build_image,
    clip_to_image,
    fixed_labels,
    pair_matches,
    unique_pairs,
)


@dataclass
class Quantized:
    """What ``quantize_pairs`` returns (hloc's convention).

    Attributes:
        pairs: the pairs quantized: the input without self-pairs and repeats
            (either direction; the first is kept), in order.
        keypoints: ``{name: (K, 2) float64}`` of the images built here.
        scores: ``{name: (K,) float64}`` summed raw scores of those keypoints.
        sizes: ``{name: (2,) int64}`` (W, H) of every image.
        matches0: per pair ``(N0,)`` int32 index into image 1's keypoints, -1
            unmatched; ``N0`` is the number of image 0's keypoints (built or
            fixed).
        scores0: per pair ``(N0,)`` float32 raw score of each match, 0 if none.
        labels: per pair, for side 0 and side 1, ``(M,)`` int64: the keypoint
            (built or fixed) that each raw match's point was assigned to, -1
            for none (score below ``min_score``, no fixed keypoint within the
            radius, or cut by ``max_kps``).
    """

    pairs: List[Pair]
    keypoints: Dict[str, np.ndarray]
    scores: Dict[str, np.ndarray]
    sizes: Dict[str, np.ndarray]
    matches0: List[np.ndarray]
    scores0: List[np.ndarray]
    labels: List[Tuple[np.ndarray, np.ndarray]]


def note_size(sizes: Dict[str, np.ndarray], name: str, size: np.ndarray, where: str):
    """Record the size of an image; a different size seen before is an error."""
    known = sizes.setdefault(name, size)
    if not np.array_equal(known, size):
        raise RawMatchesError(
            f"{where}: image {name} has size {size.tolist()}, "
            f"elsewhere {known.tolist()}"
        )


def quantize_pairs(
    pairs: Sequence[Pair],
    raw: Sequence[Mapping[str, np.ndarray]],
    fixed: Optional[Mapping[str, np.ndarray]] = None,
    *,
    radius: float = 4.0,
    min_score: float = 0.0,
    method: str = "cluster",
    psize: float = 48,
    max_kps: Optional[int] = None,
) -> Quantized:
    """Shared keypoints and one-to-one matches from raw pair matches.

    The same rules as the step ``python -m p2p_hloc.quantize`` (which gives
    the same arrays from files, in bounded memory).

    Args:
        pairs: ``(name0, name1)`` per entry of ``raw``.
        raw: per pair ``keypoints0``, ``keypoints1`` ``(M, 2)`` (hloc's
            convention, original pixels), ``scores`` ``(M,)``, ``size0``,
            ``size1`` ``(2,)`` (W, H): the raw-match format without names.
            Points are clipped strictly inside their image.
        fixed: ``{name: (K, 2)}`` keypoints (hloc's convention) of images that
            keep them: points snap to the nearest closer than ``radius``.
        radius: merge (and snap) distance in pixels.
        min_score: raw matches with a lower score are not used.
        method: ``cluster`` (``cluster_points``) or ``immatch``
            (``ImmatchQuantizer``, in pairs order).
        psize: the cell size of ``immatch``.
        max_kps: keep at most this many keypoints per built image, those with
            the largest summed score (hloc's ``match_dense`` argument);
            ``None`` keeps all.
    """
    if len(pairs) != len(raw):
        raise ValueError(f"{len(pairs)} pairs but {len(raw)} raw entries")
    fixed = fixed or {}
    index = {p: i for i, p in reversed(list(enumerate(pairs)))}
    pairs = unique_pairs(pairs)
    data, sizes, points = [], {}, []
    chunks: Dict[str, List[Tuple[int, int]]] = defaultdict(list)
    for p, (n0, n1) in enumerate(pairs):
        where = f"raw matches of the pair ({n0}, {n1})"
        r = validate_raw({"name0": n0, "name1": n1, **raw[index[n0, n1]]}, where)
        if (r["name0"], r["name1"]) != (n0, n1):
            raise RawMatchesError(f"{where}: they name ({r['name0']}, {r['name1']})")
        data.append(r)
        for side, name in enumerate((n0, n1)):
            note_size(sizes, name, r[f"size{side}"], where)
            chunks[name].append((p, side))
        points.append(
            [clip_to_image(r[f"keypoints{s}"], r[f"size{s}"]) for s in (0, 1)]
        )
    labels = [[None, None] for _ in pairs]
    keypoints, scores = {}, {}
    for name, items in chunks.items():
        cs = [(points[p][s], data[p]["scores"]) for p, s in items]
        if name in fixed:
            ids = fixed_labels(cs, fixed[name], radius, min_score)
        else:
            keypoints[name], scores[name], ids = build_image(
                cs, radius, min_score, method, psize, max_kps
            )
        for (p, s), i in zip(items, ids):
            labels[p][s] = i
    matches0, scores0 = [], []
    for (n0, _), r, (i0, i1) in zip(pairs, data, labels):
        n = len(fixed[n0]) if n0 in fixed else len(keypoints[n0])
        m, s = pair_matches(i0, i1, r["scores"], n)
        matches0.append(m)
        scores0.append(s)
    return Quantized(
        pairs, keypoints, scores, sizes, matches0, scores0, [tuple(x) for x in labels]
    )
