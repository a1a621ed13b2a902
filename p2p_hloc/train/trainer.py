"""Training of the Patch2Pix regressors (the official recipe).

Per pair: NCNet proposals (mutual, threshold 0) of the frozen backbone, ``ptmax``
of them sampled and expanded to 8 anchors each, then the mid and fine
regressors; losses from the Sampson distance (``losses.pair_losses``). The
backbone and the NC layer are frozen and stay in eval mode (their BatchNorm
statistics are those of the initial weights, so features can be cached); the
regressors run in train mode (BatchNorm on batch statistics of each chunk of
``FeatRegressNet.train_chunk`` proposals, running statistics updated) as in
the official ``net.train()``.
"""

import csv
import logging
import random
import shutil
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..model import Patch2Pix, RegressorConfig, save_checkpoint
from ..model.checkpoint import load_state, read_checkpoint
from .losses import expand_patches, pair_losses, sample_proposals, sampson_distance

logger = logging.getLogger("p2p_hloc")

default_conf = {
    "seed": 1,
    "epochs": 25,
    "batch_size": 4,
    "lr": 5e-4,
    "lr_milestones": [5],  # epochs after which lr *= lr_gamma (5e-4 -> 1e-4)
    "lr_gamma": 0.2,
    "weight_decay": 0.0,
    "ptmax": 400,  # proposals sampled (cut or tiled) per pair; <= 0: all
    "expansion": True,  # local patch expansion: 8 anchors per proposal
    "pshift": 8,
    "feat_idx": [0, 1, 2, 3],  # feature levels collected by the regressors
    "cls_thresholds": [50.0, 5.0],  # mid, fine (squared px)
    "geo_thresholds": [50.0, 5.0],
    "cls_weight": 10.0,
    "geo_weights": [1.0, 1.0],  # mid, fine
    "ncn_threshold": 0.0,
    "freeze_bn": False,  # regressor BatchNorm on running statistics (official: no)
    "cache_features": False,  # keep the frozen features and proposals in memory
    "num_workers": 0,
    "log_every": 10,
    "save_every": 1,  # epochs between ckpt_ep{k}.pth files (0: only last_ckpt)
}

LOG_FIELDS = ["epoch", "step", "lr", "loss", "cls_mid", "cls_fine", "geo_mid",
              "geo_fine", "pos_mid", "pos_fine", "pairs", "skipped"]  # fmt: skip


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(conf: Dict, weights: Optional[Path] = None) -> Patch2Pix:
    """Patch2Pix with the regressors of ``conf`` (``feat_idx``), initialised
    from ``weights`` (an official or trainer checkpoint, or the NCNet file).

    The regressors are taken from the file only if their layout matches;
    otherwise they keep their random initialisation (the ablations)."""
    cfg = RegressorConfig(feat_idx=list(conf["feat_idx"]))
    model = Patch2Pix(cfg)
    if weights is None:
        logger.warning("No initial weights: the backbone and NC layer are random.")
        return model
    state = read_checkpoint(weights)["state_dict"]
    own = model.state_dict()
    fits = all(
        k in state and state[k].shape == v.shape
        for k, v in own.items()
        if k.startswith("regress_")
    )
    if not fits:
        logger.info(
            "Regressors of %s do not fit the config: initialised randomly.", weights
        )
        state = {
            **{k: v for k, v in own.items() if k.startswith("regress_")},
            **{k: v for k, v in state.items() if not k.startswith("regress_")},
        }
    load_state(model, state, str(weights))
    return model


def set_train_mode(model: Patch2Pix, freeze_bn: bool = False) -> None:
    """Frozen backbone and NC in eval mode; regressors trainable, in train mode
    unless ``freeze_bn`` (then their BatchNorm keeps its running statistics)."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    for net in (model.regress_mid, model.regress_fine):
        net.train(not freeze_bn)
        for p in net.parameters():
            p.requires_grad_(True)


class FrozenStage:
    """Features and NCNet proposals of the frozen part, optionally cached per
    dataset index."""

    def __init__(self, model: Patch2Pix, conf: Dict):
        self.model, self.conf = model, conf
        self.cache: Dict[int, tuple] = {}

    @torch.no_grad()
    def __call__(self, item: Dict, index: int) -> tuple:
        if index in self.cache:
            return self.cache[index]
        dev = self.model.device
        feats0 = self.model.extract_features(item["image0"][None].to(dev))
        feats1 = self.model.extract_features(item["image1"][None].to(dev))
        coarse = self.model.coarse(feats0, feats1, self.conf["ncn_threshold"])[
            "matches"
        ]
        out = (feats0, feats1, coarse)
        if self.conf["cache_features"]:
            self.cache[index] = out
        return out


def refine(
    model: Patch2Pix, feats0, feats1, proposals: torch.Tensor
) -> Dict[str, torch.Tensor]:
    """The model's stages on ``(N, 4)`` proposals (``mid_*``, ``fine_*``),
    with gradients for the regressors unless disabled."""
    data = {"features0": feats0, "features1": feats1, "proposals": proposals}
    return model(data, stages=True)


def train_step(
    model: Patch2Pix,
    frozen: FrozenStage,
    batch: List[Dict],
    conf: Dict,
    generator: torch.Generator,
) -> Optional[Dict[str, torch.Tensor]]:
    """Losses of a batch of pairs (None if every pair was skipped)."""
    per_pair = []
    for item in batch:
        feats0, feats1, coarse = frozen(item, int(item["index"]))
        if len(coarse) == 0:
            continue
        anchors = sample_proposals(coarse, conf["ptmax"], generator)
        if conf["expansion"]:
            anchors = expand_patches(anchors, conf["pshift"])
        losses = pair_losses(
            item["F"].to(model.device),
            anchors,
            refine(model, feats0, feats1, anchors),
            conf["cls_thresholds"],
            conf["geo_thresholds"],
        )
        if losses is not None:
            per_pair.append(losses)
    if not per_pair:
        return None
    out = {k: torch.stack([p[k] for p in per_pair]).mean() for k in per_pair[0]}
    w_mid, w_fine = conf["geo_weights"]
    cls = out["cls_mid"] + out["cls_fine"]
    geo = w_mid * out["geo_mid"] + w_fine * out["geo_fine"]
    out["loss"] = conf["cls_weight"] * cls + geo
    out["pairs"] = torch.tensor(len(per_pair))
    return out


@torch.no_grad()
def evaluate(
    model: Patch2Pix,
    dataset: Dataset,
    conf: Dict,
    inliers_only: bool = False,
    frozen: Optional[FrozenStage] = None,
) -> Dict[str, float]:
    """Sampson errors (squared px) of the refined NCNet proposals in inference
    mode (no expansion, regressors in eval mode) over a dataset.

    ``*_inlier`` averages over the proposals whose coarse error is below the
    mid geometric threshold (those the regressors learn to refine); with
    ``inliers_only`` only those are refined (faster). ``frozen``: the frozen
    stage of ``dataset`` to use (and fill, if it caches), e.g. across epochs
    (by default one without cache)."""
    was_training = any(p.requires_grad for p in model.regress_mid.parameters())
    model.eval()
    if frozen is None:
        frozen = FrozenStage(model, {**conf, "cache_features": False})
    errors = {"coarse": [], "mid": [], "fine": []}
    for i in range(len(dataset)):
        item = dataset[i]
        feats0, feats1, coarse = frozen(item, i)
        fmat = item["F"].to(model.device)
        if inliers_only:
            coarse = coarse[
                sampson_distance(coarse.float(), fmat) < conf["geo_thresholds"][0]
            ]
        if len(coarse) == 0:
            continue
        pred = refine(model, feats0, feats1, coarse)
        errors["coarse"].append(sampson_distance(coarse.float(), fmat))
        errors["mid"].append(sampson_distance(pred["mid_matches"], fmat))
        errors["fine"].append(sampson_distance(pred["fine_matches"], fmat))
    if was_training:
        set_train_mode(model, conf["freeze_bn"])
    if not errors["coarse"]:
        return {}
    err = {k: torch.cat(v) for k, v in errors.items()}
    inl = err["coarse"] < conf["geo_thresholds"][0]
    res = {"num_matches": float(len(inl)), "inlier_ratio": inl.float().mean().item()}
    for k, v in err.items():
        res[f"{k}_median"] = v.median().item()
        res[f"{k}_inlier"] = v[inl].mean().item() if inl.any() else float("nan")
    return res


class Logger:
    """CSV log (and TensorBoard when installed)."""

    def __init__(self, output_dir: Path):
        self.path = output_dir / "log.csv"
        new = not self.path.exists()
        self.file = open(self.path, "a", newline="")
        self.writer = csv.DictWriter(self.file, LOG_FIELDS, extrasaction="ignore")
        if new:
            self.writer.writeheader()
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(output_dir / "tensorboard"))
        except ImportError:
            self.tb = None

    def log(self, row: Dict, prefix: str = "train") -> None:
        if prefix == "train":
            self.writer.writerow(row)
            self.file.flush()
        if self.tb is not None:
            for k, v in row.items():
                if k not in ("epoch", "step"):
                    self.tb.add_scalar(f"{prefix}/{k}", v, row["step"])

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


def main(
    conf: Dict,
    dataset: Dataset,
    output_dir: Path,
    weights: Optional[Path] = None,
    val_dataset: Optional[Dataset] = None,
    resume: bool = True,
) -> Path:
    """Train and return the path of the last checkpoint.

    Writes ``last_ckpt.pth`` and ``ckpt_ep{k}.pth`` (official layout),
    ``log.csv`` (per ``log_every`` steps) and ``val.csv`` (per epoch, when
    ``val_dataset`` is given). With ``resume``, training continues from
    ``last_ckpt.pth`` if present (epoch granularity: the shuffling and the
    proposal sampling are seeded per epoch, so a resumed run equals an
    uninterrupted one)."""
    conf = {**default_conf, **conf}
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(conf["seed"])
    last = output_dir / "last_ckpt.pth"
    start = 0
    if resume and last.exists():
        model = build_model(conf, last)
        ckpt = read_checkpoint(last)
        start = ckpt["last_epoch"] + 1
        logger.info("Resuming from %s at epoch %d.", last, start + 1)
    else:
        model = build_model(conf, weights)
        ckpt = None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    set_train_mode(model, conf["freeze_bn"])
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.Adam(params, lr=conf["lr"], weight_decay=conf["weight_decay"])
    sched = torch.optim.lr_scheduler.MultiStepLR(
        optim, conf["lr_milestones"], conf["lr_gamma"]
    )
    if ckpt is not None:
        optim.load_state_dict(ckpt["optim"])
        sched.load_state_dict(ckpt["lr_scheduler"])
    frozen = FrozenStage(model, conf)
    val_frozen = FrozenStage(model, conf)  # caches when the conf says so
    log = Logger(output_dir)
    best_vals = [float("inf"), 0.0, float("inf"), 0.0]  # official entries
    steps_per_epoch = -(-len(dataset) // conf["batch_size"])
    for epoch in range(start, conf["epochs"]):
        gen = torch.Generator().manual_seed(conf["seed"] * 1000 + epoch)
        loader = DataLoader(
            dataset,
            conf["batch_size"],
            shuffle=True,
            generator=gen,
            collate_fn=list,
            num_workers=conf["num_workers"],
        )
        for i, batch in enumerate(tqdm(loader, desc=f"epoch {epoch + 1}", leave=False)):
            step = epoch * steps_per_epoch + i
            out = train_step(model, frozen, batch, conf, gen)
            if out is None:
                logger.debug("Step %d: every pair of the batch was skipped.", step)
                continue
            optim.zero_grad()
            out["loss"].backward()
            optim.step()
            if step % conf["log_every"] == 0:
                row = {k: v.item() for k, v in out.items()}
                row.update(
                    epoch=epoch,
                    step=step,
                    lr=optim.param_groups[0]["lr"],
                    skipped=len(batch) - row["pairs"],
                )
                log.log(row)
        sched.step()
        if val_dataset is not None:
            res = evaluate(model, val_dataset, conf, frozen=val_frozen)
            logger.info("Epoch %d validation: %s", epoch + 1, res)
            write_val(output_dir / "val.csv", {"epoch": epoch, **res})
            log.log({"step": (epoch + 1) * steps_per_epoch, **res}, "val")
        extra = {
            "last_epoch": epoch,
            "best_vals": best_vals,
            "optim": optim.state_dict(),
            "lr_scheduler": sched.state_dict(),
        }
        save_checkpoint(model, last, extra)
        if conf["save_every"] and (epoch + 1) % conf["save_every"] == 0:
            shutil.copyfile(last, output_dir / f"ckpt_ep{epoch + 1}.pth")
    log.close()
    return last


def write_val(path: Path, row: Dict) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)
