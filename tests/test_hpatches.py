import logging
import shutil
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from p2p_hloc.eval import homography as hom
from p2p_hloc.eval import hpatches as hp
from p2p_hloc.preprocess import target_size

PHOTOS = {"i_coffee": "coffee", "i_chelsea": "chelsea", "v_astronaut": "astronaut"}
PHOTOS.update({"v_rocket": "rocket", "v_talent": "immunohistochemistry"})  # excluded


def random_homography(w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    """A viewpoint-like homography: corners moved by up to 12 % of the size."""
    src = np.float32([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]])
    dst = np.float32(src + rng.uniform(-0.12, 0.12, (4, 2)) * [w, h])
    return cv2.getPerspectiveTransform(src, dst).astype(np.float64)


def make_hpatches(root: Path, size: int = 320, seed: int = 0, photos=PHOTOS) -> Path:
    """An HPatches-shaped folder from skimage photos with known homographies."""
    rng = np.random.default_rng(seed)
    for seq, photo in photos.items():
        image = Image.fromarray(getattr(skdata, photo)()).convert("RGB")
        image.thumbnail((size, size), Image.BICUBIC)
        img = np.asarray(image)
        h, w = img.shape[:2]
        (root / seq).mkdir(parents=True)
        Image.fromarray(img).save(root / seq / "1.ppm")
        for k in range(2, 7):
            if seq.startswith("i_"):
                H = np.eye(3)
                out = np.clip(
                    img * rng.uniform(0.4, 1.4) + rng.uniform(-30, 30), 0, 255
                )
            else:
                H = random_homography(w, h, rng)
                out = cv2.warpPerspective(img, H, (w, h))
            Image.fromarray(out.astype(np.uint8)).save(root / seq / f"{k}.ppm")
            np.savetxt(root / seq / f"H_1_{k}", H)
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_hpatches(tmp_path_factory.mktemp("hpatches"))


def exact_matches(path0: Path, path1: Path, imsize: int = 1024) -> dict:
    """Grid points of image 1 and their true positions in image k, and the
    scales of a matcher working at ``imsize``."""
    H = np.loadtxt(path0.parent / f"H_1_{path1.stem}")
    w0, h0 = Image.open(path0).size
    w1, h1 = Image.open(path1).size
    x, y = np.meshgrid(np.arange(2, w0 - 2, 6.0), np.arange(2, h0 - 2, 6.0))
    kpts0 = np.stack([x.ravel(), y.ravel()], 1)
    kpts1 = hom.warp_points(H, kpts0)
    keep = np.all((kpts1 >= 0) & (kpts1 <= [w1 - 1, h1 - 1]), axis=1)
    pred = {
        "keypoints0": kpts0[keep],
        "keypoints1": kpts1[keep],
        "scores": np.ones(keep.sum()),
    }
    for i, (w, h) in enumerate([(w0, h0), (w1, h1)]):
        pred[f"scale{i}"] = np.array([w, h]) / target_size(w, h, imsize)
    return pred


def run(pairs, match_fn, tmp_path, protocol="original"):
    hp.match_pairs(match_fn, pairs, tmp_path / "cache")
    return hp.evaluate(pairs, tmp_path / "cache", protocol)


def test_sequences_and_pairs(dataset):
    names = [p.name for p in hp.list_sequences(dataset)]
    assert names == ["v_rocket", "v_astronaut", "i_coffee", "i_chelsea"]
    assert "v_talent" in [
        p.name for p in hp.list_sequences(dataset, all_sequences=True)
    ]
    pairs = hp.load_pairs(dataset)
    assert len(pairs) == 20
    assert [p.name for p in pairs[:2]] == ["v_rocket/1_2", "v_rocket/1_3"]
    assert np.allclose(pairs[1].H, np.loadtxt(dataset / "v_rocket" / "H_1_3"))
    assert len(hp.EXCLUDED) == 8


@pytest.mark.parametrize("protocol,imsize", [("original", 1024), ("resized", 160)])
def test_exact_matches(dataset, tmp_path, protocol, imsize):
    match_fn = partial(exact_matches, imsize=imsize)
    records, summary = run(hp.load_pairs(dataset), match_fn, tmp_path, protocol)
    for split in hp.SPLITS:
        assert summary[split]["h_correct"][1] == 1.0
        assert summary[split]["mma"][1] == 1.0
    assert max(r["corner_error"] for r in records) < 0.05
    assert summary["illumination"]["sequences"] == 2
    assert summary["viewpoint"]["pairs"] == 10


def test_noisy_matches(dataset, tmp_path):
    """30 % of matches off by 20 px; the rest with N(0, 1) noise per axis, so
    the error follows a Rayleigh law: P(e <= t) = 1 - exp(-t^2 / 2)."""
    rng = np.random.default_rng(0)
    shares = []

    def noisy(path0, path1):
        pred = exact_matches(path0, path1)
        n = len(pred["keypoints1"])
        noise = rng.normal(0, 1, (n, 2))
        off = rng.random(n) < 0.3
        angle = rng.uniform(0, 2 * np.pi, off.sum())
        noise[off] = 20 * np.stack([np.cos(angle), np.sin(angle)], 1)
        pred["keypoints1"] = pred["keypoints1"] + noise
        shares.append(off.mean())
        return pred

    records, summary = run(hp.load_pairs(dataset), noisy, tmp_path)
    mma = summary["overall"]["mma"]
    share_off = np.mean(shares)
    for t in (1, 2, 3, 10):
        expected = (1 - share_off) * (1 - np.exp(-(t**2) / 2))
        assert mma[t] == pytest.approx(expected, abs=0.01)
    assert summary["overall"]["h_correct"][3] == 1.0
    assert all(r["inliers"] < r["matches"] for r in records)


def test_failures_count_as_incorrect(dataset, tmp_path):
    def flaky(path0, path1):
        pred = exact_matches(path0, path1)
        n = {"2": 0, "3": 3}.get(path1.stem, len(pred["scores"]))
        return {k: v[:n] for k, v in pred.items()}

    pairs = [p for p in hp.load_pairs(dataset) if p.sequence == "v_astronaut"]
    records, summary = run(pairs, flaky, tmp_path)
    by_target = {r["target"]: r for r in records}
    assert by_target[2]["matches"] == 0 and by_target[2]["mma"] == [0.0] * 10
    assert by_target[3]["matches"] == 3 and by_target[3]["mma"][0] == 1.0
    assert by_target[2]["corner_error"] == by_target[3]["corner_error"] == np.inf
    assert summary["viewpoint"]["h_correct"][10] == 0.6
    assert summary["viewpoint"]["mma"][1] == pytest.approx(0.8)
    assert summary["illumination"]["pairs"] == 0


def test_split_adds_up(dataset, tmp_path):
    rng = np.random.default_rng(1)

    def partly_wrong(path0, path1):
        pred = exact_matches(path0, path1)
        if rng.random() < 0.4:
            pred["keypoints1"] = pred["keypoints1"] + rng.uniform(-6, 6, (1, 2))
        return pred

    records, summary = run(hp.load_pairs(dataset), partly_wrong, tmp_path)
    i, v, o = (summary[s] for s in ("illumination", "viewpoint", "overall"))
    assert i["pairs"] + v["pairs"] == o["pairs"] == len(records) == 20
    assert i["sequences"] + v["sequences"] == o["sequences"] == 4
    for key, thresholds in (("h_correct", hp.H_THRESHOLDS), ("mma", hp.MMA_THRESHOLDS)):
        for t in thresholds:
            mixed = (i[key][t] * i["pairs"] + v[key][t] * v["pairs"]) / o["pairs"]
            assert o[key][t] == pytest.approx(mixed)
    assert 0 < o["h_correct"][1] < 1
    assert o["matches"] == pytest.approx(np.mean([r["matches"] for r in records]))


def test_cache_is_reused(dataset, tmp_path):
    calls = []

    def counting(path0, path1):
        calls.append(path1)
        return exact_matches(path0, path1)

    pairs = hp.load_pairs(dataset)[:5]
    hp.match_pairs(counting, pairs, tmp_path)
    hp.match_pairs(counting, pairs, tmp_path)
    assert len(calls) == 5
    assert not list(tmp_path.rglob("*.tmp"))
    hp.cache_path(tmp_path, pairs[0]).write_bytes(b"truncated")
    hp.match_pairs(counting, pairs, tmp_path)
    assert len(calls) == 6
    hp.save_matches(hp.cache_path(tmp_path, pairs[1]), {"keypoints0": np.zeros((0, 2))})
    hp.match_pairs(counting, pairs, tmp_path)
    assert len(calls) == 7
    cached = hp.load_matches(hp.cache_path(tmp_path, pairs[0]))
    assert cached["size0"].tolist() == list(Image.open(pairs[0].image0).size)
    assert cached["time"] > 0

    hp.check_cache(tmp_path, {"method": "a"})
    hp.check_cache(tmp_path, {"method": "a"})
    with pytest.raises(hp.HPatchesError, match="another conf"):
        hp.check_cache(tmp_path, {"method": "b"})
    hp.check_cache(tmp_path, {"method": "b"}, overwrite=True)


@pytest.mark.parametrize("missing", ["4.ppm", "H_1_5"])
def test_incomplete_sequence(dataset, tmp_path, caplog, monkeypatch, missing):
    monkeypatch.setattr(logging.getLogger("p2p_hloc"), "propagate", True)
    root = tmp_path / "hp"
    shutil.copytree(dataset, root)
    (root / "i_coffee" / missing).unlink()
    with pytest.raises(hp.HPatchesError, match=f"i_coffee lacks {missing}"):
        hp.load_pairs(root)
    with caplog.at_level(logging.WARNING, logger="p2p_hloc"):
        pairs = hp.load_pairs(root, skip_incomplete=True)
    assert len(pairs) == 15 and "i_coffee" not in {p.sequence for p in pairs}
    assert f"lacks {missing}" in caplog.text and "skipped" in caplog.text


def test_bad_inputs(tmp_path):
    with pytest.raises(hp.HPatchesError, match="not found"):
        hp.list_sequences(tmp_path / "nope")
    with pytest.raises(hp.HPatchesError, match="no i_"):
        hp.list_sequences(tmp_path)
    (tmp_path / "H").write_text("1 0\n0 1\n")
    with pytest.raises(hp.HPatchesError, match="3x3"):
        hp.read_homography(tmp_path / "H")


def test_results_table_and_plot(dataset, tmp_path):
    records, summary = run(hp.load_pairs(dataset), exact_matches, tmp_path)
    path = tmp_path / "hpatches-exact-original.json"
    hp.save_results(path, records, summary, {"method": "exact"})
    loaded = hp.load_summary(path)
    assert (
        loaded["overall"]["mma"][1] == 1.0 and loaded["overall"]["h_correct"][3] == 1.0
    )
    rows = path.with_suffix(".csv").read_text().splitlines()
    assert len(rows) == 21 and rows[0].startswith("sequence,target,kind")
    table = hp.format_table({"exact": loaded})
    assert "<= (1, 3, 5) px" in table and "exact  | 1.00/1.00/1.00 " in table
    hp.plot_mma({"exact": loaded, "other": loaded}, tmp_path / "mma.png")
    assert (tmp_path / "mma.png").stat().st_size > 1000


def test_pipeline_smoke(tmp_path, golden_weights, monkeypatch):
    """The real model through the pipeline (random weights: no accuracy check)."""
    from p2p_hloc.confs import confs
    from pipelines import hpatches as pipeline

    dataset = make_hpatches(tmp_path / "hp", size=192, photos={"v_rocket": "rocket"})
    conf = {**confs["patch2pix"], "output": "p2p-test"}
    conf["preprocessing"] = {**conf["preprocessing"], "resize_max": 160}
    path = pipeline.main(conf, dataset, tmp_path / "out", golden_weights)
    assert path == tmp_path / "out" / "hpatches-p2p-test-original.json"
    summary = hp.load_summary(path)
    assert summary["viewpoint"]["pairs"] == 5 and summary["overall"]["time"] > 0
    for name in ("original.csv", "resized.json", "resized.csv"):
        assert (tmp_path / "out" / f"hpatches-p2p-test-{name}").is_file()
    assert (tmp_path / "out" / "hpatches-mma-original.png").is_file()
    cached = hp.load_matches(
        tmp_path / "out" / "matches" / "p2p-test" / "v_rocket" / "1_2.npz"
    )
    assert np.allclose(
        cached["scale0"], cached["size0"] / np.array(target_size(192, 128, 160))
    )

    def no_matching(*args):
        raise AssertionError("re-matched although cached")

    monkeypatch.setattr(pipeline, "build_match_fn", no_matching)
    pipeline.main(
        conf, dataset, tmp_path / "out", golden_weights, protocols=["resized"]
    )
    with pytest.raises(hp.HPatchesError, match="another conf"):
        pipeline.main({**conf, "refine": {}}, dataset, tmp_path / "out", golden_weights)
