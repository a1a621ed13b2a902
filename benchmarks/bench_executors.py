"""Matching throughput of the executors (``p2p_hloc.executors.run_pairs``).

The same pairs run through the local executor and through Ray at 1 and 2
workers of 1 torch thread each: Patch2Pix with the golden weights on
``--queries x --db`` pairs of random warps of the golden photos at ``--size x
3/4 size`` (``bench_pairs.make_dataset``). Each configuration runs in a fresh
subprocess:

- ``local-1t``, ``local-2t``: the local executor at 1 and 2 torch threads
  (one image reader process);
- ``ray-1w``, ``ray-2w``: a local Ray instance with 1 and 2 CPUs and as many
  workers (1 torch thread each).

Per configuration: the wall time of ``run_pairs`` and pairs per second over
it; the time to the first finished pair (start-up: model load, and for Ray
the actors' start) and the steady state (seconds per pair from the first to
the last finished pair); for Ray, ``ray.init`` and ``ray.shutdown``. Then the
ratio of ``ray-2w`` to ``ray-1w`` pairs per second (target: at least 1.6 on
the 2-core machine) and Ray's overhead: at start-up, per pair (``ray-1w``
against ``local-1t``), and the round trip of one actor call returning a
prediction of 1,000 matches (measured alone, 200 calls).

Usage::

    python3 benchmarks/bench_executors.py
    python3 benchmarks/bench_executors.py --size 640 --modes ray-1w ray-2w
    python3 benchmarks/bench_executors.py --rounds 2   # a busy machine: ratios per round
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_pairs import WEIGHTS, make_dataset  # noqa: E402

MODES = ["ray-1w", "ray-2w", "local-1t", "local-2t"]
TARGET = 1.6  # ray-2w / ray-1w pairs per second


def echo_round_trip(ray, calls: int = 200) -> float:
    """Seconds per call of an actor call that returns a 1,000-match ``pred``."""

    @ray.remote(num_cpus=0)
    class Echo:
        def pred(self):
            return {
                "keypoints0": np.zeros((1000, 2)),
                "keypoints1": np.zeros((1000, 2)),
                "scores": np.zeros(1000),
                "size0": np.array([640, 480]),
                "size1": np.array([640, 480]),
            }

    echo = Echo.remote()
    ray.get(echo.pred.remote())
    t = time.perf_counter()
    for _ in range(calls):
        ray.get(echo.pred.remote())
    return (time.perf_counter() - t) / calls


def cpu_seconds() -> Dict[str, float]:
    """CPU seconds (user + system) so far of this process and all its
    descendants (Ray's processes, the actors, DataLoader workers), split into
    the ``MatchWorker`` actors and the rest."""
    tick = os.sysconf("SC_CLK_TCK")
    procs = {}
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
            actor = b"MatchWorker" in Path(f"/proc/{d}/cmdline").read_bytes()
        except OSError:
            continue
        procs[int(d)] = (int(stat[1]), (int(stat[11]) + int(stat[12])) / tick, actor)
    tree, todo = [], [os.getpid()]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += [c for c, (parent, _, _) in procs.items() if parent == pid]
    out = {"workers": 0.0, "other": 0.0}
    for pid in tree:
        out["workers" if procs[pid][2] else "other"] += procs[pid][1]
    return out


def run_mode(mode: str, folder: Path) -> Dict:
    import torch

    from p2p_hloc import tune_malloc
    from p2p_hloc.confs import confs
    from p2p_hloc.executors import run_pairs
    from p2p_hloc.io import parse_pairs

    tune_malloc()
    pairs = parse_pairs(folder / "pairs.txt")
    times: List[float] = []
    out: Dict = {"mode": mode, "pairs": len(pairs), "load": os.getloadavg()[0]}
    kind, n = mode.split("-")
    n = int(n[:-1])

    cpu: List[Dict[str, float]] = []

    def write(pair, pred):
        times.append(time.perf_counter())
        if len(times) in (1, len(pairs)):  # the steady state: first to last pair
            cpu.append(cpu_seconds())

    if kind == "ray":
        import ray

        t = time.perf_counter()
        ray.init(  # workers at the priority of this process, as match_pairs does
            num_cpus=n,
            include_dashboard=False,
            log_to_driver=False,
            _system_config={"worker_niceness": 0},
        )
        out["ray_init"] = time.perf_counter() - t
    else:
        torch.set_num_threads(n)
    t0 = time.perf_counter()
    run_pairs(
        confs["patch2pix"],
        WEIGHTS,
        pairs,
        folder,
        write,
        executor=kind,
        workers=n,
        num_workers=1,
    )
    out["seconds"] = time.perf_counter() - t0
    out["first"] = times[0] - t0
    out["steady"] = (times[-1] - times[0]) / max(1, len(times) - 1)
    for k in cpu[0]:  # CPU seconds per pair in the steady state
        out[f"cpu_{k}"] = (cpu[-1][k] - cpu[0][k]) / max(1, len(times) - 1)
    if kind == "ray":
        if n == 1:
            out["round_trip"] = echo_round_trip(ray)
        t = time.perf_counter()
        ray.shutdown()
        out["ray_shutdown"] = time.perf_counter() - t
    out["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def median_row(runs: List[Dict]) -> Optional[Dict]:
    """The run of median wall time (None without runs)."""
    runs = sorted(runs, key=lambda r: r["seconds"])
    return runs[(len(runs) - 1) // 2] if runs else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--queries", type=int, default=2)
    p.add_argument("--db", type=int, default=20)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--modes", nargs="+", default=MODES, choices=MODES)
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every mode this many times, in turn (a shared machine's load "
        "changes: the ratios are taken per round)",
    )
    p.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(run_mode(args.worker[0], Path(args.worker[1]))))
        return
    runs: List[Dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        make_dataset(Path(tmp), args.queries, args.db, args.size)
        for round_ in range(args.rounds):
            for mode in args.modes:
                cmd = [sys.executable, __file__, "--worker", mode, tmp]
                res = subprocess.run(cmd, capture_output=True, text=True)
                if res.returncode:
                    print(res.stderr[-3000:], file=sys.stderr)
                    continue
                runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
                runs[-1]["round"] = round_
                print(f"done {mode}: {json.dumps(runs[-1])}", file=sys.stderr)
    print(
        f"{args.queries} queries x {args.db} db images at {args.size}x"
        f"{args.size * 3 // 4}, Patch2Pix fp32, golden weights, {os.cpu_count()} cores"
    )
    print(
        f"{'round':>5} {'mode':>9} {'pairs':>5} {'seconds':>8} {'pairs/s':>8} "
        f"{'first':>6} {'s/pair':>7} {'init':>5} {'stop':>5} {'rss_mb':>7} {'load':>5}"
    )
    for r in runs:
        init = f"{r['ray_init']:.1f}" if "ray_init" in r else "-"
        stop = f"{r['ray_shutdown']:.1f}" if "ray_shutdown" in r else "-"
        print(
            f"{r['round']:>5} {r['mode']:>9} {r['pairs']:>5} {r['seconds']:>8.1f} "
            f"{r['pairs'] / r['seconds']:>8.3f} {r['first']:>6.1f} {r['steady']:>7.2f} "
            f"{init:>5} {stop:>5} {r['rss_mb']:>7.0f} {r['load']:>5.1f}"
        )
    print("first: seconds to the first finished pair; s/pair: after it (steady)")
    by = {(r["round"], r["mode"]): r for r in runs}
    for round_ in range(args.rounds):
        one, two = by.get((round_, "ray-1w")), by.get((round_, "ray-2w"))
        if one and two:
            ratio = one["seconds"] / two["seconds"]  # same pairs
            verdict = "met" if ratio >= TARGET else "NOT met"
            print(
                f"round {round_}: ray-2w / ray-1w pairs per second {ratio:.2f}x "
                f"(target {TARGET}x: {verdict}); steady state alone "
                f"{one['steady'] / two['steady']:.2f}x"
            )
    for round_ in range(args.rounds):
        one, two = by.get((round_, "ray-1w")), by.get((round_, "ray-2w"))
        if one and two:  # idle 2 cores: 1 worker is bound by its own thread,
            # 2 workers by both cores' worth of CPU time (workers + the rest)
            w1, o1 = one["cpu_workers"], one["cpu_other"]
            t1, t2 = max(w1, (w1 + o1) / 2), (two["cpu_workers"] + two["cpu_other"]) / 2
            print(
                f"round {round_}: CPU s/pair, workers + rest: ray-1w {w1:.2f} + "
                f"{o1:.2f}, ray-2w {two['cpu_workers']:.2f} + {two['cpu_other']:.2f}"
                f"; projected ratio on 2 idle cores {t1 / t2:.2f}x"
            )
    modes = {m: median_row([r for r in runs if r["mode"] == m]) for m in args.modes}
    modes = {m: r for m, r in modes.items() if r is not None}
    if "ray-1w" in modes:
        r = modes["ray-1w"]
        print(
            f"Ray actor call round trip (1,000-match pred): {r['round_trip'] * 1e3:.2f} ms"
        )
        if "local-1t" in modes:
            loc = modes["local-1t"]
            print(
                f"Ray overhead per pair (ray-1w - local-1t, steady, median runs): "
                f"{r['steady'] - loc['steady']:+.3f} s; at start-up: "
                f"{r['ray_init'] + r['first'] - loc['first']:+.1f} s "
                f"(ray.init {r['ray_init']:.1f} s + first pair {r['first']:.1f} s "
                f"against {loc['first']:.1f} s), ray.shutdown {r['ray_shutdown']:.1f} s"
            )


if __name__ == "__main__":
    main()
