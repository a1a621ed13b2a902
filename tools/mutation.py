"""Mutation testing of the modules where a silent slip hurts most (mutmut 3).

For each module: a scratch copy of the working tree (tracked and untracked,
not ignored files) under ``mutants/<module>/``, mutmut's configuration written
into the copy's ``pyproject.toml``, ``mutmut run`` over the module with its test
files (``MODULES``), and a summary: killed / survived / equivalent / timeout /
no tests per module, then every survivor's location and change. The worktree
itself is never modified (``mutants/`` is git-ignored).

Not mutated: logging calls, help texts on a line of their own and parser
descriptions (``SKIP_PATTERNS``: they change no result). A survivor listed in
``tools/mutation_equivalents.json`` (explained in docs/testing.md) counts as
equivalent: a surviving mutant that cannot change behaviour. The survival rate
counts every mutant that no test kills (survived, equivalent, no tests).

python tools/mutation.py [--modules poses localize_sfm io.text] [--jobs 1] \
    [--only GLOB ...] [--resume | --rerun-survivors] [--json summary.json]
"""

import argparse
import fnmatch
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
MUTMUT = "mutmut==3.8.1"  # the configuration keys and result files used here

# module -> (files to mutate, globs allowed; test files, fastest first: the
# tests of one mutant run in this order and stop at the first failure)
MODULES: Dict[str, Tuple[List[str], List[str]]] = {
    "poses": (
        ["p2p_hloc/eval/poses.py"],
        ["tests/test_mutation_kills_poses.py", "tests/test_eval_poses.py"],
    ),
    "localize_sfm": (
        ["p2p_hloc/localize_sfm.py"],
        [
            "tests/test_mutation_kills_localize_sfm.py",
            "tests/test_localize_sfm.py",
        ],
    ),
    "io.text": (
        ["p2p_hloc/io/text.py"],
        [
            "tests/test_mutation_kills_io.py",
            "tests/test_io.py",
            "tests/test_queries.py",
            "tests/test_match_pairs.py::test_pairs_file_lines",
        ],
    ),
    "io.h5": (
        ["p2p_hloc/io/h5.py"],
        ["tests/test_mutation_kills_io.py", "tests/test_io.py"],
    ),
    "io.raw": (
        ["p2p_hloc/io/raw.py"],
        ["tests/test_mutation_kills_raw.py", "tests/test_io.py"],
    ),
    "io.lock": (
        ["p2p_hloc/io/lock.py"],
        ["tests/test_mutation_kills_io.py", "tests/test_io.py"],
    ),
    "io.colmap": (
        ["p2p_hloc/io/colmap.py"],
        ["tests/test_mutation_kills_io.py", "tests/test_io.py"],
    ),
    "quantize.core": (  # the array rules: the step's tests add nothing but time
        ["p2p_hloc/quantize/core.py"],
        [
            "tests/test_mutation_kills_quantize_api.py",
            "tests/test_mutation_kills_quantize.py",
            "tests/test_quantize.py",
        ],
    ),
    "quantize.in_memory": (
        ["p2p_hloc/quantize/in_memory.py"],
        [
            "tests/test_mutation_kills_quantize_api.py",
            "tests/test_mutation_kills_quantize.py",
            "tests/test_quantize.py",
            "tests/test_quantize_step.py",
        ],
    ),
    # the step on tiny raw folders: every option, error, crash point and
    # rename; test_quantize_step.py adds nothing but minutes per survivor
    "quantize.spill": (
        ["p2p_hloc/quantize/spill.py"],
        ["tests/test_mutation_kills_quantize_step.py"],
    ),
    "quantize.step": (
        ["p2p_hloc/quantize/step.py"],
        ["tests/test_mutation_kills_quantize_step.py"],
    ),
    "triangulation": (
        ["p2p_hloc/triangulation.py"],
        [
            "tests/test_mutation_kills_triangulation.py",
            "tests/test_triangulation.py",
        ],
    ),
    "hloc_plugin": (
        ["p2p_hloc/hloc_plugin.py"],
        ["tests/test_mutation_kills_hloc_plugin.py", "tests/test_hloc_plugin.py"],
    ),
}
GROUPS = {
    "io": ["io.text", "io.h5", "io.raw", "io.lock", "io.colmap"],
    "quantize": [
        "quantize.core",
        "quantize.in_memory",
        "quantize.spill",
        "quantize.step",
    ],
}
SKIP_PATTERNS = [  # lines whose expressions mutmut leaves alone
    r"\blogger\.(debug|info|warning|error|exception|critical)\(",
    r"^\s*help=",
    r"ArgumentParser\(description=",
]
EQUIVALENTS = REPO / "tools" / "mutation_equivalents.json"
ORDER_PLUGIN = '''"""Runs the test files in the order of $P2P_MUTATION_TEST_ORDER and
removes what a test leaves in the working folder."""
import os
import shutil
from pathlib import Path

import pytest


def pytest_collection_modifyitems(session, config, items):
    order = os.environ.get("P2P_MUTATION_TEST_ORDER", "").split(",")
    rank = {name: i for i, name in enumerate(order)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))


@pytest.fixture(autouse=True)
def _mutation_clean_cwd():
    """Files a test leaves in the working folder (a mutant writing under a
    wrong relative name: open_h5(None) writes 'None') are removed after it,
    so they cannot feed the tests of the next mutants. (The folder itself
    stays: subprocesses of the tests find mutmut's configuration there.)"""
    before = set(os.listdir("."))
    yield
    for name in set(os.listdir(".")) - before:
        path = Path(name)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
'''


@dataclass
class Mutant:
    name: str  # mutmut's name, e.g. p2p_hloc.eval.poses.x_pose_error__mutmut_13
    status: str
    file: str = ""
    line: int = 0
    function: str = ""
    before: str = ""  # the changed lines, stripped
    after: str = ""
    why: str = ""  # the reason from the equivalents list


@dataclass
class Result:
    module: str
    files: List[str]
    tests: List[str]
    mutants: List[Mutant] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(m.status == status for m in self.mutants)

    @property
    def surviving(self) -> int:
        return sum(
            m.status in ("survived", "equivalent", "no tests") for m in self.mutants
        )


def ensure_mutmut() -> None:
    """Install mutmut with pip when it is missing (or not 3.x)."""
    try:
        import mutmut

        if getattr(mutmut, "__version__", "3").split(".")[0] == "3":
            return
    except ImportError:
        pass
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", MUTMUT], check=True)


def source_files(globs: Sequence[str]) -> List[str]:
    return sorted({str(p.relative_to(REPO)) for g in globs for p in REPO.glob(g)})


def worktree_files() -> List[str]:
    """Tracked and untracked, not ignored files (the worktree as it is now)."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "-co", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [
        f
        for f in out.split("\0")
        if f and not f.startswith(("datasets/", "mutants/")) and (REPO / f).is_file()
    ]


def sync_copy(scratch: Path) -> None:
    """Copy the worktree's files into ``scratch``, only those that changed
    (mutmut regenerates the mutants of a source newer than its mutants)."""
    for name in worktree_files():
        src, dst = REPO / name, scratch / name
        if dst.exists() and dst.read_bytes() == src.read_bytes():
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)


def refresh_unmutated(scratch: Path, files: List[str]) -> None:
    """Bring mutmut's copy of the package (``scratch/mutants/p2p_hloc``, which
    mutmut never updates) up to date but for the mutated ``files``: a run
    resumed after other modules changed tests them as they are now."""
    root = scratch / "mutants"
    current = set(worktree_files())
    for path in (root / "p2p_hloc").rglob("*"):
        name = path.relative_to(root).as_posix()
        if (
            path.is_file()
            and name not in current
            and not name.endswith((".meta", ".spans"))
        ):
            path.unlink()
    for name in current:
        if not name.startswith("p2p_hloc/") or name in files:
            continue
        src, dst = REPO / name, root / name
        if not dst.exists() or dst.read_bytes() != src.read_bytes():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)


def toml_list(values: Sequence[str]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def write_config(
    scratch: Path, files: List[str], tests: List[str], timeout_multiplier: float
) -> None:
    """mutmut's section in the copy's pyproject.toml, and the order plugin."""
    (scratch / "_mutation_order.py").write_text(ORDER_PLUGIN)
    base = (REPO / "pyproject.toml").read_text()
    also_copy = ["_mutation_order.py"] + [
        d for d in ("pipelines", "benchmarks") if (REPO / d).is_dir()
    ]
    config = {
        "source_paths": ["p2p_hloc"],
        "only_mutate": files,
        "also_copy": also_copy,
        "pytest_add_cli_args_test_selection": tests,
        "pytest_add_cli_args": ["-p", "_mutation_order", "-p", "no:cacheprovider"],
        "do_not_mutate_patterns": SKIP_PATTERNS,
    }
    lines = ["", "[tool.mutmut]"]
    lines += [f"{key} = {toml_list(value)}" for key, value in config.items()]
    # mutmut stops a mutant's tests after (expected seconds + 1) x this, wall
    # clock: on a loaded machine, a too small factor turns slow runs into
    # false "timeout" kills
    lines.append(f"timeout_multiplier = {float(timeout_multiplier)}")
    (scratch / "pyproject.toml").write_text(base + "\n".join(lines) + "\n")


def mutmut_env(scratch: Path, tests: List[str]) -> Dict[str, str]:
    env = dict(os.environ)
    env.pop("MUTANT_UNDER_TEST", None)
    # the mutated copy, and nothing else, is importable (also in subprocesses)
    env["PYTHONPATH"] = str(scratch / "mutants")
    golden = Path(os.environ.get("P2P_GOLDEN", REPO.parent / "shared" / "golden"))
    env["P2P_GOLDEN"] = str(golden.resolve())
    env["P2P_MUTATION_TEST_ORDER"] = ",".join(tests)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env.setdefault(var, "1")
    return env


def mutmut(scratch: Path, env: Dict[str, str], *args: str, log=None) -> str:
    """Run mutmut's command line in ``scratch`` with this interpreter."""
    code = "import sys; from mutmut.__main__ import cli; sys.argv[0] = 'mutmut'; cli()"
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=scratch,
        env=env,
        stdout=log or subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    if proc.returncode != 0 and args[0] == "run":
        raise RuntimeError(f"mutmut {' '.join(args)} failed: see {log.name}")
    return proc.stdout or ""


def selected(key: str, only: Sequence[str]) -> bool:
    """Whether the mutant ``key`` matches one of the ``only`` globs (or all)."""
    return not only or any(fnmatch.fnmatchcase(key, pattern) for pattern in only)


def read_statuses(
    scratch: Path, files: List[str], only: Sequence[str] = ()
) -> List[Mutant]:
    """The mutants of ``files`` (those matching ``only``) and their status
    (``not checked`` when mutmut has not run them yet)."""
    from mutmut.stats import status_by_exit_code

    mutants = []
    for name in files:
        meta = scratch / "mutants" / (name + ".meta")
        if not meta.exists():
            continue
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        for key, code in codes.items():
            if selected(key, only):
                mutants.append(Mutant(key, status_by_exit_code[code], file=name))
    return mutants


def function_of(key: str) -> str:
    """``Class.method`` or ``function`` of a mutant name."""
    mangled = key.partition("__mutmut_")[0].rpartition(".")[2]
    if mangled.startswith("x_"):
        return mangled[2:]
    return ".".join(p for p in mangled[1:].split("\u01c1") if p)


def diff_of(scratch: Path, mutant: Mutant) -> str:
    """mutmut's diff of ``mutant`` (what ``mutmut show`` prints), in process."""
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    cwd = os.getcwd()
    os.chdir(scratch)
    try:
        return get_diff_for_mutant(mutant.name, path=mutant.file)
    finally:
        os.chdir(cwd)


def locate(mutant: Mutant, diff: str) -> None:
    """Fill in the changed lines and the source line of the first one."""
    body = [x for x in diff.splitlines() if not x.startswith(("---", "+++", "@@"))]
    mutant.before = "\n".join(x[1:].strip() for x in body if x.startswith("-"))
    mutant.after = "\n".join(x[1:].strip() for x in body if x.startswith("+"))
    mutant.function = function_of(mutant.name)
    source = (REPO / mutant.file).read_text().splitlines()
    name = mutant.function.rpartition(".")[2]
    start = next(
        (i for i, x in enumerate(source) if re.match(rf"\s*def {name}\b", x)), 0
    )
    first = mutant.before.splitlines()[0] if mutant.before else ""
    for i in range(start, len(source)):
        if first and source[i].strip() == first:
            mutant.line = i + 1
            return
    mutant.line = start + 1


def normalize(code: str) -> str:
    return re.sub(r"\s+", " ", code).strip()


def load_equivalents() -> List[Dict[str, str]]:
    if not EQUIVALENTS.exists():
        return []
    return json.loads(EQUIVALENTS.read_text())


def mark_equivalents(mutants: List[Mutant], equivalents: List[Dict[str, str]]):
    for m in mutants:
        for e in equivalents:
            if (
                m.status == "survived"
                and e["file"] == m.file
                and e["function"] == m.function
                and normalize(e["before"]) == normalize(m.before)
                and normalize(e["after"]) == normalize(m.after)
            ):
                m.status, m.why = "equivalent", e["why"]


def source_hashes(files: List[str]) -> Dict[str, str]:
    return {f: hashlib.sha256((REPO / f).read_bytes()).hexdigest() for f in files}


def run_module(
    module: str,
    jobs: int,
    rerun_survivors: bool = False,
    resume: bool = False,
    only: Sequence[str] = (),
    report_only: bool = False,
    timeout_multiplier: float = 15.0,
    test_files: Sequence[str] = (),
) -> Result:
    """Mutate ``module`` (only the mutants matching the ``only`` globs, if
    any) and test each mutant; ``resume`` continues an interrupted run of the
    same sources, ``rerun_survivors`` tests the survivors of the last one."""
    globs, tests = MODULES[module]
    files = source_files(globs)
    tests = [t for t in test_files or tests if (REPO / t.split("::")[0]).exists()]
    if not files:
        raise SystemExit(f"{module}: none of {globs} exists")
    scratch = REPO / "mutants" / module
    previous: Dict[str, str] = {}
    names: List[str] = list(only)
    if report_only:
        mutants = read_statuses(scratch, files, only)
        saved = scratch / "statuses.json"  # a rerun of survivors: the merged ones
        if saved.exists() and json.loads(
            (scratch / "sources.json").read_text()
        ) == source_hashes(files):
            previous = json.loads(saved.read_text())
        for m in mutants:
            if m.status == "not checked":
                m.status = previous.get(m.name, m.status)
        for m in mutants:
            if m.status in ("survived", "no tests", "suspicious", "timeout"):
                locate(m, diff_of(scratch, m))
        mark_equivalents(mutants, load_equivalents())
        return Result(module, files, tests, mutants)
    if resume:
        copied = [scratch / f for f in files]
        if not all(
            c.exists() and c.read_bytes() == (REPO / f).read_bytes()
            for c, f in zip(copied, files)
        ):
            raise SystemExit(
                f"{module}: no run of these sources in {scratch} to resume: "
                "run without --resume"
            )
        # with --rerun-survivors too: the survivors as well
        todo = ("not checked", "timeout")
        todo += ("survived", "no tests") if rerun_survivors else ()
        previous = {m.name: m.status for m in read_statuses(scratch, files)}
        names = [n for n, s in previous.items() if s in todo and selected(n, only)]
    elif rerun_survivors:
        hashes = scratch / "sources.json"
        if not (scratch / "statuses.json").exists() or json.loads(
            hashes.read_text()
        ) != source_hashes(files):
            raise SystemExit(
                f"{module}: no previous run of these sources in {scratch}: "
                "run without --rerun-survivors"
            )
        previous = json.loads((scratch / "statuses.json").read_text())
        names = [n for n, s in previous.items() if s in ("survived", "no tests")]
    elif scratch.exists():
        shutil.rmtree(scratch)
    # mutmut's copy must exist before it starts: an entry of PYTHONPATH that
    # is missing at start-up is never searched, and p2p_hloc would be imported
    # from the editable install instead
    (scratch / "mutants").mkdir(parents=True, exist_ok=True)
    sync_copy(scratch)
    if resume or rerun_survivors:
        refresh_unmutated(scratch, files)
    write_config(scratch, files, tests, timeout_multiplier)
    env = mutmut_env(scratch, tests)
    print(f"[{module}] mutating {', '.join(files)} with {', '.join(tests)}")
    print(f"[{module}] log: {scratch / 'mutmut.log'}", flush=True)
    with open(scratch / "mutmut.log", "a" if resume else "w") as log:
        if names or not (rerun_survivors or resume):
            mutmut(scratch, env, "run", "--max-children", str(jobs), *names, log=log)
    # a resumed run counts every mutant (--only chose which ones run again)
    mutants = read_statuses(scratch, files, () if resume else only)
    for m in mutants:  # a rerun changes the verdicts of the survivors only
        if m.name in previous and m.name not in names:
            m.status = previous[m.name]
    (scratch / "statuses.json").write_text(
        json.dumps({m.name: m.status for m in mutants}, indent=0)
    )
    (scratch / "sources.json").write_text(json.dumps(source_hashes(files)))
    for m in mutants:
        if m.status in ("survived", "no tests", "suspicious", "timeout"):
            locate(m, diff_of(scratch, m))
    mark_equivalents(mutants, load_equivalents())
    return Result(module, files, tests, mutants)


def report(results: List[Result]) -> str:
    cols = ["killed", "survived", "equivalent", "timeout", "no tests"]
    head = f"{'module':<20}{'mutants':>8}" + "".join(f"{c:>11}" for c in cols)
    lines = [head + f"{'survival':>10}"]
    for r in results:
        n = len(r.mutants)
        rate = 100.0 * r.surviving / n if n else 0.0
        row = f"{r.module:<20}{n:>8}" + "".join(f"{r.count(c):>11}" for c in cols)
        lines.append(row + f"{rate:>9.1f}%")
    other = [m for r in results for m in r.mutants if m.status not in cols]
    if other:
        counts = Counter(m.status for m in other)
        lines.append(
            "other results: " + ", ".join(f"{s} {n}" for s, n in sorted(counts.items()))
        )
    for title, status in (("Survivors", "survived"), ("No tests", "no tests")):
        found = [m for r in results for m in r.mutants if m.status == status]
        if found:
            lines += ["", f"{title}:"]
        for m in sorted(found, key=lambda m: (m.file, m.line)):
            lines.append(f"  {m.file}:{m.line} {m.function} [{m.name}]")
            lines += [f"      - {x}" for x in m.before.splitlines()]
            lines += [f"      + {x}" for x in m.after.splitlines()]
    found = [m for r in results for m in r.mutants if m.status == "equivalent"]
    if found:
        lines += ["", "Equivalent (tools/mutation_equivalents.json):"]
    for m in sorted(found, key=lambda m: (m.file, m.line)):
        lines.append(f"  {m.file}:{m.line} {m.function}: {m.why}")
    return "\n".join(lines)


def equivalents_table() -> str:
    """The equivalents list as a markdown table, one row per reason (the
    table of docs/testing.md)."""
    groups: Dict[Tuple[str, str, str], List[Dict[str, str]]] = {}
    for e in load_equivalents():
        groups.setdefault((e["file"], e["function"], e["why"]), []).append(e)
    lines = [
        "| file | function | mutants | one of them | why it cannot change behaviour |",
        "|---|---|---|---|---|",
    ]
    for (name, function, why), entries in groups.items():
        before = (entries[0]["before"].splitlines() or [""])[0][:70]
        after = (entries[0]["after"].splitlines() or ["(removed)"])[0][:70]
        lines.append(
            f"| `{name.replace('p2p_hloc/', '')}` | `{function}` | {len(entries)} "
            f"| `{before}` -> `{after}` | {why} |"
        )
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--modules",
        nargs="+",
        default=list(MODULES),
        choices=list(MODULES) + list(GROUPS),
    )
    p.add_argument("--jobs", type=int, default=1, help="mutants tested at once")
    p.add_argument(
        "--tests",
        nargs="+",
        default=[],
        metavar="TEST",
        help="these test files (or node ids) instead of the module's in MODULES",
    )
    p.add_argument(
        "--timeout-multiplier",
        type=float,
        default=15.0,
        help="a mutant times out after (its tests' expected seconds + 1) x this "
        "(mutmut's default 15; raise it on a loaded machine)",
    )
    p.add_argument(
        "--rerun-survivors",
        action="store_true",
        help="test again only the survivors of the previous run (after adding tests)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run: test the mutants not tested yet "
        "and the timeouts again",
    )
    p.add_argument(
        "--only",
        nargs="+",
        default=[],
        metavar="GLOB",
        help="only the mutants whose mutmut name matches, e.g. "
        "'p2p_hloc.quantize.core.x_cluster_points__mutmut_*'",
    )
    p.add_argument(
        "--report",
        action="store_true",
        help="run nothing: the results of the last run (the equivalents list "
        "as it is now)",
    )
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument(
        "--template",
        action="store_true",
        help="print the survivors as entries of the equivalents list",
    )
    p.add_argument(
        "--equivalents-table",
        action="store_true",
        help="print the equivalents list as a markdown table and exit",
    )
    args = p.parse_args(argv)
    if args.equivalents_table:
        print(equivalents_table())
        return 0
    modules = [m for name in args.modules for m in GROUPS.get(name, [name])]
    ensure_mutmut()
    results = []
    for module in dict.fromkeys(modules):
        results.append(
            run_module(
                module,
                args.jobs,
                args.rerun_survivors,
                args.resume,
                args.only,
                args.report,
                args.timeout_multiplier,
                args.tests,
            )
        )
        print(report(results[-1:]).splitlines()[1], flush=True)
    print("\n" + report(results))
    if args.template:
        survivors = [m for r in results for m in r.mutants if m.status == "survived"]
        keys = ("file", "function", "before", "after", "why")
        entries = [{k: getattr(m, k) for k in keys} for m in survivors]
        print(json.dumps(entries, indent=1))
    if args.json:
        data = [
            dict(module=r.module, files=r.files, tests=r.tests, mutants=r.mutants)
            for r in results
        ]
        args.json.write_text(json.dumps(data, indent=1, default=lambda o: o.__dict__))
    return 0


if __name__ == "__main__":
    sys.exit(main())
