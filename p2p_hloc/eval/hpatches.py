"""HPatches homography and MMA evaluation (``hpatches-sequences-release``).

Protocol of the Patch2Pix paper (Table 1, Fig. 4): 108 sequences (52
illumination ``i_*``, 56 viewpoint ``v_*``), pairs ``1 -> k`` for k = 2..6, a
homography fitted with pydegensac (2 px), the mean error of the 4 warped
corners at 1/3/5/10 px, and the mean matching accuracy (MMA) at 1..10 px.

Two resolutions: ``original`` (the paper: errors in original pixels) and
``resized`` (the toolbox since 2022, ``no_match_upscale``: matches, H_gt and
corners expressed in the matcher's input image, e.g. larger side 1024). The
2021 toolbox also swapped w and h in its corner list; that is not reproduced.

Matches are cached per pair (``.npz``, written atomically) in original pixels
with the matcher's resize factors, so both protocols and any re-run reuse them
without re-matching. Match coordinates are used as the matcher returns them
(the toolbox applies ``H_1_k`` to Patch2Pix outputs the same way).
"""

import csv
import json
import logging
import os
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..console import InputError
from . import homography as hom

logger = logging.getLogger("p2p_hloc")

# High-resolution sequences (> 1600x1200) left out by D2-Net, Patch2Pix, LoFTR.
EXCLUDED = (
    "i_contruction",
    "i_crownnight",
    "i_dc",
    "i_pencils",
    "i_whitebuilding",
    "v_artisans",
    "v_astronautis",
    "v_talent",
)
IMAGE_EXT = ".ppm"
TARGETS = range(2, 7)
PROTOCOLS = ("original", "resized")
SPLITS = {"overall": "iv", "illumination": "i", "viewpoint": "v"}
MMA_THRESHOLDS = tuple(range(1, 11))
CACHE_KEYS = {
    "keypoints0",
    "keypoints1",
    "scores",
    "time",
    "scale0",
    "scale1",
    "size0",
    "size1",
}
H_THRESHOLDS = (1, 3, 5, 10)

# (path0, path1) -> keypoints0, keypoints1 (N, 2) original pixels, scores (N,),
# scale0, scale1: per-axis original / network-input size of each image.
MatchFn = Callable[[Path, Path], Dict[str, np.ndarray]]


class HPatchesError(InputError):
    """A malformed HPatches folder."""


@dataclass(frozen=True)
class Pair:
    sequence: str
    target: int  # k of the pair 1 -> k
    image0: Path
    image1: Path
    H: np.ndarray  # image-0 pixels -> image-1 pixels

    @property
    def kind(self) -> str:
        return self.sequence[0]

    @property
    def name(self) -> str:
        return f"{self.sequence}/1_{self.target}"


def list_sequences(root: Path, all_sequences: bool = False) -> List[Path]:
    """Sequence folders in the official order (reverse-sorted: ``v_*`` first)."""
    root = Path(root)
    if not root.is_dir():
        raise HPatchesError(f"HPatches folder not found: {root}")
    seqs = [p for p in root.iterdir() if p.is_dir() and p.name[:2] in ("i_", "v_")]
    if not all_sequences:
        seqs = [p for p in seqs if p.name not in EXCLUDED]
    if not seqs:
        raise HPatchesError(f"no i_* or v_* sequence folders in {root}")
    return sorted(seqs, reverse=True)


def read_homography(path: Path) -> np.ndarray:
    """A 3x3 text homography file."""
    try:
        H = np.loadtxt(path, dtype=np.float64)
    except ValueError as e:
        raise HPatchesError(f"cannot parse homography {path}: {e}") from e
    if H.shape != (3, 3) or not np.all(np.isfinite(H)):
        raise HPatchesError(f"homography {path} is not a finite 3x3 matrix")
    return H


def missing_files(seq: Path) -> List[str]:
    """Names of the images and H files that a sequence folder lacks."""
    names = [f"{i}{IMAGE_EXT}" for i in range(1, 7)] + [f"H_1_{k}" for k in TARGETS]
    return [n for n in names if not (seq / n).is_file()]


def load_pairs(
    root: Path, all_sequences: bool = False, skip_incomplete: bool = False
) -> List[Pair]:
    """All ``1 -> k`` pairs; an incomplete sequence raises, or is skipped with
    a warning if ``skip_incomplete``."""
    pairs = []
    for seq in list_sequences(root, all_sequences):
        missing = missing_files(seq)
        if missing:
            msg = f"sequence {seq} lacks {', '.join(missing)}"
            if not skip_incomplete:
                raise HPatchesError(msg)
            logger.warning("%s: skipped.", msg)
            continue
        for k in TARGETS:
            H = read_homography(seq / f"H_1_{k}")
            pairs.append(
                Pair(seq.name, k, seq / f"1{IMAGE_EXT}", seq / f"{k}{IMAGE_EXT}", H)
            )
    n_seq = len({p.sequence for p in pairs})
    logger.info("HPatches: %d sequences, %d pairs from %s.", n_seq, len(pairs), root)
    return pairs


def cache_path(cache_dir: Path, pair: Pair) -> Path:
    return Path(cache_dir) / pair.sequence / f"1_{pair.target}.npz"


def save_matches(path: Path, pred: Dict[str, np.ndarray]) -> None:
    """Write an ``.npz`` atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **pred)
    os.replace(tmp, path)


def load_matches(path: Path) -> Optional[Dict[str, np.ndarray]]:
    """A cached pair, or None if absent, unreadable or incomplete (re-matched)."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as data:
            data = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        logger.warning("Unreadable cache %s (%s): re-matching.", path, e)
        return None
    if not CACHE_KEYS <= data.keys():
        logger.warning("Incomplete cache %s: re-matching.", path)
        return None
    return data


def check_cache(cache_dir: Path, meta: Dict, overwrite: bool = False) -> None:
    """Tie a match cache to the conf that made it: another conf raises unless
    ``overwrite`` (then the cache is rebuilt)."""
    path = Path(cache_dir) / "conf.json"
    text = json.dumps(meta, sort_keys=True, default=str)
    if path.is_file() and not overwrite and path.read_text() != text:
        raise HPatchesError(
            f"the match cache {cache_dir} was made with another conf "
            f"({path.read_text()}); use overwrite or another output name"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _to_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def match_pairs(
    match_fn: MatchFn, pairs: Sequence[Pair], cache_dir: Path, overwrite: bool = False
) -> None:
    """Match every pair not yet cached; store matches, scales, sizes and time."""
    todo = [
        p for p in pairs if overwrite or load_matches(cache_path(cache_dir, p)) is None
    ]
    logger.info("Matching %d pairs (%d cached).", len(todo), len(pairs) - len(todo))
    for pair in tqdm(todo, desc="match", smoothing=0.1):
        start = time.perf_counter()
        pred = match_fn(pair.image0, pair.image1)
        elapsed = time.perf_counter() - start
        kpts0 = _to_numpy(pred["keypoints0"]).astype(np.float64).reshape(-1, 2)
        kpts1 = _to_numpy(pred["keypoints1"]).astype(np.float64).reshape(-1, 2)
        scores = _to_numpy(pred["scores"]).astype(np.float64).reshape(-1)
        if not len(kpts0) == len(kpts1) == len(scores):
            raise ValueError(f"{pair.name}: matcher returned inconsistent lengths")
        data = dict(keypoints0=kpts0, keypoints1=kpts1, scores=scores)
        data["time"] = np.float64(elapsed)
        for i, path in enumerate((pair.image0, pair.image1)):
            data[f"scale{i}"] = np.asarray(pred[f"scale{i}"], dtype=np.float64)
            with Image.open(path) as im:
                data[f"size{i}"] = np.array(im.size, dtype=np.int64)
        save_matches(cache_path(cache_dir, pair), data)


def evaluate_pair(
    pair: Pair,
    data: Dict[str, np.ndarray],
    protocol: str = "original",
    solver: str = "degensac",
    ransac_threshold: float = 2.0,
    seed: int = 0,
) -> Dict:
    """Corner error and per-threshold MMA of one cached pair (``seed``: of
    the homography RANSAC)."""
    kpts0, kpts1, H = data["keypoints0"], data["keypoints1"], pair.H
    w, h = data["size0"]
    if protocol == "resized":
        s0, s1 = data["scale0"], data["scale1"]
        kpts0, kpts1 = kpts0 / s0, kpts1 / s1
        H = hom.scale_homography(H, s0, s1)
        w, h = np.round(data["size0"] / s0)
    elif protocol != "original":
        raise ValueError(f"unknown protocol {protocol!r}, use one of {PROTOCOLS}")
    H_est, inliers = hom.estimate_homography(
        kpts0, kpts1, solver, ransac_threshold, seed
    )
    errors = hom.match_errors(kpts0, kpts1, H)
    return {
        "sequence": pair.sequence,
        "target": pair.target,
        "kind": pair.kind,
        "matches": int(len(kpts0)),
        "inliers": int(inliers.sum()),
        "time": float(data["time"]),
        "corner_error": hom.corner_error(H, H_est, w, h),
        "mma": hom.mma(errors, MMA_THRESHOLDS).tolist(),
    }


def _mean(values: np.ndarray) -> np.ndarray:
    """Mean over axis 0, NaN for no rows (an empty split)."""
    values = np.asarray(values, dtype=np.float64)
    return values.mean(0) if len(values) else np.full(values.shape[1:], np.nan)


def summarize(records: Sequence[Dict]) -> Dict[str, Dict]:
    """Aggregate per split: homography correctness and AUC, MMA, matches, time."""
    summary = {}
    for split, kinds in SPLITS.items():
        recs = [r for r in records if r["kind"] in kinds]
        cerr = np.array([r["corner_error"] for r in recs])
        mma = np.reshape([r["mma"] for r in recs], (len(recs), len(MMA_THRESHOLDS)))
        summary[split] = {
            "sequences": len({r["sequence"] for r in recs}),
            "pairs": len(recs),
            "h_correct": dict(zip(H_THRESHOLDS, hom.correctness(cerr, H_THRESHOLDS))),
            "h_auc": dict(zip(H_THRESHOLDS, hom.error_auc(cerr, H_THRESHOLDS))),
            "mma": dict(zip(MMA_THRESHOLDS, _mean(mma))),
            "matches": float(_mean([r["matches"] for r in recs])),
            "time": float(_mean([r["time"] for r in recs])),
        }
    return summary


def evaluate(
    pairs: Sequence[Pair],
    cache_dir: Path,
    protocol: str = "original",
    solver: str = "degensac",
    ransac_threshold: float = 2.0,
    seed: int = 0,
) -> tuple:
    """Evaluate all cached pairs: returns ``(records, summary)``; the
    homography RANSAC is seeded (``seed``), so a rerun gives the same."""
    records = []
    for pair in tqdm(pairs, desc=f"eval {protocol}"):
        data = load_matches(cache_path(cache_dir, pair))
        if data is None:
            raise FileNotFoundError(f"no cached matches for {pair.name} in {cache_dir}")
        records.append(
            evaluate_pair(pair, data, protocol, solver, ransac_threshold, seed)
        )
    return records, summarize(records)


def format_table(results: Dict[str, Dict], keys: Sequence[int] = (1, 3, 5)) -> str:
    """Paper layout (Table 1, then the Fig. 4 MMA values), one row per method."""
    width = max([6] + [len(n) for n in results])

    def row(name: str, cells: Sequence[str]) -> str:
        return " | ".join([name.ljust(width)] + [c.ljust(19) for c in cells]).rstrip()

    def fmt(values: Dict, ts: Sequence[int]) -> str:
        return "/".join(f"{values[t]:.2f}" for t in ts)

    splits = [s.capitalize() for s in SPLITS]
    mkeys = (1, 3, 5, 10)
    lines = [f"Homography: share of pairs with mean corner error <= {keys} px"]
    lines.append(row("Method", splits + ["#Matches", "Time (s/pair)"]))
    for name, summ in results.items():
        cells = [fmt(summ[s]["h_correct"], keys) for s in SPLITS]
        cells += [f"{summ['overall']['matches']:.0f}", f"{summ['overall']['time']:.3f}"]
        lines.append(row(name, cells))
    lines += [f"MMA at {mkeys} px", row("Method", splits)]
    for name, summ in results.items():
        lines.append(row(name, [fmt(summ[s]["mma"], mkeys) for s in SPLITS]))
    return "\n".join(lines)


def save_results(
    path: Path, records: Sequence[Dict], summary: Dict, meta: Dict
) -> None:
    """``path`` (.json: meta, summary, per-pair records) and a per-pair .csv.

    A failed estimate has ``corner_error`` Infinity, an empty split NaN (as
    Python's json writes and reads them)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {**meta, "summary": summary, "pairs": list(records)}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=float))
    os.replace(tmp, path)
    with open(path.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.writer(f)
        cols = [
            "sequence",
            "target",
            "kind",
            "matches",
            "inliers",
            "time",
            "corner_error",
        ]
        writer.writerow(cols + [f"mma@{t}" for t in MMA_THRESHOLDS])
        for r in records:
            writer.writerow([r[c] for c in cols] + r["mma"])


def load_summary(path: Path) -> Dict:
    """The summary of a saved result, thresholds back to int keys."""
    summ = json.loads(Path(path).read_text())["summary"]
    for split in summ.values():
        for key in ("h_correct", "h_auc", "mma"):
            split[key] = {int(t): v for t, v in split[key].items()}
    return summ


def plot_mma(results: Dict[str, Dict], path: Path) -> None:
    """MMA curves (overall, illumination, viewpoint) of several methods."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), sharey=True)
    for ax, split in zip(axes, SPLITS):
        for name, summ in results.items():
            mma = summ[split]["mma"]
            ax.plot(MMA_THRESHOLDS, [mma[t] for t in MMA_THRESHOLDS], label=name, lw=2)
        ax.set_title(split.capitalize())
        ax.set_xlabel("threshold [px]")
        ax.set_xlim(1, MMA_THRESHOLDS[-1])
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("MMA")
    axes[-1].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
