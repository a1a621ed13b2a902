"""Where the time of a pair goes: ours and the official Patch2Pix, stage by stage.

Each call is one fresh process that prints one JSON line (the last line of
its output). Nothing is re-chained here: the functions each implementation
calls are wrapped from outside with timers (as
``../shared/official-bench/official_run.py``'s ``Recorder`` does), and every
stage gets its *exclusive* time (a wrapped function's time minus that of the
wrapped functions it calls). Modes::

    python3 benchmarks/stage_times.py ours WEIGHTS IMG0 IMG1 [--repeats 3]
    python3 benchmarks/stage_times.py official WEIGHTS IMG0 IMG1 [--official DIR]
    python3 benchmarks/stage_times.py runner WEIGHTS IMAGE_DIR PAIRS

- ``ours``: the fixed costs of ``p2p-hloc match`` (importing torch and the
  package, loading the model, decoding and resizing the images, selecting
  and writing the matches) and the stages of ``Patch2Pix.forward``: the
  first call (what a ``p2p-hloc match`` process pays) and the median of
  ``--repeats`` more.
- ``official``: the same for the official code (from ``--official`` or
  ``$P2P_OFFICIAL``, imported through ``official_common.py``), running
  ``estimate_matches`` as ``official_run.py`` and ``official_loop.py`` do.
- ``runner``: ``p2p_hloc.match_pairs.main`` (the ``patch2pix`` conf) with its
  steps and the model's stages wrapped: model building, DataLoader start-up
  and the waits for decoded images, extraction, matching, raw-match files,
  quantization and h5 writing (one step, ``quantize.write_phase``).

``seconds`` maps stage names to seconds; ``total`` is the wall time of the
timed call; ``load`` is the 1-minute load average at the start and end.
"""

import argparse
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable, Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT.parent / "shared" / "official-bench"
# wall time; ``--clock cpu``: process CPU time (with one thread, robust to a
# loaded machine)
clock = time.perf_counter


class StageTimer:
    """Exclusive wall time per label of wrapped callables."""

    def __init__(self):
        self.seconds: Dict[str, float] = defaultdict(float)
        self.calls: Dict[str, int] = defaultdict(int)
        self._inner: List[float] = []
        self.labels: List[str] = []  # the wrapped calls under way
        self._undo: List[Callable[[], None]] = []
        self.missing: List[str] = []

    def wrap(
        self,
        owner: object,
        attr: str,
        label: str,
        after: Optional[Callable[[object], None]] = None,
    ) -> None:
        """Time ``owner.attr`` (a module function, class method or instance
        method) under ``label``; ``after(result)`` runs once per call. A
        missing attribute is recorded in ``missing`` and skipped."""
        if not hasattr(owner, attr):
            self.missing.append(f"{getattr(owner, '__name__', owner)}.{attr}")
            return
        own = vars(owner).get(attr, None) if hasattr(owner, "__dict__") else None
        orig = getattr(owner, attr)

        @functools.wraps(orig)
        def timed(*args, **kwargs):
            self._inner.append(0.0)
            self.labels.append(label)
            t = clock()
            try:
                out = orig(*args, **kwargs)
            finally:
                dt = clock() - t
                self.seconds[label] += dt - self._inner.pop()
                self.labels.pop()
                self.calls[label] += 1
                if self._inner:
                    self._inner[-1] += dt
            if after is not None:
                after(out)
            return out

        setattr(owner, attr, timed)
        if own is None:
            self._undo.append(lambda: delattr(owner, attr))
        else:
            self._undo.append(lambda: setattr(owner, attr, own))

    def measure(self, fn: Callable[[], object]) -> dict:
        """Run ``fn`` once with fresh counters; its stages and wall time."""
        self.seconds.clear()
        self.calls.clear()
        t = clock()
        fn()
        total = clock() - t
        return {"seconds": dict(self.seconds), "total": total}

    def unwrap(self) -> None:
        while self._undo:
            self._undo.pop()()


def medians(runs: List[dict]) -> dict:
    keys = {k for r in runs for k in r["seconds"]}
    return {
        "seconds": {
            k: statistics.median(r["seconds"].get(k, 0.0) for r in runs) for k in keys
        },
        "total": statistics.median(r["total"] for r in runs),
    }


def count_ops(timer: StageTimer, fn: Callable[[], object]) -> Dict[str, int]:
    """Torch operator calls (dispatcher level) of ``fn()`` per stage of
    ``timer``: each costs a fixed overhead, and a parallel one a thread
    synchronisation (expensive when the machine is oversubscribed)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    ops: Dict[str, int] = defaultdict(int)

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            ops[timer.labels[-1] if timer.labels else "outside"] += 1
            return func(*args, **(kwargs or {}))

    with Count():
        fn()
    return dict(ops, total=sum(ops.values()))


def import_torch(threads: Optional[int]) -> float:
    """Seconds to import torch; then sets its threads if given."""
    seconds = timed_import("torch")
    if threads:
        import torch

        torch.set_num_threads(threads)
    return seconds


def timed_import(name: str) -> float:
    t = clock()
    __import__(name)
    return clock() - t


def wrap_ours_model(timer: StageTimer, model) -> None:
    """Wrap the stages of one ``Patch2Pix`` and the functions its modules
    call (names of the model's current and previous module layouts)."""
    from importlib import import_module

    mods = []
    for name in ("patch2pix", "regressor", "patches", "fast_regressor"):
        try:
            mods.append(import_module(f"p2p_hloc.model.{name}"))
        except ImportError:
            pass
    classes = {getattr(m, "CellShare", None) for m in mods} - {None}
    fast = {getattr(m, "FastRegressor", None) for m in mods} - {None}
    nets = [model.regress_mid, model.regress_fine] if not model.coarse_only else []
    for owners, attr, label in [
        ([model], "extract_features", "backbone"),
        (mods, "l2_normalize", "correlation + 4D max-pool"),
        (mods, "correlation_maxpool", "correlation + 4D max-pool"),
        (mods, "mutual_matching", "mutual matching"),
        ([model.ncn], "forward", "NC"),
        (mods, "coarse_matches", "coarse extraction"),
        (mods, "mutual_filter", "mutual filter"),
        ([model], "coarse", "coarse other"),
        ([model], "patch_tables", "patch gathering"),
        (mods, "gather_patches", "patch gathering"),
        (classes, "__call__", "regressor first conv: CellShare"),
        (fast, "__call__", "regressor nets"),
        ([n.conv for n in nets] + [n.fc for n in nets], "forward", "regressor nets"),
        (nets, "forward", "regressor nets"),
        (mods, "parse_output", "regress other"),
        (nets, "refine", "regress other"),
        ([model], "regress", "regress other"),
        ([model], "refine_features", "regress other"),
        ([model], "forward_features", "other"),
    ]:
        found = [o for o in owners if hasattr(o, attr)]
        for owner in found:
            timer.wrap(owner, attr, label)
        if not found:
            timer.missing.append(f"{attr} ({label})")


def pair_forward(model) -> Callable:
    """``f(x0, x1)``: the model on two ``(1, 3, H, W)`` inputs of
    ``preprocess.load_image``, with its stages, in either API
    (``forward_pair(image0, image1)`` or ``forward({"image0", "image1"})``)."""
    if hasattr(model, "forward_pair"):
        return model.forward_pair
    return lambda x0, x1: model({"image0": x0, "image1": x1}, stages=True)


def run_ours(args) -> dict:
    load = os.getloadavg()[0]
    fixed = {"import torch": import_torch(args.threads)}
    fixed["import p2p_hloc.cli"] = timed_import("p2p_hloc.cli")
    import numpy as np
    import torch

    from p2p_hloc import tune_malloc
    from p2p_hloc.model import load_model, select_matches
    from p2p_hloc.preprocess import load_image

    tune_malloc()
    t = clock()
    model = load_model(args.weights, "cpu")
    fixed["model load"] = clock() - t
    t = clock()
    (x0, s0, _), (x1, s1, _) = [load_image(p, args.imsize) for p in args.inputs]
    fixed["decode + resize"] = clock() - t
    timer = StageTimer()
    wrap_ours_model(timer, model)
    forward = pair_forward(model)
    top = "forward_pair" if hasattr(model, "forward_pair") else "forward"
    timer.wrap(model, top, "other")
    x0, x1 = x0[None], x1[None]
    with torch.no_grad():
        first = timer.measure(lambda: forward(x0, x1))
        pred = forward(x0, x1)
        t = clock()
        out = select_matches(pred, s0, s1, 0.25)
        with tempfile.TemporaryDirectory() as tmp:
            np.savez(
                Path(tmp) / "m.npz",
                **{k: v.cpu().numpy() for k, v in out.items()},
            )
        fixed["select + write npz"] = clock() - t
        warm = [timer.measure(lambda: forward(x0, x1)) for _ in range(args.repeats)]
        ops = count_ops(timer, lambda: forward(x0, x1))
    return {
        "impl": "ours",
        "ops": ops,
        "fixed": fixed,
        "first": first,
        "warm": medians(warm) if warm else None,
        "proposals": len(pred["coarse_matches"]),
        "matches": len(out["scores"]),
        "threads": torch.get_num_threads(),
        "clock": args.clock,
        "load": [load, os.getloadavg()[0]],
        "missing": timer.missing,
    }


def run_official(args) -> dict:
    load = os.getloadavg()[0]
    if args.official:
        os.environ["P2P_OFFICIAL"] = str(args.official)
    fixed = {"import torch": import_torch(args.threads)}
    sys.path.insert(0, str(args.bench))
    fixed["import official code"] = timed_import("official_common")
    import networks.patch2pix as module
    import torch
    from official_common import load_official, model_helper

    timer = StageTimer()
    timer.wrap(model_helper, "load_model", "model load")
    t = clock()
    net = load_official(str(args.weights))  # with the bench's key check
    fixed["model load + key check"] = clock() - t
    fixed["model load"] = timer.seconds.pop("model load")
    timer.wrap(model_helper, "load_im_flexible", "decode + resize")
    timer.wrap(net.extract, "forward_all", "backbone")
    timer.wrap(net, "forward_coarse_match", "L2 norm (coarse)")
    timer.wrap(net.combine, "forward", "correlation")
    timer.wrap(module, "maxpool4d", "4D max-pool")
    timer.wrap(module, "MutualMatching", "mutual matching")
    timer.wrap(net.ncn, "forward", "NC")
    timer.wrap(net, "cal_coarse_matches", "coarse extraction")
    timer.wrap(module, "filter_coarse", "mutual filter")
    timer.wrap(module, "select_local_patch_feats", "patch gathering")
    timer.wrap(net, "forward_fine_match_mini_batch", "patch L2 norm + parse")
    timer.wrap(net, "forward_fine_match", "regress other")
    timer.wrap(net.regress_mid, "forward", "regressor nets")
    timer.wrap(net.regress_fine, "forward", "regressor nets")
    timer.wrap(model_helper, "estimate_matches", "other")

    def call():
        return model_helper.estimate_matches(
            net,
            str(args.inputs[0]),
            str(args.inputs[1]),
            ksize=2,
            ncn_thres=0.0,
            mutual=True,
            io_thres=0.25,
            eval_type="fine",
            imsize=args.imsize,
        )

    out = []
    first = timer.measure(lambda: out.append(call()))
    warm = [timer.measure(call) for _ in range(args.repeats)]
    return {
        "impl": "official",
        "ops": count_ops(timer, call),
        "fixed": fixed,
        "first": first,
        "warm": medians(warm) if warm else None,
        "matches": len(out[0][1]),
        "threads": torch.get_num_threads(),
        "clock": args.clock,
        "load": [load, os.getloadavg()[0]],
        "missing": timer.missing,
    }


def run_runner(args) -> dict:
    load = os.getloadavg()[0]
    fixed = {"import torch": import_torch(args.threads)}
    fixed["import p2p_hloc.match_pairs"] = timed_import("p2p_hloc.match_pairs")
    import torch.utils.data.dataloader as dl

    from p2p_hloc import executors, match_pairs, tune_malloc
    from p2p_hloc.confs import confs
    from p2p_hloc.io.raw import RawMatches
    from p2p_hloc.matchers.patch2pix import Matcher

    tune_malloc()
    timer = StageTimer()
    timer.wrap(
        executors,
        "build_matcher",
        "model build + load",
        after=lambda m: wrap_ours_model(timer, m.model),
    )
    timer.wrap(dl.DataLoader, "__iter__", "DataLoader start (workers)")
    for it in ("_MultiProcessingDataLoaderIter", "_SingleProcessDataLoaderIter"):
        timer.wrap(getattr(dl, it), "__next__", "wait for decoded image")
    timer.wrap(Matcher, "load", "decode + resize (main process)")
    timer.wrap(Matcher, "match", "select matches")
    timer.wrap(RawMatches, "write", "raw-match files")
    timer.wrap(RawMatches, "read", "raw-match files")
    timer.wrap(match_pairs, "write_phase", "quantization + h5 writing")
    timer.wrap(executors, "match_raw", "runner other")
    timer.wrap(match_pairs, "main", "runner other")
    with tempfile.TemporaryDirectory() as tmp:
        res = timer.measure(
            lambda: match_pairs.main(
                confs["patch2pix"],
                args.inputs[1],
                args.inputs[0],
                Path(tmp),
                weights=args.weights,
                overwrite=True,
                num_workers=args.num_workers,
            )
        )
    return {
        "impl": "runner",
        "fixed": fixed,
        "first": res,
        "pairs": sum(
            1 for line in args.inputs[1].read_text().splitlines() if line.strip()
        ),
        "load": [load, os.getloadavg()[0]],
        "missing": timer.missing,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("mode", choices=["ours", "official", "runner"])
    p.add_argument("weights", type=Path)
    p.add_argument("inputs", type=Path, nargs=2, help="IMG0 IMG1 or IMAGE_DIR PAIRS")
    p.add_argument("--imsize", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3, help="warm calls after the first")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    p.add_argument("--num_workers", type=int, default=2, help="runner: DataLoader")
    p.add_argument("--official", type=Path, help="official code (or $P2P_OFFICIAL)")
    p.add_argument("--bench", type=Path, default=BENCH, help="official-bench folder")
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    global clock
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    run = {"ours": run_ours, "official": run_official, "runner": run_runner}
    print(json.dumps(run[args.mode](args)))


if __name__ == "__main__":
    main()
