"""Synthetic localization scenes: textured planes rendered from known cameras.

A room of flat panels (walls and floor) textured with the photographs that
scikit-image ships (``skimage.data``) is ray-cast from database and query
cameras, giving images with exact per-pixel depth. Two layouts are written:

- ``generate_scene``: an Aachen-like dataset (images, a COLMAP reference model
  with poses and no points, pairs files, queries with intrinsics, ground truth);
- ``generate_inloc_scene``: an InLoc-like dataset (query/iphone7, cutouts with
  ``XYZcut`` ``.mat`` files in scan coordinates, scan alignment files).

Units are metres; cameras follow COLMAP (x right, y down, z forward), pixel
coordinates the corner convention (the centre of the top-left pixel is (0.5, 0.5)).
"""

import argparse
import logging
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import pycolmap
import scipy.io
from scipy.spatial.transform import Rotation

from .console import run_cli
from .eval.poses import qvec_to_matrix, read_poses
from .io import parse_queries, write_pairs, write_poses

logger = logging.getLogger("p2p_hloc")

FOCAL_RATIO = 28 / 36  # InLoc's iPhone focal length over image width
SUPERSAMPLING = 2


@dataclass
class Plane:
    """A textured rectangle: ``origin + a * u + b * v`` for a, b in [0, 1]."""

    origin: np.ndarray
    u: np.ndarray
    v: np.ndarray
    texture: np.ndarray  # (H, W, 3) float32 in [0, 1]

    @property
    def normal(self) -> np.ndarray:
        n = np.cross(self.u, self.v)
        return n / np.linalg.norm(n)


@dataclass
class View:
    """A pinhole camera with its world-to-camera pose."""

    name: str
    width: int
    height: int
    focal: float
    R: np.ndarray  # cam_from_world rotation
    t: np.ndarray  # cam_from_world translation

    @property
    def K(self) -> np.ndarray:
        return np.array(
            [
                [self.focal, 0, self.width / 2],
                [0, self.focal, self.height / 2],
                [0, 0, 1],
            ]
        )

    @property
    def center(self) -> np.ndarray:
        return -self.R.T @ self.t

    @property
    def pose(self) -> np.ndarray:
        """``(4, 4)`` cam_from_world."""
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = self.R, self.t
        return T

    def project(self, xyz: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Pixel coordinates ``(N, 2)`` and depths ``(N,)`` of world points
        ``(N, 3)``."""
        p = xyz @ self.R.T + self.t
        return p[:, :2] / p[:, 2:] @ self.K[:2, :2].T + self.K[:2, 2], p[:, 2]

    def rays(self, uv: np.ndarray) -> np.ndarray:
        """World directions ``(..., 3)`` through pixels ``uv`` ``(..., 2)``,
        scaled to unit depth along the optical axis."""
        xy = (np.asarray(uv, np.float64) - self.K[:2, 2]) / self.focal
        return np.concatenate([xy, np.ones(xy.shape[:-1] + (1,))], -1) @ self.R

    @property
    def qvec(self) -> np.ndarray:
        """Quaternion (w, x, y, z) of ``R``."""
        x, y, z, w = Rotation.from_matrix(self.R).as_quat()
        return np.array([w, x, y, z])

    def camera_line(self) -> str:
        """``PINHOLE W H fx fy cx cy`` as in hloc's queries_with_intrinsics."""
        p = (self.focal, self.focal, self.width / 2, self.height / 2)
        return f"PINHOLE {self.width} {self.height} " + " ".join(map(str, p))


def _texture(name: str) -> np.ndarray:
    import skimage.data

    im = getattr(skimage.data, name)()
    if im.ndim == 2:
        im = np.stack([im] * 3, -1)
    return im[..., :3].astype(np.float32) / 255


def room() -> List[Plane]:
    """A 12 x 8 m room open at the camera side: three panels on the back wall,
    two on each side wall, and a floor; no ceiling (rays there hit nothing)."""
    ex, ey, ez = np.eye(3)
    top, floor = -2.5, 1.5
    h = floor - top
    planes = []
    for i, tex in enumerate(("astronaut", "coffee", "rocket")):  # back wall, z = 8
        planes.append(
            Plane(np.array([-6.0 + 4 * i, top, 8.0]), 4 * ex, h * ey, _texture(tex))
        )
    for i, tex in enumerate(("chelsea", "immunohistochemistry")):  # left wall, x = -6
        planes.append(
            Plane(np.array([-6.0, top, 4.0 * i]), 4 * ez, h * ey, _texture(tex))
        )
    for i, tex in enumerate(("hubble_deep_field", "camera")):  # right wall, x = 6
        planes.append(
            Plane(np.array([6.0, top, 8.0 - 4 * i]), -4 * ez, h * ey, _texture(tex))
        )
    planes.append(
        Plane(np.array([-6.0, floor, 8.0]), 12 * ex, -8 * ez, _texture("brick"))
    )
    return planes


def raycast(
    planes: Sequence[Plane], view: View, scale: int = 1
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Depth ``(H, W)`` (inf where no plane), index of the hit plane and the hit's
    plane coordinates ``(H, W, 2)``, at ``scale`` times the view's resolution."""
    w, h = view.width * scale, view.height * scale
    u, v = np.meshgrid((np.arange(w) + 0.5) / scale, (np.arange(h) + 0.5) / scale)
    return intersect(planes, view.center, view.rays(np.stack([u, v], -1)))


def intersect(
    planes: Sequence[Plane], center: np.ndarray, rays: np.ndarray
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest plane hit by rays ``(..., 3)`` (world directions) from ``center``:
    the ray parameter (inf: no hit; the depth for unit-depth rays), the index
    of the plane (-1) and the hit's plane coordinates ``(..., 2)``."""
    c = np.asarray(center, np.float64)
    depth = np.full(rays.shape[:-1], np.inf)
    index = np.full(rays.shape[:-1], -1)
    coords = np.zeros(rays.shape[:-1] + (2,))
    for i, p in enumerate(planes):
        n = p.normal
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (n @ (p.origin - c)) / (rays @ n)
            x = c + t[..., None] * rays - p.origin
            a = x @ p.u / (p.u @ p.u)
            b = x @ p.v / (p.v @ p.v)
        hit = (t > 1e-6) & (t < depth) & (a >= 0) & (a <= 1) & (b >= 0) & (b <= 1)
        depth[hit], index[hit] = t[hit], i
        coords[hit] = np.stack([a[hit], b[hit]], -1)
    return depth, index, coords


def render(planes: Sequence[Plane], view: View) -> np.ndarray:
    """RGB uint8 image of the view (supersampled, dark grey where no plane)."""
    _, index, coords = raycast(planes, view, SUPERSAMPLING)
    image = np.full(index.shape + (3,), 0.15, np.float32)
    for i, p in enumerate(planes):
        m = index == i
        th, tw = p.texture.shape[:2]
        mx = (coords[..., 0] * tw - 0.5).astype(np.float32)
        my = (coords[..., 1] * th - 0.5).astype(np.float32)
        sampled = cv2.remap(
            p.texture, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
        )
        image[m] = sampled[m] * (0.75 + 0.05 * (i % 5))
    image = cv2.resize(image, (view.width, view.height), interpolation=cv2.INTER_AREA)
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


def world_points(planes: Sequence[Plane], view: View) -> np.ndarray:
    """``(H, W, 3)`` world coordinates seen at each pixel centre (NaN: nothing)."""
    depth, _, _ = raycast(planes, view)
    u, v = np.meshgrid(np.arange(view.width) + 0.5, np.arange(view.height) + 0.5)
    xyz_cam = np.stack(
        [
            (u - view.width / 2) / view.focal,
            (v - view.height / 2) / view.focal,
            np.ones_like(u),
        ],
        -1,
    )
    xyz_cam = xyz_cam * np.where(np.isfinite(depth), depth, np.nan)[..., None]
    return (xyz_cam - view.t) @ view.R


def look(
    center: Sequence[float], yaw: float, pitch: float = 0.0
) -> Tuple[np.ndarray, np.ndarray]:
    """cam_from_world (R, t) of a camera at ``center`` turned by ``yaw`` (degrees,
    positive to the right) and ``pitch`` (degrees, positive up) from +z."""
    rot = lambda axis, deg: Rotation.from_euler(
        axis, deg, degrees=True
    ).as_matrix()  # noqa: E731
    R = (rot("y", yaw) @ rot("x", pitch)).T
    center = np.asarray(center, float)
    return R, -R @ center


def _views(prefix: str, poses, width: int, height: int, ext: str) -> List[View]:
    focal = FOCAL_RATIO * width
    return [
        View(f"{prefix}{i:03d}.{ext}", width, height, focal, *look(c, yaw, pitch))
        for i, (c, yaw, pitch) in enumerate(poses)
    ]


def _nearest(query: View, refs: Sequence[View], k: int) -> List[View]:
    """The ``k`` references closest in position and viewing direction."""

    def dist(r: View) -> float:
        return np.linalg.norm(r.center - query.center) + 4 * (1 - r.R[2] @ query.R[2])

    return sorted(refs, key=dist)[:k]


def write_model(views: Sequence[View], path: Path) -> Path:
    """A COLMAP model with one PINHOLE camera per view, poses and no points."""
    rec = pycolmap.Reconstruction()
    for i, view in enumerate(views, 1):
        cam = pycolmap.Camera(
            model="PINHOLE",
            width=view.width,
            height=view.height,
            params=[view.focal, view.focal, view.width / 2, view.height / 2],
            camera_id=i,
        )
        rec.add_camera_with_trivial_rig(cam)
        image = pycolmap.Image(name=view.name, camera_id=i, image_id=i)
        pose = pycolmap.Rigid3d(pycolmap.Rotation3d(view.R), view.t)
        rec.add_image_with_trivial_frame(image, pose)
    path.mkdir(parents=True, exist_ok=True)
    rec.write(path)
    return path


def _random_poses(rng, n: int, x_range, z_range, max_yaw: float, max_pitch: float):
    return [
        (
            (rng.uniform(*x_range), rng.uniform(-0.3, 0.3), rng.uniform(*z_range)),
            rng.uniform(-max_yaw, max_yaw),
            rng.uniform(-max_pitch, max_pitch),
        )
        for _ in range(n)
    ]


DB_POSES = [  # (centre, yaw, pitch): two rows of four facing the back wall
    ((x, 0.0, z), yaw, 0.0)
    for z in (1.0, 3.0)
    for x, yaw in ((-3, 15), (-1, -20), (1, 20), (3, -15))
]
SIDE_POSES = [((-2.0, 0.0, z), -90.0, 0.0) for z in (2.0, 3.0, 4.0, 5.0, 6.0)]


def generate_scene(
    output: Path,
    num_queries: int = 4,
    width: int = 480,
    height: int = 360,
    num_loc: int = 4,
    num_covis: int = 4,
    seed: int = 0,
    overwrite: bool = False,
    clusters: int = 1,
    render_images: bool = True,
) -> Dict[str, Path]:
    """Write an Aachen-like dataset to ``output`` and return its paths:
    ``images`` (``db/*.png``, ``query/*.png``), ``reference`` (COLMAP model,
    no points), ``pairs_db``, ``pairs_query``, ``queries`` (with intrinsics) and
    ``ground_truth`` (results format). An existing complete scene is kept
    unless ``overwrite``.

    ``clusters=2`` adds a second group of database images (``SIDE_POSES``,
    facing the left wall) with covisibility pairs only among themselves, so
    that a model triangulated from ``pairs_db`` has two disjoint covisibility
    clusters; each query retrieves its ``num_loc`` nearest images of the first
    group and every image of the second. ``render_images=False`` writes no
    images (for matches simulated from the geometry)."""
    output = Path(output)
    paths = dict(
        images=output / "images",
        reference=output / "sfm_reference",
        pairs_db=output / f"pairs-db-covis{num_covis}.txt",
        pairs_query=output / f"pairs-query-nearest{num_loc}.txt",
        queries=output / "queries_with_intrinsics.txt",
        ground_truth=output / "query_poses_gt.txt",  # written last: marks completion
    )
    if paths["ground_truth"].exists() and not overwrite:
        logger.info("Scene exists at %s: skipping.", output)
        return paths
    if clusters not in (1, 2):
        raise ValueError(f"clusters must be 1 or 2, not {clusters}")
    rng = np.random.default_rng(seed)
    planes = room()
    groups = [_views("db/", DB_POSES, width, height, "png")]
    if clusters == 2:
        side = _views("db/", SIDE_POSES, width, height, "png")
        for i, view in enumerate(side, len(groups[0])):
            view.name = f"db/{i:03d}.png"
        groups.append(side)
    db = [view for group in groups for view in group]
    queries = _views(
        "query/",
        _random_poses(rng, num_queries, (-2.5, 2.5), (1.2, 2.8), 20, 5),
        width,
        height,
        "png",
    )
    paths["images"].mkdir(parents=True, exist_ok=True)
    for view in (*db, *queries) if render_images else ():
        path = paths["images"] / view.name
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), render(planes, view)[..., ::-1])
    write_model(db, paths["reference"])
    write_pairs(
        paths["pairs_db"],
        [
            (v.name, r.name)
            for group in groups
            for v in group
            for r in _nearest(v, [d for d in group if d is not v], num_covis)
        ],
    )
    write_pairs(
        paths["pairs_query"],
        [
            (q.name, r.name)
            for q in queries
            for r in _nearest(q, groups[0], num_loc) + sum(groups[1:], [])
        ],
    )
    paths["queries"].write_text(
        "".join(f"{q.name} {q.camera_line()}\n" for q in queries)
    )
    write_poses(paths["ground_truth"], {q.name: (q.qvec, q.t) for q in queries})
    logger.info(
        "Wrote a scene with %d db images and %d queries to %s.",
        len(db),
        len(queries),
        output,
    )
    return paths


def simulate_matches(
    planes: Sequence[Plane],
    view0: View,
    view1: View,
    num_points: int,
    jitter: float = 0.5,
    rng: Optional[np.random.Generator] = None,
    grid: Optional[float] = None,
) -> Dict[str, np.ndarray]:
    """Raw matches of a dense matcher between two views, from the geometry.

    Up to ``num_points`` random points of ``view0`` that see a plane point
    which ``view1`` sees too (inside, unoccluded), with Gaussian noise of
    ``jitter`` px (std, per axis) on both sides. The points of ``view0`` are
    uniform over the image (each pair has its own: a matcher whose points
    scatter across pairs) or, with ``grid``, centres of a ``grid``-px lattice
    (an image's points repeat across the pairs where it is ``view0``, up to
    the jitter). Returns ``keypoints0``, ``keypoints1`` ``(M, 2)`` (corner
    convention), ``scores`` ``(M,)`` in [0.3, 1) and the image sizes
    ``size0``, ``size1`` ``(W, H)``."""
    rng = np.random.default_rng(0) if rng is None else rng
    size0 = np.array([view0.width, view0.height])
    size1 = np.array([view1.width, view1.height])
    if grid is None:
        uv0 = rng.uniform(0, size0, (4 * num_points, 2))
    else:
        u, v = (np.arange(0.5, n / grid) * grid for n in size0)
        uv0 = np.stack(np.meshgrid(u, v), -1).reshape(-1, 2)
        uv0 = uv0[rng.permutation(len(uv0))[: 4 * num_points]]
    depth0, _, _ = intersect(planes, view0.center, view0.rays(uv0))
    uv0 = uv0[np.isfinite(depth0)]
    xyz = view0.center + depth0[np.isfinite(depth0), None] * view0.rays(uv0)
    uv1, z1 = view1.project(xyz)
    inside = (z1 > 0) & np.all((uv1 >= 0) & (uv1 < size1), -1)
    depth1, _, _ = intersect(planes, view1.center, view1.rays(uv1))
    visible = inside & (np.abs(depth1 - z1) < 1e-6 * np.abs(z1) + 1e-9)
    uv0, uv1 = uv0[visible][:num_points], uv1[visible][:num_points]
    return dict(
        keypoints0=uv0 + rng.normal(0, jitter, uv0.shape),
        keypoints1=uv1 + rng.normal(0, jitter, uv1.shape),
        scores=rng.uniform(0.3, 1.0, len(uv0)),
        size0=size0,
        size1=size1,
    )


def write_dense_matches(
    pairs: Sequence[Tuple[str, str]],
    raw: Sequence[Dict[str, np.ndarray]],
    features: Path,
    matches: Path,
    quantization: Dict,
) -> Tuple[Path, Path]:
    """Quantize raw pair matches (``simulate_matches``'s dicts) into hloc's
    features and matches files the way ``match_pairs`` does (``quantization``
    as in a conf; images already in ``features`` keep their keypoints; each
    pair group keeps its raw ``keypoints0``, ``keypoints1``, ``scores``)."""
    from .io.raw import RawMatches
    from .quantize import write_phase

    features, matches = Path(features), Path(matches)
    with tempfile.TemporaryDirectory(dir=matches.parent) as folder:
        store = RawMatches(Path(folder))
        for (n0, n1), r in zip(pairs, raw):
            store.write(n0, n1, r)  # corner convention in, the raw format out
        write_phase(
            list(pairs),
            [store.path(*p) for p in pairs],
            features,
            matches,
            radius=quantization["radius"],
            min_score=quantization.get("min_score", 0.0),
            method=quantization.get("method", "cluster"),
            psize=quantization.get("psize", 48),
        )
    return features, matches


def read_views(paths: Dict[str, Path]) -> List[View]:
    """The database and query views of a scene from ``generate_scene``'s paths
    (PINHOLE cameras with the principal point at the image centre)."""
    views = []
    for image in pycolmap.Reconstruction(paths["reference"]).images.values():
        cam, pose = image.camera, image.cam_from_world()
        views.append(
            View(
                image.name,
                cam.width,
                cam.height,
                cam.params[0],
                pose.rotation.matrix(),
                pose.translation,
            )
        )
    gt = read_poses(paths["ground_truth"])  # keyed by basename
    for name, cam in parse_queries(paths["queries"]):
        qvec, t = gt[Path(name).name]
        views.append(
            View(
                name,
                cam["width"],
                cam["height"],
                cam["params"][0],
                qvec_to_matrix(qvec),
                t,
            )
        )
    return sorted(views, key=lambda v: v.name)


def scan_alignment_text(T: np.ndarray) -> str:
    """An InLoc transformation file: the 4x4 ``P_after_GICP`` on lines 7-10."""
    rows = lambda M: "".join(
        " ".join(f"{x:.10f}" for x in r) + "\n" for r in M
    )  # noqa: E731
    return (
        f"# synthetic scan alignment\nP_before_GICP\n{rows(T)}P_after_GICP\n{rows(T)}"
    )


def generate_inloc_scene(
    output: Path,
    num_queries: int = 3,
    width: int = 480,
    height: int = 360,
    num_loc: int = 4,
    seed: int = 0,
    overwrite: bool = False,
) -> Dict[str, Path]:
    """Write an InLoc-like dataset to ``output``: ``query/iphone7/IMG_*.JPG``,
    ``database/cutouts/DUC1/{scan}/DUC_cutout_{scan}_{yaw}_0.jpg`` with
    ``.jpg.mat`` (``XYZcut`` in scan coordinates, NaN where nothing is seen) and
    ``database/alignments/DUC1/transformations/DUC_trans_{scan}.txt``. Returns
    ``dataset``, ``pairs_query``, ``ground_truth`` and the query ``focal_length``."""
    output = Path(output)
    paths = dict(
        dataset=output,
        pairs_query=output / f"pairs-query-nearest{num_loc}.txt",
        ground_truth=output / "query_poses_gt.txt",  # written last: marks completion
        focal_length=FOCAL_RATIO * width,
    )
    if paths["ground_truth"].exists() and not overwrite:
        logger.info("Scene exists at %s: skipping.", output)
        return paths
    rng = np.random.default_rng(seed)
    planes = room()
    cutouts = []
    for scan, center in (("024", (-1.5, 0.0, 1.5)), ("025", (1.5, 0.0, 1.5))):
        T = np.eye(4)  # world_from_scan: a yaw and an offset, as in real scans
        T[:3, :3] = Rotation.from_euler(
            "y", rng.uniform(-180, 180), degrees=True
        ).as_matrix()
        T[:3, 3] = rng.uniform(-10, 10, 3)
        align = (
            output / f"database/alignments/DUC1/transformations/DUC_trans_{scan}.txt"
        )
        align.parent.mkdir(parents=True, exist_ok=True)
        align.write_text(scan_alignment_text(T))
        for yaw in (-30, 0, 30):
            name = f"database/cutouts/DUC1/{scan}/DUC_cutout_{scan}_{yaw}_0.jpg"
            view = View(name, width, height, FOCAL_RATIO * width, *look(center, yaw))
            cutouts.append(view)
            xyz = world_points(planes, view) - T[:3, 3]
            xyz = xyz @ T[:3, :3]  # scan_from_world
            (output / name).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(output / name), render(planes, view)[..., ::-1])
            scipy.io.savemat(str(output / (name + ".mat")), {"XYZcut": xyz})
    queries = _views(
        "query/iphone7/IMG_",
        _random_poses(rng, num_queries, (-2, 2), (1.2, 2.5), 20, 5),
        width,
        height,
        "JPG",
    )
    for q in queries:
        (output / q.name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(
            str(output / q.name),
            render(planes, q)[..., ::-1],
            [cv2.IMWRITE_JPEG_QUALITY, 95],
        )
    write_pairs(
        paths["pairs_query"],
        [(q.name, r.name) for q in queries for r in _nearest(q, cutouts, num_loc)],
    )
    write_poses(paths["ground_truth"], {q.name: (q.qvec, q.t) for q in queries})
    return paths


def main(
    output: Path,
    inloc: bool = False,
    num_queries: int = 4,
    seed: int = 0,
    overwrite: bool = False,
    clusters: int = 1,
) -> Path:
    """Generate a scene (``inloc`` for the InLoc layout) into ``output``."""
    if inloc:
        generate_inloc_scene(
            output, num_queries=num_queries, seed=seed, overwrite=overwrite
        )
    else:
        generate_scene(
            output,
            num_queries=num_queries,
            seed=seed,
            overwrite=overwrite,
            clusters=clusters,
        )
    return Path(output)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--inloc", action="store_true")
    p.add_argument("--num_queries", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--clusters", type=int, choices=[1, 2], default=1)
    return p


if __name__ == "__main__":
    sys.exit(run_cli(parser(), lambda args: main(**vars(args))))
