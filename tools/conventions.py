"""Which tests catch a half-pixel slip (or a wrong choice) at each boundary.

Each entry of ``MUTATIONS`` replaces one snippet of a module in a scratch copy
of the working tree (``mutants/conventions/<name>/``; the worktree is never
modified), runs its integration tests there and reports the tests that fail.
A mutation that no test catches, or whose snippet is no longer in the source
(the code moved: update the entry), is listed as such; the exit status is 1
if any was not caught.

python tools/conventions.py [--only NAME ...] [--list]
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mutation import REPO, worktree_files  # noqa: E402


@dataclass
class Mutation:
    name: str
    what: str
    file: str
    old: str  # must occur exactly once in the file
    new: str
    tests: List[str]


# integration tests only: each runs a whole step (or chain of steps) on files,
# with real pycolmap and h5py (a unit test that catches a mutation does not
# count here)
E2E = ["tests/test_conventions_end_to_end.py"]
EXACT_SFM = "tests/test_mutation_kills_localize_sfm.py::"
SFM_POSES = [
    E2E[0] + "::test_poses_at_measured_accuracy",
    EXACT_SFM + "test_exact_correspondences_and_poses",
    "tests/test_localize_sfm.py::test_all_queries_localized",
]
SFM_RAW = [
    EXACT_SFM + "test_raw_query_points",
    "tests/test_localize_sfm.py::test_raw_query_points",
]
SFM_CLUSTER = [
    EXACT_SFM + "test_the_cluster_with_most_inliers_wins",
    "tests/test_localize_sfm.py::"
    "test_covisibility_clustering_picks_the_cluster_with_most_inliers",
]
PLUGIN = ["tests/test_hloc_plugin.py::test_register_and_run"]
TRIANGULATION = ["tests/test_mutation_kills_triangulation.py"]
INLOC = [
    "tests/test_localize_inloc.py::test_exact_correspondences",
    "tests/test_localize_inloc.py::test_exact_poses",
    "tests/test_localize_inloc.py::test_end_to_end",
]
KP = "keypoints = from_hloc_coords(get_keypoints(self.features, query))"
RAW = "return from_hloc_coords(kq[keep]), ids"
LOOKUP = "x, y = keypoints[:, 0] - 0.5, keypoints[:, 1] - 0.5"
H5Q = "kq = from_hloc_coords(get_keypoints(features, query))"
H5R = "kr = from_hloc_coords(get_keypoints(features, ref))"
TO_HLOC = "return np.asarray(xy, dtype=np.float64) - 0.5"
MUTATIONS = [
    Mutation(
        "sfm_query_minus",
        "localize_sfm: query keypoints without hloc->corner +0.5",
        "p2p_hloc/localize_sfm.py",
        KP,
        "keypoints = get_keypoints(self.features, query).astype(np.float64)",
        SFM_POSES,
    ),
    Mutation(
        "sfm_query_plus",
        "localize_sfm: query keypoints +1.0 instead of +0.5",
        "p2p_hloc/localize_sfm.py",
        KP,
        KP.replace("query))", "query)) + 0.5"),
        SFM_POSES,
    ),
    Mutation(
        "sfm_raw_minus",
        "localize_sfm: raw query points without hloc->corner +0.5",
        "p2p_hloc/localize_sfm.py",
        RAW,
        "return kq[keep].astype(np.float64), ids",
        SFM_RAW,
    ),
    Mutation(
        "sfm_raw_plus",
        "localize_sfm: raw query points +1.0 instead of +0.5",
        "p2p_hloc/localize_sfm.py",
        RAW,
        "return from_hloc_coords(kq[keep]) + 0.5, ids",
        SFM_RAW,
    ),
    Mutation(
        "sfm_fewest_inliers",
        "localize_sfm: the covisibility cluster with the fewest inliers wins",
        "p2p_hloc/localize_sfm.py",
        'log["num_inliers"] > best["num_inliers"]',
        'log["num_inliers"] < best["num_inliers"]',
        SFM_CLUSTER,
    ),
    Mutation(
        "sfm_tie_later_cluster",
        "localize_sfm: on a tie in inliers the cluster tried later wins",
        "p2p_hloc/localize_sfm.py",
        'log["num_inliers"] > best["num_inliers"]',
        'log["num_inliers"] >= best["num_inliers"]',
        [EXACT_SFM + "test_a_tie_in_inliers_goes_to_the_cluster_tried_first"],
    ),
    Mutation(
        "plugin_kp1",
        "hloc_plugin: keypoints1 without corner->hloc -0.5",
        "p2p_hloc/hloc_plugin.py",
        '"keypoints1": hloc_coords(pred["keypoints1"]),',
        '"keypoints1": pred["keypoints1"][keep].float().cpu(),',
        PLUGIN,
    ),
    Mutation(
        "quantize_yx_order",
        "quantize.cluster_points: keypoints sorted by (y, x), not (x, y)",
        "p2p_hloc/quantize/core.py",
        "canonical = np.lexsort((centres[:, 1], centres[:, 0]))",
        "canonical = np.lexsort((centres[:, 0], centres[:, 1]))",
        E2E,
    ),
    Mutation(
        "to_hloc_minus",
        "io.to_hloc_coords without -0.5",
        "p2p_hloc/io/h5.py",
        TO_HLOC,
        "return np.asarray(xy, dtype=np.float64)",
        E2E + ["tests/test_localize_sfm.py::test_all_queries_localized"],
    ),
    Mutation(
        "to_hloc_plus",
        "io.to_hloc_coords -1.0 instead of -0.5",
        "p2p_hloc/io/h5.py",
        TO_HLOC,
        TO_HLOC.replace("0.5", "1.0"),
        E2E + ["tests/test_localize_sfm.py::test_all_queries_localized"],
    ),
    Mutation(
        "triangulation_import_minus",
        "triangulation: keypoints imported into the database without +0.5",
        "p2p_hloc/triangulation.py",
        "                keypoints = from_hloc_coords(get_keypoints(features, name))",
        "                keypoints = 0.0 + get_keypoints(features, name)",
        E2E + TRIANGULATION,
    ),
    Mutation(
        "hloc_file_minus",
        "matchers.hloc_file: proposals read without hloc->corner +0.5",
        "p2p_hloc/matchers/hloc_file.py",
        'return {**data, "keypoints": from_hloc_coords(kps)}',
        'return {**data, "keypoints": kps}',
        E2E,
    ),
    Mutation(
        "inloc_h5_minus",
        "localize_inloc.h5_pairs: both sides without hloc->corner +0.5",
        "p2p_hloc/localize_inloc.py",
        f"{H5Q}\n        {H5R}",
        f"{H5Q}\n        {H5R}".replace("from_hloc_coords(", "(0.0 + "),
        INLOC,
    ),
    Mutation(
        "inloc_h5_plus",
        "localize_inloc.h5_pairs: both sides +1.0 instead of +0.5",
        "p2p_hloc/localize_inloc.py",
        f"{H5Q}\n        {H5R}",
        f"{H5Q} + 0.5\n        {H5R} + 0.5",
        INLOC,
    ),
    Mutation(
        "inloc_query_minus",
        "localize_inloc.h5_pairs: query side without +0.5",
        "p2p_hloc/localize_inloc.py",
        H5Q,
        H5Q.replace("from_hloc_coords(", "(0.0 + "),
        INLOC,
    ),
    Mutation(
        "inloc_lookup_minus",
        "localize_inloc: XYZcut looked up 0.5 px up-left",
        "p2p_hloc/localize_inloc.py",
        LOOKUP,
        LOOKUP.replace("0.5", "1.0"),
        INLOC,
    ),
    Mutation(
        "inloc_lookup_plus",
        "localize_inloc: XYZcut looked up 0.5 px down-right",
        "p2p_hloc/localize_inloc.py",
        LOOKUP,
        LOOKUP.replace("- 0.5", "- 0.0"),
        INLOC,
    ),
]


def apply(root: Path, m: Mutation) -> Optional[str]:
    """Apply ``m`` in the copy at ``root``; an error message if it cannot."""
    path = root / m.file
    if not path.exists():
        return f"{m.file} not found"
    text = path.read_text()
    if text.count(m.old) != 1:
        return f"snippet found {text.count(m.old)} times in {m.file}: {m.old!r}"
    path.write_text(text.replace(m.old, m.new))
    return None


def run(m: Mutation) -> Dict:
    root = REPO / "mutants" / "conventions" / m.name
    shutil.rmtree(root, ignore_errors=True)
    for name in worktree_files():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, root / name)
    error = apply(root, m)
    if error:
        return dict(mutation=m, error=error, failed=[])
    tests = [t for t in m.tests if (root / t.split("::")[0]).exists()]
    env = dict(os.environ, PYTHONPATH=str(root))
    golden = Path(os.environ.get("P2P_GOLDEN", REPO.parent / "shared" / "golden"))
    env["P2P_GOLDEN"] = str(golden.resolve())
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf", *tests],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
    )
    (root / "pytest.log").write_text(proc.stdout + proc.stderr)
    failed = sorted(set(re.findall(r"^FAILED (\S+)", proc.stdout, re.M)))
    error = None if proc.returncode in (0, 1) else f"pytest exit {proc.returncode}"
    return dict(mutation=m, error=error, failed=failed, tests=tests)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", choices=[m.name for m in MUTATIONS])
    p.add_argument("--list", action="store_true", help="list the mutations")
    args = p.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only]
    if args.list:
        for m in chosen:
            print(f"{m.name:<20} {m.what}\n{'':<20} tests: {' '.join(m.tests)}")
        return 0
    missed = 0
    for m in chosen:
        r = run(m)
        caught = bool(r["failed"]) and not r["error"]
        missed += not caught
        status = "caught" if caught else "NOT CAUGHT"
        print(f"{m.name:<20} {status}: {m.what}", flush=True)
        if r["error"]:
            print(f"{'':<22}{r['error']}")
        for test in r["failed"]:
            print(f"{'':<22}{test}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
