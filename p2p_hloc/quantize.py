"""From raw pair matches to shared per-image keypoints (pure numpy/scipy).

Dense matchers give each pair its own sub-pixel points; hloc needs one keypoint
list per image whose ids are shared by all its pairs. ``cluster_points`` merges
the raw points of one image (over all its pairs) that lie closer than
``radius`` px; ``assign_fixed`` snaps points to keypoints that must not move
(localization mode); ``unique_matches`` makes a pair one-to-one by score.

``cluster_points`` is deterministic and does not depend on the order of its
input: seeds are taken by decreasing density (summed score of the neighbours
closer than ``radius``), ties broken by coordinates; each seed takes every
unassigned point closer than ``radius`` to it, and the keypoint is the mean of
its points. A cluster is therefore at most ``2 * radius`` wide, even on chains
of points that are pairwise close.

``max_kps`` keeps the ``max_kps`` keypoints of each built image with the
largest summed score (ties to the smaller index), in their order; raw points
of the dropped ones get no keypoint (-1), before the pairs are made
one-to-one.

``ImmatchQuantizer`` reproduces the Patch2Pix authors' version exactly
(image-matching-toolbox ``quantize_keypoints``): a running midpoint inside
48-px cells, dependent on the order of the pairs. It is offered for parity.
"""

from typing import Dict, List, Optional, Tuple

import numpy as np
from scipy.sparse import coo_matrix
from scipy.spatial import cKDTree


def _neighbours(points: np.ndarray, radius: float) -> Tuple[np.ndarray, np.ndarray]:
    """Index pairs ``(i, j)``, both orders, of points strictly closer than
    ``radius`` (self pairs excluded)."""
    r = np.nextafter(radius, 0)  # query_pairs is inclusive; the rule is strict
    ij = cKDTree(points).query_pairs(r, output_type="ndarray")
    return np.concatenate([ij[:, 0], ij[:, 1]]), np.concatenate([ij[:, 1], ij[:, 0]])


def cluster_points(
    points: np.ndarray, scores: Optional[np.ndarray] = None, radius: float = 4.0
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge points closer than ``radius`` into their mean location.

    Args:
        points: ``(N, 2)`` raw points of one image (all its pairs, both sides).
        scores: ``(N,)`` match confidences (default 1), used to order seeds.
        radius: merge distance in pixels (strict ``<``).
    Returns:
        ``keypoints`` ``(K, 2)`` float64 sorted by (x, y), ``labels`` ``(N,)``
        int64 indices into them, and ``keypoint_scores`` ``(K,)``: the summed
        scores of each keypoint's points.
    """
    points = np.asarray(points, np.float64).reshape(-1, 2)
    n = len(points)
    scores = np.ones(n) if scores is None else np.asarray(scores, np.float64)
    if n == 0:
        return np.zeros((0, 2)), np.zeros(0, np.int64), np.zeros(0)
    # work on the points sorted by value so that float sums do not depend on
    # the input order
    perm = np.lexsort((scores, points[:, 1], points[:, 0]))
    kps, labels, sums = _cluster_sorted(points[perm], scores[perm], radius)
    out = np.empty(n, np.int64)
    out[perm] = labels
    return kps, out, sums


def _cluster_sorted(
    points: np.ndarray, scores: np.ndarray, radius: float
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = len(points)
    i, j = _neighbours(points, radius)
    ij = np.lexsort((j, i))
    i, j = i[ij], j[ij]
    adj = coo_matrix((np.ones(len(i), bool), (i, j)), shape=(n, n)).tocsr()
    density = scores + np.bincount(i, weights=scores[j], minlength=n)
    order = np.lexsort((points[:, 1], points[:, 0], -density))
    labels = np.full(n, -1, np.int64)
    k = 0
    for seed in order:
        if labels[seed] >= 0:
            continue
        members = adj.indices[adj.indptr[seed] : adj.indptr[seed + 1]]
        members = members[labels[members] < 0]
        labels[members] = k
        labels[seed] = k
        k += 1
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
    rank = np.empty(k, np.int64)
    rank[canonical] = np.arange(k)
    return centres[canonical], rank[labels], sums[canonical]


def assign_fixed(
    points: np.ndarray, keypoints: np.ndarray, radius: float = 4.0
) -> np.ndarray:
    """Index of the nearest fixed keypoint closer than ``radius``, else -1."""
    points = np.asarray(points, np.float64).reshape(-1, 2)
    if len(points) == 0 or len(keypoints) == 0:
        return np.full(len(points), -1, np.int64)
    dist, idx = cKDTree(np.asarray(keypoints, np.float64)).query(points)
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
    order = valid[np.lexsort((ids1[valid], ids0[valid], -scores[valid]))]
    best0 = order[np.unique(ids0[order], return_index=True)[1]]
    best1 = order[np.unique(ids1[order], return_index=True)[1]]
    keep = np.intersect1d(best0, best1)
    return keep[np.argsort(ids0[keep], kind="stable")]


class ImmatchQuantizer:
    """The authors' quantization (exact parity with image-matching-toolbox).

    Per image, points are visited in the order given; a point joins the nearest
    centre of its ``psize`` cell (``floor(p / psize) * psize``) if closer than
    ``dthres`` and the centre moves to the midpoint ``(centre + p) / 2``;
    otherwise it starts a new keypoint. State is shared by all pairs.
    """

    def __init__(self, psize: float = 48, dthres: float = 4):
        self.psize, self.dthres = psize, dthres
        self.keypoints: Dict[str, List[np.ndarray]] = {}
        self.cells: Dict[str, Dict[tuple, Tuple[List[np.ndarray], List[int]]]] = {}

    def add(self, name: str, points: np.ndarray) -> np.ndarray:
        """Keypoint ids of ``(N, 2)`` points of image ``name``."""
        kps = self.keypoints.setdefault(name, [])
        cells = self.cells.setdefault(name, {})
        points = np.asarray(points, np.float64).reshape(-1, 2)
        keys = np.floor(points / self.psize) * self.psize
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
        return np.asarray(self.keypoints.get(name, []), np.float64).reshape(-1, 2)


Keypoints = Dict[str, Tuple[np.ndarray, np.ndarray]]


def _ids_cluster(
    pairs: List[Tuple[str, str]],
    raw: List[dict],
    fixed: Dict[str, np.ndarray],
    radius: float,
) -> Tuple[Keypoints, List[Tuple[np.ndarray, np.ndarray]]]:
    points: Dict[str, List[Tuple[int, int, np.ndarray, np.ndarray]]] = {}
    ids = [[None, None] for _ in pairs]
    for p, ((n0, n1), r) in enumerate(zip(pairs, raw)):
        for side, name in enumerate((n0, n1)):
            xy = r[f"keypoints{side}"]
            if name in fixed:
                ids[p][side] = assign_fixed(xy, fixed[name], radius)
            else:
                points.setdefault(name, []).append((p, side, xy, r["scores"]))
    keypoints = {}
    for name, items in points.items():
        kps, labels, sums = cluster_points(
            np.concatenate([it[2] for it in items]),
            np.concatenate([it[3] for it in items]),
            radius,
        )
        keypoints[name] = (kps, sums)
        splits = np.cumsum([len(it[2]) for it in items])[:-1]
        for (p, side, _, _), lab in zip(items, np.split(labels, splits)):
            ids[p][side] = lab
    return keypoints, ids


def _ids_immatch(
    pairs: List[Tuple[str, str]],
    raw: List[dict],
    fixed: Dict[str, np.ndarray],
    radius: float,
    psize: float,
) -> Tuple[Keypoints, List[Tuple[np.ndarray, np.ndarray]]]:
    q = ImmatchQuantizer(psize, radius)
    ids = []
    for (n0, n1), r in zip(pairs, raw):
        ids.append(
            [
                (
                    assign_fixed(r[f"keypoints{s}"], fixed[n], radius)
                    if n in fixed
                    else q.add(n, r[f"keypoints{s}"])
                )
                for s, n in enumerate((n0, n1))
            ]
        )
    sums: Dict[str, np.ndarray] = {}
    for (n0, n1), r, pair_ids in zip(pairs, raw, ids):
        for name, i in zip((n0, n1), pair_ids):
            if name not in fixed:
                k = len(q.keypoints[name])
                s = np.bincount(i, weights=r["scores"], minlength=k)
                sums[name] = sums.get(name, 0) + s
    return {n: (q.get(n), s) for n, s in sums.items()}, ids


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


def _keep_top(
    keypoints: Keypoints, ids: List[List[np.ndarray]], pairs, max_kps: Optional[int]
) -> Keypoints:
    """``keypoints`` cut to ``max_kps`` per image, ``ids`` remapped in place."""
    remap = {n: top_keypoints(s, max_kps) for n, (_, s) in keypoints.items()}
    for pair, pair_ids in zip(pairs, ids):
        for side, name in enumerate(pair):
            if name in remap:
                i = pair_ids[side]
                pair_ids[side] = np.where(i >= 0, remap[name][i], -1)
    return {n: (k[remap[n] >= 0], s[remap[n] >= 0]) for n, (k, s) in keypoints.items()}


def quantize_matches(
    pairs: List[Tuple[str, str]],
    raw: List[dict],
    fixed: Dict[str, np.ndarray],
    radius: float = 4.0,
    min_score: float = 0.0,
    method: str = "cluster",
    psize: float = 48,
    max_kps: Optional[int] = None,
) -> Tuple[Keypoints, List[Tuple[np.ndarray, np.ndarray]]]:
    """Shared keypoints and one-to-one matches from raw pair matches.

    Args:
        pairs: ``(name0, name1)`` per pair (``immatch``: in pairs-file order).
        raw: per pair ``keypoints0``, ``keypoints1`` ``(M, 2)``, ``scores``.
        fixed: keypoints of images that must not change (nearest within
            ``radius``); the keypoints of all other images are built.
        min_score: raw matches with a lower score are dropped first.
        method: ``cluster`` (``cluster_points``) or ``immatch``
            (``ImmatchQuantizer``).
        max_kps: keep at most this many keypoints per built image, those
            with the largest summed score (hloc's ``match_dense`` argument);
            ``None`` keeps all.
    Returns:
        ``{name: (keypoints (K, 2), scores (K,))}`` of the built images and,
        per pair, ``matches0`` int32 ``(N0,)`` (-1: unmatched) and
        ``matching_scores0`` float32 ``(N0,)``.
    """
    raw = [
        {
            k: np.asarray(r[k])[np.asarray(r["scores"]) >= min_score]
            for k in ("keypoints0", "keypoints1", "scores")
        }
        for r in raw
    ]
    if method == "cluster":
        keypoints, ids = _ids_cluster(pairs, raw, fixed, radius)
    elif method == "immatch":
        keypoints, ids = _ids_immatch(pairs, raw, fixed, radius, psize)
    else:
        raise ValueError(f"unknown quantization method {method!r}")
    if max_kps is not None:
        keypoints = _keep_top(keypoints, ids, pairs, max_kps)
    matches = []
    for (n0, _), r, (ids0, ids1) in zip(pairs, raw, ids):
        n = len(fixed[n0]) if n0 in fixed else len(keypoints[n0][0])
        keep = unique_matches(ids0, ids1, r["scores"])
        matches0 = np.full(n, -1, np.int32)
        scores0 = np.zeros(n, np.float32)
        matches0[ids0[keep]] = ids1[keep]
        scores0[ids0[keep]] = r["scores"][keep]
        matches.append((matches0, scores0))
    return keypoints, matches
