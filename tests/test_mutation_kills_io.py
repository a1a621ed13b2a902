"""hloc's files (p2p_hloc.io): exact messages, line numbers, dtypes and
layouts where the mutation run (tools/mutation.py) found them untested."""

import uuid

import h5py
import numpy as np
import pytest

from p2p_hloc.io import (
    PairsError,
    canonical_name,
    from_hloc_coords,
    get_keypoints,
    get_matches,
    get_raw_matches,
    list_h5_names,
    parse_pairs,
    parse_queries,
    parse_retrieval,
    to_hloc_coords,
    write_keypoints,
    write_matches,
    write_pairs,
    write_poses,
)
from p2p_hloc.io.h5 import MatchesWriter
from p2p_hloc.io.lock import file_lock
from p2p_hloc.io.text import camera_models


def test_canonical_names():
    assert canonical_name("./a//b/./c.png") == "a/b/c.png"
    assert canonical_name("a.png") == "a.png"
    for name, message in (
        ("/x/a.png", "'/x/a.png' is an absolute path (names are relative)"),
        ("x/../a.png", "'x/../a.png' has a '..' component"),
        ("././/", "'././/' names no file"),
        ("", "'' names no file"),
    ):
        with pytest.raises(ValueError) as e:
            canonical_name(name)
        assert str(e.value) == message


def test_pairs_errors_name_file_and_line(tmp_path):
    path = tmp_path / "pairs.txt"
    for text, message in (
        (
            "a b\n\n# c\na b # x\n",
            "4: a '#' comment must have a line of its own (hloc's pairs format "
            "has no comments after the names): 'a b # x'",
        ),
        (
            "a b\na b c\n",
            "2: expected 'name0 name1', got 3 fields: 'a b c' (names with spaces "
            "are not supported by hloc's pairs format)",
        ),
        ("a\n", "1: expected 'name0 name1', got 1 fields: 'a'"),
        ("a b #x\n", "1: a '#' comment must have a line of its own"),
        ("a b\n\n a /b\n", "3: '/b' is an absolute path (names are relative)"),
    ):
        path.write_text(text)
        with pytest.raises(PairsError) as e:
            parse_pairs(path)
        assert str(e.value).startswith(f"{path}:{message}")


def test_pairs_comments_and_blank_lines(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text("\n  # a comment\na b # kept: a third field\n")
    with pytest.raises(PairsError):
        parse_pairs(path)
    path.write_text("#x y\n\n   \n\ta\tb\t\nc d\n#\n")
    assert parse_pairs(path) == [("a", "b"), ("c", "d")]


def test_non_utf8_pairs_name_the_line_and_byte(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_bytes(b"a b\nc d\n\n\xe9 f\n")
    with pytest.raises(PairsError) as e:
        parse_pairs(path)
    assert str(e.value) == (
        f"{path}:4: not UTF-8 text (byte 0xe9); save the file as UTF-8"
    )
    path.write_bytes(b"\xffa b\n")
    with pytest.raises(PairsError, match=r"pairs.txt:1: not UTF-8 text \(byte 0xff\)"):
        parse_pairs(path)


def test_non_canonical_names_are_counted(tmp_path, logs):
    path = tmp_path / "pairs.txt"
    path.write_text("a b\n./a b\nc d\nc x//y\n")
    assert parse_pairs(path) == [("a", "b"), ("a", "b"), ("c", "d"), ("c", "x/y")]
    assert "2 lines name images in non-canonical form" in logs.text
    assert "(e.g. line 2: ./a b -> a b)" in logs.text


def test_retrieval_keeps_the_file_order(tmp_path):
    path = write_pairs(
        tmp_path / "r.txt", [("q2", "b"), ("q1", "c"), ("q2", "a"), ("q1", "c")]
    )
    assert path.read_text() == "q2 b\nq1 c\nq2 a\nq1 c"
    retrieval = parse_retrieval(path)
    assert retrieval == {"q2": ["b", "a"], "q1": ["c", "c"]}
    assert list(retrieval) == ["q2", "q1"] and type(retrieval) is dict


def test_camera_models():
    models = camera_models()
    assert models["PINHOLE"] == "fx, fy, cx, cy"
    assert "INVALID" not in models and len(models) > 10
    assert camera_models() is models


def test_queries(tmp_path):
    path = tmp_path / "q.txt"
    path.write_text(
        "  # name MODEL W H params\n\n q/a.png SIMPLE_PINHOLE 4 3 5 2 1.5 \n"
        "b.png PINHOLE 1 1 1 2 0.5 0.5\n"
    )
    (a, cam), (b, cam_b) = parse_queries(path)
    assert (a, b) == ("q/a.png", "b.png")
    assert cam["model"] == "SIMPLE_PINHOLE" and (cam["width"], cam["height"]) == (4, 3)
    assert cam["params"].dtype == np.float64 and cam["params"].tolist() == [5, 2, 1.5]
    assert set(cam) == {"model", "width", "height", "params"}
    assert (cam_b["width"], cam_b["height"]) == (1, 1)


@pytest.mark.parametrize(
    "line, message",
    [
        ("q.png PINHOLE 4", "expected 'name MODEL W H params...': 'q.png PINHOLE 4'"),
        (
            "q.png PINHOLE 4 3",
            "PINHOLE takes 4 finite parameters (fx, fy, cx, cy), got 0",
        ),
        (
            "q.png PINHOLE 4 3 1 1 2 1.5 7",
            "PINHOLE takes 4 finite parameters (fx, fy, cx, cy), got 5: "
            "'q.png PINHOLE 4 3 1 1 2 1.5 7'",
        ),
        ("q.png PINHOLE 4 3 1 inf 2 1", "PINHOLE takes 4 finite parameters"),
        ("q.png PINHOLE 4 0 1 1 2 1", "image size 4 x 0: 'q.png PINHOLE 4 0 1 1 2 1'"),
        ("q.png PINHOLE -4 3 1 1 2 1", "image size -4 x 3"),
        ("q.png PINHOLE 4 3 1 1 2 x", "could not convert string to float: 'x': "),
        ("q.png pinhole 4 3 1 1 2 1", "unknown camera model 'pinhole' (pycolmap's "),
    ],
)
def test_query_errors(tmp_path, line, message):
    path = tmp_path / "q.txt"
    path.write_text(f"a.png PINHOLE 4 3 1 1 2 1.5\n#\n{line}\n")
    with pytest.raises(PairsError) as e:
        parse_queries(path)
    assert str(e.value).startswith(f"{path}:3: {message}")


def test_unknown_model_lists_pycolmaps(tmp_path):
    path = tmp_path / "q.txt"
    path.write_text("q.png PINHOL 4 3 1 1 2 1\n")
    with pytest.raises(PairsError) as e:
        parse_queries(path)
    assert str(e.value).endswith(f"(pycolmap's models: {', '.join(camera_models())})")


def test_write_poses(tmp_path):
    q = np.array([1.0, 0.0, 0.0, 0.0])
    poses = {"query/day/a.jpg": (q, np.array([1, 2.5, -3])), "b.jpg": (q, np.zeros(3))}
    path = write_poses(tmp_path / "r.txt", poses)
    assert path == tmp_path / "r.txt"
    assert path.read_text() == (
        "a.jpg 1.0 0.0 0.0 0.0 1.0 2.5 -3.0\nb.jpg 1.0 0.0 0.0 0.0 0.0 0.0 0.0\n"
    )
    write_poses(path, poses, prepend_camera_name=True)
    assert path.read_text().splitlines()[0].startswith("day/a.jpg 1.0 ")
    assert path.read_text().splitlines()[1].startswith("b.jpg 1.0 ")
    write_poses(path, {})
    assert path.read_text() == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.txt"]


def test_coordinate_conversions_are_float64():
    xy = np.array([[0.5, 1.25], [10.0, 3.0]], np.float32)
    for convert, shift in ((to_hloc_coords, -0.5), (from_hloc_coords, 0.5)):
        out = convert(xy)
        assert out.dtype == np.float64
        np.testing.assert_array_equal(out, xy.astype(np.float64) + shift)


def test_keypoints_layout(tmp_path):
    """hloc's layout: float32 keypoints and scores (ones by default), int64
    image_size; a name that starts or ends with an 'X' is kept whole."""
    path = tmp_path / "f.h5"
    write_keypoints(path, "Xa.pngX", np.array([[1.5, 2.0], [3.0, 4.0]]), (64, 48))
    size = np.array([32, 24], np.int32)
    write_keypoints(path, "b.png", [[1, 2]], size, scores=np.array([0.25]))
    assert list_h5_names(path) == {"Xa.pngX", "b.png"}
    with h5py.File(path, "r") as f:
        a, b = f["Xa.pngX"], f["b.png"]
        assert a["keypoints"].dtype == a["scores"].dtype == np.float32
        np.testing.assert_array_equal(a["scores"][()], [1, 1])
        np.testing.assert_array_equal(b["scores"][()], [0.25])
        assert b["scores"].dtype == np.float32 and b["image_size"].dtype == np.int64
        assert a["image_size"].dtype == np.int64
        np.testing.assert_array_equal(a["image_size"][()], [64, 48])
        # files do not depend on the time they were written
        plist = a["keypoints"].id.get_create_plist()
        assert not plist.get_obj_track_times()
    np.testing.assert_array_equal(get_keypoints(path, "b.png"), [[1, 2]])


def test_matches_layout_and_lookups(tmp_path):
    """matches0 / matching_scores0 and extra arrays (any dtype, scalars
    too) as written; rewriting a pair replaces it; a reversed lookup swaps
    the columns, not the rows."""
    path = tmp_path / "m.h5"
    view = np.arange(12.0).reshape(3, 4)[:, ::2]  # not contiguous
    # a dtype this process has never written (the writer caches h5 types)
    new = np.array([(1, 2.5)], [(f"a{uuid.uuid4().hex}", "<i2"), ("b", "<f4")])
    extra = dict(size=np.int64(3), flags=np.array([1, 2], ">i2"), view=view, new=new)
    write_matches(path, "q/a.png", "db/b.png", [2, -1, 0], [0.5, 0, 0.25], **extra)
    write_matches(path, "q/a.png", "db/b.png", [1, -1, 0], [0.75, 0, 0.25], **extra)
    with h5py.File(path, "r") as f:
        g = f["q-a.png/db-b.png"]
        np.testing.assert_array_equal(g["matches0"][()], [1, -1, 0])
        np.testing.assert_array_equal(g["matching_scores0"][()], [0.75, 0, 0.25])
        assert g["size"][()] == 3 and g["size"].shape == ()
        assert g["flags"].dtype == np.dtype(">i2")
        np.testing.assert_array_equal(g["flags"][()], [1, 2])
        np.testing.assert_array_equal(g["view"][()], view)
        assert g["new"].dtype == new.dtype and g["new"][()].tolist() == [(1, 2.5)]
    pairs, scores = get_matches(path, "q/a.png", "db/b.png")
    np.testing.assert_array_equal(pairs, [[0, 1], [2, 0]])
    np.testing.assert_array_equal(scores, [0.75, 0.25])
    pairs, _ = get_matches(path, "db/b.png", "q/a.png")
    np.testing.assert_array_equal(pairs, [[1, 0], [0, 2]])


def test_writers_take_an_open_file(tmp_path):
    path = tmp_path / "open.h5"
    with h5py.File(path, "a") as f:
        write_keypoints(f, "a.png", [[1, 2]], (8, 8))
        write_matches(f, "a.png", "b.png", [0], [1.0])
        writer = MatchesWriter(f)
        writer.add("a.png", "c.png", [-1], [0.0], replace=False)
        writer.add("a.png", "c.png", [0], [0.5])  # replaces by default
    assert list_h5_names(path) == {"a.png", "a.png/b.png", "a.png/c.png"}
    assert get_matches(path, "a.png", "c.png")[0].tolist() == [[0, 0]]


def test_raw_matches_beside_matches0(tmp_path):
    path = tmp_path / "raw.h5"
    kp0, kp1 = np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([[5.0, 6.0], [7.0, 8]])
    scores = np.array([0.5, 0.75])
    raw = dict(keypoints0=kp0, keypoints1=kp1, scores=scores)
    write_matches(path, "a.png", "b.png", [0, 1], [1, 1], **raw)
    write_matches(path, "a.png", "c.png", [0], [1])
    for got, want in zip(get_raw_matches(path, "a.png", "b.png"), (kp0, kp1, scores)):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(get_raw_matches(path, "b.png", "a.png"), (kp1, kp0, scores)):
        np.testing.assert_array_equal(got, want)
    assert get_raw_matches(path, "c.png", "a.png") is None


def test_lock_file_name(tmp_path):
    """The lock of an output is ``<output>.lock`` beside it (documented: other
    tools and users look for it there)."""
    with file_lock(tmp_path / "sub" / "features.h5", "testing") as path:
        assert path == tmp_path / "sub" / "features.h5.lock"
        assert path.read_text().endswith(": testing")


def test_read_model_names_the_folder(tmp_path):
    """A missing folder, one without model files and one with damaged files
    give a ModelError (an InputError: one line, exit 2 in the commands)
    naming the folder; a model reads from a Path or a str."""
    import pycolmap

    from p2p_hloc.console import InputError
    from p2p_hloc.io import ModelError, read_model

    missing = tmp_path / "nowhere"
    with pytest.raises(
        ModelError, match=rf"^COLMAP model folder not found: {missing}$"
    ):
        read_model(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(
        InputError, match=rf"^cannot read the COLMAP model in {empty}: .*do not exist"
    ):
        read_model(empty)
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for name in ("cameras.bin", "images.bin", "points3D.bin"):
        (damaged / name).write_bytes(b"\x07" * 5)
    with pytest.raises(
        ModelError, match=rf"^cannot read the COLMAP model in {damaged}: "
    ):
        read_model(damaged)
    rec = pycolmap.Reconstruction()
    rec.add_camera(
        pycolmap.Camera(
            model="SIMPLE_PINHOLE",
            width=64,
            height=48,
            params=[50, 32, 24],
            camera_id=3,
        )
    )
    good = tmp_path / "good"
    good.mkdir()
    rec.write(good)
    for path in (good, str(good)):
        assert list(read_model(path).cameras) == [3]
