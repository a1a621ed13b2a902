"""Convert an NVM model (Aachen v1.0) and its intrinsics into a COLMAP model.

NVM (VisualSFM) stores per image ``name focal qw qx qy qz cx cy cz radial 0``
(world-to-camera rotation, camera centre) and per point ``x y z r g b n``
followed by ``n`` measurements ``image_index feature_index u v`` relative to
the image centre. The cameras come from ``database_intrinsics.txt`` (``name
MODEL W H params``); the optional COLMAP database (``aachen.db``) only gives
the image and camera ids, read with sqlite3 so that old schemas work.
Each image's 2D points are its NVM measurements (no padding keypoints).
"""

import argparse
import logging
import sqlite3
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import pycolmap
from tqdm import tqdm

from .console import InputError, run_cli
from .io import parse_queries
from .triangulation import MODEL_FILES

logger = logging.getLogger("p2p_hloc")


def read_nvm(path: Path) -> Tuple[List[Tuple[str, np.ndarray, np.ndarray]], List]:
    """Images ``[(name, qvec wxyz, centre)]`` and points
    ``[(xyz, rgb, [(image_index, u, v), ...])]`` (u, v from the image centre)."""
    tokens = iter(Path(path).read_text().split())
    if next(tokens) != "NVM_V3":
        raise InputError(f"{path} is not an NVM_V3 file")
    first = next(tokens)
    if first.startswith("FixedK"):  # optional "FixedK fx cx fy cy"
        for _ in range(4):
            next(tokens)
        first = next(tokens)
    images = []
    for _ in range(int(first)):
        name = next(tokens)
        v = np.array([next(tokens) for _ in range(10)], float)
        images.append((name, v[1:5], v[5:8]))
    points = []
    for _ in tqdm(range(int(next(tokens))), desc="read nvm"):
        v = np.array([next(tokens) for _ in range(7)], float)
        obs = [
            (
                int(next(tokens)),
                int(next(tokens)),
                float(next(tokens)),
                float(next(tokens)),
            )
            for _ in range(int(v[6]))
        ]
        points.append((v[:3], v[3:6], [(i, u, w) for i, _, u, w in obs]))
    return images, points


def read_db_ids(database: Path) -> Dict[str, Tuple[int, int]]:
    """``{name: (image_id, camera_id)}`` from a COLMAP database."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT name, image_id, camera_id FROM images").fetchall()
    return {name: (image_id, camera_id) for name, image_id, camera_id in rows}


def main(
    nvm: Path,
    intrinsics: Path,
    database: Optional[Path],
    output: Path,
    skip_points: bool = False,
    *,
    overwrite: bool = False,
) -> Path:
    """Write the COLMAP model of ``nvm`` to ``output`` and return it.

    Args (hloc's, in hloc's order):
        intrinsics: ``name MODEL W H params`` per database image.
        database: COLMAP database giving the image and camera ids (``None``:
            ids in NVM order from 1).
        skip_points: write the cameras and poses only (no points, no 2D
            points).
    Keyword-only (ours):
        overwrite: convert again when ``output`` holds a model.
    """
    output = Path(output)
    if all((output / f).exists() for f in MODEL_FILES) and not overwrite:
        logger.info("Model exists at %s: skipping.", output)
        return output
    for path in (nvm, intrinsics, database):
        if path is not None and not Path(path).exists():
            raise FileNotFoundError(f"input of colmap_from_nvm not found: {path}")
    cameras = dict(parse_queries(intrinsics))
    images, points = read_nvm(nvm)
    if skip_points:
        logger.info("Skipping the %d points of %s.", len(points), nvm)
        points = []
    ids = read_db_ids(database) if database else {}
    rec = pycolmap.Reconstruction()
    observations: List[List[Tuple[np.ndarray, int]]] = [[] for _ in images]
    for j, (_, _, obs) in enumerate(points):
        for i, u, v in obs:
            observations[i].append((np.array([u, v]), j))
    point_obs: List[List[Tuple[int, int]]] = [[] for _ in points]
    for i, (name, qvec, center) in enumerate(tqdm(images, desc="images")):
        if name not in cameras:
            raise InputError(f"image {name} of {nvm} has no intrinsics in {intrinsics}")
        image_id, camera_id = ids.get(name, (i + 1, i + 1))
        cam = pycolmap.Camera(**cameras[name], camera_id=camera_id)
        if not rec.exists_camera(camera_id):
            rec.add_camera_with_trivial_rig(cam)
        xy = np.array([o[0] for o in observations[i]]).reshape(-1, 2)
        xy = xy + [cam.principal_point_x, cam.principal_point_y]
        image = pycolmap.Image(
            name=name, keypoints=xy, camera_id=camera_id, image_id=image_id
        )
        rotation = pycolmap.Rotation3d(np.r_[qvec[1:], qvec[0]])
        R = rotation.matrix()
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(rotation, -R @ center))
        for k, (_, j) in enumerate(observations[i]):
            point_obs[j].append((image_id, k))
    for (xyz, rgb, _), obs in zip(tqdm(points, desc="points"), point_obs):
        track = pycolmap.Track()
        for image_id, k in obs:
            track.add_element(image_id, k)
        rec.add_point3D(xyz, track, rgb.astype(np.uint8))
    logger.info("Converted NVM model:\n%s", rec.summary())
    output.mkdir(parents=True, exist_ok=True)
    rec.write(output)
    return output


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m p2p_hloc.colmap_from_nvm", description=__doc__.splitlines()[0]
    )
    p.add_argument("--nvm", type=Path, required=True)
    p.add_argument("--intrinsics", type=Path, required=True)
    p.add_argument("--database", type=Path, help="aachen.db (image and camera ids)")
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--skip_points", action="store_true")
    p.add_argument("--overwrite", action="store_true")
    return p


if __name__ == "__main__":
    sys.exit(run_cli(parser(), lambda args: main(**vars(args))))
