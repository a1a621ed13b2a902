"""Pose evaluation: the details the mutation run (tools/mutation.py) found
untested: error lines, comments, rotation errors at 0 and 180 degrees,
thresholds hit exactly, ambiguous names, empty inputs, the report and the
command line."""

import json

import numpy as np
import pytest

from p2p_hloc.console import InputError, run_cli
from p2p_hloc.eval.poses import (
    evaluate,
    format_report,
    main,
    parser,
    pose_error,
    read_poses,
    read_query_names,
)
from p2p_hloc.io import write_poses

I = np.array([1.0, 0, 0, 0])
# a quaternion (normalized by scipy) whose rotation matrix, rounded, gives
# cos = 1 + 7e-16 for the same pose and -1 - 2e-16 against itself turned by
# 180 degrees about z (found by search): the cosine must be clipped to [-1, 1]
# or the angle is NaN
Q = np.array([-0.38, -0.15, 0.66, -0.18])
Q_TURNED = np.array([0.18, -0.66, -0.15, -0.38])  # Q * (0, 0, 0, 1)


def quat(axis, deg):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    half = np.radians(deg) / 2
    return np.r_[np.cos(half), np.sin(half) * axis]


def test_rotation_errors():
    t = np.zeros(3)
    for deg in (0.5, 30.0, 90.0, 135.0):
        _, r = pose_error((quat([1, 2, 3], deg), t), (I, t))
        assert r == pytest.approx(deg, abs=1e-9)
    assert pose_error((Q, t), (Q, t)) == (0.0, 0.0)
    t_err, r_err = pose_error((Q_TURNED, t), (Q, t))
    assert t_err == 0.0 and r_err == pytest.approx(180.0)


def test_translation_error_is_between_centres():
    R90 = quat([0, 0, 1], 90)  # centre -R^T t: (0, 1, 0) for t = (1, 0, 0)
    t, _ = pose_error((R90, np.array([1.0, 0, 0])), (R90, np.zeros(3)))
    assert t == pytest.approx(1.0)
    t, _ = pose_error((R90, np.array([1.0, 0, 0])), (I, np.array([0.0, -1, 0])))
    assert t == pytest.approx(0.0, abs=1e-12)


def test_read_poses_lines(tmp_path):
    path = tmp_path / "res.txt"
    path.write_text("a.jpg 1 0 0 0 1 2 3\n\n  \nb.jpg 1 0 0 0 4 5 6\n")
    poses = read_poses(path)
    assert list(poses) == ["a.jpg", "b.jpg"]
    np.testing.assert_array_equal(poses["b.jpg"][1], [4, 5, 6])
    path.write_text("a.jpg 1 0 0 0 1 2 3\nb.jpg 1 0 0 0 4 5\n")
    with pytest.raises(InputError) as e:
        read_poses(path)
    assert str(e.value) == (
        f"{path}:2: expected 'name qw qx qy qz tx ty tz': 'b.jpg 1 0 0 0 4 5'"
    )


def test_indented_comments_are_not_queries(tmp_path):
    path = tmp_path / "q.txt"
    path.write_text("  # name model\nq/a.jpg PINHOLE\n\t# other\nq/b.jpg\n")
    assert read_query_names(path) == ["q/a.jpg", "q/b.jpg"]


@pytest.fixture
def gt(tmp_path):
    """A basename shared by two ground-truth images (day/x.jpg, night/x.jpg)."""
    poses = {
        "query/day/x.jpg": (I, np.zeros(3)),
        "query/night/x.jpg": (I, np.array([1.0, 0, 0])),
        "query/day/y.jpg": (I, np.zeros(3)),
    }
    path = tmp_path / "gt.txt"
    path.write_text(
        "".join(f"{n} 1 0 0 0 {' '.join(map(str, t))}\n" for n, (_, t) in poses.items())
    )
    return path


def test_full_query_names_resolve_shared_basenames(gt, tmp_path):
    results = write_poses(tmp_path / "r.txt", {"x.jpg": (I, np.zeros(3))})
    report = evaluate(results, gt, [(0.1, 1.0)], ["query/night/x.jpg"])
    assert report["errors"]["x.jpg"]["translation_m"] == pytest.approx(1.0)
    report = evaluate(results, gt, [(0.1, 1.0)], ["query/day/x.jpg"])
    assert report["errors"]["x.jpg"]["translation_m"] == 0.0


def test_messages_name_the_ambiguity_and_the_list(gt, tmp_path):
    results = write_poses(tmp_path / "r.txt", {"x.jpg": (I, np.zeros(3))})
    with pytest.raises(InputError) as e:
        evaluate(results, gt, [(0.1, 1.0)])
    assert str(e.value) == (
        f"{gt} has no pose for 1 of the 1 queries, e.g. x.jpg "
        "(ambiguous: query/day/x.jpg, query/night/x.jpg)"
    )
    with pytest.raises(InputError) as e:
        evaluate(results, gt, [(0.1, 1.0)], ["z.jpg"])
    assert str(e.value) == f"{gt} has no pose for 1 of the 1 queries, e.g. z.jpg"
    names = ["query/day/x.jpg", "query/night/x.jpg"]
    with pytest.raises(InputError) as e:
        evaluate(results, gt, [(0.1, 1.0)], names)
    assert str(e.value) == (
        f"{names}: query/day/x.jpg and query/night/x.jpg are both written as "
        "x.jpg in the results (use prepend_camera_name)"
    )


def test_messages_name_the_queries_file(gt, tmp_path):
    results = write_poses(tmp_path / "r.txt", {"y.jpg": (I, np.zeros(3))})
    queries = tmp_path / "queries.txt"
    queries.write_text("query/day/x.jpg\nquery/night/x.jpg\n")
    with pytest.raises(InputError, match=f"^{queries}: query/day/x.jpg and"):
        evaluate(results, gt, [(0.1, 1.0)], queries)


def test_empty_results_and_no_queries(gt, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    report = evaluate(empty, gt, [(0.1, 1.0)], ["query/day/y.jpg"])
    assert report["missing"] == ["y.jpg"] and report["recall"] == {"0.1m,1.0deg": 0}
    report = evaluate(empty, gt, [(0.1, 1.0)])
    assert report["num_queries"] == 0 and report["recall"] == {"0.1m,1.0deg": 0.0}


def test_errors_on_the_thresholds_count_as_within(gt, tmp_path):
    turned = quat([0, 1, 0], 2.0)
    results = write_poses(
        tmp_path / "r.txt", {"y.jpg": (turned, -qmat(turned) @ [0.25, 0, 0])}
    )
    t, r = pose_error(read_poses(results)["y.jpg"], (I, np.zeros(3)))
    report = evaluate(results, gt, [(t, r), (t, r - 1e-9), (t - 1e-9, r)])
    assert list(report["recall"].values()) == [1.0, 0.0, 0.0]


def qmat(q):
    from p2p_hloc.eval.poses import qvec_to_matrix

    return qvec_to_matrix(q)


def test_report_text():
    report = dict(
        errors={"q.jpg": dict(translation_m=0.01234, rotation_deg=1.5)},
        num_queries=2,
        missing=["r.jpg"],
        recall={"0.25m,2.0deg": 0.5, "0.5m,5.0deg": 0.25},
    )
    assert format_report(report) == "\n".join(
        [
            "query                         t (m)    R (deg)",
            "q.jpg                        0.0123     1.5000",
            "2 queries evaluated, 1 without a pose (counted as failures)",
            "within 0.25m,2.0deg: 50.0%",
            "within 0.5m,5.0deg: 25.0%",
        ]
    )


def test_main_writes_the_report(gt, tmp_path):
    results = write_poses(tmp_path / "r.txt", {"y.jpg": (I, np.zeros(3))})
    out = tmp_path / "report.json"
    report = main(results, gt, "inloc", out, None)
    assert json.loads(out.read_text()) == report
    assert list(report["recall"]) == ["0.25m,10.0deg", "0.5m,10.0deg", "1.0m,10.0deg"]


def test_command_line_arguments(gt, tmp_path, capsys):
    results = write_poses(tmp_path / "r.txt", {"y.jpg": (I, np.zeros(3))})
    run = lambda a: main(**vars(a))  # noqa: E731
    base = ["--results", str(results), "--ground_truth", str(gt)]
    out = tmp_path / "cli.json"
    assert run_cli(parser(), run, base + ["--output", str(out)]) == 0
    assert json.loads(out.read_text())["num_queries"] == 1
    for argv in (base[:2], base[2:], base + ["--benchmark", "robotcar"]):
        with pytest.raises(SystemExit) as e:
            run_cli(parser(), run, argv)
        assert e.value.code == 2
    assert "invalid choice: 'robotcar'" in capsys.readouterr().err
