"""The official checkpoint format, in and out.

A Patch2Pix checkpoint is a ``dict`` with ``backbone``, ``feat_idx``,
``change_stride``, ``regressor_config`` (an ``argparse.Namespace``) and
``state_dict``; training files add ``last_epoch``, ``best_vals``, ``optim``
and ``lr_scheduler``. The NCNet file ``ncn_ivd_5ep.pth`` may be a bare state
dict. ``extract.layer4.*`` keys are accepted and ignored (never run).
"""

import argparse
import logging
from collections import Counter
from pathlib import Path
from typing import Dict, Optional, Sequence, Union

import torch

from .patch2pix import Patch2Pix, RegressorConfig

logger = logging.getLogger("p2p_hloc")

IGNORED_PREFIXES = ("extract.layer4.", "extract.fc.")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model."""


def _safe_load(path: Path) -> object:
    allowed = [argparse.Namespace]
    try:  # numpy scalars may appear in 'best_vals'
        import numpy as np

        allowed += [np.dtype, type(np.dtype("float64")), np.ndarray]
        allowed.append(
            np._core.multiarray.scalar
            if hasattr(np, "_core")
            else np.core.multiarray.scalar
        )
    except Exception:  # pragma: no cover - numpy layout differs
        pass
    if hasattr(torch.serialization, "safe_globals"):
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    logger.warning(  # torch < 2.4 has no allow-list for argparse.Namespace
        "torch %s cannot load %s with weights_only and an allow-list; "
        "loading it as a full pickle: use only trusted files.",
        torch.__version__,
        path,
    )
    return torch.load(path, map_location="cpu", weights_only=False)


def read_checkpoint(path: Union[str, Path]) -> Dict:
    """Read a checkpoint file into a dict with at least ``state_dict``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"cannot read checkpoint {path}: the file is empty")
    try:
        ckpt = _safe_load(path)
    except Exception as e:
        reason = str(e).strip() or type(e).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: {reason}") from e
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: expected a dict, got {type(ckpt).__name__}")
    if "state_dict" not in ckpt:  # a bare state dict (ncn_ivd_5ep.pth)
        if not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            raise CheckpointError(f"{path}: no 'state_dict' entry and not a state dict")
        ckpt = {"state_dict": ckpt}
    return ckpt


def regressor_config(ckpt: Dict) -> Optional[RegressorConfig]:
    """The regressor settings stored in a checkpoint (None: coarse only)."""
    cfg = ckpt.get("regressor_config")
    has_regressor = any(k.startswith("regress_mid.") for k in ckpt["state_dict"])
    if cfg is None or not has_regressor:
        return None
    cfg = vars(cfg) if isinstance(cfg, argparse.Namespace) else dict(cfg)
    if cfg.get("feat_comb", "pre") != "pre":
        raise CheckpointError(
            f"feat_comb={cfg['feat_comb']!r} is not supported (only 'pre')"
        )
    kers = list(cfg.get("conv_kers", [3, 3]))
    return RegressorConfig(
        conv_dims=list(cfg.get("conv_dims", [512, 512])),
        conv_kers=kers,
        # the official code falls back to stride 2 everywhere when absent
        conv_strs=list(cfg.get("conv_strs", [2] * len(kers))),
        fc_dims=list(cfg.get("fc_dims", [512, 256])),
        psize=list(cfg.get("psize", [16, 16])),
        shared=bool(cfg.get("shared", False)),
        feat_idx=list(ckpt.get("feat_idx", [0, 1, 2, 3])),
    )


def summarize_keys(keys: Sequence[str], shown: int = 5) -> str:
    """``a, b, c`` for a few keys; for more, the count per top-level prefix
    and the first ``shown``."""
    keys = sorted(keys)
    if len(keys) <= shown:
        return ", ".join(keys)
    groups = Counter(k.split(".", 1)[0] + ".*" for k in keys)
    per_group = ", ".join(f"{g} {n}" for g, n in sorted(groups.items()))
    return f"{len(keys)} keys ({per_group}), e.g. {', '.join(keys[:shown])}"


def load_state(
    model: Patch2Pix, state: Dict[str, torch.Tensor], source: str = ""
) -> None:
    """Load a state dict strictly (apart from ``layer4``), naming the keys
    that are missing, unexpected, of the wrong shape or not finite."""
    state = {k: v for k, v in state.items() if not k.startswith(IGNORED_PREFIXES)}
    if any(k.startswith("module.") for k in state):
        state = {k.replace("module.", "", 1): v for k, v in state.items()}
    own = model.state_dict()
    if model.coarse_only:  # regressor keys of a full file are not needed
        state = {k: v for k, v in state.items() if not k.startswith("regress_")}
    missing = set(own) - set(state)
    unexpected = set(state) - set(own)
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(own)
        if k in state and state[k].shape != own[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {summarize_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {summarize_keys(unexpected)}")
    if wrong:
        more = f" (and {len(wrong) - 5} more)" if len(wrong) > 5 else ""
        problems.append(f"mis-shaped keys: {'; '.join(wrong[:5])}{more}")
    if problems:
        raise CheckpointError(
            f"checkpoint {source} does not fit Patch2Pix: " + " | ".join(problems)
        )
    bad = [
        k
        for k, v in state.items()
        if v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]
    if bad:
        raise CheckpointError(
            f"checkpoint {source} has non-finite values (NaN or inf) in "
            f"{summarize_keys(bad)}"
        )
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


def load_model(
    path: Union[str, Path],
    device: Optional[Union[str, torch.device]] = None,
    coarse_only=False,
) -> Patch2Pix:
    """Patch2Pix (or NCNet) from a checkpoint file, in eval mode on ``device``
    (default: CUDA when available)."""
    ckpt = read_checkpoint(path)
    cfg = None if coarse_only else regressor_config(ckpt)
    if ckpt.get("backbone", "ResNet34") != "ResNet34":
        raise CheckpointError(f"{path}: backbone {ckpt['backbone']!r} is not supported")
    model = Patch2Pix(cfg)
    load_state(model, ckpt["state_dict"], str(path))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    logger.info("Loaded %s from %s", "NCNet" if cfg is None else "Patch2Pix", path)
    return model.to(device).eval()


def save_checkpoint(
    model: Patch2Pix, path: Union[str, Path], extra: Optional[Dict] = None
) -> Path:
    """Write ``model`` in the official layout (atomically)."""
    cfg = model.regressor
    ckpt = {
        "backbone": "ResNet34",
        "change_stride": True,
        "state_dict": model.state_dict(),
    }
    if cfg is not None:
        ckpt["feat_idx"] = list(cfg.feat_idx)
        ckpt["regressor_config"] = argparse.Namespace(
            conv_dims=list(cfg.conv_dims),
            conv_kers=list(cfg.conv_kers),
            conv_strs=list(cfg.conv_strs),
            fc_dims=list(cfg.fc_dims),
            feat_comb="pre",
            psize=list(cfg.psize),
            pshift=8,
            panc=8,
            shared=cfg.shared,
            feat_dim=sum((3, 64, 64, 128, 256)[i] for i in cfg.feat_idx),
        )
    ckpt.update(extra or {})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(ckpt, tmp)
    tmp.replace(path)
    return path
