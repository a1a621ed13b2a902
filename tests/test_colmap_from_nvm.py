import sqlite3

import numpy as np
import pycolmap
from helpers_localization import assert_hloc_signature

from p2p_hloc import colmap_from_nvm
from p2p_hloc.console import run_cli
from p2p_hloc.synthetic import View, look
from p2p_hloc.synthetic_layouts import (
    aachen_views,
    camera_line,
    reference_model,
    scene_points,
    write_nvm,
)


def test_signature_is_hlocs():
    assert_hloc_signature(
        colmap_from_nvm.main, "nvm, intrinsics, database, output, skip_points=False"
    )


def assert_same_poses(rec: pycolmap.Reconstruction, views) -> None:
    assert sorted(im.name for im in rec.images.values()) == sorted(
        v.name for v in views
    )
    for view in views:
        pose = rec.find_image_with_name(view.name).cam_from_world()
        np.testing.assert_allclose(pose.rotation.matrix(), view.R, atol=1e-9)
        np.testing.assert_allclose(pose.translation, view.t, atol=1e-9)


def test_aachen_layout_in_hlocs_order(aachen_v1_0_layout, tmp_path):
    """hloc's call of the Aachen pipeline, positional: nvm, intrinsics,
    aachen.db, output. Poses are those the layout was rendered from, ids come
    from the database (not the NVM order), points reproject exactly."""
    models = aachen_v1_0_layout["dataset"] / "3D-models"
    out = colmap_from_nvm.main(
        models / "aachen_cvpr2018_db.nvm",
        models / "database_intrinsics.txt",
        aachen_v1_0_layout["dataset"] / "aachen.db",
        tmp_path / "sfm_sift",
    )
    rec = pycolmap.Reconstruction(out)
    db, _ = aachen_views(320, 240, 2, 1, seed=0)  # the layout's defaults
    assert_same_poses(rec, db)
    names = sorted((v.name for v in db), reverse=True)  # the database's ids
    assert {rec.images[101 + i].name for i in range(len(db))} == set(names)
    assert all(rec.images[101 + i].name == n for i, n in enumerate(names))
    assert rec.num_points3D() > 1000
    rec.update_point_3d_errors()
    assert rec.compute_mean_reprojection_error() < 1e-6

    argv = ["--nvm", str(models / "aachen_cvpr2018_db.nvm"), "--intrinsics"]
    argv += [str(models / "database_intrinsics.txt"), "--output"]
    argv += [str(tmp_path / "no_points"), "--skip_points"]  # ids in NVM order
    run = lambda args: colmap_from_nvm.main(**vars(args))  # noqa: E731
    assert run_cli(colmap_from_nvm.parser(), run, argv) == 0
    rec = pycolmap.Reconstruction(tmp_path / "no_points")
    assert rec.num_points3D() == 0
    assert all(im.num_points2D() == 0 for im in rec.images.values())
    assert rec.images[1].name == "db/1040.jpg"
    assert_same_poses(rec, db)


def test_old_style_database(tmp_path):
    """A database with only an images table (names and ids) is enough."""
    views = [
        View(f"db/{i}.jpg", 480, 360, 373.0, *look((x, 0, 1), yaw))
        for i, (x, yaw) in enumerate([(-2, 10), (0, 0), (2, -10)])
    ]
    ref = reference_model(views, scene_points(views, step=48))
    nvm = write_nvm(ref, tmp_path / "model.nvm")
    intrinsics = tmp_path / "intrinsics.txt"
    intrinsics.write_text(
        "".join(f"{camera_line(im.name, im.camera)}\n" for im in ref.images.values())
    )
    db = tmp_path / "a.db"
    with sqlite3.connect(db) as con:
        con.execute(
            "CREATE TABLE images (image_id INTEGER, name TEXT, camera_id INTEGER)"
        )
        con.executemany(
            "INSERT INTO images VALUES (?, ?, ?)",
            [(100 + i, v.name, 7) for i, v in enumerate(views)],
        )
    rec = pycolmap.Reconstruction(
        colmap_from_nvm.main(nvm, intrinsics, db, tmp_path / "sfm")
    )
    assert set(rec.images) == {100, 101, 102} and set(rec.cameras) == {7}
    assert rec.num_points3D() == ref.num_points3D() > 50
    assert_same_poses(rec, views)
