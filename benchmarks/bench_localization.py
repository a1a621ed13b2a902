"""Pose accuracy of the keypoint quantization on generated scenes.

A dense matcher is simulated from the scene geometry
(``synthetic.simulate_matches``: points per pair with Gaussian jitter on both
sides), its raw matches are quantized as ``match_pairs`` does (mapping pass,
then the localization pass with the database keypoints fixed), the model is
triangulated with the known poses and the queries are localized. Rows:

- ``cluster``: the default quantization (conf ``patch2pix_aachen``);
- ``immatch``: the authors' quantization (conf ``patch2pix_aachen_immatch``);
- ``... + raw query``: the same files, the query side not quantized
  (``localize_sfm(..., raw_query_points=True)``);
- ``nothing quantized``: PnP on the raw query points and the exact 3D points
  of their raw database partners (the floor set by the jitter alone).

Sampling: ``scatter`` (each pair has its own random points) and ``grid``
(an image's points repeat across the pairs where it comes first, 8-px lattice).

python benchmarks/bench_localization.py [--scenes 3] [--num_queries 10] \
    [--jitter 0.5 1.0] [--num_points 400] [--sampling scatter grid]
"""

import argparse
import logging
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import pycolmap

from p2p_hloc import localize_sfm, logger, triangulation
from p2p_hloc.confs import confs
from p2p_hloc.eval.poses import evaluate, pose_error
from p2p_hloc.io import parse_pairs, parse_queries
from p2p_hloc.synthetic import (
    View,
    generate_scene,
    intersect,
    read_views,
    room,
    simulate_matches,
    write_dense_matches,
)

METHODS = {
    "cluster": confs["patch2pix_aachen"]["quantization"],
    "immatch": confs["patch2pix_aachen_immatch"]["quantization"],
}
GRID = 8.0
Errors = List[Tuple[float, float]]  # (cm, deg) per query


def simulate(views, pairs, num_points, jitter, grid, rng) -> List[dict]:
    planes = room()
    return [
        simulate_matches(planes, views[a], views[b], num_points, jitter, rng, grid)
        for a, b in pairs
    ]


def unquantized(scene, views: Dict[str, View], pairs, raw) -> Errors:
    """PnP on raw query points and the exact 3D points of their partners."""
    config = localize_sfm.pose_config(12.0)
    planes = room()
    errors = []
    for name, camera in parse_queries(scene["queries"]):
        p2d, p3d = [], []
        for (q, r), m in zip(pairs, raw):
            if q == name:
                ref = views[r]
                rays = ref.rays(m["keypoints1"])
                depth, _, _ = intersect(planes, ref.center, rays)
                hit = np.isfinite(depth)
                p2d.append(m["keypoints0"][hit])
                p3d.append(ref.center + depth[hit, None] * rays[hit])
        ret = localize_sfm.estimate_pose(
            np.concatenate(p2d),
            np.concatenate(p3d),
            pycolmap.Camera(**camera),
            config,
        )
        est = localize_sfm.pose_tuple(ret["cam_from_world"])
        t, r = pose_error(est, (views[name].qvec, views[name].t))
        errors.append((100 * t, r))
    return errors


def run_scene(
    out: Path, seed: int, num_queries: int, num_points: int, jitter, grid
) -> Dict[str, Errors]:
    """Per-query errors of every row on one generated scene."""
    scene = generate_scene(
        out / "scene", num_queries=num_queries, seed=seed, render_images=False
    )
    views = {v.name: v for v in read_views(scene)}
    rng = np.random.default_rng(seed)
    db_pairs, loc_pairs = parse_pairs(scene["pairs_db"]), parse_pairs(
        scene["pairs_query"]
    )
    db_raw = simulate(views, db_pairs, num_points, jitter, grid, rng)
    loc_raw = simulate(views, loc_pairs, num_points, jitter, grid, rng)
    errors = {}
    for method, quant in METHODS.items():
        feats, sfm = out / f"feats-{method}.h5", out / f"sfm-{method}"
        db_matches, loc_matches = out / f"db-{method}.h5", out / f"loc-{method}.h5"
        write_dense_matches(db_pairs, db_raw, feats, db_matches, quant)
        triangulation.main(
            sfm,
            scene["reference"],
            scene["images"],
            scene["pairs_db"],
            feats,
            db_matches,
        )
        write_dense_matches(loc_pairs, loc_raw, feats, loc_matches, quant)
        for raw in (False, True):
            results = out / f"results-{method}-{raw}.txt"
            localize_sfm.main(
                sfm,
                scene["queries"],
                scene["pairs_query"],
                feats,
                loc_matches,
                results,
                raw_query_points=raw,
                radius=quant["radius"],
                min_score=quant["min_score"],
            )
            report = evaluate(results, scene["ground_truth"], [], scene["queries"])
            errors[method + (" + raw query" if raw else "")] = [
                (100 * e["translation_m"], e["rotation_deg"])
                for e in report["errors"].values()
            ]
    errors["nothing quantized"] = unquantized(scene, views, loc_pairs, loc_raw)
    return errors


def table(rows: Dict[str, Errors]) -> str:
    lines = [f"{'':<22} {'median cm':>10} {'median deg':>11} {'(1cm,0.1deg)':>13}"]
    for row, e in rows.items():
        t, r = np.array(e).T
        ok = np.mean((t <= 1.0) & (r <= 0.1))
        lines.append(
            f"{row:<22} {np.median(t):>10.3f} {np.median(r):>11.4f} {100 * ok:>12.1f}%"
        )
    return "\n".join(lines)


def main(
    scenes: int,
    num_queries: int,
    num_points: int,
    jitter: List[float],
    sampling: List[str],
    outputs: Optional[Path],
) -> None:
    logger.setLevel(logging.WARNING)
    print(
        f"{scenes} scenes x {num_queries} queries, {num_points} simulated matches "
        "per pair, success: within (1 cm, 0.1 deg)"
    )
    for mode in sampling:
        for sigma in jitter:
            rows: Dict[str, Errors] = {}
            for seed in range(scenes):
                with tempfile.TemporaryDirectory(dir=outputs) as tmp:
                    grid = GRID if mode == "grid" else None
                    found = run_scene(
                        Path(tmp), seed, num_queries, num_points, sigma, grid
                    )
                for row, e in found.items():
                    rows.setdefault(row, []).extend(e)
            print(f"\n{mode}, jitter {sigma} px, {len(rows['cluster'])} queries")
            print(table(rows))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=3)
    parser.add_argument("--num_queries", type=int, default=10)
    parser.add_argument("--num_points", type=int, default=400)
    parser.add_argument("--jitter", type=float, nargs="+", default=[0.5, 1.0])
    parser.add_argument(
        "--sampling",
        nargs="+",
        choices=["scatter", "grid"],
        default=["scatter", "grid"],
    )
    parser.add_argument("--outputs", type=Path, help="folder for temporary files")
    main(**vars(parser.parse_args()))
