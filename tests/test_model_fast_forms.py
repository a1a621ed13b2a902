"""The fast CPU forms (oneDNN linear, folded convs, CellShare, Winograd) are an
implementation detail: taken only on the CPU in float32 eval mode without
gradients, switched off by ``fast_forms(False)``, and the model's results are
the same either way (the CUDA path is the plain one)."""

import numpy as np
import pytest
import torch
from conftest import SCORE_ATOL, align_rows

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


def test_golden_pair_without_fast_forms(golden_model, golden_dir):
    """Golden pair A at 512 px through the plain layers and through the fast
    forms: the same proposals and, at the golden tolerances, the same
    matches (coordinates 1e-3 px, scores SCORE_ATOL; fine rows whose mid
    match lies within 1e-3 of an integer, but not on it, may truncate to
    another patch centre and are compared at the mid level only)."""
    x0, _, _ = load_image(golden_dir / "pairA_1.png", 512)
    x1, _, _ = load_image(golden_dir / "pairA_2.png", 512)
    data = {"image0": x0[None], "image1": x1[None]}
    with torch.inference_mode():
        fast = golden_model(data, stages=True)
        with fast_forms(False):
            plain = golden_model(data, stages=True)

    def np_(pred, key):
        return pred[key].double().numpy()

    ip, ir = align_rows(np_(plain, "coarse_matches"), np_(fast, "coarse_matches"), 0)
    assert len(ir) > 300
    for key, atol in (("mid_matches", 1e-3), ("mid_scores", SCORE_ATOL)):
        np.testing.assert_allclose(np_(plain, key)[ip], np_(fast, key)[ir], atol=atol)
    ok = np.ones(len(ir), bool)
    for mid in (np_(plain, "mid_matches")[ip], np_(fast, "mid_matches")[ir]):
        d = np.abs(mid - np.round(mid))  # 0: an exact offset of -8 (relu)
        ok &= ~((d > 0) & (d < 1e-3)).any(1)
    assert ok.mean() > 0.95
    for key, atol in (("fine_matches", 1e-3), ("scores", SCORE_ATOL)):
        np.testing.assert_allclose(
            np_(plain, key)[ip][ok], np_(fast, key)[ir][ok], atol=atol
        )
