"""The quantization rules on arrays (numpy/scipy, no I/O).

Per image: ``build_image`` (the raw points of all its pairs -> keypoints and
the label of every point) or ``fixed_labels`` (snap to keypoints that must not
move); per pair: ``pair_matches`` (one-to-one by score -> ``matches0``).
Coordinates are hloc's (pixel centres at integers), ``clip_to_image`` first.
"""

from typing import List, Optional, Sequence, Tuple

import numpy as np
from scipy.spatial import cKDTree

Pair = Tuple[str, str]
EDGE = 0.01  # keypoints stay strictly inside the image (localize_inloc asserts it)
METHODS = ("cluster", "immatch")


def unique_pairs(pairs: Sequence[Pair]) -> List[Pair]:
    """Pairs without self-pairs and without repeats in either direction
    (the first orientation is kept), in order."""
    from .. import logger

    seen, out = set(), []
    for n0, n1 in pairs:
        if n0 == n1:
            logger.warning("Skipping the self-pair (%s, %s).", n0, n1)
        elif (n0, n1) not in seen and (n1, n0) not in seen:
            seen.add((n0, n1))
            out.append((n0, n1))
    return out


def clip_to_image(xy: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """``(N, 2)`` points (hloc's convention) moved strictly inside an image of
    ``size`` ``(W, H)``: ``EDGE <= x <= W - 1 - EDGE``; float64."""
    hi = np.subtract(size, 1 + EDGE)  # float64 whatever the type of size
    return np.clip(np.reshape(xy, (-1, 2)), EDGE, hi)


def _neighbours(points: np.ndarray, radius: float) -> Tuple[np.ndarray, np.ndarray]:
    """Index pairs ``(i, j)``, both orders, of points strictly closer than
    ``radius`` (self pairs excluded), in an order that depends only on the
    points (sorted: the input order of ``cluster_points`` does not matter).

    A grid of columns ``radius`` wide, sorted by (column, y): a point's
    candidates are those of its column and the next one with ``|dy|`` below
    about ``radius``, two contiguous runs found by binary search."""
    n = len(points)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    x, y = points[:, 0], points[:, 1]
    col = np.floor(x / radius)
    height = np.ptp(y) + 4 * radius + 1
    key = (col - col.min()) * height + (y - y.min())
    order = np.argsort(key)  # (any order of equal keys gives the same pairs)
    key, xs, ys = key[order], x[order], y[order]
    pad = 1.01 * radius
    found = []
    for dc in (0, 1):
        if dc == 0:  # the points after this one in its column
            lo = np.arange(1, n + 1)
        else:
            lo = _insertion(key, key + height - pad, "left")
        hi = _insertion(key, key + dc * height + pad, "right")
        count = np.maximum(hi - lo, 0)
        a = np.repeat(np.arange(n), count)
        b = np.arange(len(a)) + np.repeat(lo - (np.cumsum(count) - count), count)
        close = (xs[a] - xs[b]) ** 2 + (ys[a] - ys[b]) ** 2 < radius * radius
        found += [order[a[close]], order[b[close]]]
    return (
        np.concatenate(found[0::2] + found[1::2]),
        np.concatenate(found[1::2] + found[0::2]),
    )


def _insertion(key: np.ndarray, queries: np.ndarray, side: str) -> np.ndarray:
    """``np.searchsorted(key, queries, side)`` for sorted ``queries``: one
    merge of the two sorted runs (timsort), twice as fast."""
    n = len(queries)
    if side == "left":  # equal queries before the keys
        merged = np.argsort(np.concatenate([queries, key]), kind="stable")
        at = np.flatnonzero(merged < n)
    else:
        merged = np.argsort(np.concatenate([key, queries]), kind="stable")
        at = np.flatnonzero(merged >= len(key))
    return at - np.arange(n)


def cluster_points(
    points: np.ndarray, scores: Optional[np.ndarray] = None, radius: float = 4.0
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge points closer than ``radius`` into their mean location.

    Args:
        points: ``(N, 2)`` raw points of one image (all its pairs, both sides).
        scores: ``(N,)`` match confidences (default 1), used to order seeds.
        radius: merge distance in pixels (strict ``<``).
    Returns:
        ``keypoints`` ``(K, 2)`` float64 sorted by x then y, ``labels``
        ``(N,)`` int64 indices into them, and ``keypoint_scores`` ``(K,)``:
        the summed scores of each keypoint's points.
    """
    points = np.asarray(points, np.float64).reshape(-1, 2)
    n = len(points)
    scores = np.ones(n) if scores is None else np.asarray(scores, np.float64)
    if n == 0:
        return np.zeros((0, 2)), np.zeros(0, np.int64), np.zeros(0)
    # work on the points sorted by value so that float sums do not depend on
    # the input order
    perm = _sort_by_value(points, scores)
    kps, labels, sums = _cluster_sorted(points[perm], scores[perm], radius)
    out = np.empty(n, np.int64)
    out[perm] = labels
    return kps, out, sums


def _argsort(first: np.ndarray, *then: np.ndarray) -> np.ndarray:
    """``np.lexsort((*reversed(then), first))`` (ties to the smaller index),
    faster when few values of ``first`` are equal: numpy's unstable sort,
    then the runs of equal ``first`` sorted by ``then`` and index."""
    order = np.argsort(first)
    v = first[order]
    tie = np.r_[False, v[1:] == v[:-1]]
    if not tie.any():
        return order
    run = np.cumsum(~tie)
    tie[:-1] |= tie[1:]  # the first of each run too
    at = np.flatnonzero(tie)
    sub = order[at]
    keys = (sub,) + tuple(t[sub] for t in reversed(then)) + (run[at],)
    order[at] = sub[np.lexsort(keys)]
    return order


def _sort_by_value(points: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """``np.lexsort((scores, y, x))``."""
    return _argsort(points[:, 0], points[:, 1], scores)


def _seeds(i: np.ndarray, j: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """The greedy pass in priority order (``rank`` 0 first: a point not yet
    taken becomes a seed and takes its free neighbours) computed in rounds:
    a point is a seed when none of its higher-priority neighbours is one.
    Returns the boolean seed mask."""
    n = len(rank)
    up = rank[j] < rank[i]
    a, b = i[up], j[up]  # b has priority over its neighbour a
    state = np.where(np.bincount(a, minlength=n) > 0, 0, 1).astype(np.int8)
    while len(a):  # 0: undecided, 1: seed, 2: taken by a seed
        sb = state[b]
        taken = np.zeros(n, bool)
        taken[a[sb == 1]] = True
        waiting = np.zeros(n, bool)
        waiting[a[sb != 2]] = True
        undecided = state == 0
        state[undecided & taken] = 2
        state[undecided & ~taken & ~waiting] = 1
        keep = state[a] == 0
        a, b = a[keep], b[keep]
    return state == 1


def _cluster_sorted(
    points: np.ndarray, scores: np.ndarray, radius: float
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = len(points)
    i, j = _neighbours(points, radius)
    density = scores + np.bincount(i, weights=scores[j], minlength=n)
    # by decreasing density, ties (many: cliques) by (x, y), the points' order
    order = np.argsort(-density, kind="stable")
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    seed = _seeds(i, j, rank)
    # clusters numbered in seed order; every other point joins its
    # highest-priority seed neighbour (the first seed that reached it)
    k = int(seed.sum())
    labels = np.full(n, -1, np.int64)
    labels[order[seed[order]]] = np.arange(k)
    join = ~seed[i] & seed[j]
    first = np.full(n, n)
    np.minimum.at(first, i[join], rank[j[join]])
    taken = first < n
    labels[taken] = labels[order[first[taken]]]
    counts = np.bincount(labels, minlength=k)
    centres = np.stack(
        [
            np.bincount(labels, weights=points[:, d], minlength=k) / counts
            for d in (0, 1)
        ],
        -1,
    )
    sums = np.bincount(labels, weights=scores, minlength=k)
    canonical = np.lexsort((centres[:, 1], centres[:, 0]))
    rank_k = np.empty(k, np.int64)
    rank_k[canonical] = np.arange(k)
    return centres[canonical], rank_k[labels], sums[canonical]


def assign_fixed(
    points: np.ndarray, keypoints: np.ndarray, radius: float = 4.0
) -> np.ndarray:
    """Index of the nearest fixed keypoint closer than ``radius``, else -1."""
    points = np.asarray(points, np.float64).reshape(-1, 2)
    if len(points) == 0 or len(keypoints) == 0:
        return np.full(len(points), -1, np.int64)
    tree = cKDTree(np.asarray(keypoints, np.float64), balanced_tree=False)
    dist, idx = tree.query(points, distance_upper_bound=np.nextafter(radius, np.inf))
    return np.where(dist < radius, idx, -1).astype(np.int64)


def unique_matches(
    ids0: np.ndarray, ids1: np.ndarray, scores: np.ndarray
) -> np.ndarray:
    """Indices of the matches that are the best by score for both their
    keypoints (matches with an id of -1 are dropped), sorted by ``ids0``.

    A loser is not re-matched: (A,X,.9), (B,X,.95), (A,Y,.8) keeps only (B,X).
    Ties in score go to the smaller (id0, id1).
    """
    ids0, ids1 = np.asarray(ids0), np.asarray(ids1)
    scores = np.asarray(scores, np.float64)
    valid = np.flatnonzero((ids0 >= 0) & (ids1 >= 0))
    best = np.zeros((2, len(ids0)), bool)
    for side, (a, b) in enumerate(((ids0, ids1), (ids1, ids0))):
        best[side, _best_per_id(a[valid], b[valid], scores[valid], valid)] = True
    keep = np.flatnonzero(best[0] & best[1])
    return keep[np.argsort(ids0[keep])]


def _best_per_id(a: np.ndarray, b: np.ndarray, s: np.ndarray, index: np.ndarray):
    """Per distinct ``a``, the ``index`` of its entry with the largest ``s``,
    ties to the smaller ``b``, then the smaller ``index`` (no sorting)."""
    if len(a) == 0:
        return index
    k = int(a.max()) + 1
    top = np.full(k, -np.inf)
    np.maximum.at(top, a, s)
    tie = s == top[a]
    for key in (b, index):
        low = np.full(k, np.iinfo(np.int64).max)
        np.minimum.at(low, a[tie], key[tie])
        tie &= key == low[a]
    return index[tie]


def top_keypoints(scores: np.ndarray, max_kps: Optional[int]) -> np.ndarray:
    """``(K,)`` int64 new index of each keypoint when only the ``max_kps`` with
    the largest ``scores`` are kept, in their order (ties to the smaller
    index); -1 for the dropped ones. ``None`` keeps all."""
    k = len(scores)
    if max_kps is None or max_kps >= k:
        return np.arange(k, dtype=np.int64)
    keep = np.zeros(k, bool)
    keep[np.lexsort((np.arange(k), -np.asarray(scores, np.float64)))[:max_kps]] = True
    return np.where(keep, np.cumsum(keep) - 1, -1)


class ImmatchQuantizer:
    """The authors' quantization (exact parity with image-matching-toolbox).

    Per image, points are visited in the order given; a point joins the nearest
    centre of its ``psize`` cell (``floor(p / psize)``) if closer than
    ``dthres`` and the centre moves to the midpoint ``(centre + p) / 2``;
    otherwise it starts a new keypoint. State is shared by all pairs.
    """

    def __init__(self, psize: float = 48, dthres: float = 4):
        self.psize, self.dthres = psize, dthres
        self.keypoints: dict = {}
        self.cells: dict = {}

    def add(self, name: str, points: np.ndarray) -> np.ndarray:
        """Keypoint ids of ``(N, 2)`` points of image ``name``."""
        kps = self.keypoints.setdefault(name, [])
        cells = self.cells.setdefault(name, {})
        points = np.asarray(points, np.float64).reshape(-1, 2)
        keys = np.floor(points / self.psize)
        ids = np.empty(len(points), np.int64)
        for n, (p, key) in enumerate(zip(points, map(tuple, keys))):
            if key in cells:
                means, kids = cells[key]
                dist = np.linalg.norm(np.asarray(means) - p, axis=1)
                c = int(np.argmin(dist))
                if dist[c] < self.dthres:
                    means[c] = (means[c] + p) / 2
                    kps[kids[c]] = means[c]
                    ids[n] = kids[c]
                    continue
            else:
                cells[key] = ([], [])
            cells[key][0].append(p.copy())
            cells[key][1].append(len(kps))
            ids[n] = len(kps)
            kps.append(p.copy())
        return ids

    def get(self, name: str) -> np.ndarray:
        """``(K, 2)`` keypoints of an image, in id order."""
        return np.reshape(self.keypoints.get(name, []), (-1, 2))


Chunk = Tuple[np.ndarray, np.ndarray]  # (M, 2) clipped points, (M,) scores


def build_image(
    chunks: Sequence[Chunk],
    radius: float = 4.0,
    min_score: float = 0.0,
    method: str = "cluster",
    psize: float = 48,
    max_kps: Optional[int] = None,
) -> Tuple[np.ndarray, np.ndarray, List[np.ndarray]]:
    """Keypoints of one image from its raw points in all its pairs.

    Args:
        chunks: per pair side showing the image, in pairs order (``immatch``
            depends on it), the clipped points ``(M, 2)`` and their scores.
        radius, method, psize: see ``cluster_points``, ``ImmatchQuantizer``.
        min_score: points with a lower score get no keypoint.
        max_kps: keep the ``max_kps`` keypoints with the largest summed score
            (``top_keypoints``); points of the others get no keypoint.
    Returns:
        ``keypoints`` ``(K, 2)`` float64, ``scores`` ``(K,)`` (summed scores of
        their points) and per chunk the ``(M,)`` int64 keypoint index of each
        point (-1: none).
    """
    points, scores, valid, splits = _gather(chunks, min_score)
    if method == "cluster":
        kps, labels, sums = cluster_points(points[valid], scores[valid], radius)
    elif method == "immatch":  # chunk after chunk
        q = ImmatchQuantizer(psize, radius)
        parts = [
            (p[v], s[v])
            for p, s, v in zip(*(np.split(a, splits) for a in (points, scores, valid)))
        ]
        ids = [q.add("", p) for p, _ in parts]
        kps = q.get("")
        sums = np.zeros(len(kps))
        for i, (_, s) in zip(ids, parts):
            sums = sums + np.bincount(i, weights=s, minlength=len(kps))
        labels = np.concatenate(ids)
    else:
        raise ValueError(f"unknown quantization method {method!r}")
    remap = top_keypoints(sums, max_kps)
    full = np.full(len(points), -1)
    full[valid] = remap[labels]
    keep = remap >= 0
    return kps[keep], sums[keep], np.split(full, splits) if len(chunks) else []


def _gather(chunks: Sequence[Chunk], min_score: float):
    """All points ``(M, 2)`` and scores ``(M,)`` float64 of the chunks, the
    mask of scores at least ``min_score`` and where the chunks split."""
    points = np.concatenate([np.zeros((0, 2))] + [p for p, _ in chunks])
    scores = np.concatenate([np.zeros(0)] + [s for _, s in chunks])
    splits = np.cumsum([len(s) for _, s in chunks])[:-1]
    return points, scores, scores >= min_score, splits


def fixed_labels(
    chunks: Sequence[Chunk],
    keypoints: np.ndarray,
    radius: float = 4.0,
    min_score: float = 0.0,
) -> List[np.ndarray]:
    """Per chunk, the index of the fixed keypoint ``(K, 2)`` each point snaps
    to (``assign_fixed``), -1 for none or a score below ``min_score``."""
    points, _, valid, splits = _gather(chunks, min_score)
    ids = np.full(len(points), -1)
    ids[valid] = assign_fixed(points[valid], keypoints, radius)
    return np.split(ids, splits) if len(chunks) else []


def pair_matches(
    ids0: np.ndarray, ids1: np.ndarray, scores: np.ndarray, n0: int
) -> Tuple[np.ndarray, np.ndarray]:
    """hloc's ``matches0`` ``(n0,)`` int32 (-1: unmatched) and
    ``matching_scores0`` ``(n0,)`` float32 of a pair from the keypoint index
    of each raw match on both sides (``unique_matches``)."""
    keep = unique_matches(ids0, ids1, scores)
    matches0 = np.full(n0, -1, np.int32)
    scores0 = np.zeros(n0, np.float32)
    matches0[ids0[keep]] = ids1[keep]
    scores0[ids0[keep]] = np.asarray(scores)[keep]
    return matches0, scores0
