"""Match a pairs file into hloc's features and matches h5 files.

1. Pairs are parsed (blank lines and ``#`` comments skipped, names in
   canonical form); self-pairs are skipped and duplicates, in either
   direction, kept once (first orientation). The run holds the lock of the
   matches file to the end. Every input is checked before anything runs
   (``match_checks``): images, stored keypoints, done pairs, raw matches.
2. Pairs already in ``matches`` (either direction) are skipped; the others are
   matched, images loaded by a DataLoader and the per-image work cached across
   consecutive pairs. Raw matches are stored per pair as they come
   (``<matches>.raw/``, one atomic file each): a killed run resumes there.
3. The quantization step (``p2p_hloc.quantize.write_phase``) over all new
   pairs, under the locks of both output files: per image, raw points closer
   than 4 px merge; per pair, one-to-one by score. Images that already have
   keypoints (in ``features`` or ``features_ref``) keep them. ``features`` and
   ``matches`` are written to temporary files and renamed; the raw folder is
   then removed.

Coordinates: matchers return the corner convention (Patch2Pix, COLMAP); the raw
store converts them to hloc's integer pixel centres (``io.to_hloc_coords``)
when it writes them, nowhere else.
"""

import argparse
import functools
import inspect
import pprint
import sys
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import torch

from . import logger
from .confs import confs
from .console import InputError, add_model_args, run_cli
from .executors import EXECUTORS, run_pairs
from .io import list_h5_names, names_to_pair, parse_pairs
from .io.lock import file_lock
from .io.raw import RawMatches
from .match_checks import (
    check_done_pairs,
    check_features,
    check_provenance,
    check_raw,
    raw_provenance,
    read_image_sizes,
)
from .quantize import read_pending, unique_pairs, write_phase
from .runtime import tune_malloc

Pair = Tuple[str, str]


def output_paths(
    conf: Dict,
    pairs: Path,
    export_dir: Optional[Path] = None,
    features: Optional[Path] = None,
    matches: Optional[Path] = None,
) -> Tuple[Path, Path]:
    """The features and matches files of a run (``main``'s defaults)."""
    if features is None or matches is None:
        if export_dir is None:
            raise ValueError(
                "export_dir is needed unless features and matches are given"
            )
        export_dir = Path(export_dir)
        export_dir.mkdir(parents=True, exist_ok=True)
    features = Path(features or export_dir / f"feats_{conf['output']}.h5")
    matches = Path(matches or export_dir / f"{conf['output']}_{Path(pairs).stem}.h5")
    if features.resolve() == matches.resolve():
        raise InputError(f"features and matches are the same file: {features}")
    return features, matches


def holding_run_lock(func: Callable) -> Callable:
    """``main`` runs holding the lock of its matches file (``io.lock``) from
    the read of the done pairs to the final rename: a second run on the same
    file waits, then finds its pairs done. Locks are taken in one order, the
    matches file's first, then the features file's (write phase)."""
    signature = inspect.signature(func)

    @functools.wraps(func)
    def locked(*args, **kwargs):
        a = signature.bind(*args, **kwargs).arguments
        _, matches = output_paths(
            a["conf"],
            a["pairs"],
            a.get("export_dir"),
            a.get("features"),
            a.get("matches"),
        )
        with file_lock(matches, f"matching {a['pairs']}"):
            return func(*args, **kwargs)

    return locked


def done_pairs(matches: Path, pairs: Sequence[Pair]) -> set:
    """The pairs of ``pairs`` stored in ``matches`` in either direction."""
    if not matches.exists():
        return set()
    keys = list_h5_names(matches)
    return {
        (n0, n1)
        for n0, n1 in pairs
        if names_to_pair(n0, n1) in keys or names_to_pair(n1, n0) in keys
    }


@holding_run_lock
@torch.no_grad()
def main(
    conf: Dict,
    pairs: Path,
    image_dir: Path,
    export_dir: Optional[Path] = None,
    features: Optional[Path] = None,
    matches: Optional[Path] = None,
    weights: Optional[Path] = None,
    overwrite: bool = False,
    features_ref: Optional[Union[Path, Sequence[Path]]] = None,
    proposals: Optional[Tuple[Path, Path]] = None,
    num_workers: int = 2,
    *,
    max_kps: Optional[int] = None,
    device: Optional[str] = None,
    discard_raw: bool = False,
    executor: str = "local",
    workers: Optional[int] = None,
    ray_address: Optional[str] = None,
) -> Tuple[Path, Path]:
    """Match the pairs of ``pairs`` and write hloc's features and matches.

    Every input is checked before matching: the pairs file, the images (their
    headers), the stored keypoints of the run's images (``image_size`` equal to
    the image's), the pairs already done, and the raw matches to resume.

    Args:
        conf: a conf of ``p2p_hloc.confs``.
        export_dir: where the default file names go (needed unless both
            ``features`` and ``matches`` are given).
        features: keypoints file (default ``feats_<output>.h5``). Images
            already in it keep their keypoints (localization mode: pass the
            mapping features and matches, and queries first in the pairs).
        matches: matches file (default ``<output>_<pairs stem>.h5``); pairs
            already in it are skipped, new ones are added.
        weights: Patch2Pix checkpoint (default: the conf's official file).
        overwrite: match this run's pairs again (other entries of the files
            are kept).
        features_ref: feature files whose keypoints stay fixed (hloc's
            ``match_dense``); they are copied into ``features``.
        proposals: ``(features, matches)`` hloc files for the ``hloc_file``
            source (``patch2pix_refine``).
        max_kps: keep at most this many keypoints per new image, those with
            the largest summed score (hloc's ``match_dense`` argument);
            matches to the others are dropped. ``None`` keeps all.
        device: where the model runs (default: CUDA if available, else CPU).
        discard_raw: recompute the raw matches of a stopped run that used
            other settings (conf, checkpoint, proposals) instead of refusing.
        executor, workers, ray_address: where pairs are matched
            (``p2p_hloc.executors.run_pairs``): ``local`` (this process,
            ``num_workers`` image readers) or ``ray`` (``workers`` Ray actors
            on the cluster at ``ray_address``, default ``$RAY_ADDRESS``, else
            a local Ray instance). Either can resume the other's run.
    Returns:
        The paths of the features and matches files.
    """
    logger.info("Matching pairs with configuration:\n%s", pprint.pformat(conf))
    pairs, image_dir = Path(pairs), Path(image_dir)
    features, matches = output_paths(conf, pairs, export_dir, features, matches)
    if isinstance(features_ref, (str, Path)):
        features_ref = [features_ref]
    features_ref = [Path(p) for p in features_ref or []]
    raw = RawMatches(matches.with_name(matches.name + ".raw"))
    if overwrite:  # this run's pairs and images only (quantize.write_phase)
        raw.remove()

    all_pairs = unique_pairs(parse_pairs(pairs))
    if not all_pairs:
        write_phase([], [], features, matches)  # valid empty files
        logger.info(
            "No pairs in %s: %s and %s hold no new entry.", pairs, features, matches
        )
        return features, matches
    image_sizes = read_image_sizes(all_pairs, image_dir, pairs)
    have = check_features(
        ([features] if features.exists() else []) + features_ref,
        image_sizes,
        image_dir,
    )
    done = set() if overwrite else done_pairs(matches, all_pairs)
    check_done_pairs(done, features, matches, have)
    read_pending(matches)  # a corrupt record of a stopped write is named now
    new = [p for p in all_pairs if p not in done]
    logger.info("%d pairs, %d already in %s.", len(all_pairs), len(done), matches.name)
    if not new:
        return features, matches
    provenance = raw_provenance(conf, weights, proposals)
    check_provenance(raw, provenance, discard_raw)

    # resume: pairs with stored raw matches, in the stored orientation
    stored = {p: raw.find(*p) for p in new}
    todo = [p for p, s in stored.items() if s is None]
    new = [stored[p] or p for p in new]
    check_raw(raw, [s for s in stored.values() if s is not None], image_sizes)
    if todo:
        model_conf = dict(conf["model"])
        if proposals is not None:
            model_conf.update(
                features=proposals[0], matches=proposals[1], image_dir=image_dir
            )
        raw.set_meta(provenance)
        logger.info("Matching %d pairs (%d resumed).", len(todo), len(new) - len(todo))
        run_pairs(
            {**conf, "model": model_conf},
            weights,
            todo,
            image_dir,
            lambda pair, pred: raw.write(*pair, pred),
            executor=executor,
            workers=workers,
            ray_address=ray_address,
            num_workers=num_workers,
            device=device,
        )

    q = conf["quantization"]
    write_phase(
        new,
        [raw.path(*p) for p in new],
        features,
        matches,
        list(features_ref or []),
        radius=q["radius"],
        min_score=q.get("min_score", 0.0),
        method=q.get("method", "cluster"),
        psize=q.get("psize", 48),
        max_kps=max_kps,
        overwrite=overwrite,
        source=str(raw.root),
    )
    raw.remove()
    logger.info("Wrote %s and %s.", features, matches)
    return features, matches


def with_precision(conf: Dict, precision: str) -> Dict:
    """A copy of ``conf`` whose Patch2Pix parts (the ``patch2pix`` model and
    ``refine``) run at ``precision`` (``Patch2Pix.precision``). Other than
    fp32, the output name ends with ``-<precision>``: the matches differ."""
    if precision == "fp32":
        return conf
    conf = dict(conf)
    changed = False
    if conf["model"]["name"] == "patch2pix":
        conf["model"] = {**conf["model"], "precision": precision}
        changed = True
    if conf.get("refine"):
        conf["refine"] = {**conf["refine"], "precision": precision}
        changed = True
    if not changed:
        raise ValueError(f"conf {conf['output']!r} runs no Patch2Pix model")
    conf["output"] = f"{conf['output']}-{precision}"
    return conf


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--conf", required=True, choices=list(confs.keys()))
    p.add_argument("--pairs", type=Path, required=True)
    p.add_argument("--image_dir", type=Path, required=True)
    p.add_argument("--export_dir", type=Path)
    p.add_argument("--features", type=Path)
    p.add_argument("--matches", type=Path)
    p.add_argument("--features_ref", type=Path, nargs="+")
    p.add_argument(
        "--proposals",
        type=Path,
        nargs=2,
        metavar=("FEATURES", "MATCHES"),
        help="hloc files read by the hloc_file source (patch2pix_refine)",
    )
    p.add_argument("--num_workers", type=int, default=2)
    p.add_argument(
        "--executor",
        choices=EXECUTORS,
        default="local",
        help="where pairs are matched: this process or Ray workers (docs/scale.md)",
    )
    p.add_argument(
        "--ray_address",
        help="Ray cluster to join (default: $RAY_ADDRESS, else a local instance)",
    )
    p.add_argument(
        "--workers",
        type=int,
        help="Ray workers (default: one per GPU of the cluster, else one)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="match this run's pairs again"
    )
    p.add_argument(
        "--discard_raw",
        action="store_true",
        help="recompute the raw matches of a stopped run made with other settings",
    )
    add_model_args(p)
    return p


def run(args: argparse.Namespace) -> None:
    """``main`` from parsed command-line arguments."""
    args = vars(args)
    tune_malloc()
    conf = with_precision(confs[args.pop("conf")], args.pop("precision"))
    main(conf=conf, **args)


if __name__ == "__main__":
    sys.exit(run_cli(parser(), run))
