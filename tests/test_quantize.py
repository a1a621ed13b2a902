"""Quantization on hand-made points."""

import numpy as np

from p2p_hloc.quantize import (
    ImmatchQuantizer,
    assign_fixed,
    cluster_points,
    quantize_pairs,
    top_keypoints,
    unique_matches,
)


def test_merge_to_mean():
    pts = np.array([[10, 10], [12, 10], [11, 12], [50, 50]], float)
    kps, labels, sums = cluster_points(pts)
    np.testing.assert_allclose(kps, [[11, 32 / 3], [50, 50]])
    np.testing.assert_array_equal(labels, [0, 0, 0, 1])
    np.testing.assert_allclose(sums, [3, 1])


def test_strict_radius():
    kps, labels, _ = cluster_points(np.array([[0, 0], [4, 0]], float))
    assert len(kps) == 2
    kps, _, _ = cluster_points(np.array([[0, 0], [3.999, 0]], float))
    assert len(kps) == 1


def test_chain_is_bounded():
    """Pairwise-close points on a line do not collapse into one keypoint."""
    pts = np.stack([np.arange(0, 30, 3.0), np.zeros(10)], -1)
    kps, labels, _ = cluster_points(pts)
    assert 3 <= len(kps) <= 5
    # every point lies within the radius of its cluster's mean... or of the seed
    assert np.all(np.linalg.norm(pts - kps[labels], axis=1) < 8)
    # clusters are contiguous runs
    assert np.all(np.diff(labels) >= 0)


def test_density_and_score_pick_the_seed():
    # B has two neighbours (A, C), A and C one each: B seeds and takes all three
    pts = np.array([[0, 0], [3, 0], [6, 0]], float)
    kps, labels, _ = cluster_points(pts)
    np.testing.assert_allclose(kps, [[3, 0]])
    # on A-B-C-D, a heavy score on D makes C the densest: C takes B and D
    pts = np.array([[0, 0], [3, 0], [6, 0], [9, 0]], float)
    kps, labels, _ = cluster_points(pts, scores=np.array([1, 1, 1, 5.0]))
    np.testing.assert_allclose(kps, [[0, 0], [6, 0]])
    np.testing.assert_array_equal(labels, [0, 1, 1, 1])


def test_ties_are_deterministic():
    # two points 3 px apart with equal scores: one cluster at the mean
    kps, _, _ = cluster_points(np.array([[3, 0], [0, 0]], float))
    np.testing.assert_allclose(kps, [[1.5, 0]])
    # A-B-C-D with equal scores: B and C tie on density, the smaller x (B) seeds
    pts = np.array([[9, 0], [6, 0], [3, 0], [0, 0]], float)
    kps, labels, _ = cluster_points(pts)
    np.testing.assert_allclose(kps, [[3, 0], [9, 0]])
    np.testing.assert_array_equal(labels, [1, 0, 0, 0])


def test_order_independence():
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 60, (400, 2)).round(1)
    scores = rng.uniform(0, 1, 400).round(2)
    kps, labels, sums = cluster_points(pts, scores)
    for seed in range(3):
        perm = np.random.default_rng(seed).permutation(400)
        kps2, labels2, sums2 = cluster_points(pts[perm], scores[perm])
        np.testing.assert_array_equal(kps, kps2)
        np.testing.assert_array_equal(labels[perm], labels2)
        np.testing.assert_array_equal(sums, sums2)
    # keypoints are separated and every point is near its keypoint
    assert np.all(np.linalg.norm(pts - kps[labels], axis=1) < 8)


def test_empty():
    kps, labels, sums = cluster_points(np.zeros((0, 2)))
    assert kps.shape == (0, 2) and labels.shape == (0,) and sums.shape == (0,)
    assert assign_fixed(np.zeros((0, 2)), np.ones((3, 2))).shape == (0,)


def test_assign_fixed():
    fixed = np.array([[10, 10], [20, 20]], float)
    ids = assign_fixed(
        np.array([[11, 10], [20, 23.9], [30, 30], [14, 10]], float), fixed
    )
    np.testing.assert_array_equal(ids, [0, 1, -1, -1])


def test_unique_matches_spec_example():
    """(A,X,.9), (B,X,.95), (A,Y,.8) keeps only (B,X) (spec §6.3 item 5)."""
    A, B, X, Y = 0, 1, 0, 1
    keep = unique_matches(
        np.array([A, B, A]), np.array([X, X, Y]), np.array([0.9, 0.95, 0.8])
    )
    np.testing.assert_array_equal(keep, [1])


def test_unique_matches_duplicates_and_invalid():
    ids0 = np.array([0, 0, 1, -1, 2, 2])
    ids1 = np.array([5, 5, 6, 7, -1, 8])
    scores = np.array([0.3, 0.7, 0.5, 0.9, 0.9, 0.1])
    keep = unique_matches(ids0, ids1, scores)
    np.testing.assert_array_equal(keep, [1, 2, 5])
    # ties: the smaller (id0, id1) wins
    keep = unique_matches(np.array([0, 0]), np.array([3, 2]), np.array([0.5, 0.5]))
    np.testing.assert_array_equal(keep, [1])


def test_immatch_parity_running_midpoint():
    """The authors' rule (spec §6.3 item 4): running midpoint, not a mean;
    48-px cells never merge across a border; state shared by pairs."""
    q = ImmatchQuantizer(psize=48, dthres=4)
    ids = q.add("a", np.array([[10, 10], [12, 10], [13, 10]], float))
    np.testing.assert_array_equal(ids, [0, 0, 0])
    # midpoint of (11, 10) and (13, 10) = (12, 10), not the mean 11.67
    np.testing.assert_allclose(q.get("a"), [[12, 10]])
    # 47 and 49 are 2 px apart but in different cells: two keypoints
    ids = q.add("a", np.array([[47, 20], [49, 20]], float))
    np.testing.assert_array_equal(ids, [1, 2])
    # a later pair joins the existing centre (strict < 4) or starts a new one
    ids = q.add("a", np.array([[15.9, 10], [18, 10]], float))
    np.testing.assert_array_equal(ids, [0, 3])
    np.testing.assert_allclose(q.get("a")[0], [13.95, 10])
    # order dependence: the same points in another order give other centres
    r = ImmatchQuantizer()
    r.add("a", np.array([[13, 10], [12, 10], [10, 10]], float))
    assert not np.allclose(r.get("a"), [[12, 10]])
    assert q.get("b").shape == (0, 2)


def test_max_kps_keeps_the_strongest_keypoints():
    """``max_kps`` (hloc's ``match_dense`` argument): the keypoints with the
    largest summed score stay, in (x, y) order; matches to the others go."""
    top = top_keypoints(np.array([1, 3, 2, 3.0]), 2)
    np.testing.assert_array_equal(top, [-1, 0, -1, 1])
    np.testing.assert_array_equal(top_keypoints(np.array([1, 3.0]), None), [0, 1])
    np.testing.assert_array_equal(top_keypoints(np.array([1, 3.0]), 5), [0, 1])
    # image a: keypoints at x=10 (score .9+.8), x=50 (.2), x=90 (.7)
    size = np.array([100, 100])
    raw = [
        {
            "keypoints0": np.array([[10, 5], [50, 5], [90, 5]], float),
            "keypoints1": np.array([[1, 1], [2, 20], [3, 40]], float),
            "scores": np.array([0.9, 0.2, 0.7]),
            "size0": size,
            "size1": size,
        },
        {
            "keypoints0": np.array([[11, 5]], float),
            "keypoints1": np.array([[7, 7]], float),
            "scores": np.array([0.8]),
            "size0": size,
            "size1": size,
        },
    ]
    pairs = [("a", "b"), ("a", "c")]
    full = quantize_pairs(pairs, raw)
    q = quantize_pairs(pairs, raw, max_kps=2)
    np.testing.assert_allclose(q.keypoints["a"], [[10.5, 5], [90, 5]])
    np.testing.assert_allclose(q.scores["a"], [1.7, 0.7])
    assert len(q.keypoints["b"]) == 2  # b's weakest point (.2) is dropped too
    np.testing.assert_array_equal(q.matches0[0], [0, 1])  # a(x=90) -> b1
    np.testing.assert_array_equal(q.matches0[1], [0, -1])
    np.testing.assert_array_equal(q.labels[0][0], [0, -1, 1])
    np.testing.assert_array_equal(full.matches0[0], [0, 1, 2])


def greedy(points: np.ndarray, scores: np.ndarray, radius: float) -> np.ndarray:
    """The rule of ``cluster_points`` as a plain loop, on points sorted by
    value: visit by decreasing density (ties by x, y); a point not yet taken
    becomes a seed and takes its free neighbours. Returns cluster ids in
    seed order."""
    from p2p_hloc.quantize.core import _neighbours

    n = len(points)
    i, j = _neighbours(points, radius)
    density = scores + np.bincount(i, weights=scores[j], minlength=n)
    order = np.lexsort((points[:, 1], points[:, 0], -density))
    labels = np.full(n, -1)
    k = 0
    for seed in order:
        if labels[seed] < 0:
            free = j[(i == seed) & (labels[j] < 0)]
            labels[free] = labels[seed] = k
            k += 1
    return labels


def test_rounds_equal_the_greedy_pass():
    """The vectorized rounds (a point is a seed when no higher-priority
    neighbour is one) give the greedy pass's clusters: dense blobs, chains,
    exact ties on a grid."""
    from p2p_hloc.quantize.core import _cluster_sorted, _sort_by_value

    rng = np.random.default_rng(0)
    cases = [
        (rng.uniform(0, 40, (300, 2)), rng.uniform(0, 1, 300)),
        (np.stack([np.arange(0, 60, 2.5), np.zeros(24)], -1), np.ones(24)),
        (rng.integers(0, 12, (200, 2)).astype(float), rng.integers(1, 3, 200) / 2),
        (rng.normal(50, 3, (500, 2)), rng.uniform(0, 1, 500).round(1)),
    ]
    for points, scores in cases:
        perm = _sort_by_value(points, scores)
        p, s = points[perm], scores[perm]
        kps, labels, _ = _cluster_sorted(p, s, 4.0)
        ref = greedy(p, s, 4.0)
        # the same partition (cluster ids differ: ours are sorted by x, y)
        assert len(kps) == ref.max() + 1
        pairs = set(zip(labels.tolist(), ref.tolist()))
        assert len(pairs) == len(kps)


def test_keypoints_sorted_by_x_then_y():
    """The documented order of ``cluster_points`` (issue 17), on points that
    are not on a line: several keypoints share an x, their y decide."""
    pts = np.array(
        [[30, 5], [10, 40], [10, 5], [30, 40], [10, 20.5], [50, 1], [30, 20]], float
    )
    perm = np.random.default_rng(1).permutation(len(pts))
    kps, labels, _ = cluster_points(pts[perm], radius=2.0)
    np.testing.assert_array_equal(
        kps, [[10, 5], [10, 20.5], [10, 40], [30, 5], [30, 20], [30, 40], [50, 1]]
    )
    np.testing.assert_array_equal(kps[labels], pts[perm])
    rng = np.random.default_rng(2)
    kps, _, _ = cluster_points(rng.uniform(0, 100, (500, 2)).round(0), radius=3.0)
    assert np.all(np.lexsort((kps[:, 1], kps[:, 0])) == np.arange(len(kps)))
