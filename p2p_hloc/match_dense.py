"""hloc's ``match_dense`` step with Patch2Pix: the same signature, file names
and return value as ``hloc.match_dense.main``, run by our matching step
(``p2p_hloc.match_pairs``: Patch2Pix matches, 4-px quantization, one-to-one
matches per pair).

Mapping, then localization with the mapping files (database keypoints stay
fixed, the loc pairs are added to the same matches file)::

    features, sfm_matches = match_dense.main(conf, sfm_pairs, images, outputs)
    features, loc_matches = match_dense.main(
        conf, loc_pairs, images, outputs,
        features=features, matches=sfm_matches, max_kps=None)
"""

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

from . import logger
from .confs import confs
from .console import InputError, add_model_args, run_cli

PathOrPaths = Union[Path, List[Path]]


def output_paths(
    conf: Dict,
    pairs: Path,
    export_dir: Optional[Path],
    matches: Optional[Path],
    features: Optional[Union[str, Path]],
) -> Tuple[Path, Path]:
    """hloc's rules for the output files. ``features`` is a ``Path`` (used as
    is; ``matches`` must then be given) or a name prefix (``None``:
    ``"feats_"``), giving ``export_dir / f"{features}{conf['output']}.h5"``;
    ``matches`` defaults to ``export_dir / f"{conf['output']}_{pairs.stem}.h5"``."""
    if isinstance(features, Path):
        if matches is None:
            raise InputError(
                "Either provide both features and matches as Path or both as names."
            )
        return features, Path(matches)
    if export_dir is None:
        raise InputError(
            "Provide an export_dir if features and matches are not file paths: "
            f"{features}, {matches}."
        )
    prefix = "feats_" if features is None else features
    features = Path(export_dir, f"{prefix}{conf['output']}.h5")
    if matches is None:
        matches = Path(export_dir, f"{conf['output']}_{Path(pairs).stem}.h5")
    return features, Path(matches)


def reference_list(features_ref: Optional[PathOrPaths]) -> List[Path]:
    """``features_ref`` as a list (hloc accepts None, a Path or a list)."""
    if features_ref is None:
        return []
    if isinstance(features_ref, (list, tuple)):
        return [Path(p) for p in features_ref]
    if isinstance(features_ref, Path):
        return [features_ref]
    raise TypeError(f"features_ref must be a Path or a list of Paths: {features_ref!r}")


def main(
    conf: Dict,
    pairs: Path,
    image_dir: Path,
    export_dir: Optional[Path] = None,
    matches: Optional[Path] = None,
    features: Optional[Union[str, Path]] = None,
    features_ref: Optional[PathOrPaths] = None,
    max_kps: Optional[int] = 8192,
    overwrite: bool = False,
    *,
    weights: Optional[Path] = None,
    device: Optional[str] = None,
    proposals: Optional[Tuple[Path, Path]] = None,
    num_workers: int = 2,
) -> Tuple[Path, Path]:
    """Match the pairs of ``pairs`` into hloc's features and matches files.

    Args (hloc's, in hloc's order):
        conf: a conf of ``p2p_hloc.confs``.
        export_dir: folder of the default file names.
        matches: the matches file; pairs already in it are skipped.
        features: the keypoints file as a ``Path``, or a name prefix (see
            ``output_paths``). Images already in it keep their keypoints.
        features_ref: feature files whose keypoints stay fixed.
        max_kps: keep the ``max_kps`` keypoints of each new image with the
            largest summed score (``None``: all; localization passes use None).
        overwrite: start both files afresh.
    Keyword-only (ours):
        weights: Patch2Pix checkpoint (default: the conf's official file).
        device: ``cpu`` or ``cuda`` (default: CUDA when available).
        proposals: ``(features, matches)`` for the ``hloc_file`` source.
        num_workers: image-loading processes.
    Returns:
        ``(features, matches)``, the paths of both files (as hloc).
    """
    from . import match_pairs  # imports torch

    features, matches = output_paths(conf, pairs, export_dir, matches, features)
    return match_pairs.main(
        conf,
        Path(pairs),
        Path(image_dir),
        export_dir=export_dir,
        features=features,
        matches=matches,
        weights=weights,
        overwrite=overwrite,
        features_ref=reference_list(features_ref) or None,
        proposals=proposals,
        num_workers=num_workers,
        max_kps=max_kps,
        device=device,
    )


def max_kps_arg(value: str) -> Optional[int]:
    """``--max_kps``: a positive number, or ``none`` for all keypoints."""
    if value.lower() in ("none", "all"):
        return None
    n = int(value)
    if n <= 0:
        raise argparse.ArgumentTypeError("max_kps must be positive (or none)")
    return n


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m p2p_hloc.match_dense", description=__doc__.split("\n")[0]
    )
    p.add_argument("--pairs", type=Path, required=True)
    p.add_argument("--image_dir", type=Path, required=True)
    p.add_argument("--export_dir", type=Path)
    p.add_argument("--matches", type=Path, help="default: <output>_<pairs stem>.h5")
    p.add_argument(
        "--features",
        help="name prefix of the features file (default: feats_), or its path "
        "if it ends with .h5",
    )
    p.add_argument("--conf", default="patch2pix", choices=list(confs))
    p.add_argument("--features_ref", type=Path, nargs="+")
    p.add_argument(
        "--max_kps",
        type=max_kps_arg,
        default=8192,
        help="keypoints kept per image, or none (default: %(default)s)",
    )
    p.add_argument("--overwrite", action="store_true")
    add_model_args(p)
    p.add_argument(
        "--proposals",
        type=Path,
        nargs=2,
        metavar=("FEATURES", "MATCHES"),
        help="hloc files read by the hloc_file source (patch2pix_refine)",
    )
    p.add_argument("--num_workers", type=int, default=2)
    return p


def run(args: argparse.Namespace) -> Tuple[Path, Path]:
    from .match_pairs import with_precision
    from .runtime import tune_malloc

    tune_malloc()
    features = args.features
    if features is not None and features.endswith(".h5"):
        features = Path(features)
    features, matches = main(
        with_precision(confs[args.conf], args.precision),
        args.pairs,
        args.image_dir,
        args.export_dir,
        args.matches,
        features,
        args.features_ref,
        args.max_kps,
        args.overwrite,
        weights=args.weights,
        device=args.device,
        proposals=args.proposals,
        num_workers=args.num_workers,
    )
    logger.info("Features: %s, matches: %s.", features, matches)


if __name__ == "__main__":
    sys.exit(run_cli(parser(), run))
