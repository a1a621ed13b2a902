"""``python -m p2p_hloc.train``: train Patch2Pix on MegaDepth or generated pairs."""

import argparse
import logging
from pathlib import Path

from torch.utils.data import Subset

from ..runtime import tune_malloc
from . import trainer
from .data import PlanarPairs
from .megadepth import MegaDepthPairs, select_pairs, write_pairs
from .synthetic import SyntheticPairs

logger = logging.getLogger("p2p_hloc")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--output_dir", type=Path, required=True)
    p.add_argument(
        "--weights", type=Path, help="initial checkpoint (e.g. ncn_ivd_5ep.pth)"
    )
    p.add_argument(
        "--dataset", choices=["megadepth", "synthetic", "planar"], default="megadepth"
    )
    p.add_argument(
        "--megadepth_root", type=Path, help="D2-Net undistorted MegaDepth root"
    )
    p.add_argument(
        "--scene_info", type=Path, help="scene_info folder (to select pairs)"
    )
    p.add_argument("--pairs", type=Path, help="pairs .npz (written if absent)")
    p.add_argument(
        "--scene", type=Path, help="synthetic scene (default: OUTPUT_DIR/scene)"
    )
    p.add_argument(
        "--num_queries", type=int, default=16, help="random synthetic views (+ 8 fixed)"
    )
    p.add_argument("--num_pairs", type=int, default=256, help="planar pairs")
    p.add_argument("--val_pairs", type=int, default=0, help="held-out generated pairs")
    p.add_argument("--epochs", type=int, default=trainer.default_conf["epochs"])
    p.add_argument("--batch_size", type=int, default=trainer.default_conf["batch_size"])
    p.add_argument("--lr", type=float, default=trainer.default_conf["lr"])
    p.add_argument("--seed", type=int, default=trainer.default_conf["seed"])
    p.add_argument("--ptmax", type=int, default=trainer.default_conf["ptmax"])
    p.add_argument("--no_expansion", action="store_true")
    p.add_argument("--feat_idx", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--cls_thresholds", type=float, nargs=2, default=[50.0, 5.0])
    p.add_argument("--geo_thresholds", type=float, nargs=2, default=[50.0, 5.0])
    p.add_argument("--cache_features", action="store_true")
    p.add_argument("--freeze_bn", action="store_true", help="regressor BN frozen")
    p.add_argument("--num_workers", type=int, default=0)
    p.add_argument("--no_resume", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> Path:
    args = parse_args(argv)
    conf = {
        k: getattr(args, k)
        for k in ["epochs", "batch_size", "lr", "seed", "ptmax", "feat_idx",
                  "cls_thresholds", "geo_thresholds", "cache_features", "num_workers", "freeze_bn"]
    }  # fmt: skip
    conf["expansion"] = not args.no_expansion
    val = None
    if args.dataset == "planar":
        dataset = PlanarPairs({"num_pairs": args.num_pairs, "seed": args.seed})
        if args.val_pairs:
            val = PlanarPairs({"num_pairs": args.val_pairs, "seed": args.seed + 10**6})
    elif args.dataset == "synthetic":
        scene = args.scene or args.output_dir / "scene"
        conf_scene = {"num_queries": args.num_queries, "seed": args.seed}
        dataset = SyntheticPairs(scene, conf_scene)
        if args.val_pairs:  # another scene; its database views are the training ones
            val = SyntheticPairs(
                scene.with_name(scene.name + "_val"),
                {**conf_scene, "seed": args.seed + 10**6},
            )
            held_out = [
                i
                for i, names in enumerate(zip(val.pairs["image0"], val.pairs["image1"]))
                if all(str(n).startswith("query/") for n in names)
            ]
            val = Subset(val, held_out[: args.val_pairs])
    else:
        if args.megadepth_root is None or args.pairs is None:
            raise SystemExit("--dataset megadepth needs --megadepth_root and --pairs")
        if not args.pairs.exists():
            if args.scene_info is None:
                raise SystemExit(f"{args.pairs} does not exist: give --scene_info")
            write_pairs(select_pairs(args.scene_info, args.megadepth_root), args.pairs)
        dataset = MegaDepthPairs(args.pairs, args.megadepth_root)
    logger.info("Training on %d pairs with %s", len(dataset), conf)
    return trainer.main(
        conf, dataset, args.output_dir, args.weights, val, resume=not args.no_resume
    )


if __name__ == "__main__":
    tune_malloc()
    main()
