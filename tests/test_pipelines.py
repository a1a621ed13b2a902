"""The Aachen v1.0 / v1.1 and InLoc pipelines end to end on generated datasets
in the benchmarks' layouts (SIFT proposals: no weights), each query checked
against its ground truth, the results file against the submission format."""

import argparse
import importlib
import inspect
import pickle
from pathlib import Path

import numpy as np
import pycolmap
import pytest

from p2p_hloc import visualize
from p2p_hloc.confs import confs
from p2p_hloc.console import run_cli
from p2p_hloc.eval.poses import THRESHOLDS, evaluate, qvec_to_matrix, read_poses
from p2p_hloc.io import get_matches, parse_queries, parse_retrieval
from pipelines import aachen, aachen_v1_1, inloc

# measured on the generated scenes (SIFT, 320 x 240): Aachen 0.7-2.5 cm and
# 0.06-0.19 deg, InLoc 0.2-0.4 cm and 0.01-0.03 deg; a wrong pose is off by
# metres. Bounds: about 4x the largest measured error.
MAX_ERROR = {"aachen": (0.1, 1.0), "inloc": (0.02, 0.15)}


def check_results(results: Path, queries, ground_truth: Path, benchmark: str):
    """Submission format (``basename qw qx qy qz tx ty tz``, one line per
    query, unit quaternions), no fallback pose, every query within the
    benchmark's finest threshold and within MAX_ERROR."""
    lines = results.read_text().splitlines()
    assert len(lines) == len(queries)
    for line in lines:
        fields = line.split()
        assert len(fields) == 8 and "/" not in fields[0], line
        assert abs(np.linalg.norm(np.array(fields[1:5], float)) - 1) < 1e-6
    assert sorted(read_poses(results)) == sorted(q.split("/")[-1] for q in queries)
    with open(f"{results}_logs.pkl", "rb") as f:
        logs = pickle.load(f)
    assert not logs["fallback"] and not logs["failed"]
    report = evaluate(results, ground_truth, THRESHOLDS[benchmark])
    assert list(report["recall"].values())[0] == 1.0, report["errors"]
    max_t, max_r = MAX_ERROR[benchmark]
    for error in report["errors"].values():
        assert error["translation_m"] < max_t and error["rotation_deg"] < max_r


def hloc_calls(dataset: Path, outputs: Path, conf_name: str) -> list:
    """The step calls of hloc's Aachen_v1_1/pipeline_loftr.py with its default
    arguments (hloc_interfaces.md 2.5, 3.5), with our file names: the model
    ``sfm_<output>`` and the method name in the results file."""
    conf = confs[conf_name]
    images = dataset / "images_upright/"
    sift_sfm = dataset / "3D-models/aachen_v_1_1"
    reference_sfm = outputs / f"sfm_{conf['output']}"
    sfm_pairs = outputs / "pairs-db-covis20.txt"
    loc_pairs = outputs / "pairs-query-netvlad50.txt"
    results = outputs / f"Aachen-v1.1_hloc_{conf_name}_netvlad50.txt"
    features = outputs / f"feats_{conf['output']}.h5"
    sfm_matches = outputs / f"{conf['output']}_pairs-db-covis20.h5"
    queries = dataset / "queries/*_time_queries_with_intrinsics.txt"
    return [
        ("pairs_from_covisibility", (sift_sfm, sfm_pairs), dict(num_matched=20)),
        (
            "match_dense",
            (conf, sfm_pairs, images, outputs),
            dict(max_kps=8192, overwrite=False),
        ),
        (
            "triangulation",
            (reference_sfm, sift_sfm, images, sfm_pairs, features, sfm_matches),
            {},
        ),
        (
            "match_dense",
            (conf, loc_pairs, images, outputs),
            dict(features=features, max_kps=None, matches=sfm_matches),
        ),
        (
            "localize_sfm",
            (reference_sfm, queries, loc_pairs, features, sfm_matches, results),
            dict(covisibility_clustering=False),
        ),
    ]


def bound(fn, args, kwargs) -> dict:
    """All arguments of a call, defaults included, by parameter name."""
    call = inspect.signature(fn).bind(*args, **kwargs)
    call.apply_defaults()
    return dict(call.arguments)


STEPS = ("pairs_from_covisibility", "match_dense", "triangulation", "localize_sfm")
REAL = {name: importlib.import_module(f"p2p_hloc.{name}").main for name in STEPS}


@pytest.fixture
def recorder(monkeypatch):
    """Wraps the steps' ``main``: records every call (its bound arguments),
    then runs the real step."""
    calls = []
    for name in STEPS:
        module = importlib.import_module(f"p2p_hloc.{name}")

        def record(*args, _name=name, _real=module.main, **kwargs):
            calls.append((_name, bound(_real, args, kwargs)))
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, "main", record)
    return calls


def test_aachen_v1_1_makes_hlocs_calls(aachen_v1_1_layout, tmp_path, recorder):
    """hloc's dense-matcher script with our modules: the same step calls, in
    the same order, with the same arguments; every query localized."""
    dataset = aachen_v1_1_layout["dataset"]
    outputs = tmp_path / "outputs"
    argv = ["--dataset", str(dataset), "--pairs", str(aachen_v1_1_layout["pairs"])]
    args = aachen.parser("", "", "").parse_args(
        argv + ["--outputs", str(outputs), "--conf", "sift"]
    )
    results = aachen_v1_1.run(args)

    expected = hloc_calls(dataset, outputs, "sift")
    assert [name for name, _ in recorder] == [name for name, _, _ in expected]
    for (name, got), (_, args, kwargs) in zip(recorder, expected):
        assert got == bound(REAL[name], args, kwargs), name
    queries = [
        q
        for time in ("day", "night")
        for q, _ in parse_queries(
            dataset / f"queries/{time}_time_queries_with_intrinsics.txt"
        )
    ]
    check_results(results, queries, aachen_v1_1_layout["ground_truth"], "aachen")


def test_aachen_v1_0_and_its_pictures(aachen_v1_0_layout, tmp_path):
    dataset = aachen_v1_0_layout["dataset"]
    argv = ["--dataset", str(dataset), "--pairs", str(aachen_v1_0_layout["pairs"])]
    argv += ["--outputs", str(tmp_path), "--conf", "sift", "--plots", "1"]
    results = aachen.run(aachen.parser("", "", "").parse_args(argv))
    assert results == tmp_path / "Aachen_hloc_sift_netvlad50.txt"
    assert (tmp_path / "sfm_sift" / "points3D.bin").is_file()  # from the NVM
    queries = list(parse_retrieval(tmp_path / "pairs-query-netvlad50.txt"))
    check_results(results, queries, aachen_v1_0_layout["ground_truth"], "aachen")

    # pictures: the query with the fewest inliers; every query in the table
    logs = visualize.read_logs(results)
    fewest = min(queries, key=lambda q: logs["loc"][q]["num_inliers"])
    stem = fewest.replace("/", "-").rsplit(".", 1)[0]
    assert [p.name for p in (tmp_path / "plots").iterdir()] == [f"00_{stem}.png"]
    table = Path(f"{results}_queries.tsv").read_text().splitlines()
    assert table[0].split("\t") == ["query", "status", "inliers", "matches"]
    assert sorted(line.split("\t")[0] for line in table[1:]) == sorted(queries)

    # green: the matches of a PnP inlier correspondence, which the true pose
    # projects within a pixel or two; red: the others
    features = tmp_path / f"feats_{confs['sift']['output']}.h5"
    matches = tmp_path / f"{confs['sift']['output']}_pairs-db-covis20.h5"
    rec = pycolmap.Reconstruction(tmp_path / f"sfm_{confs['sift']['output']}")
    gt = read_poses(aachen_v1_0_layout["ground_truth"])
    cameras = dict(
        parse_queries(dataset / "queries/day_time_queries_with_intrinsics.txt")
    )
    query = next(iter(cameras))
    log = logs["loc"][query]
    pairs = visualize.sfm_inliers(query, log, rec, features, matches)
    assert [p.name for p in pairs] == log["db"]
    inliers = set()
    for pair in pairs:
        image = rec.find_image_with_name(pair.name)
        m, _ = get_matches(matches, query, pair.name)
        ids = np.array([image.points2D[j].point3D_id for j in m[pair.inliers, 1]])
        xyz = np.array([rec.points3D[i].xyz for i in ids]).reshape(-1, 3)
        qvec, t = gt[query.split("/")[-1]]
        uv = pycolmap.Camera(**cameras[query]).img_from_cam(
            xyz @ qvec_to_matrix(qvec).T + t
        )
        assert (
            np.median(np.linalg.norm(uv - pair.keypoints_query[pair.inliers], axis=1))
            < 2
        )
        inliers |= set(zip(m[pair.inliers, 0], ids))
        assert pair.inliers.sum() > 10 and (~pair.inliers).sum() > 0
    assert len(inliers) == log["num_inliers"]


def test_inloc_and_its_pictures(inloc_layout, tmp_path):
    argv = ["--dataset", str(inloc_layout["dataset"]), "--pairs"]
    argv += [str(inloc_layout["pairs"]), "--outputs", str(tmp_path), "--conf", "sift"]
    argv += ["--focal_length", str(inloc_layout["focal_length"])]  # small queries
    results = inloc.run(inloc.parser().parse_args(argv))
    assert results == tmp_path / "InLoc_hloc_sift_netvlad40.txt"
    queries = list(parse_retrieval(inloc_layout["pairs"] / "pairs-query-netvlad40.txt"))
    check_results(results, queries, inloc_layout["ground_truth"], "inloc")

    # pictures from the command line, with the ground truth: the pose error
    # in the table; green matches are those the estimated pose explains
    out = tmp_path / "plots"
    features = tmp_path / f"feats_{confs['sift']['output']}.h5"
    matches = tmp_path / f"{confs['sift']['output']}_pairs-query-netvlad40.h5"
    argv = ["--results", str(results), "--image_dir", str(inloc_layout["dataset"])]
    argv += ["--features", str(features), "--matches", str(matches)]
    argv += ["--ground_truth", str(inloc_layout["ground_truth"]), "--out", str(out)]
    argv += ["--names", queries[1], "--num_db", "1"]
    assert run_cli(visualize.parser(), visualize.run, argv) == 0
    assert len(list(out.glob("*.png"))) == 1
    rows = [
        l.split("\t") for l in Path(f"{results}_queries.tsv").read_text().splitlines()
    ]
    assert rows[0][-2:] == ["translation_m", "rotation_deg"]
    assert all(float(r[-2]) < MAX_ERROR["inloc"][0] for r in rows[1:])
    logs = visualize.read_logs(results)
    log = logs["loc"][queries[1]]
    pairs = visualize.inloc_inliers(
        queries[1],
        log,
        inloc_layout["dataset"],
        features,
        matches,
        logs["ransac_thresh"],
        inloc_layout["focal_length"],
    )
    total = sum(int(p.inliers.sum()) for p in pairs)
    assert abs(total - log["num_inliers"]) <= 0.05 * log["num_inliers"]


def test_one_spelling_for_flags():
    """hloc's snake_case flags in every command of the steps and pipelines,
    --device/--precision wherever a model runs, old spellings hidden."""
    from p2p_hloc import (
        cli,
        colmap_from_nvm,
        localize_inloc,
        localize_sfm,
        match_dense,
        match_pairs,
        pairs_from_covisibility,
        reconstruction,
        synthetic_layouts,
        triangulation,
    )
    from p2p_hloc.quantize import step as quantize_step
    from pipelines import demo, hpatches

    commands = next(
        a for a in cli.parser()._actions if isinstance(a, argparse._SubParsersAction)
    )
    parsers = {
        "p2p-hloc match": commands.choices["match"],
        "match_pairs": match_pairs.parser(),
        "quantize": quantize_step.parser(),
        "localize_sfm": localize_sfm.parser(),
        "localize_inloc": localize_inloc.parser(),
        "match_dense": match_dense.parser(),
        "triangulation": triangulation.parser(),
        "reconstruction": reconstruction.parser(),
        "colmap_from_nvm": colmap_from_nvm.parser(),
        "pairs_from_covisibility": pairs_from_covisibility.parser(),
        "synthetic_layouts": synthetic_layouts.parser(),
        "visualize": visualize.parser(),
        "aachen": aachen.parser("", "", ""),
        "inloc": inloc.parser(),
        "demo": demo.parser(),
        "hpatches": hpatches.parser(),
    }
    for name, p in parsers.items():
        shown = [a for a in p._actions if a.help != argparse.SUPPRESS]
        flags = [f for a in shown for f in a.option_strings if f.startswith("--")]
        assert all("-" not in f[2:] for f in flags), (name, flags)
        if name in (
            "p2p-hloc match",
            "match_pairs",
            "match_dense",
            "aachen",
            "inloc",
            "demo",
            "hpatches",
        ):
            assert {"--device", "--precision", "--weights"} <= set(flags), name
    help_text = triangulation.parser().format_help()
    assert "--reference_sfm_model" in help_text and "--reference_model" not in help_text
    args = hpatches.parser().parse_args(
        ["--dataset", "d", "--outputs", "o", "--ransac_threshold", "3"]
    )
    assert args.ransac_thresh == 3.0
    assert "--ransac_threshold" not in hpatches.parser().format_help()
    old = commands.choices["match"].parse_args(
        ["a", "b", "--out", "o", "--coarse-only"]
    )
    assert old.coarse_only and not old.keep_all_if_none
