"""Per-stage wall time and peak memory of Patch2Pix on one image pair.

Every (size, precision) configuration runs in a fresh subprocess, so that its
peak RSS (``ru_maxrss``: model, images and all transient tensors) is its own.
The pair is golden pair A resized to ``size x 3/4 size`` (Pillow LANCZOS) and
matched at ``imsize = size``. Usage::

    python3 benchmarks/bench_match.py                       # 640 and 1024, fp32 and bf16
    python3 benchmarks/bench_match.py --sizes 1024 --precisions fp32 --repeats 5

Times are medians over ``--repeats`` runs after one warm-up run. Each run is
one call of the model (``Patch2Pix.forward``, ``total``) whose own stage
methods are wrapped with timers: ``extract_features`` (backbone, both
images), ``correlation`` (corr+pool), ``consensus`` (nc), ``extract_matches``
(extract) and the two regressors' ``refine`` (mid, fine). ``cpu`` is the
process CPU time of the call (all threads) and ``load`` the 1-minute load
average when the configuration started: on a shared machine, compare runs of
similar load only. Ratios to the official code are measured in the same run
by ``side_by_side.py``, never against a stored time.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from p2p_hloc import tune_malloc  # noqa: E402
from p2p_hloc.model import load_model  # noqa: E402
from p2p_hloc.preprocess import load_image  # noqa: E402

GOLDEN = Path(os.environ.get("P2P_GOLDEN", ROOT.parent / "shared" / "golden"))
STAGES = ["backbone", "corr+pool", "nc", "extract", "mid", "fine", "total", "cpu"]


def make_pair(size: int, folder: Path) -> List[Path]:
    """Golden pair A resized to ``size x 3/4 size``."""
    from PIL import Image

    paths = []
    for i in (1, 2):
        path = folder / f"pairA_{i}_{size}.png"
        if not path.exists():
            im = Image.open(GOLDEN / f"pairA_{i}.png").convert("RGB")
            im.resize((size, size * 3 // 4), Image.LANCZOS).save(path)
        paths.append(path)
    return paths


def stage_timers(model, sync: Callable[[], None]) -> Dict[str, float]:
    """Wrap the model's stage methods with timers (on this instance only);
    returns the dict their seconds accumulate in."""
    times: Dict[str, float] = {}

    def wrap(obj, method: str, stage: str) -> None:
        fn = getattr(obj, method)

        def timed(*args, **kwargs):
            sync()
            t = time.perf_counter()
            out = fn(*args, **kwargs)
            sync()
            times[stage] = times.get(stage, 0.0) + time.perf_counter() - t
            return out

        setattr(obj, method, timed)

    wrap(model, "extract_features", "backbone")
    wrap(model, "correlation", "corr+pool")
    wrap(model, "consensus", "nc")
    wrap(model, "extract_matches", "extract")
    wrap(model.regress_mid, "refine", "mid")
    wrap(model.regress_fine, "refine", "fine")
    return times


@torch.no_grad()
def run_once(model, x0, x1, times: Dict[str, float], sync) -> Dict[str, float]:
    """One pair through the model; its stage times and the total."""
    times.clear()
    sync()
    cpu, t = time.process_time(), time.perf_counter()
    pred = model({"image0": x0, "image1": x1}, stages=True)
    sync()
    out = dict(times, total=time.perf_counter() - t, cpu=time.process_time() - cpu)
    out["proposals"] = len(pred["coarse_matches"])
    return out


def worker(size: int, precision: str, device: str, repeats: int, folder: Path) -> dict:
    load = os.getloadavg()[0]
    model = load_model(GOLDEN / "patch2pix_random_fp16.pth", device)
    model.precision = precision
    p0, p1 = make_pair(size, folder)
    x0 = load_image(p0, size)[0][None].to(device)
    x1 = load_image(p1, size)[0][None].to(device)
    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    times = stage_timers(model, sync)
    run_once(model, x0, x1, times, sync)  # warm-up
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    runs = [run_once(model, x0, x1, times, sync) for _ in range(repeats)]
    out = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    out.update(
        size=f"{x0.shape[-1]}x{x0.shape[-2]}",
        precision=precision,
        device=torch.cuda.get_device_name() if cuda else "cpu",
        threads=torch.get_num_threads(),
        load=load,
        rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    )
    if cuda:
        out["gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def table(rows: List[dict]) -> str:
    mem = "gpu_mb" if any("gpu_mb" in r for r in rows) else "rss_mb"
    head = ["size", "prec", "N"] + STAGES + [mem, "load"]
    lines = [" ".join(f"{h:>9}" for h in head)]
    for r in rows:
        vals = [r["size"], r["precision"], r["proposals"]]
        vals += [f"{r[s]:.2f}" for s in STAGES] + [
            f"{r.get(mem, 0):.0f}",
            f"{r['load']:.1f}",
        ]
        lines.append(" ".join(f"{v:>9}" for v in vals))
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[640, 1024])
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", type=Path, help="also write the rows here")
    p.add_argument(
        "--default-malloc",
        action="store_true",
        help="leave glibc's malloc as it is (the CLIs call p2p_hloc.tune_malloc)",
    )
    p.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        if not args.default_malloc:
            tune_malloc()
        size, precision = int(args.worker[0]), args.worker[1]
        print(
            json.dumps(worker(size, precision, args.device, args.repeats, args.folder))
        )
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            for precision in args.precisions:
                cmd = [sys.executable, __file__, "--worker", str(size), precision]
                cmd += ["--device", args.device, "--repeats", str(args.repeats)]
                cmd += ["--default-malloc"] if args.default_malloc else []
                res = subprocess.run(
                    cmd + ["--folder", tmp], capture_output=True, text=True
                )
                if res.returncode:
                    print(res.stderr, file=sys.stderr)
                    continue
                rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
                print(f"done {size} {precision}", file=sys.stderr)
    print(
        f"device: {rows[0]['device'] if rows else args.device}; "
        "seconds per pair (medians); ratios to the official code: side_by_side.py"
    )
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
