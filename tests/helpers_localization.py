"""SIFT features and matches in hloc's h5 layout, for the localization tests
(independent of p2p_hloc's matchers, so that the pycolmap steps are tested alone)."""

from pathlib import Path
from typing import Dict, Sequence, Tuple, Union

import cv2
import numpy as np

from p2p_hloc.io import parse_pairs, to_hloc_coords, write_keypoints, write_matches


class SiftMatcher:
    """OpenCV SIFT (corner convention) with mutual nearest neighbours."""

    def __init__(self, num_features: int = 2000):
        self.sift = cv2.SIFT_create(num_features)
        self.cache: Dict[str, Tuple[np.ndarray, np.ndarray, Tuple[int, int]]] = {}
        self.bf = cv2.BFMatcher(cv2.NORM_L2, crossCheck=True)

    def features(self, path: Union[str, Path]):
        key = str(path)
        if key not in self.cache:
            image = cv2.imread(key, cv2.IMREAD_GRAYSCALE)
            kps, desc = self.sift.detectAndCompute(image, None)
            xy = (
                np.array([k.pt for k in kps]).reshape(-1, 2) + 0.5
            )  # centres -> corners
            self.cache[key] = (xy, desc, image.shape[::-1])
        return self.cache[key]

    def match_indices(self, path0, path1) -> np.ndarray:
        (_, d0, _), (_, d1, _) = self.features(path0), self.features(path1)
        return np.array(
            [(m.queryIdx, m.trainIdx) for m in self.bf.match(d0, d1)]
        ).reshape(-1, 2)


def sift_h5(
    image_dir: Path, pairs_files: Sequence[Path], features: Path, matches: Path
):
    """Write SIFT keypoints and mutual-NN matches of every pair to h5 files."""
    matcher = SiftMatcher()
    written = set()
    for pairs in pairs_files:
        for name0, name1 in parse_pairs(pairs):
            for name in (name0, name1):
                if name not in written:
                    xy, _, size = matcher.features(image_dir / name)
                    write_keypoints(features, name, to_hloc_coords(xy), size)
                    written.add(name)
            m = matcher.match_indices(image_dir / name0, image_dir / name1)
            matches0 = -np.ones(len(matcher.features(image_dir / name0)[0]), int)
            matches0[m[:, 0]] = m[:, 1]
            write_matches(
                matches, name0, name1, matches0, (matches0 > -1).astype(float)
            )
    return features, matches


def assert_hloc_signature(fn, spec: str) -> None:
    """``fn`` starts with hloc's parameters ``spec`` (``"a, b, c=1"`` as in
    the spec: names, order, defaults, all positional-or-keyword); any further
    parameter is keyword-only."""
    import ast
    import inspect

    params = list(inspect.signature(fn).parameters.values())
    expected = [p.strip().partition("=") for p in spec.split(",")]
    assert [p.name for p in params[: len(expected)]] == [e[0] for e in expected]
    for p, (name, eq, default) in zip(params, expected):
        assert p.kind == p.POSITIONAL_OR_KEYWORD, name
        want = ast.literal_eval(default) if eq else inspect.Parameter.empty
        assert p.default == want and type(p.default) is type(want), name
    extra = params[len(expected) :]
    assert all(p.kind == p.KEYWORD_ONLY for p in extra), extra
