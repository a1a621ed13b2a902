"""HPatches homography estimation and MMA for a matcher conf (paper Table 1, Fig. 4).

python -m pipelines.hpatches --dataset DIR --conf NAME --outputs DIR [--weights PATH]
"""

import argparse
import json
from pathlib import Path
from typing import Dict, Optional, Sequence

from p2p_hloc import logger, tune_malloc
from p2p_hloc.confs import confs
from p2p_hloc.eval import hpatches as hp
from p2p_hloc.eval.homography import SOLVERS
from p2p_hloc.matchers import build_matcher


def build_match_fn(conf: Dict, weights: Optional[Path]) -> hp.MatchFn:
    """Adapt a conf's matcher to ``match_fn(path0, path1)``, with both images
    loaded and matched in each call (the timing of the paper)."""
    matcher = build_matcher(conf, weights)

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
    ransac_threshold: float = 2.0,
    all_sequences: bool = False,
    skip_incomplete: bool = False,
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
        hp.match_pairs(build_match_fn(conf, weights), pairs, cache_dir, overwrite)

    paths = []
    for protocol in protocols:
        records, summary = hp.evaluate(
            pairs, cache_dir, protocol, solver, ransac_threshold
        )
        path = outputs / f"hpatches-{name}-{protocol}.json"
        info = {"protocol": protocol, "solver": solver, "threshold": ransac_threshold}
        hp.save_results(path, records, summary, {**meta, **info})
        paths.append(path)
        results = {
            json.loads(p.read_text())["method"]: hp.load_summary(p)
            for p in sorted(outputs.glob(f"hpatches-*-{protocol}.json"))
        }
        logger.info("HPatches, %s resolution:\n%s", protocol, hp.format_table(results))
        hp.plot_mma(results, outputs / f"hpatches-mma-{protocol}.png")
    return paths[0]


if __name__ == "__main__":
    tune_malloc()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--conf", choices=list(confs), default="patch2pix")
    parser.add_argument("--outputs", type=Path, required=True)
    parser.add_argument("--weights", type=Path)
    parser.add_argument(
        "--protocols", nargs="+", choices=hp.PROTOCOLS, default=hp.PROTOCOLS
    )
    parser.add_argument("--solver", choices=SOLVERS, default="degensac")
    parser.add_argument("--ransac_threshold", type=float, default=2.0)
    parser.add_argument(
        "--all_sequences", action="store_true", help="all 116 sequences"
    )
    parser.add_argument("--skip_incomplete", action="store_true")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    main(
        confs[args.conf],
        args.dataset,
        args.outputs,
        args.weights,
        args.overwrite,
        args.protocols,
        args.solver,
        args.ransac_threshold,
        args.all_sequences,
        args.skip_incomplete,
    )
