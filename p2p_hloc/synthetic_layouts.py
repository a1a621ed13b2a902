"""Generated datasets in the real layouts of Aachen Day-Night v1.0 / v1.1 and
InLoc, small enough for tests, with ground-truth query poses.

The scenes are those of ``p2p_hloc.synthetic`` (a textured room rendered from
known cameras); this module writes them the way the benchmarks ship:

- ``aachen_v1_1``: ``images_upright/{db,query/day/milestone,query/night/nexus5x}``,
  ``3D-models/aachen_v_1_1/`` (binary COLMAP model with 3D points, like the
  shipped SIFT model), ``queries/{day,night}_time_queries_with_intrinsics.txt``;
- ``aachen_v1_0``: the same images, ``3D-models/aachen_cvpr2018_db.nvm``,
  ``3D-models/database_intrinsics.txt`` and ``aachen.db`` (a COLMAP database
  that only gives image and camera ids, not in NVM order);
- ``inloc``: ``query/iphone7``, ``database/cutouts`` with ``.jpg.mat`` and
  ``database/alignments`` (``synthetic.generate_inloc_scene``).

Each writes hloc's retrieval pairs next to the dataset
(``pairs/<dataset>/pairs-query-netvlad<k>.txt``, nearest database images
standing in for NetVLAD) and the ground truth (results format, basenames).
Cameras are SIMPLE_RADIAL with no distortion (Aachen's model); night queries
are darker and bluer.
"""

import argparse
import logging
import sys
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np
import pycolmap

from .console import run_cli
from .io import write_pairs, write_poses
from .pairs_from_covisibility import covisible_pairs
from .synthetic import (
    DB_POSES,
    FOCAL_RATIO,
    View,
    _nearest,
    _random_poses,
    generate_inloc_scene,
    look,
    render,
    room,
    world_points,
)

logger = logging.getLogger("p2p_hloc")

NIGHT = np.array([0.45, 0.5, 0.65])  # RGB gain of the night queries


def camera(view: View, camera_id: int) -> pycolmap.Camera:
    """SIMPLE_RADIAL ``f cx cy k`` (k = 0) of a view."""
    return pycolmap.Camera(
        model="SIMPLE_RADIAL",
        width=view.width,
        height=view.height,
        params=[view.focal, view.width / 2, view.height / 2, 0.0],
        camera_id=camera_id,
    )


def camera_line(name: str, cam: pycolmap.Camera) -> str:
    """``name MODEL W H params`` (hloc's queries and database intrinsics)."""
    params = " ".join(map(str, cam.params))
    return f"{name} {cam.model.name} {cam.width} {cam.height} {params}"


def aachen_views(
    width: int, height: int, num_day: int, num_night: int, seed: int
) -> Tuple[List[View], List[View]]:
    """Database views ``db/<id>.jpg`` and day / night query views named as in
    Aachen (``query/day/milestone/...``, ``query/night/nexus5x/IMG_...``)."""
    focal = FOCAL_RATIO * width
    db = [
        View(f"db/{1040 + 3 * i}.jpg", width, height, focal, *look(c, yaw, pitch))
        for i, (c, yaw, pitch) in enumerate(DB_POSES)
    ]
    poses = _random_poses(
        np.random.default_rng(seed), num_day + num_night, (-2.5, 2.5), (1.2, 2.8), 20, 5
    )
    names = [
        f"query/day/milestone/2010-10-30_17-47-{25 + i:02d}.jpg" for i in range(num_day)
    ]
    names += [
        f"query/night/nexus5x/IMG_20161227_1724{i:02d}.jpg" for i in range(num_night)
    ]
    queries = [
        View(name, width, height, focal, *look(c, yaw, pitch))
        for name, (c, yaw, pitch) in zip(names, poses)
    ]
    return db, queries


def scene_points(views: Sequence[View], step: int = 16) -> np.ndarray:
    """``(N, 3)`` world points seen by the views on a grid of ``step`` px."""
    planes = room()
    xyz = [world_points(planes, v)[step // 2 :: step, step // 2 :: step] for v in views]
    xyz = np.concatenate([x.reshape(-1, 3) for x in xyz])
    return xyz[np.isfinite(xyz).all(-1)]


def observations(view: View, points: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Indices of the points inside the view (the room occludes nothing from
    inside it) and their ``(K, 2)`` pixel coordinates (corner convention)."""
    uv, depth = view.project(points)
    inside = (depth > 0) & (uv >= 0).all(-1) & (uv < [view.width, view.height]).all(-1)
    return np.flatnonzero(inside), uv[inside]


def reference_model(
    views: Sequence[View], points: np.ndarray
) -> pycolmap.Reconstruction:
    """A COLMAP model of the views (one camera each, ids from 1) with the
    points and their observations, like a SIFT reference model."""
    rec = pycolmap.Reconstruction()
    tracks: List[List[Tuple[int, int]]] = [[] for _ in points]
    for i, view in enumerate(views, 1):
        rec.add_camera_with_trivial_rig(camera(view, i))
        idx, uv = observations(view, points)
        image = pycolmap.Image(name=view.name, keypoints=uv, camera_id=i, image_id=i)
        pose = pycolmap.Rigid3d(pycolmap.Rotation3d(view.R), view.t)
        rec.add_image_with_trivial_frame(image, pose)
        for k, j in enumerate(idx):
            tracks[j].append((i, k))
    for xyz, obs in zip(points, tracks):
        if len(obs) >= 2:
            track = pycolmap.Track()
            for image_id, k in obs:
                track.add_element(image_id, k)
            rec.add_point3D(xyz, track, np.full(3, 128, np.uint8))
    return rec


def write_nvm(rec: pycolmap.Reconstruction, path: Path) -> Path:
    """The model as NVM_V3: per image ``name f qw qx qy qz cx cy cz k 0``, per
    point ``x y z r g b n (image_index feature_index u v)*n`` with u, v from
    the principal point."""
    images = sorted(rec.images.values(), key=lambda im: im.name)
    index = {im.image_id: i for i, im in enumerate(images)}
    lines = ["NVM_V3", "", str(len(images))]
    for im in images:
        q = im.cam_from_world().rotation.quat[[3, 0, 1, 2]]
        c = im.projection_center()
        f = rec.cameras[im.camera_id].params[0]
        lines.append(" ".join(map(str, [im.name, f, *q, *c, 0, 0])))
    lines += ["", str(rec.num_points3D())]
    for point in rec.points3D.values():
        obs = []
        for e in point.track.elements:
            im = rec.images[e.image_id]
            cam = rec.cameras[im.camera_id]
            u, v = im.points2D[e.point2D_idx].xy - [
                cam.principal_point_x,
                cam.principal_point_y,
            ]
            obs += [index[e.image_id], e.point2D_idx, u, v]
        fields = [*point.xyz, *point.color, len(point.track.elements), *obs]
        lines.append(" ".join(map(str, fields)))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def write_database(rec: pycolmap.Reconstruction, path: Path, first_id: int) -> Path:
    """A COLMAP database naming the model's images, with image and camera ids
    ``first_id, first_id + 1, ...`` in reverse name order."""
    path.unlink(missing_ok=True)
    images = sorted(rec.images.values(), key=lambda im: im.name, reverse=True)
    with pycolmap.Database.open(path) as db:
        for i, im in enumerate(images):
            cam = im.camera
            db.write_camera(
                pycolmap.Camera(
                    model=cam.model,
                    width=cam.width,
                    height=cam.height,
                    params=cam.params,
                    camera_id=first_id + i,
                ),
                use_camera_id=True,
            )
            image = pycolmap.Image(
                name=im.name, camera_id=first_id + i, image_id=first_id + i
            )
            db.write_image(image, use_image_id=True)
    return path


def write_images(views: Sequence[View], image_dir: Path) -> None:
    """Render the views as JPEGs (night queries darker and bluer)."""
    planes = room()
    for view in views:
        image = render(planes, view).astype(np.float64)
        if "/night/" in view.name:
            image = image * NIGHT
        path = image_dir / view.name
        path.parent.mkdir(parents=True, exist_ok=True)
        bgr = np.clip(image, 0, 255).round().astype(np.uint8)[..., ::-1]
        cv2.imwrite(str(path), bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])


def _aachen(
    output: Path,
    dataset_name: str,
    num_day: int,
    num_night: int,
    num_loc: int,
    width: int,
    height: int,
    seed: int,
) -> Tuple[Dict[str, Path], pycolmap.Reconstruction]:
    """Images, queries, retrieval pairs and ground truth shared by both
    Aachen versions; returns the paths and the reference model."""
    dataset = output / dataset_name
    paths = dict(
        dataset=dataset,
        pairs=output / "pairs" / dataset_name,
        ground_truth=output / "query_poses_gt.txt",
    )
    db, queries = aachen_views(width, height, num_day, num_night, seed)
    write_images([*db, *queries], dataset / "images_upright")
    rec = reference_model(db, scene_points(db))
    (dataset / "queries").mkdir(parents=True, exist_ok=True)
    for time in ("day", "night"):
        lines = [
            camera_line(q.name, camera(q, 1)) for q in queries if f"/{time}/" in q.name
        ]
        path = dataset / f"queries/{time}_time_queries_with_intrinsics.txt"
        path.write_text("".join(f"{line}\n" for line in lines))
    paths["pairs"].mkdir(parents=True, exist_ok=True)
    write_pairs(paths["pairs"] / "pairs-db-covis20.txt", covisible_pairs(rec, 20))
    write_pairs(
        paths["pairs"] / f"pairs-query-netvlad{num_loc}.txt",
        [(q.name, r.name) for q in queries for r in _nearest(q, db, 4)],
    )
    write_poses(paths["ground_truth"], {q.name: (q.qvec, q.t) for q in queries})
    return paths, rec


def aachen_v1_1(
    output: Path,
    num_day: int = 2,
    num_night: int = 1,
    width: int = 320,
    height: int = 240,
    seed: int = 0,
) -> Dict[str, Path]:
    """Aachen Day-Night v1.1 in ``output/aachen_v1.1`` (the COLMAP reference
    model in ``3D-models/aachen_v_1_1``), its pairs in
    ``output/pairs/aachen_v1.1``; returns ``dataset``, ``pairs``,
    ``ground_truth``."""
    paths, rec = _aachen(
        Path(output), "aachen_v1.1", num_day, num_night, 50, width, height, seed
    )
    model = paths["dataset"] / "3D-models/aachen_v_1_1"
    model.mkdir(parents=True, exist_ok=True)
    rec.write(model)
    return paths


def aachen_v1_0(
    output: Path,
    num_day: int = 2,
    num_night: int = 1,
    width: int = 320,
    height: int = 240,
    seed: int = 0,
) -> Dict[str, Path]:
    """Aachen Day-Night v1.0 in ``output/aachen`` (NVM, database intrinsics,
    ``aachen.db``), its pairs in ``output/pairs/aachen``; returns
    ``dataset``, ``pairs``, ``ground_truth``."""
    paths, rec = _aachen(
        Path(output), "aachen", num_day, num_night, 50, width, height, seed
    )
    models = paths["dataset"] / "3D-models"
    write_nvm(rec, models / "aachen_cvpr2018_db.nvm")
    images = sorted(rec.images.values(), key=lambda im: im.name)
    (models / "database_intrinsics.txt").write_text(
        "".join(f"{camera_line(im.name, im.camera)}\n" for im in images)
    )
    write_database(rec, paths["dataset"] / "aachen.db", first_id=101)
    return paths


def inloc(
    output: Path,
    num_queries: int = 3,
    width: int = 320,
    height: int = 240,
    seed: int = 0,
) -> Dict[str, Path]:
    """InLoc in ``output/inloc``, its pairs in ``output/pairs/inloc``
    (``pairs-query-netvlad40.txt``); returns ``dataset``, ``pairs``,
    ``ground_truth`` and the queries' ``focal_length`` (not InLoc's 3136 px:
    the queries are small)."""
    output = Path(output)
    scene = generate_inloc_scene(
        output / "inloc", num_queries=num_queries, width=width, height=height, seed=seed
    )
    pairs = output / "pairs" / "inloc"
    pairs.mkdir(parents=True, exist_ok=True)
    scene["pairs_query"].replace(pairs / "pairs-query-netvlad40.txt")
    scene["ground_truth"].replace(output / "query_poses_gt.txt")
    return dict(
        dataset=scene["dataset"],
        pairs=pairs,
        ground_truth=output / "query_poses_gt.txt",
        focal_length=scene["focal_length"],
    )


LAYOUTS = {"aachen": aachen_v1_0, "aachen_v1.1": aachen_v1_1, "inloc": inloc}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m p2p_hloc.synthetic_layouts", description=__doc__.splitlines()[0]
    )
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--dataset", choices=list(LAYOUTS), default="aachen_v1.1")
    p.add_argument("--seed", type=int, default=0)
    return p


def run(args: argparse.Namespace) -> None:
    paths = LAYOUTS[args.dataset](args.output, seed=args.seed)
    logger.info("Wrote %s (pairs in %s).", paths["dataset"], paths["pairs"])


if __name__ == "__main__":
    sys.exit(run_cli(parser(), run))
