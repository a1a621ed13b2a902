"""Training pairs over the generated scenes of ``p2p_hloc.synthetic``."""

import csv
from typing import List

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Subset

from p2p_hloc.model.checkpoint import read_checkpoint
from p2p_hloc.synthetic import Plane, render, room, world_points
from p2p_hloc.train import trainer
from p2p_hloc.train.data import PlanarPairs
from p2p_hloc.train.losses import sampson_distance
from p2p_hloc.train.megadepth import crop_size
from p2p_hloc.train.synthetic import SyntheticPairs

SIZE = (240, 160)  # network input (W, H): the 240x180 views lose 20 bottom rows


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    conf = {"num_queries": 2, "width": 240, "height": 180}
    return SyntheticPairs(tmp_path_factory.mktemp("scene"), conf, SIZE)


def correspondences(
    dataset: SyntheticPairs, idx: int, planes: List[Plane], step: int = 4
) -> torch.Tensor:
    """``(N, 4)`` matches in network-input pixels of pair ``idx``: pixel centres
    of view 0 and the projection into view 1 of the depth rendered there."""
    views = {v.name: v for v in dataset.views}
    v0, v1 = (views[str(dataset.pairs[k][idx])] for k in ("image0", "image1"))
    u, v = np.meshgrid(np.arange(v0.width) + 0.5, np.arange(v0.height) + 0.5)
    x0 = np.stack([u, v], -1)[::step, ::step].reshape(-1, 2)
    xyz = world_points(planes, v0)[::step, ::step].reshape(-1, 3)
    x1, z = v1.project(xyz)
    crop0 = crop_size(v0.width, v0.height, SIZE[0] / SIZE[1])
    crop1 = crop_size(v1.width, v1.height, SIZE[0] / SIZE[1])
    ok = np.isfinite(xyz).all(-1) & (z > 0)
    ok &= (x0 < crop0).all(-1) & (x1 >= 0).all(-1) & (x1 < crop1).all(-1)
    m = np.concatenate([x0 * SIZE / np.array(crop0), x1 * SIZE / np.array(crop1)], 1)
    return torch.from_numpy(m[ok])


def test_items_like_planar(dataset):
    item, planar = dataset[0], PlanarPairs({"num_pairs": 1, "size": SIZE})[0]
    assert item.keys() == planar.keys()
    for k, v in planar.items():
        if torch.is_tensor(v):
            assert item[k].shape == v.shape and item[k].dtype == v.dtype, k
    assert len(dataset) >= 10
    assert (dataset.pairs["overlap"] > 0.35).all()
    assert any("query/" in str(n) for n in dataset.pairs["image1"])


def test_views_reproduce_the_images(dataset):
    """The views read back from the scene files render its images."""
    planes = room()
    assert len(dataset.views) == 8 + 2
    for view in dataset.views:
        image = np.asarray(Image.open(dataset.scene["images"] / view.name))
        diff = np.abs(render(planes, view).astype(int) - image)
        assert diff.max() <= 1, view.name


def test_fundamental_matrix_fits_rendered_depth(dataset):
    """K, pose and F agree with the rendering: ground-truth matches from the
    depth lie on the epipolar lines, shuffled matches do not."""
    gen, planes = torch.Generator().manual_seed(0), room()
    worst = 0.0
    for idx in range(len(dataset)):
        m = correspondences(dataset, idx, planes)
        assert len(m) > 100
        F = dataset[idx]["F"]
        d = sampson_distance(m, F)
        worst = max(worst, d.max().item())
        wrong = torch.cat([m[:, :2], m[torch.randperm(len(m), generator=gen), 2:]], 1)
        assert sampson_distance(wrong, F).median() > 10.0
    print(f"largest Sampson distance of the ground-truth matches: {worst:.1e} px^2")
    assert worst < 1e-3


def test_train_step(dataset, golden_weights, tmp_path):
    """One step from the golden weights updates the regressors."""
    torch.set_num_threads(2)
    best = np.argsort(-dataset.pairs["overlap"])[:2].tolist()
    conf = {
        "epochs": 1,
        "batch_size": 2,
        "ptmax": 64,
        "expansion": False,
        "freeze_bn": True,
        "lr": 1e-5,
        "log_every": 1,
        "save_every": 0,
    }
    last = trainer.main(conf, Subset(dataset, best), tmp_path, golden_weights)
    with open(tmp_path / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and int(float(rows[0]["pairs"])) >= 1
    assert np.isfinite(float(rows[0]["loss"]))
    ours = read_checkpoint(last)["state_dict"]
    golden = read_checkpoint(golden_weights)["state_dict"]
    assert any(
        not torch.equal(v.float(), golden[k].float())
        for k, v in ours.items()
        if k.startswith("regress_")
    )
