"""The machine's arithmetic rates for the shapes Patch2Pix runs at 1024x768.

Prints GFLOP/s (medians over ``--repeats`` timed calls after a warm-up) of
square GEMMs (fp32 through ``torch.mm`` and through oneDNN's linear kernel,
``p2p_hloc.model.ops.matmul_nt``; bf16 through ``torch.mm``, smaller: CPUs
without ``avx512_bf16`` emulate it, 10-100x slower), of the GEMMs
and convolutions inside the model (correlation tiles, Winograd products,
``CellShare`` products, the regressors' convs in our and in the official
layout, the two NC layers) and of the backbone, with the machine facts. A
stage whose measured time is close to ``work / rate`` is at the machine's
arithmetic limit. Usage::

    python3 benchmarks/machine_rates.py
    python3 benchmarks/machine_rates.py --repeats 9 --json rates.json
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from side_by_side import cpu_facts  # noqa: E402

from p2p_hloc import tune_malloc  # noqa: E402
from p2p_hloc.model.backbone import ResNet34Features  # noqa: E402
from p2p_hloc.model.ncnet import NeighConsensus  # noqa: E402
from p2p_hloc.model.ops import matmul_nt  # noqa: E402
from p2p_hloc.model.patch2pix import Patch2Pix  # noqa: E402
from p2p_hloc.model.regressor import FeatRegressNet  # noqa: E402

PSIZE = 16  # regressor patch side
CONV_DIM = 512  # regressor conv channels


def machine_facts() -> Dict[str, object]:
    """``side_by_side.cpu_facts`` with torch's version, threads and ISA level."""
    return {
        **cpu_facts(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "load": os.getloadavg()[0],
    }


def rate(
    fn: Callable[[], object],
    flop: float,
    repeats: int,
    clock: Callable[[], float] = time.perf_counter,
) -> Dict[str, float]:
    """Median seconds and GFLOP/s of ``fn`` (one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        t = clock()
        fn()
        times.append(clock() - t)
    s = statistics.median(times)
    return {"seconds": s, "gflops": flop / s / 1e9}


def conv_flop(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor, groups=1) -> float:
    """Multiply-adds x 2 of a conv2d: out elements x (C_in / groups) x k x k."""
    return 2.0 * out.numel() * (x.shape[1] // groups) * w.shape[-2] * w.shape[-1]


def conv_case(n, cin, hw, cout, k, stride, groups=1, cl=True, dtype=torch.float32):
    """A conv2d call on random data; returns (fn, flop)."""
    x = torch.randn(n, cin, *hw)
    w = torch.randn(cout, cin // groups, k, k) / (cin * k * k) ** 0.5
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
        w = w.contiguous(memory_format=torch.channels_last)
    x, w = x.to(dtype), w.to(dtype)

    def fn():
        return F.conv2d(x, w, None, stride, k // 2, groups=groups)

    return fn, conv_flop(x, w, fn(), groups)


def gemm_case(m, k, n, kind="onednn", dtype=torch.float32, batch=1):
    """``batch`` products (m, k) x (k, n); returns (fn, flop)."""
    a = torch.randn(batch, m, k).to(dtype)
    b = torch.randn(batch, n, k).to(dtype)
    if kind == "onednn":
        fn = lambda: [matmul_nt(a[i], b[i]) for i in range(batch)]
    else:
        bt = b.transpose(1, 2).contiguous()
        fn = (lambda: torch.mm(a[0], bt[0])) if batch == 1 else (lambda: a @ bt)
    return fn, 2.0 * batch * m * k * n


def backbone_case(size=(768, 1024)):
    """ResNet34Features on one image; FLOP counted from its conv shapes."""
    net = ResNet34Features().eval()
    flop = [0.0]

    def hook(mod, inp, out):
        flop[0] += conv_flop(inp[0], mod.weight, out, mod.groups)

    handles = [
        m.register_forward_hook(hook)
        for m in net.modules()
        if isinstance(m, torch.nn.Conv2d)
    ]
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        net(x)
    for h in handles:
        h.remove()

    def fn():
        with torch.no_grad():
            return net(x)

    return fn, flop[0]


def cases(batch: int) -> List[tuple]:
    """(group, name, case) for every measured shape at 1024x768."""
    ch = ResNet34Features.channels
    k = Patch2Pix.ksize
    wf = 1024 // Patch2Pix.stride  # layer3 width at 1024x768 (96x128 cells)
    w1, h1 = wf // k, 768 // Patch2Pix.stride // k  # after the 4D max-pool
    # correlation_maxpool: k image-1 rows (k * wf) x (k^2 x cells a tile)
    tile = min(h1 * w1, (1 << 20) // (k * wf * k * k))
    # NeighConsensus: image-1 cells of a row per block of ~2^16 volume cells
    nc_cells = -(-w1 // -(-w1 * h1 * w1 // NeighConsensus.block))
    per_pixel = ch[0] + ch[1]  # levels of stride < P/4 read by the direct conv
    full = 2 * sum(ch[:4])  # the official regressor input (both images)
    out: List[tuple] = [
        ("gemm", "fp32 2048^3 torch.mm", gemm_case(2048, 2048, 2048, "mm")),
        ("gemm", "fp32 2048^3 oneDNN linear", gemm_case(2048, 2048, 2048)),
        (
            "gemm",
            "bf16 1024^3 torch.mm",
            gemm_case(1024, 1024, 1024, "mm", torch.bfloat16),
        ),
        (
            "corr",
            f"correlation tile {k * wf}x{ch[4]} . {ch[4]}x{k * k * tile}",
            gemm_case(k * wf, ch[4], k * k * tile),
        ),
        (
            "regr",
            f"Winograd 36 x ({4 * batch}x{CONV_DIM} . {CONV_DIM}x{CONV_DIM})",
            gemm_case(4 * batch, CONV_DIM, CONV_DIM, batch=36),
        ),
        (
            "regr",
            f"CellShare s4 ({batch * 25}x{ch[2]} . {ch[2]}x{9 * CONV_DIM})",
            gemm_case(batch * 25, ch[2], 9 * CONV_DIM),
        ),
        (
            "regr",
            f"CellShare s8 ({batch * 9}x{ch[3]} . {ch[3]}x{9 * CONV_DIM})",
            gemm_case(batch * 9, ch[3], 9 * CONV_DIM),
        ),
        (
            "regr",
            f"conv1 ours {batch}x{2 * per_pixel}x16x16 s2 CL fp32",
            conv_case(batch, 2 * per_pixel, (PSIZE, PSIZE), CONV_DIM, 3, 2),
        ),
        (
            "regr",
            f"conv1 ours {batch}x{2 * per_pixel}x16x16 s2 CL bf16",
            conv_case(
                batch,
                2 * per_pixel,
                (PSIZE, PSIZE),
                CONV_DIM,
                3,
                2,
                dtype=torch.bfloat16,
            ),
        ),
        (
            "regr",
            f"conv1 official {batch}x{full}x16x16 s2 NCHW fp32",
            conv_case(batch, full, (PSIZE, PSIZE), CONV_DIM, 3, 2, cl=False),
        ),
        (
            "regr",
            f"conv2 direct {batch}x512x8x8 CL fp32",
            conv_case(batch, CONV_DIM, (PSIZE // 2,) * 2, CONV_DIM, 3, 1),
        ),
        (
            "regr",
            f"conv2 direct {batch}x512x8x8 CL bf16",
            conv_case(
                batch, CONV_DIM, (PSIZE // 2,) * 2, CONV_DIM, 3, 1, dtype=torch.bfloat16
            ),
        ),
        (
            "regr",
            f"conv2 official {batch}x512x8x8 NCHW fp32",
            conv_case(batch, CONV_DIM, (PSIZE // 2,) * 2, CONV_DIM, 3, 1, cl=False),
        ),
        (
            "nc",
            f"NC layer 1 {nc_cells}x9x{h1}x{w1} -> 32",
            conv_case(nc_cells, 9, (h1, w1), 32, 3, 1),
        ),
        (
            "nc",
            f"NC layer 2 {nc_cells}x32x{h1}x{w1} -> 18 groups 2",
            conv_case(nc_cells, 32, (h1, w1), 18, 3, 1, groups=2),
        ),
        ("backbone", "ResNet34 to layer3, 1x3x768x1024", backbone_case()),
    ]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall or process CPU seconds (cpu with 1 thread: robust to load)",
    )
    p.add_argument("--json", type=Path, help="also write the rows here")
    args = p.parse_args()
    tune_malloc()  # as the command-line tools run
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    facts = {**machine_facts(), "clock": args.clock}
    print(" | ".join(f"{k} {v}" for k, v in facts.items()))
    rows = []
    with torch.no_grad():
        for group, name, (fn, flop) in cases(FeatRegressNet.chunk):
            r = rate(fn, flop, args.repeats, clock)
            rows.append({"group": group, "name": name, "gflop": flop / 1e9, **r})
            print(
                f"{group:>8}  {name:52s} {flop / 1e9:8.2f} GFLOP "
                f"{r['seconds'] * 1e3:9.2f} ms {r['gflops']:7.0f} GFLOP/s",
                flush=True,
            )
    facts["load_after"] = os.getloadavg()[0]
    print(f"load {facts['load']:.2f} -> {facts['load_after']:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"facts": facts, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
