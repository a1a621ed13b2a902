"""p2p_hloc against the official Patch2Pix, side by side, as whole processes.

Every ratio printed here is measured in this run: each workload runs as fresh
processes of the official code and of ours, alternated (official first on
even repeats, ours first on odd ones), and the ratio is of the medians.
Golden weights, CPU, the threads torch picks or ``--threads N`` (given to
every process through ``OMP_NUM_THREADS``, and to the official runners as
``--threads``). Workloads at 1024x768:

- ``a``: one pair (golden pair A upscaled with LANCZOS), ``p2p-hloc match``
  against ``official_run.py``;
- ``b``: 1 query x 6 database images, ``python -m p2p_hloc.match_pairs --conf
  patch2pix`` against ``official_loop.py`` (model loaded once);
- ``c``: 2 queries x 20 database images (a retrieval run's layout), the same
  two commands.

Images of ``b`` and ``c`` are views of the textured room of
``p2p_hloc.synthetic`` (JPEG). Each run records wall and CPU seconds (user +
system, the process and its children), the peak RSS of its largest process
(``ru_maxrss``), the peak PSS of its process tree (sampled every second: the
DataLoader workers count) and the 1-minute load average before and after:
the machine may be shared, compare ratios measured under similar load.

The official code comes from ``--official DIR`` or ``$P2P_OFFICIAL`` and runs
through ``../shared/official-bench``; without it only our figures are
printed. ``--baseline DIR`` (a checkout of this project, e.g. ``git worktree
add ../base main``) runs our commands from there too, alternated with ours in
every repeat, prints the before/after medians and checks that the outputs are
equal. ``--stages`` adds the per-stage table
(``stage_times.py``) and ``--rates`` the machine's GEMM and conv rates
(``machine_rates.py``), both in the same session. Usage::

    python3 benchmarks/side_by_side.py --official ../official
    python3 benchmarks/side_by_side.py --workloads a --repeats 5 --stages --rates
    python3 benchmarks/side_by_side.py --workloads c --repeats 1 --official-pairs 10
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = Path(__file__).resolve().parent
GOLDEN = Path(os.environ.get("P2P_GOLDEN", ROOT.parent / "shared" / "golden"))
OFFICIAL_BENCH = ROOT.parent / "shared" / "official-bench"
WEIGHTS = GOLDEN / "patch2pix_random_fp16.pth"
WORKLOADS = {  # name: (queries, database images, target ratio)
    "a": (1, 1, 4.0),
    "b": (1, 6, 5.0),
    "c": (2, 20, 7.0),
}


# ------------------------------------------------------------------ machine
def cpu_facts() -> Dict[str, object]:
    """CPU model, the vector extensions that matter for the kernels, cores."""
    model, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    wanted = ["avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16"]
    return {
        "cpu": model,
        "isa": " ".join(f for f in wanted if f in flags) or "-",
        "cores": len(os.sched_getaffinity(0)),
    }


def torch_facts(env: dict) -> Dict[str, object]:
    code = "import torch; print(torch.__version__, torch.get_num_threads())"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True
    )
    version, threads = out.stdout.split()
    return {"torch": version, "torch_threads": int(threads)}


def load_avg() -> float:
    return os.getloadavg()[0]


# ---------------------------------------------------------------- processes
def _tree(pid: int) -> List[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return pids


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class TreePeak(threading.Thread):
    """Peak of the summed PSS of a process and its descendants (sampled)."""

    def __init__(self, pid: int, interval: float = 1.0):
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak_kb = pid, interval, 0
        self.done = threading.Event()

    def run(self):
        while not self.done.wait(self.interval):
            total = sum(_pss_kb(p) for p in _tree(self.pid))
            self.peak_kb = max(self.peak_kb, total)


def run_process(cmd: Sequence[str], env: dict, log: Path) -> dict:
    """Run ``cmd`` to the end; wall and CPU seconds, peak memory, load."""
    load0 = load_avg()
    with open(log, "w") as f:
        t = time.perf_counter()
        proc = subprocess.Popen(list(map(str, cmd)), stdout=f, stderr=f, env=env)
        peak = TreePeak(proc.pid)
        peak.start()
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
    peak.done.set()
    peak.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed:\n{tail}")
    return {
        "wall": wall,
        "cpu": ru.ru_utime + ru.ru_stime,
        "maxrss_mb": ru.ru_maxrss / 1024,
        "tree_pss_mb": peak.peak_kb / 1024,
        "load": [load0, load_avg()],
    }


# ---------------------------------------------------------------------- data
def make_pair_a(folder: Path, size: Tuple[int, int]) -> Tuple[Path, Path]:
    """Golden pair A resized to ``size`` (LANCZOS), as the golden README's
    1024 runs."""
    from PIL import Image

    out = []
    for i in (1, 2):
        path = folder / f"pairA_{i}_{size[0]}.png"
        if not path.exists():
            im = Image.open(GOLDEN / f"pairA_{i}.png").convert("RGB")
            im.resize(size, Image.LANCZOS).save(path)
        out.append(path)
    return out[0], out[1]


def make_views(folder: Path, size: Tuple[int, int], queries: int, db: int) -> Path:
    """``queries`` and ``db`` views of the synthetic textured room (JPEG) and
    the pairs file (every query with every database image)."""
    import cv2

    from p2p_hloc import synthetic

    rng = np.random.default_rng(0)
    planes = synthetic.room()
    width, height = size
    focal = synthetic.FOCAL_RATIO * width
    names = [f"query/q{i:02d}.jpg" for i in range(queries)]
    names += [f"db/d{i:02d}.jpg" for i in range(db)]
    images = folder / f"images{width}"
    for name in names:
        path = images / name
        if path.exists():
            continue
        center = (rng.uniform(-2.5, 2.5), rng.uniform(-0.3, 0.3), rng.uniform(1, 3))
        pose = synthetic.look(center, rng.uniform(-20, 20), rng.uniform(-5, 5))
        view = synthetic.View(name, width, height, focal, *pose)
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), synthetic.render(planes, view)[..., ::-1])
    pairs = folder / f"pairs-{queries}x{db}-{width}.txt"
    pairs.write_text(
        "".join(f"{q} {d}\n" for q in names[:queries] for d in names[queries:])
    )
    return pairs


# ----------------------------------------------------------------- commands
def ours_match_cmd() -> List[str]:
    """``p2p-hloc`` as installed next to this Python, else the module."""
    script = Path(sys.executable).parent / "p2p-hloc"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "p2p_hloc.cli"]


def commands(
    workload: str,
    data: dict,
    out: Path,
    official: Optional[Path],
    threads: int,
    official_pairs: Optional[int],
) -> Dict[str, List[str]]:
    """The official and our command of a workload, writing under ``out``."""
    cmds = {}
    imsize = str(data["size"][0])
    if workload == "a":
        im0, im1 = data["a"]
        cmds["ours"] = ours_match_cmd() + ["match", im0, im1, "--weights", WEIGHTS]
        cmds["ours"] += ["--imsize", imsize, "--device", "cpu"]
        cmds["ours"] += ["--out", out / "ours.npz"]
        if official:
            cmds["official"] = [sys.executable, OFFICIAL_BENCH / "official_run.py"]
            cmds["official"] += [WEIGHTS, im0, im1, out / "official.npz"]
            cmds["official"] += ["--imsize", imsize, "--io_thres", "0.25"]
            cmds["official"] += ["--threads", str(threads)]
        return cmds
    pairs, images = data[workload], data["images"]
    cmds["ours"] = [sys.executable, "-m", "p2p_hloc.match_pairs", "--conf", "patch2pix"]
    cmds["ours"] += ["--pairs", pairs, "--image_dir", images, "--weights", WEIGHTS]
    cmds["ours"] += ["--export_dir", out / "ours", "--overwrite"]
    if official:
        if official_pairs:
            lines = pairs.read_text().splitlines()[:official_pairs]
            pairs = out / "official_pairs.txt"
            pairs.write_text("".join(f"{line}\n" for line in lines))
        cmds["official"] = [sys.executable, OFFICIAL_BENCH / "official_loop.py"]
        cmds["official"] += [WEIGHTS, images, pairs, "--imsize", imsize]
        cmds["official"] += ["--thres", "0.25", "--threads", str(threads)]
    return cmds


def official_loop_seconds(log: Path) -> Tuple[int, float]:
    """``PAIRS N SECONDS`` of ``official_loop.py``'s last line."""
    for line in reversed(log.read_text().splitlines()):
        if line.startswith("PAIRS "):
            _, n, seconds = line.split()[:3]
            return int(n), float(seconds)
    raise RuntimeError(f"{log}: no PAIRS line")


# ------------------------------------------------------------------ outputs
def compare_npz(a: Path, b: Path) -> str:
    with np.load(a) as fa, np.load(b) as fb:
        if set(fa.files) != set(fb.files):
            return f"different arrays: {sorted(fa.files)} vs {sorted(fb.files)}"
        return _compare({k: fa[k] for k in fa.files}, {k: fb[k] for k in fb.files})


def compare_h5_dirs(a: Path, b: Path) -> str:
    import h5py

    def arrays(folder: Path) -> dict:
        out = {}
        for path in sorted(folder.glob("*.h5")):
            with h5py.File(path, "r") as f:
                f.visititems(
                    lambda k, v: (
                        out.__setitem__(f"{path.name}:{k}", v[()])
                        if isinstance(v, h5py.Dataset)
                        else None
                    )
                )
        return out

    return _compare(arrays(a), arrays(b))


def _compare(a: dict, b: dict) -> str:
    if set(a) != set(b):
        diff = sorted(set(a) ^ set(b))
        return f"{len(diff)} entries in only one, e.g. {diff[:3]}"
    worst, unequal = 0.0, 0
    for k in a:
        if a[k].shape != b[k].shape:
            return f"{k}: shape {a[k].shape} vs {b[k].shape}"
        if not np.array_equal(a[k], b[k]):
            unequal += 1
            if a[k].dtype.kind in "fiu":
                d = np.abs(a[k].astype(np.float64) - b[k].astype(np.float64))
                worst = max(worst, float(d.max()))
    if not unequal:
        return f"identical ({len(a)} arrays)"
    return f"{unequal} of {len(a)} arrays differ, max abs difference {worst:.3g}"


def against_official(ours: Path, official: Path) -> str:
    """Our ``p2p-hloc match`` output against official_run.py's (pair a)."""
    with np.load(ours) as o, np.load(official) as f:
        mine = np.concatenate([o["keypoints0"], o["keypoints1"]], 1)
        theirs, scores = f["final_thr025_matches"], f["final_thr025_scores"]
        text = f"matches {len(mine)} (official {len(theirs)})"
        if len(mine) == len(theirs):
            text += (
                f", max |d xy| {np.abs(mine - theirs).max():.2g} px, "
                f"max |d score| {np.abs(o['scores'] - scores).max():.2g}"
            )
        return text


# -------------------------------------------------------------------- run
def median_of(runs: List[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def run_workload(
    name: str,
    data: dict,
    work: Path,
    args: argparse.Namespace,
    env: dict,
    threads: int,
) -> dict:
    queries, db, target = WORKLOADS[name]
    pairs = queries * db
    runs: Dict[str, List[dict]] = {"official": [], "ours": [], "baseline": []}
    envs = {"official": env, "ours": env}
    if args.baseline:
        envs["baseline"] = {**env, "PYTHONPATH": str(args.baseline)}
    for rep in range(args.repeats):
        out = work / f"{name}{rep}"
        out.mkdir(parents=True, exist_ok=True)
        cmds = commands(name, data, out, args.official, threads, args.official_pairs)
        if args.baseline:
            base = out / "baseline"
            cmds["baseline"] = commands(name, data, base, None, threads, None)["ours"]
            base.mkdir(parents=True, exist_ok=True)
        order = ["official", "ours", "baseline"]
        for impl in order if rep % 2 == 0 else order[::-1]:
            if impl not in cmds:
                continue
            log = out / f"{impl}.log"
            r = run_process(cmds[impl], envs[impl], log)
            if impl == "official" and name != "a" and args.official_pairs:
                n, loop = official_loop_seconds(log)
                r["measured_pairs"], r["wall_measured"] = n, r["wall"]
                r["wall"] += loop * (pairs / n - 1)  # the loop has no state
                r["cpu"] *= r["wall"] / r["wall_measured"]  # estimate
            runs[impl].append(r)
            print(
                f"  {name} rep {rep} {impl:8s} {r['wall']:7.1f} s wall "
                f"{r['cpu']:7.1f} s cpu {r['maxrss_mb']:6.0f} MB "
                f"load {r['load'][0]:.1f}->{r['load'][1]:.1f}",
                file=sys.stderr,
                flush=True,
            )
    last = work / f"{name}{args.repeats - 1}"
    res = {"pairs": pairs, "target": target, "runs": runs}
    for impl, rs in runs.items():
        if rs:
            res[impl] = {
                k: median_of(rs, k) for k in ("wall", "cpu", "maxrss_mb", "tree_pss_mb")
            }
    if runs["official"]:
        res["ratio"] = res["official"]["wall"] / res["ours"]["wall"]
        res["cpu_ratio"] = res["official"]["cpu"] / res["ours"]["cpu"]
        if name == "a":
            res["vs_official"] = against_official(
                last / "ours.npz", last / "official.npz"
            )
    if args.baseline:
        base = last / "baseline"
        res["before_after"] = res["baseline"]["wall"] / res["ours"]["wall"]
        if name == "a":
            res["vs_baseline"] = compare_npz(last / "ours.npz", base / "ours.npz")
        else:
            res["vs_baseline"] = compare_h5_dirs(last / "ours", base / "ours")
    return res


def run_stages(data: dict, work: Path, args, env: dict, threads: int) -> dict:
    """stage_times.py for both implementations on pair a, and the runner on
    the ``b`` workload, each a fresh process."""
    script = [sys.executable, BENCH_DIR / "stage_times.py"]
    im0, im1 = data["a"]
    imsize = ["--imsize", str(data["size"][0]), "--clock", args.stage_clock]
    if args.stage_threads:
        imsize += ["--threads", str(args.stage_threads)]
    out = {"size": list(data["size"])}
    jobs = [("ours", script + ["ours", WEIGHTS, im0, im1, "--repeats", "3"] + imsize)]
    if args.official:
        official = ["official", WEIGHTS, im0, im1, "--repeats", "1"] + imsize
        official += ["--official", args.official]
        jobs.insert(0, ("official", script + official))
    runner = ["runner", WEIGHTS, data["images"], data["b"]] + imsize
    jobs.append(("runner", script + runner))
    for name, cmd in jobs:
        log = work / f"stages-{name}.log"
        run_process(cmd, env, log)
        out[name] = json.loads(log.read_text().strip().splitlines()[-1])
        print(f"  stages {name} done", file=sys.stderr, flush=True)
    return out


# ------------------------------------------------------------------ tables
STAGE_ROWS = [  # (row, our labels, official labels)
    ("import torch", ["import torch"], ["import torch"]),
    ("import the package", ["import p2p_hloc.cli"], ["import official code"]),
    ("model load", ["model load"], ["model load"]),
    ("decode + resize, 2 images", ["decode + resize"], ["decode + resize"]),
    ("backbone, 2 images", ["backbone"], ["backbone"]),
    (
        "L2 norm + correlation + 4D max-pool",
        ["correlation + 4D max-pool"],
        ["L2 norm (coarse)", "correlation", "4D max-pool"],
    ),
    ("mutual matching, 2x", ["mutual matching"], ["mutual matching"]),
    ("neighbourhood consensus", ["NC"], ["NC"]),
    (
        "coarse extraction + mutual filter",
        ["coarse extraction", "mutual filter", "coarse other"],
        ["coarse extraction", "mutual filter"],
    ),
    (
        "patch gathering + normalisation",
        ["patch gathering"],
        ["patch gathering", "patch L2 norm + parse"],
    ),
    ("regressor first conv, CellShare part", ["regressor first conv: CellShare"], []),
    ("regressor nets (convs + fc), 2 levels", ["regressor nets"], ["regressor nets"]),
    ("regressors, other", ["regress other"], ["regress other"]),
    ("other", ["other"], ["other"]),
]
FIXED = {"import torch", "import the package", "model load"}


def stage_table(st: dict) -> List[str]:
    ours, official = st["ours"], st.get("official")
    size = "x".join(map(str, st["size"]))

    def value(res: Optional[dict], labels: List[str], key: str) -> Optional[float]:
        """Summed seconds of ``labels`` in ``res[key]`` (``first``, ``warm``
        or ``fixed``), falling back to the fixed costs."""
        if res is None or not labels:
            return None
        part = (res.get(key) or {}).get("seconds", {}) if key != "fixed" else {}
        found = [part.get(k, res["fixed"].get(k)) for k in labels]
        found = [v for v in found if v is not None]
        return sum(found) if found else None

    def cell(v: Optional[float]) -> str:
        return "-" if v is None else f"{v:.2f}"

    unit = f"{ours.get('clock', 'wall')} s, {ours['threads']} threads"
    lines = [
        f"| stage (pair a, {size}; {unit}) | official, 1st call | official, warm "
        "| ours, 1st call | ours, warm (median) | official / ours, warm |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row, mine, theirs in STAGE_ROWS:
        keys = ["fixed"] * 2 if row in FIXED else ["first", "warm"]
        o1, ow = (value(official, theirs, k) for k in keys)
        u1, uw = (value(ours, mine, k) for k in keys)
        ratio = f"{ow / uw:.1f}x" if ow and uw and min(ow, uw) >= 0.01 else "-"
        lines.append(
            f"| {row} | {cell(o1)} | {cell(ow)} | {cell(u1)} | {cell(uw)} | {ratio} |"
        )

    def forward(res: Optional[dict], key: str) -> Optional[float]:
        """The timed call without the image decoding (inside the official's)."""
        if res is None or not res.get(key):
            return None
        return res[key]["total"] - res[key]["seconds"].get("decode + resize", 0.0)

    tot = [forward(official, "first"), forward(official, "warm")]
    tot += [forward(ours, "first"), forward(ours, "warm")]
    ratio = f"{tot[1] / tot[3]:.1f}x" if tot[1] else "-"
    lines.append(
        "| **forward, total** (without decoding) | "
        + " | ".join(f"**{cell(v)}**" for v in tot)
        + f" | {ratio} |"
    )
    lines.append(
        f"| select + write npz | - | - | {cell(ours['fixed']['select + write npz'])} "
        "| | |"
    )
    lines.append("")
    lines.append(
        f"Proposals {ours['proposals']}; matches > 0.25: ours {ours['matches']}"
        + (f", official {official['matches']}" if official else "")
        + f"; torch operator calls per pair: ours {ours['ops']['total']}"
        + (f", official {official['ops']['total']}" if official else "")
        + ". Load during the runs: "
        + ", ".join(
            f"{k} {st[k]['load'][0]:.1f}->{st[k]['load'][1]:.1f}"
            for k in ("official", "ours", "runner")
            if k in st
        )
    )
    runner = st["runner"]
    n = runner["pairs"]
    lines += [
        "",
        f"`match_pairs` over the {n} pairs of workload b "
        "(seconds, whole run and per pair):",
        "",
        "| step | seconds | per pair |",
        "| --- | --- | --- |",
    ]
    steps = dict(runner["fixed"], **runner["first"]["seconds"])
    for k, v in sorted(steps.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {k} | {v:.2f} | {v / n:.2f} |")
    lines.append(
        f"| **total (main, after imports)** | **{runner['first']['total']:.2f}** "
        f"| **{runner['first']['total'] / n:.2f}** |"
    )
    return lines


def workload_table(results: dict, size: Tuple[int, int]) -> List[str]:
    lines = [
        f"| workload ({size[0]}x{size[1]}) | pairs | official s | ours s | ratio (wall) "
        "| target | ratio (CPU s) | peak RSS ours / official | tree PSS ours "
        "| load |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    titles = {
        "a": "a: one pair, `p2p-hloc match` vs official_run.py",
        "b": "b: 1 x 6, `match_pairs` vs official_loop.py",
        "c": "c: 2 x 20, `match_pairs` vs official_loop.py",
    }
    for name, res in results.items():
        ours, off = res["ours"], res.get("official")
        loads = [
            r["load"][i] for rs in res["runs"].values() for r in rs for i in (0, 1)
        ]
        if off:
            ratio = res["ratio"]
            short = res["target"] / ratio
            miss = "" if short <= 1 else f" (target missed by {short:.2f}x)"
            cols = [
                f"{off['wall']:.1f}",
                f"{ours['wall']:.1f}",
                f"**{ratio:.2f}x**{miss}",
                f">= {res['target']:.0f}x",
                f"{res['cpu_ratio']:.2f}x",
                f"{ours['maxrss_mb']:.0f} / {off['maxrss_mb']:.0f} MB",
            ]
        else:
            cols = ["-", f"{ours['wall']:.1f}", "-", f">= {res['target']:.0f}x", "-"]
            cols.append(f"{ours['maxrss_mb']:.0f} MB")
        cols += [f"{ours['tree_pss_mb']:.0f} MB", f"{min(loads):.1f}-{max(loads):.1f}"]
        lines.append(f"| {titles[name]} | {res['pairs']} | " + " | ".join(cols) + " |")
    notes = []
    for name, res in results.items():
        n = len(res["runs"]["ours"])
        note = f"{name}: medians of {n}"
        off = res["runs"]["official"]
        if off and "measured_pairs" in off[0]:
            note += (
                f"; official timed on {off[0]['measured_pairs']} of {res['pairs']} "
                "pairs, its loop time scaled to all (the loop keeps nothing across "
                "pairs), its CPU time in proportion"
            )
        if "vs_official" in res:
            note += f"; vs official: {res['vs_official']}"
        if "vs_baseline" in res:
            note += f"; outputs vs baseline: {res['vs_baseline']}"
        notes.append(note)
    return lines + [""] + notes


def baseline_table(results: dict, baseline: Path) -> List[str]:
    """Ours against ``--baseline``: medians of the runs alternated with ours."""
    lines = [
        f"| workload | baseline ({baseline.name}) s | this checkout s "
        "| baseline / this | every run, baseline | every run, this | peak RSS "
        "baseline / this | outputs |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, res in results.items():
        base, ours = res["baseline"], res["ours"]

        def walls(impl: str) -> str:
            return ", ".join(f"{r['wall']:.1f}" for r in res["runs"][impl])

        lines.append(
            f"| {name} | {base['wall']:.2f} | {ours['wall']:.2f} "
            f"| {res['before_after']:.3f} | {walls('baseline')} | {walls('ours')} "
            f"| {base['maxrss_mb']:.0f} / {ours['maxrss_mb']:.0f} MB "
            f"| {res['vs_baseline']} |"
        )
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--official",
        type=Path,
        default=os.environ.get("P2P_OFFICIAL") or None,
        help="the official code (default $P2P_OFFICIAL); empty: ours only",
    )
    p.add_argument("--workloads", nargs="*", default=list(WORKLOADS), choices=WORKLOADS)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--size", type=int, default=1024, help="image width (x 3/4)")
    p.add_argument("--threads", type=int, help="threads of every run (torch's default)")
    p.add_argument(
        "--env",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="environment of every run, e.g. OMP_WAIT_POLICY=PASSIVE",
    )
    p.add_argument(
        "--official-pairs",
        type=int,
        help="time the official loop on the first N pairs of b/c and scale",
    )
    p.add_argument(
        "--baseline",
        type=Path,
        help="another checkout: its commands run alternated with ours, times "
        "compared and outputs checked equal",
    )
    p.add_argument("--stages", action="store_true", help="per-stage table too")
    p.add_argument("--stage-threads", type=int, help="torch threads of the stage runs")
    p.add_argument(
        "--stage-clock",
        choices=["wall", "cpu"],
        default="wall",
        help="stage times in wall or process CPU seconds (cpu with 1 thread: "
        "robust to a loaded machine)",
    )
    p.add_argument("--rates", action="store_true", help="machine GEMM/conv rates too")
    p.add_argument("--workdir", type=Path, help="keep images and outputs here")
    p.add_argument("--json", type=Path, help="also write every figure here")
    args = p.parse_args()
    if args.official is not None and str(args.official) in ("", "."):
        args.official = None
    if args.official is not None:
        args.official = Path(args.official).resolve()
        if not (args.official / "networks" / "patch2pix.py").is_file():
            p.error(f"{args.official} holds no official Patch2Pix (networks/)")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    for item in args.env:
        key, _, value = item.partition("=")
        env[key] = value
    if args.official:
        env["P2P_OFFICIAL"] = str(args.official)
    facts = {**cpu_facts(), **torch_facts(env), "load_start": load_avg()}
    facts["env"] = " ".join(args.env)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="p2p-side-by-side-"))
    work.mkdir(parents=True, exist_ok=True)
    size = (args.size, args.size * 3 // 4)
    data = {"size": size, "a": make_pair_a(work, size)}
    sys.path.insert(0, str(ROOT))
    views = set(args.workloads) | ({"b"} if args.stages else set())
    for name in sorted(views - {"a"}):  # only what runs: rendering takes a while
        data[name] = make_views(work, size, *WORKLOADS[name][:2])
    data["images"] = work / f"images{size[0]}"
    threads = facts["torch_threads"]
    report: dict = {"facts": facts, "workloads": {}}
    try:
        for name in args.workloads:
            report["workloads"][name] = run_workload(
                name, data, work, args, env, threads
            )
        if args.stages:
            report["stages"] = run_stages(data, work, args, env, threads)
        if args.rates:
            log = work / "rates.log"
            cmd = [sys.executable, BENCH_DIR / "machine_rates.py", "--json"]
            cmd += [work / "rates.json", "--clock", args.stage_clock]
            if args.stage_threads:
                cmd += ["--threads", str(args.stage_threads)]
            run_process(cmd, env, log)
            report["rates"] = json.loads((work / "rates.json").read_text())
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    facts["load_end"] = load_avg()
    print(
        f"machine: {facts['cpu']} ({facts['isa']}), {facts['cores']} cores, "
        f"torch {facts['torch']} with {facts['torch_threads']} threads; "
        f"load {facts['load_start']:.1f} at the start, {facts['load_end']:.1f} at the end"
        + (f"; environment {facts['env']}" if facts["env"] else "")
    )
    if not args.official:
        print("no official code given (--official or $P2P_OFFICIAL): no ratios")
    if report["workloads"]:
        print()
        print("\n".join(workload_table(report["workloads"], data["size"])))
    if args.baseline and report["workloads"]:
        print()
        print("\n".join(baseline_table(report["workloads"], args.baseline)))
    if args.stages:
        print()
        print("\n".join(stage_table(report["stages"])))
    if args.rates:
        print()
        f = report["rates"]["facts"]
        print(
            f"Kernel rates ({f['clock']} s, {f['torch_threads']} threads, "
            f"load {f['load']:.1f}->{f['load_after']:.1f}):"
        )
        print()
        print("| kernel (shapes of a 1024x768 pair) | GFLOP | ms | GFLOP/s |")
        print("| --- | --- | --- | --- |")
        for r in report["rates"]["rows"]:
            print(
                f"| {r['name']} | {r['gflop']:.2f} | {r['seconds'] * 1e3:.1f} "
                f"| {r['gflops']:.0f} |"
            )
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
