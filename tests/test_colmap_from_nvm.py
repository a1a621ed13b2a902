import sqlite3

import numpy as np
import pycolmap

from p2p_hloc import colmap_from_nvm
from p2p_hloc.synthetic import View, look, write_model


def write_nvm(rec: pycolmap.Reconstruction, path, intrinsics):
    """An NVM file and intrinsics list of a model (with made-up points)."""
    images = sorted(rec.images.values(), key=lambda im: im.name)
    index = {im.image_id: i for i, im in enumerate(images)}
    lines = ["NVM_V3", "", str(len(images))]
    for im in images:
        pose = im.cam_from_world()
        q = pose.rotation.quat[[3, 0, 1, 2]]
        c = im.projection_center()
        lines.append(f"{im.name} 1.0 " + " ".join(map(str, [*q, *c])) + " 0 0")
    rng = np.random.default_rng(0)
    points = rng.uniform([-3, -1, 6], [3, 1, 7.9], (20, 3))
    lines += ["", str(len(points))]
    for xyz in points:
        obs = []
        for im in images:
            cam = rec.cameras[im.camera_id]
            uv = cam.img_from_cam(im.cam_from_world() * xyz[None])[0]
            if 0 < uv[0] < cam.width and 0 < uv[1] < cam.height:
                d = uv - [cam.principal_point_x, cam.principal_point_y]
                obs.append(f"{index[im.image_id]} 0 {d[0]} {d[1]}")
        lines.append(" ".join(map(str, xyz)) + f" 10 20 30 {len(obs)} " + " ".join(obs))
    path.write_text("\n".join(lines) + "\n")
    intrinsics.write_text(
        "".join(
            f"{im.name} {rec.cameras[im.camera_id].model.name} {rec.cameras[im.camera_id].width} "
            f"{rec.cameras[im.camera_id].height} "
            + " ".join(map(str, rec.cameras[im.camera_id].params))
            + "\n"
            for im in images
        )
    )
    return points


def test_nvm_roundtrip(tmp_path):
    views = [
        View(f"db/{i}.jpg", 480, 360, 373.0, *look((x, 0, 1), yaw))
        for i, (x, yaw) in enumerate([(-2, 10), (0, 0), (2, -10)])
    ]
    ref = pycolmap.Reconstruction(write_model(views, tmp_path / "ref"))
    nvm, intrinsics, db = (
        tmp_path / "model.nvm",
        tmp_path / "intrinsics.txt",
        tmp_path / "a.db",
    )
    points = write_nvm(ref, nvm, intrinsics)
    with sqlite3.connect(db) as con:  # an old-style database: only names and ids
        con.execute(
            "CREATE TABLE images (image_id INTEGER, name TEXT, camera_id INTEGER)"
        )
        con.executemany(
            "INSERT INTO images VALUES (?, ?, ?)",
            [(100 + i, im.name, 7) for i, im in enumerate(ref.images.values())],
        )
    out = colmap_from_nvm.main(nvm, intrinsics, tmp_path / "sfm", database=db)
    rec = pycolmap.Reconstruction(out)
    assert rec.num_images() == ref.num_images() and rec.num_points3D() == len(points)
    assert set(rec.images) == set(range(100, 100 + ref.num_images()))
    for im in ref.images.values():
        new = rec.find_image_with_name(im.name)
        np.testing.assert_allclose(
            new.cam_from_world().matrix(), im.cam_from_world().matrix(), atol=1e-9
        )
    rec.update_point_3d_errors()
    assert rec.compute_mean_reprojection_error() < 1e-6
