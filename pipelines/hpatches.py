"""HPatches homography estimation and MMA for a matcher conf (paper Table 1, Fig. 4).

python -m pipelines.hpatches --dataset DIR --conf NAME --outputs DIR [--weights PATH]
"""

import argparse
import json
from pathlib import Path
from typing import Dict, Optional, Sequence

import torch

from p2p_hloc import load_model, logger
from p2p_hloc.eval import hpatches as hp
from p2p_hloc.preprocess import load_image
from p2p_hloc.weights import DEFAULT, get_weights


# Until p2p_hloc.confs lands: the two paper settings of Table 1.
CONFS = {
    "patch2pix": {
        "output": "matches-patch2pix",
        "model": {"name": "patch2pix", "imsize": 1024, "match_threshold": 0.25},
    },
    "ncnet": {
        "output": "matches-ncnet",
        "model": {"name": "ncnet", "imsize": 1024, "match_threshold": 0.9},
    },
}


def build_match_fn(conf: Dict, weights: Optional[Path]) -> hp.MatchFn:
    """``match_fn(path0, path1)`` returning matches in original pixels."""
    coarse_only = conf["model"]["name"] == "ncnet"
    name = "ncn_ivd_5ep.pth" if coarse_only else DEFAULT
    model = load_model(get_weights(name, weights), coarse_only=coarse_only)
    imsize, threshold = conf["model"]["imsize"], conf["model"]["match_threshold"]

    @torch.no_grad()
    def match_fn(path0: Path, path1: Path) -> Dict:
        x0, s0, _ = load_image(path0, imsize)
        x1, s1, _ = load_image(path1, imsize)
        return model.match(
            x0[None].to(model.device),
            x1[None].to(model.device),
            s0,
            s1,
            threshold=threshold,
            coarse_only=coarse_only,
            keep_all_if_none=False,
        )

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
    if overwrite or any(hp.load_matches(hp.cache_path(cache_dir, p)) is None for p in pairs):
        hp.match_pairs(build_match_fn(conf, weights), pairs, cache_dir, overwrite)

    paths = []
    for protocol in protocols:
        records, summary = hp.evaluate(
            pairs, cache_dir, protocol, conf["model"]["imsize"], solver, ransac_threshold
        )
        path = outputs / f"hpatches-{name}-{protocol}.json"
        meta_p = {**meta, "protocol": protocol, "solver": solver}
        hp.save_results(path, records, summary, {**meta_p, "threshold": ransac_threshold})
        paths.append(path)
        results = {
            json.loads(p.read_text())["method"]: hp.load_summary(p)
            for p in sorted(outputs.glob(f"hpatches-*-{protocol}.json"))
        }
        logger.info("HPatches, %s resolution:\n%s", protocol, hp.format_table(results))
        hp.plot_mma(results, outputs / f"hpatches-mma-{protocol}.png")
    return paths[0]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--conf", choices=list(CONFS), default="patch2pix")
    parser.add_argument("--outputs", type=Path, required=True)
    parser.add_argument("--weights", type=Path)
    parser.add_argument("--protocols", nargs="+", choices=hp.PROTOCOLS, default=hp.PROTOCOLS)
    parser.add_argument("--solver", choices=["degensac", "opencv"], default="degensac")
    parser.add_argument("--ransac_threshold", type=float, default=2.0)
    parser.add_argument("--all_sequences", action="store_true", help="all 116 sequences")
    parser.add_argument("--skip_incomplete", action="store_true")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    main(
        CONFS[args.conf],
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
