"""HPatches homography estimation and MMA for a matcher conf (paper Table 1, Fig. 4).

python -m pipelines.hpatches --dataset DIR --conf NAME --outputs DIR [--weights PATH] \
    [--device cpu|cuda] [--precision fp32|bf16|fp16] [--ransac_thresh 2]
"""

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence

from p2p_hloc import logger, tune_malloc
from p2p_hloc.confs import confs
from p2p_hloc.console import add_argument, add_model_args, run_cli
from p2p_hloc.eval import hpatches as hp
from p2p_hloc.eval.homography import SOLVERS
from p2p_hloc.match_pairs import with_precision
from p2p_hloc.matchers import build_matcher


def build_match_fn(
    conf: Dict, weights: Optional[Path], device: Optional[str] = None
) -> hp.MatchFn:
    """Adapt a conf's matcher to ``match_fn(path0, path1)``, with both images
    loaded and matched in each call (the timing of the paper)."""
    matcher = build_matcher(conf, weights, device)

    def match_fn(path0: Path, path1: Path) -> Dict:
        data0, data1 = matcher.load(path0), matcher.load(path1)
        pred = matcher.match(matcher.extract(data0), matcher.extract(data1))
        return {**pred, "scale0": data0["scale"], "scale1": data1["scale"]}

    return match_fn


def main(
    conf: Dict,
    dataset: Path,
    outputs: Path,
    weights: Optional[Path] = None,
    overwrite: bool = False,
    protocols: Sequence[str] = hp.PROTOCOLS,
    solver: str = "degensac",
    ransac_thresh: float = 2.0,
    all_sequences: bool = False,
    skip_incomplete: bool = False,
    device: Optional[str] = None,
) -> Path:
    """Match (cached) and evaluate; returns the json of the first protocol."""
    outputs = Path(outputs)
    name = conf["output"]
    pairs = hp.load_pairs(Path(dataset), all_sequences, skip_incomplete)
    cache_dir = outputs / "matches" / name
    meta = {"method": name, "conf": conf, "weights": weights and Path(weights).name}
    hp.check_cache(cache_dir, meta, overwrite)
    if overwrite or any(
        hp.load_matches(hp.cache_path(cache_dir, p)) is None for p in pairs
    ):
        match_fn = build_match_fn(conf, weights, device)
        hp.match_pairs(match_fn, pairs, cache_dir, overwrite)

    paths = []
    for protocol in protocols:
        records, summary = hp.evaluate(
            pairs, cache_dir, protocol, solver, ransac_thresh
        )
        path = outputs / f"hpatches-{name}-{protocol}.json"
        info = {"protocol": protocol, "solver": solver, "threshold": ransac_thresh}
        hp.save_results(path, records, summary, {**meta, **info})
        paths.append(path)
        results = {
            json.loads(p.read_text())["method"]: hp.load_summary(p)
            for p in sorted(outputs.glob(f"hpatches-*-{protocol}.json"))
        }
        logger.info("HPatches, %s resolution:\n%s", protocol, hp.format_table(results))
        hp.plot_mma(results, outputs / f"hpatches-mma-{protocol}.png")
    return paths[0]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", type=Path, required=True)
    p.add_argument("--conf", choices=list(confs), default="patch2pix")
    p.add_argument("--outputs", type=Path, required=True)
    add_model_args(p)
    p.add_argument("--protocols", nargs="+", choices=hp.PROTOCOLS, default=hp.PROTOCOLS)
    p.add_argument("--solver", choices=SOLVERS, default="degensac")
    add_argument(p, "--ransac_thresh", "--ransac_threshold", type=float, default=2.0)
    p.add_argument("--all_sequences", action="store_true", help="all 116 sequences")
    p.add_argument("--skip_incomplete", action="store_true")
    p.add_argument("--overwrite", action="store_true")
    return p


def run(args: argparse.Namespace) -> Path:
    conf = with_precision(confs[args.conf], args.precision)
    return main(
        conf,
        args.dataset,
        args.outputs,
        args.weights,
        args.overwrite,
        args.protocols,
        args.solver,
        args.ransac_thresh,
        args.all_sequences,
        args.skip_incomplete,
        args.device,
    )


if __name__ == "__main__":
    tune_malloc()
    sys.exit(run_cli(parser(), run))
