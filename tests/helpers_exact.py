"""A scene with exact observations: random 3D points projected into the views
of ``synthetic.generate_scene`` (no images, no matcher, no noise), written as
hloc files. Poses estimated from them are right to about 1e-6 m, so a 0.5 px
slip anywhere on the way is thousands of times the error (fast tests for the
pycolmap steps and for the coordinate conventions)."""

from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

from p2p_hloc.io import parse_pairs, to_hloc_coords, write_keypoints, write_matches
from p2p_hloc.synthetic import SIDE_POSES, View, generate_scene, look, read_views

MAIN_BOX = ([-4.0, -1.2, 5.0], [4.0, 1.2, 8.0])  # in front of the back wall
SIDE_BOX = ([-6.0, -1.2, 1.0], [-4.5, 1.2, 7.0])  # in front of the left wall


def visible(view: View, xyz: np.ndarray, ids: np.ndarray) -> Tuple[np.ndarray, ...]:
    """Corner-convention projections ``(M, 2)`` and ids ``(M,)`` of the points
    ``ids`` in front of ``view`` and inside its image (2 px margin)."""
    uv, z = view.project(xyz[ids])
    size = np.array([view.width, view.height])
    keep = (z > 0.1) & np.all((uv > 2) & (uv < size - 2), -1)
    return uv[keep], ids[keep]


def exact_scene(
    root: Path,
    num_queries: int = 3,
    clusters: int = 1,
    num_points: int = 400,
    seed: int = 0,
) -> Dict:
    """``generate_scene``'s paths (``render_images=False``) plus ``features``
    and ``matches`` (every pair of ``pairs_db`` and ``pairs_query``: each
    shared point is a match), ``points`` ``(P, 3)`` ``num_main`` (the first points, the others are the
    side wall's) and ``keypoints`` ``{name:
    (xy corner convention (N, 2), point ids (N,))}``.

    ``clusters=2``: the side images see other points than the main ones, and
    each query has decoy keypoints for them, consistent with the query turned
    90 degrees to face the side wall (a quarter of ``num_points``): PnP on the
    side cluster alone gives that wrong pose, with fewer inliers."""
    scene = generate_scene(
        root / "scene", num_queries=num_queries, clusters=clusters, render_images=False
    )
    views = {v.name: v for v in read_views(scene)}
    rng = np.random.default_rng(seed)
    main = rng.uniform(*MAIN_BOX, (num_points, 3))
    side = rng.uniform(*SIDE_BOX, (num_points // 2, 3))
    points = np.concatenate([main, side])
    main_ids = np.arange(len(main))
    side_ids = np.arange(len(main), len(points))
    side_names = {f"db/{i:03d}.png" for i in range(8, 8 + len(SIDE_POSES))}
    keypoints = {}
    for name, view in views.items():
        ids = side_ids if clusters == 2 and name in side_names else main_ids
        keypoints[name] = visible(view, points, ids)
        if clusters == 2 and name.startswith("query/"):
            turned = View(
                name, view.width, view.height, view.focal, *look(view.center, -90)
            )
            xy, ids = visible(turned, points, side_ids)
            n = num_points // 4
            keypoints[name] = tuple(
                np.concatenate([a, b[:n]]) for a, b in zip(keypoints[name], (xy, ids))
            )
    features, matches = root / "features.h5", root / "matches.h5"
    for name, (xy, _) in keypoints.items():
        size = (views[name].width, views[name].height)
        write_keypoints(features, name, to_hloc_coords(xy), size)
    for pairs in (scene["pairs_db"], scene["pairs_query"]):
        for name0, name1 in parse_pairs(pairs):
            write_matches(
                matches,
                name0,
                name1,
                *match_ids(keypoints[name0][1], keypoints[name1][1]),
            )
    return dict(
        scene,
        root=root,
        features=features,
        matches=matches,
        points=points,
        num_main=len(main),
        keypoints=keypoints,
        views=views,
    )


def match_ids(ids0: np.ndarray, ids1: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """hloc's ``matches0`` ``(N0,)`` and scores linking equal point ids."""
    index1 = {int(i): j for j, i in enumerate(ids1)}
    matches0 = np.array([index1.get(int(i), -1) for i in ids0], np.int64)
    return matches0, (matches0 > -1).astype(np.float64)


def sfm(scene: Dict, name: str = "sfm") -> Path:
    """The model triangulated from ``pairs_db`` (its folder)."""
    from p2p_hloc import triangulation

    triangulation.main(
        scene["root"] / name,
        scene["reference"],
        scene["images"],
        scene["pairs_db"],
        scene["features"],
        scene["matches"],
    )
    return scene["root"] / name


def query_names(scene: Dict) -> List[str]:
    return sorted(n for n in scene["views"] if n.startswith("query/"))
