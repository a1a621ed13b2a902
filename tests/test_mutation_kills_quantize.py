"""Quantization internals against plain references (brute force, numpy's
sorts) on seeded random points with many ties and near-radius distances:
the details the mutation run (tools/mutation.py) found untested."""

import numpy as np
import pytest

from p2p_hloc.quantize import assign_fixed, cluster_points, top_keypoints
from p2p_hloc.quantize.core import _argsort, _insertion, _neighbours


def brute_neighbours(points: np.ndarray, radius: float):
    d = np.linalg.norm(points[:, None] - points[None], axis=-1)
    i, j = np.nonzero((d < radius) & ~np.eye(len(points), dtype=bool))
    return set(zip(i.tolist(), j.tolist()))


def point_sets():
    rng = np.random.default_rng(0)
    grid = rng.integers(0, 10, (150, 2)).astype(float) * 2.0  # distances 2, 4, ...
    return [
        rng.uniform(0, 40, (300, 2)),
        grid,  # many pairs exactly at the radius (4): not neighbours
        rng.uniform(-25, -5, (200, 2)).round(1),  # negative coordinates
        np.stack([np.arange(0, 60, 3.99), np.full(16, 7.0)], -1),  # a row
        np.stack([np.full(16, 3.0), np.arange(0, 60, 3.99)], -1),  # a column
        np.array([[5.0, 5.0]]),
    ]


@pytest.mark.parametrize("k", range(6))
def test_neighbours_are_the_brute_force_pairs(k):
    points = point_sets()[k]
    i, j = _neighbours(points, 4.0)
    assert i.dtype == j.dtype == np.int64
    pairs = list(zip(i.tolist(), j.tolist()))
    assert len(pairs) == len(set(pairs))  # each pair once per order
    assert set(pairs) == brute_neighbours(points, 4.0)


def test_no_points_no_neighbours():
    i, j = _neighbours(np.zeros((0, 2)), 4.0)
    assert i.shape == j.shape == (0,) and i.dtype == j.dtype == np.int64


@pytest.mark.parametrize("side", ["left", "right"])
def test_insertion_is_searchsorted(side):
    rng = np.random.default_rng(1)
    key = np.sort(rng.integers(0, 20, 50)).astype(float)
    queries = np.sort(np.r_[key[::3], rng.integers(-2, 23, 30)]).astype(float)
    np.testing.assert_array_equal(
        _insertion(key, queries, side), np.searchsorted(key, queries, side)
    )


def test_argsort_is_lexsort():
    rng = np.random.default_rng(2)
    first = rng.integers(0, 5, 100).astype(float)
    second = rng.integers(0, 3, 100).astype(float)
    third = rng.uniform(0, 1, 100).round(1)
    np.testing.assert_array_equal(
        _argsort(first, second, third), np.lexsort((third, second, first))
    )
    distinct = rng.permutation(50).astype(float)
    np.testing.assert_array_equal(_argsort(distinct, third[:50]), np.argsort(distinct))


def test_assign_fixed_edges_and_types():
    keypoints = np.array([[10, 10], [20, 20]], float)
    none = assign_fixed(np.array([[1.0, 2.0], [3.0, 4.0]]), np.zeros((0, 2)))
    np.testing.assert_array_equal(none, [-1, -1])
    assert none.dtype == np.int64
    empty = assign_fixed(np.zeros((0, 2)), keypoints)
    assert empty.shape == (0,) and empty.dtype == np.int64
    one = assign_fixed(np.array([[10.5, 10.0]]), keypoints[:1])
    np.testing.assert_array_equal(one, [0])
    ids = assign_fixed([[19, 20], [10, 13.99], [10, 14], [100, 100]], keypoints)
    np.testing.assert_array_equal(ids, [1, 0, -1, -1])
    assert ids.dtype == np.int64
    # the nearest keypoint wins; the radius is strict
    ids = assign_fixed(np.array([[14.9, 14.9], [15.1, 15.1]]), keypoints, radius=7.1)
    np.testing.assert_array_equal(ids, [0, 1])
    assert assign_fixed(np.array([[13.0, 10.0]]), keypoints, radius=3.0)[0] == -1


def test_index_arrays_are_int64():
    """Label and index arrays are int64 in every branch (they index h5 and
    numpy arrays downstream)."""
    _, labels, _ = cluster_points(np.zeros((0, 2)))
    assert labels.dtype == np.int64
    _, labels, _ = cluster_points(np.array([[1.0, 2.0], [2.0, 2.0], [9.0, 9.0]]))
    assert labels.dtype == np.int64
    for max_kps in (1, 3, None):
        top = top_keypoints(np.array([0.5, 0.2, 0.9]), max_kps)
        assert top.dtype == np.int64, max_kps
    np.testing.assert_array_equal(
        top_keypoints(np.array([0.5, 0.2, 0.9]), 1), [-1, -1, 0]
    )


def test_exact_ties_do_not_depend_on_the_input_order():
    """On a grid (every point has the same density: ties everywhere) and on
    duplicated points with scores whose float sum depends on the order
    (0.1 + 0.2 + 0.7 != 0.7 + 0.2 + 0.1), any input order gives the same
    keypoints, labels and summed scores, to the last bit."""
    g = np.arange(0, 18, 3.0)
    grid = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    dup = np.repeat(np.array([[5.0, 5.0], [40.0, 5.0], [40.0, 40.0]]), 3, axis=0)
    cases = [
        (grid, np.ones(len(grid))),
        (dup, np.tile([0.1, 0.2, 0.7], 3)),
    ]
    for points, scores in cases:
        kps, labels, sums = cluster_points(points, scores)
        for seed in range(4):
            perm = np.random.default_rng(seed).permutation(len(points))
            kps2, labels2, sums2 = cluster_points(points[perm], scores[perm])
            np.testing.assert_array_equal(kps2, kps)
            np.testing.assert_array_equal(labels2, labels[perm])
            np.testing.assert_array_equal(sums2, sums)
