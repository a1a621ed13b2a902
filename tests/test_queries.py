import pytest

from p2p_hloc.console import run_cli
from p2p_hloc.io import PairsError, parse_queries
from p2p_hloc.io.text import camera_models

GOOD = "query/q.png PINHOLE 480 360 373.3 373.3 240 180"


def test_camera_models_come_from_pycolmap():
    models = camera_models()
    assert models["SIMPLE_PINHOLE"] == "f, cx, cy"
    assert len(models["OPENCV"].split(",")) == 8 and "INVALID" not in models


def test_valid_lines(tmp_path):
    path = tmp_path / "q.txt"
    path.write_text(
        f"# comment\n\n{GOOD}\nq2.jpg SIMPLE_RADIAL 640 480 500 320 240 0.01"
    )
    (name, cam), (_, cam2) = parse_queries(path)
    assert name == "query/q.png" and cam["model"] == "PINHOLE"
    assert (cam["width"], cam["height"]) == (480, 360)
    assert cam["params"].tolist() == [373.3, 373.3, 240, 180]
    assert len(cam2["params"]) == 4


def test_names_read_as_the_pairs_files_read_them(tmp_path):
    """``./query//q.png`` is the image the pairs files call ``query/q.png``."""
    path = tmp_path / "q.txt"
    path.write_text("./query//q.png PINHOLE 480 360 373.3 373.3 240 180\n")
    assert parse_queries(path)[0][0] == "query/q.png"
    path.write_bytes(b"q\xe9.png PINHOLE 480 360 373.3 373.3 240 180\n")
    with pytest.raises(PairsError, match=f"{path}:1: not UTF-8"):
        parse_queries(path)


@pytest.mark.parametrize(
    "line, message",
    [
        ("q.png PINHOLE 480 360 373.3", "PINHOLE takes 4 finite parameters"),
        ("q.png PINHOLE 480 360 1 1 240 180 0", "PINHOLE takes 4 finite parameters"),
        ("q.png SIMPLE_PINHOLE 480 360 nan 240 180", "takes 3 finite parameters"),
        ("q.png PINHOL 480 360 1 1 240 180", "unknown camera model 'PINHOL'"),
        ("q.png PINHOLE 480.5 360 1 1 240 180", "invalid literal"),
        ("q.png PINHOLE 0 360 1 1 240 180", "image size 0 x 360"),
        ("q.png PINHOLE 480", "expected 'name MODEL W H params...'"),
        ("../q.png PINHOLE 480 360 1 1 240 180", "has a '..' component"),
        ("/q.png PINHOLE 480 360 1 1 240 180", "is an absolute path"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "q.txt"
    path.write_text(f"{GOOD}\n{line}\n")
    with pytest.raises(PairsError, match=message) as e:
        parse_queries(path)
    assert str(e.value).startswith(f"{path}:2: ")


def test_localization_refuses_bad_intrinsics_before_any_work(tmp_path, capsys):
    """The issue's case: one parameter for PINHOLE used to localize every query
    at a fallback pose with exit 0."""
    from p2p_hloc import localize_sfm

    queries = tmp_path / "queries.txt"
    queries.write_text("q.png PINHOLE 480 360 373.3\n")
    args = ["--reference_sfm", str(tmp_path), "--queries", str(queries)]
    for key in ("retrieval", "features", "matches"):
        (tmp_path / key).touch()
        args += [f"--{key}", str(tmp_path / key)]
    args += ["--results", str(tmp_path / "results.txt")]
    parser = localize_sfm.parser()
    parser.prog = "localize_sfm"
    assert run_cli(parser, lambda a: localize_sfm.main(**vars(a)), args) == 2
    err = capsys.readouterr().err
    assert f"{queries}:1: PINHOLE takes 4 finite parameters" in err
    assert not (tmp_path / "results.txt").exists()
