"""The quantization rules per image and per pair (``build_image``,
``fixed_labels``, ``pair_matches``, ``ImmatchQuantizer``, ``clip_to_image``,
``unique_pairs``) and ``quantize_pairs`` on hand-made points whose answer is
known: the details a mutation run (tools/mutation.py) found untested. Fast
(no files): the mutation run of ``quantize.core`` and ``quantize.in_memory``
starts with this file."""

import numpy as np
import pytest

from p2p_hloc.io.raw import RawMatchesError
from p2p_hloc.quantize import cluster_points, quantize_pairs
from p2p_hloc.quantize.core import (
    EDGE,
    ImmatchQuantizer,
    build_image,
    clip_to_image,
    fixed_labels,
    pair_matches,
    unique_pairs,
)


def chunk(points, scores):
    return np.asarray(points, np.float64), np.asarray(scores, np.float32)


# three pair sides showing one image; points 3.9 and 4.5 px apart
CHUNKS = [
    chunk([[10, 10], [13.9, 10], [30, 30]], [1.0, 0.5, 0.2]),
    chunk([[10, 10.25], [60, 60]], [0.25, 0.9]),
    chunk([[30, 34.5], [60.5, 60], [80, 5]], [0.75, 0.5, 0.125]),
]


def test_unique_pairs():
    pairs = [("a", "b"), ("b", "a"), ("a", "a"), ("a", "b"), ("c", "a"), ("a", "c")]
    assert unique_pairs(pairs) == [("a", "b"), ("c", "a")]


def test_clip_to_image():
    xy = np.array([[-5, 3], [200, 70.5], [95, 63], [94.5, 62.5]], np.float32)
    out = clip_to_image(xy.ravel(), (96, 64))
    assert out.dtype == np.float64 and out.shape == (4, 2)
    np.testing.assert_array_equal(
        out, [[EDGE, 3], [95 - EDGE, 63 - EDGE], [95 - EDGE, 63 - EDGE], [94.5, 62.5]]
    )


def test_build_image_is_cluster_points_over_all_chunks():
    points = np.concatenate([p for p, _ in CHUNKS])
    scores = np.concatenate([s for _, s in CHUNKS]).astype(np.float64)
    for radius in (4.0, 5.0):
        kps, sums, labels = build_image(CHUNKS, radius=radius)
        want_kps, want_labels, want_sums = cluster_points(points, scores, radius)
        np.testing.assert_array_equal(kps, want_kps)
        np.testing.assert_array_equal(sums, want_sums)
        assert [len(x) for x in labels] == [3, 2, 3]
        np.testing.assert_array_equal(np.concatenate(labels), want_labels)
        assert all(x.dtype == np.int64 for x in labels)
    # the defaults: radius 4 (3.9 px apart merge, 4.5 px apart do not),
    # min_score 0, the cluster method
    kps, sums, labels = build_image(CHUNKS)
    assert len(kps) == 5 and sums.sum() == pytest.approx(4.225)
    assert labels[0][0] == labels[0][1] == labels[1][0]
    assert labels[0][2] != labels[2][0]


def test_build_image_min_score_and_max_kps():
    kps, sums, labels = build_image(CHUNKS, min_score=0.5)
    # 0.2, 0.25 and 0.125 get no keypoint; the others keep theirs
    np.testing.assert_array_equal(labels[0][2], -1)
    np.testing.assert_array_equal(labels[1][0], -1)
    np.testing.assert_array_equal(labels[2][2], -1)
    assert len(kps) == 3 and sums.sum() == pytest.approx(3.65)
    # the strongest 2 keypoints: (10, 10) + (13.9, 10) + (10, 10.25) (1.75)
    # and (60, 60) + (60.5, 60) (1.4); the others' points get -1
    kps, sums, labels = build_image(CHUNKS, max_kps=2)
    np.testing.assert_allclose(kps, [[11.3, 10 + 0.25 / 3], [60.25, 60]])
    np.testing.assert_allclose(sums, [1.75, 1.4])
    assert labels[0].tolist() == [0, 0, -1]
    assert labels[1].tolist() == [0, 1]
    assert labels[2].tolist() == [-1, 1, -1]


def test_build_image_immatch():
    """Chunk after chunk, as ImmatchQuantizer(psize, radius) would; summed
    scores over all chunks."""
    kps, sums, labels = build_image(CHUNKS, method="immatch", psize=16, radius=5)
    q = ImmatchQuantizer(16, 5)
    ids = [q.add("x", p) for p, _ in CHUNKS]
    np.testing.assert_array_equal(kps, q.get("x"))
    for got, want in zip(labels, ids):
        assert got.dtype == np.int64 and got.tolist() == want.tolist()
    want = np.zeros(len(kps))
    for i, (_, s) in zip(ids, CHUNKS):
        np.add.at(want, i, s)
    np.testing.assert_allclose(sums, want)
    assert len(kps) == 5  # (10, 10.25) and (60.5, 60) joined earlier points
    # the default cell is 48 px: 47.5 and 48.5 fall in different cells
    edge = [chunk([[47.5, 10], [48.5, 10]], [1, 1])]
    assert len(build_image(edge, method="immatch")[0]) == 2
    assert len(build_image(edge, method="immatch", psize=64)[0]) == 1
    # radius is immatch's merge distance (dthres, default 4)
    apart = [chunk([[10, 10], [14.5, 10]], [1, 1])]
    assert len(build_image(apart, method="immatch", radius=5)[0]) == 1
    assert len(build_image(apart, method="immatch")[0]) == 2
    with pytest.raises(ValueError, match=r"^unknown quantization method 'kmeans'$"):
        build_image(CHUNKS, method="kmeans")


def test_build_image_without_points():
    for method in ("cluster", "immatch"):
        kps, sums, labels = build_image([], method=method)
        assert kps.shape == (0, 2) and sums.shape == (0,) and labels == []
    kps, sums, labels = build_image([chunk(np.zeros((0, 2)), [])])
    assert kps.shape == (0, 2) and [len(x) for x in labels] == [0]


def test_immatch_quantizer_rules():
    q = ImmatchQuantizer()  # psize 48, dthres 4
    ids = q.add("a", [[10, 10], [14, 10], [13.5, 10], [10.5, 10], [47.9, 1], [48, 1]])
    # (14, 10) is exactly 4 px away: a new keypoint; (13.5, 10) joins the
    # nearest centre (14, 10), not the first; (10.5, 10) joins (10, 10);
    # 47.9 and 48 lie in different 48 px cells
    assert ids.dtype == np.int64 and ids.tolist() == [0, 1, 1, 0, 2, 3]
    np.testing.assert_array_equal(
        q.get("a"), [[10.25, 10], [13.75, 10], [47.9, 1], [48, 1]]
    )
    assert q.add("a", [[14.5, 13.9]]).tolist() == [1]  # 3.9 px from (13.75, 10)
    assert q.add("a", [[18, 10]]).tolist() == [4]  # 4.5 px from (13.75,10)+...
    # another image starts empty
    assert q.add("b", [[10, 10], [12, 10]]).tolist() == [0, 0]
    np.testing.assert_array_equal(q.get("b"), [[11, 10]])
    assert q.get("c").shape == (0, 2) and q.get("c").dtype == np.float64


def test_immatch_quantizer_computes_in_float64():
    q = ImmatchQuantizer()
    xy = np.float32([[0.1, 0.1], [0.2, 0.2], [0.3, 0.3]])
    assert q.add("a", xy).tolist() == [0, 0, 0]
    a, b, c = xy.astype(np.float64)
    kp = q.get("a")
    assert kp.dtype == np.float64
    np.testing.assert_array_equal(kp, [((a + b) / 2 + c) / 2])  # not float32's


def test_fixed_labels():
    fixed = np.array([[10, 10], [60, 60.5]])
    ids = fixed_labels(CHUNKS, fixed, radius=3.5, min_score=0.3)
    assert [x.tolist() for x in ids] == [[0, -1, -1], [-1, 1], [-1, 1, -1]]
    assert all(x.dtype == np.int64 for x in ids)
    ids = fixed_labels(CHUNKS, fixed)  # radius 4, every score
    assert [x.tolist() for x in ids] == [[0, 0, -1], [0, 1], [-1, 1, -1]]
    assert fixed_labels([], fixed) == []
    # the default radius is 4 px
    far = [chunk([[14.5, 10], [10, 13.5]], [1, 1])]
    assert fixed_labels(far, fixed)[0].tolist() == [-1, 0]


def test_pair_matches():
    ids0 = np.array([0, 2, 2, -1, 1])
    ids1 = np.array([3, 1, 0, 2, -1])
    scores = np.array([0.5, 0.9, 0.8, 1.0, 1.0], np.float32)
    matches0, scores0 = pair_matches(ids0, ids1, scores, 4)
    assert matches0.dtype == np.int32 and scores0.dtype == np.float32
    assert matches0.tolist() == [3, -1, 1, -1]
    np.testing.assert_array_equal(scores0, np.float32([0.5, 0, 0.9, 0]))


def raw(k0, k1, scores, size0=(100, 80), size1=(100, 80)):
    return dict(
        keypoints0=np.asarray(k0, np.float64),
        keypoints1=np.asarray(k1, np.float64),
        scores=np.asarray(scores, np.float64),
        size0=np.array(size0),
        size1=np.array(size1),
    )


PAIRS = [("a", "b"), ("a", "c"), ("b", "a"), ("b", "c")]
RAW = [
    raw([[10, 10], [50, 50], [-3, 5]], [[20, 20], [70, 40], [5, 5]], [0.9, 0.6, 0.4]),
    raw([[10.5, 10], [50, 55]], [[30, 30], [90, 10]], [0.8, 0.7]),
    raw([[0, 0]], [[1, 1]], [1.0]),  # a repeat in the other direction: dropped
    raw([[20, 21], [5, 5]], [[30, 30], [99, 0]], [0.5, 0.3]),
]


def test_quantize_pairs_by_hand():
    q = quantize_pairs(PAIRS, RAW)
    assert q.pairs == [("a", "b"), ("a", "c"), ("b", "c")]
    assert sorted(q.keypoints) == ["a", "b", "c"]
    np.testing.assert_allclose(
        q.keypoints["a"], [[EDGE, 5], [10.25, 10], [50, 50], [50, 55]]
    )
    np.testing.assert_allclose(q.scores["a"], [0.4, 1.7, 0.6, 0.7])
    np.testing.assert_allclose(q.keypoints["b"], [[5, 5], [20, 20.5], [70, 40]])
    np.testing.assert_allclose(q.scores["b"], [0.7, 1.4, 0.6])
    np.testing.assert_allclose(
        q.keypoints["c"], [[30, 30], [90, 10], [99 - EDGE, EDGE]]
    )
    assert {k: v.tolist() for k, v in q.sizes.items()} == {
        "a": [100, 80],
        "b": [100, 80],
        "c": [100, 80],
    }
    assert [m.tolist() for m in q.matches0] == [
        [0, 1, 2, -1],
        [-1, 0, -1, 1],
        [2, 0, -1],
    ]
    assert all(m.dtype == np.int32 for m in q.matches0)
    np.testing.assert_allclose(q.scores0[0], [0.4, 0.9, 0.6, 0])
    np.testing.assert_allclose(q.scores0[2], [0.3, 0.5, 0])
    assert [(a.tolist(), b.tolist()) for a, b in q.labels] == [
        ([1, 2, 0], [1, 2, 0]),
        ([1, 3], [0, 1]),
        ([1, 0], [0, 2]),
    ]


def test_quantize_pairs_options():
    q = quantize_pairs(PAIRS, RAW, min_score=0.5, max_kps=2)
    # a: (10.25, 10) 1.7 and (50, 55) 0.7 remain of the points >= 0.5
    np.testing.assert_allclose(q.keypoints["a"], [[10.25, 10], [50, 55]])
    assert [m.tolist() for m in q.matches0] == [[0, -1], [0, 1], [0, -1]]
    assert q.labels[0][0].tolist() == [0, -1, -1]
    q = quantize_pairs(PAIRS, RAW, radius=0.25)  # no point merges
    assert len(q.keypoints["a"]) == 5
    q = quantize_pairs(PAIRS, RAW, method="immatch", psize=10.25, radius=1)
    assert len(q.keypoints["a"]) == 5  # (10, 10) and (10.5, 10): other cells
    q = quantize_pairs(PAIRS, RAW, method="immatch", psize=64, radius=1)
    assert len(q.keypoints["a"]) == 4


def test_quantize_pairs_with_fixed_keypoints():
    fixed = {"b": np.array([[70, 41], [20, 20], [40, 40]])}
    q = quantize_pairs(PAIRS, RAW, fixed)
    assert sorted(q.keypoints) == ["a", "c"] and "b" in q.sizes
    assert q.matches0[2].tolist() == [-1, 0, -1]  # b's fixed keypoints
    assert q.labels[0][1].tolist() == [1, 0, -1] and q.labels[2][0].tolist() == [1, -1]
    q = quantize_pairs(PAIRS, RAW, fixed, radius=0.75)
    assert q.labels[0][1].tolist() == [1, -1, -1]
    # min_score applies to the points of fixed images too: (5, 5) in b has
    # the scores 0.4 (pair a-b) and 0.3 (pair b-c)
    q = quantize_pairs(PAIRS, RAW, {"b": np.array([[5, 5]])}, min_score=0.35)
    assert q.labels[0][1].tolist() == [-1, -1, 0] and q.labels[2][0].tolist() == [
        -1,
        -1,
    ]


def test_quantize_pairs_takes_the_first_of_repeated_pairs():
    first = raw([[10, 10]], [[20, 20]], [0.9])
    later = raw([[40, 40]], [[60, 60]], [0.8])
    q = quantize_pairs([("a", "b"), ("a", "b")], [first, later])
    np.testing.assert_array_equal(q.keypoints["a"], [[10, 10]])


def test_quantize_pairs_errors():
    with pytest.raises(ValueError, match=r"^4 pairs but 3 raw entries$"):
        quantize_pairs(PAIRS, RAW[:3])
    named = {**RAW[0], "name0": "x", "name1": "b"}
    with pytest.raises(
        RawMatchesError,
        match=r"^raw matches of the pair \(a, b\): they name \(x, b\)$",
    ):
        quantize_pairs(PAIRS[:1], [named])
    other = {**RAW[1], "size1": np.array([100, 81])}
    with pytest.raises(
        RawMatchesError,
        match=r"^raw matches of the pair \(b, c\): image c has size \[100, 80\], "
        r"elsewhere \[100, 81\]$",
    ):
        quantize_pairs(PAIRS, [RAW[0], other, RAW[2], RAW[3]])
    bad = {**RAW[0], "scores": np.array([0.9, np.nan, 0.4])}
    with pytest.raises(RawMatchesError, match=r"^raw matches of the pair \(a, b\): "):
        quantize_pairs(PAIRS[:1], [bad])
