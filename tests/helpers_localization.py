"""Features and matches in hloc's h5 layout for the localization tests: SIFT on
the rendered images, or a dense matcher simulated from the scene geometry
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


def dense_scene(root: Path, num_queries: int = 3, num_points: int = 300) -> Dict:
    """A generated scene with two covisibility clusters (``clusters=2``) and a
    simulated dense matcher (jitter 0.5 px, seeded) quantized with the
    default conf into hloc files, the model triangulated from them. Each
    query's pairs with the second cluster (the side wall) hold decoy matches:
    consistent with the query turned 90 degrees to face that wall, a quarter
    as many per pair as with its true neighbours."""
    from p2p_hloc import triangulation
    from p2p_hloc.confs import confs
    from p2p_hloc.synthetic import (
        SIDE_POSES,
        View,
        generate_scene,
        look,
        read_views,
        room,
        simulate_matches,
        write_dense_matches,
    )

    scene = generate_scene(
        root / "scene", num_queries=num_queries, clusters=2, render_images=False
    )
    views = {v.name: v for v in read_views(scene)}
    side = {f"db/{i:03d}.png" for i in range(8, 8 + len(SIDE_POSES))}
    rng = np.random.default_rng(0)
    planes = room()
    quant = confs["patch2pix_aachen"]["quantization"]
    feats = root / "feats.h5"
    for kind in ("db", "query"):
        pairs = parse_pairs(scene[f"pairs_{kind}"])
        raw = []
        for q, r in pairs:
            view, n = views[q], num_points
            if kind == "query" and r in side:
                decoy = look(view.center, -90.0)
                view = View(q, view.width, view.height, view.focal, *decoy)
                n = num_points // 4
            raw.append(simulate_matches(planes, view, views[r], n, 0.5, rng))
        write_dense_matches(pairs, raw, feats, root / f"matches_{kind}.h5", quant)
        if kind == "db":
            sfm = root / "sfm"
            triangulation.main(
                sfm,
                scene["reference"],
                scene["images"],
                scene["pairs_db"],
                feats,
                root / "matches_db.h5",
            )
    return dict(
        scene, root=root, features=feats, matches=root / "matches_query.h5", sfm=sfm
    )
