"""The fast CPU forms (oneDNN linear, folded convs, CellShare, Winograd) are an
implementation detail: taken only on the CPU in float32 eval mode without
gradients, switched off by ``fast_forms(False)``; the plain path (the one CUDA
takes) gives the golden outputs by itself."""

import numpy as np
import pytest
import test_golden as golden_checks
import torch

from p2p_hloc.model import fast_forms, fast_regressor, ops
from p2p_hloc.model.regressor import FeatRegressNet
from p2p_hloc.preprocess import load_image


def test_the_seam_decides():
    net = FeatRegressNet(feat_dim=4, psize=8, conv_dims=(8, 8)).eval()
    x = torch.zeros(2, 8, 8, 8)
    with torch.no_grad():
        assert ops.use_fast_forms(net, x)
        assert not ops.use_fast_forms(net, x.double())
        assert not ops.use_fast_forms(net, x.bfloat16())
        assert not ops.use_fast_forms(net, torch.empty(2, 8, 8, 8, device="meta"))
        with fast_forms(False):
            assert not ops.use_fast_forms(net, x)
            with fast_forms(True):
                assert ops.use_fast_forms(net, x)
            assert not ops.fast_forms_enabled()
        assert ops.fast_forms_enabled()
        net.train()
        assert not ops.use_fast_forms(net, x)
    net.eval()
    assert not ops.use_fast_forms(net, x)  # gradients wanted for the weights


def test_switched_off_takes_no_fast_form(monkeypatch):
    """With the forms off, neither the oneDNN kernel nor the fast regressor
    is reached."""

    def forbidden(*args, **kwargs):
        raise AssertionError("a fast form was taken")

    monkeypatch.setattr(ops, "_onednn_linear", forbidden)
    monkeypatch.setattr(fast_regressor.FastRegressor, "__init__", forbidden)
    net = FeatRegressNet(feat_dim=4, psize=8, conv_dims=(8, 8)).eval()
    a, b = torch.randn(5, 3), torch.randn(4, 3)
    with torch.no_grad(), fast_forms(False):
        torch.testing.assert_close(ops.matmul_nt(a, b), a @ b.t())
        assert net(torch.randn(3, 8, 8, 8)).shape == (3, 5)
    with torch.no_grad(), pytest.raises(AssertionError, match="fast form"):
        ops.matmul_nt(a, b)


def test_golden_outputs_without_fast_forms(golden_model, golden_dir, monkeypatch):
    """The path CUDA takes (the plain layers): golden pair A at 512 px with the
    fast forms off reaches none of them and gives the official outputs at the
    golden tolerances (the checks of ``test_golden``)."""

    def forbidden(*args, **kwargs):
        raise AssertionError("a fast form was taken")

    monkeypatch.setattr(ops, "_onednn_linear", forbidden)
    monkeypatch.setattr(fast_regressor.FastRegressor, "__init__", forbidden)
    ref = np.load(golden_dir / "outputs_A_s512.npz")
    x0, s0, _ = load_image(golden_dir / "pairA_1.png", 512)
    x1, s1, _ = load_image(golden_dir / "pairA_2.png", 512)
    with torch.inference_mode(), fast_forms(False):
        pred = golden_model({"image0": x0[None], "image1": x1[None]}, stages=True)
    case = {"ref": ref, "pred": pred, "s": (s0, s1)}
    golden_checks.test_coarse(case)
    golden_checks.test_mid_and_fine(case)
    golden_checks.test_final_thresholds(case, golden_model)
