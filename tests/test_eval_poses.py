import json
import subprocess
import sys

import numpy as np
import pytest

from p2p_hloc.console import InputError, run_cli
from p2p_hloc.eval.poses import THRESHOLDS, evaluate, main, parser, read_query_names
from p2p_hloc.io import write_poses

Q = np.array([1.0, 0, 0, 0])


def pose(x: float):
    return Q, np.array([x, 0.0, 0.0])


@pytest.fixture
def files(tmp_path):
    """Ground truth with 4 queries and 3 database images (as a dataset layout
    writer lists them), a queries file, and results with every query right."""
    queries = [f"query/day/q{i}.jpg" for i in range(4)]
    gt = {name: pose(i) for i, name in enumerate(queries)}
    gt.update({f"db/{i}.jpg": pose(10 + i) for i in range(3)})
    (tmp_path / "queries.txt").write_text(
        "# name model w h params\n"
        + "".join(f"{q} SIMPLE_PINHOLE 64 48 50 32 24\n" for q in queries)
    )
    return dict(
        gt=write_poses(tmp_path / "gt.txt", gt),
        queries=tmp_path / "queries.txt",
        results=write_poses(tmp_path / "res.txt", {q: gt[q] for q in queries}),
        root=tmp_path,
    )


def test_database_images_in_the_ground_truth_are_not_queries(files):
    """With every query right, the recall is 100% (it was 4 / 7 when every
    ground-truth line counted as a query)."""
    for queries in (None, files["queries"]):
        report = evaluate(files["results"], files["gt"], THRESHOLDS["aachen"], queries)
        assert report["num_queries"] == 4 and report["missing"] == []
        assert set(report["recall"].values()) == {1.0}


def test_missing_queries_count_as_failures(files, logs):
    results = write_poses(
        files["root"] / "part.txt",
        {f"query/day/q{i}.jpg": pose(i + 0.3 * (i == 1)) for i in range(2)},
    )
    report = evaluate(results, files["gt"], THRESHOLDS["aachen"], files["queries"])
    assert report["num_queries"] == 4 and report["missing"] == ["q2.jpg", "q3.jpg"]
    assert report["errors"]["q1.jpg"]["translation_m"] == pytest.approx(0.3)
    assert report["recall"] == {
        "0.25m,2.0deg": 0.25,
        "0.5m,5.0deg": 0.5,
        "5.0m,10.0deg": 0.5,
    }
    assert "2 of 4 queries have no pose" in logs.text
    # without the queries file only the results' own queries are evaluated
    report = evaluate(results, files["gt"], THRESHOLDS["aachen"])
    assert report["num_queries"] == 2 and report["recall"]["0.25m,2.0deg"] == 0.5


def test_query_names_from_any_list(files, tmp_path):
    (tmp_path / "night_queries.txt").write_text("query/night/n0.jpg\n\n")
    (tmp_path / "day_queries.txt").write_text("query/day/q0.jpg db/1.jpg\n" * 2)
    assert read_query_names(tmp_path / "*_queries.txt") == [
        "query/day/q0.jpg",
        "query/night/n0.jpg",
    ]
    assert read_query_names(files["queries"])[:2] == [
        "query/day/q0.jpg",
        "query/day/q1.jpg",
    ]
    with pytest.raises(FileNotFoundError, match="no queries file"):
        read_query_names(tmp_path / "none_*.txt")


def test_camera_names_and_ambiguities(files, tmp_path):
    """prepend_camera_name results compare on two components; a basename the
    results cannot tell apart, or a query without ground truth, is an error."""
    gt = {f"{cam}/0.jpg": pose(i) for i, cam in enumerate(["left", "right"])}
    gt_path = write_poses(tmp_path / "gt_cams.txt", gt, prepend_camera_name=True)
    results = write_poses(tmp_path / "cams.txt", gt, prepend_camera_name=True)
    report = evaluate(results, gt_path, THRESHOLDS["aachen"], list(gt))
    assert report["num_queries"] == 2 and report["recall"]["0.25m,2.0deg"] == 1
    with pytest.raises(InputError, match="both written as 0.jpg"):
        evaluate(files["results"], gt_path, THRESHOLDS["aachen"], list(gt))
    with pytest.raises(InputError, match="no pose for 1 of the 5 queries"):
        evaluate(
            files["results"],
            files["gt"],
            THRESHOLDS["aachen"],
            [f"query/day/q{i}.jpg" for i in range(5)],
        )


def test_cli(files):
    out = files["root"] / "report.json"
    args = [sys.executable, "-m", "p2p_hloc.eval.poses", "--results"]
    args += [str(files["results"]), "--ground_truth", str(files["gt"])]
    ok = subprocess.run(
        args + ["--queries", str(files["queries"]), "--output", str(out)],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    assert "4 queries evaluated, 0 without a pose" in ok.stderr
    assert json.loads(out.read_text())["num_queries"] == 4
    argv = args[3:] + ["--queries", "nowhere.txt"]
    assert run_cli(parser(), lambda a: main(**vars(a)), argv) == 2
    assert main(files["results"], files["gt"], queries=files["queries"])["recall"] == {
        "0.25m,2.0deg": 1.0,
        "0.5m,5.0deg": 1.0,
        "5.0m,10.0deg": 1.0,
    }
