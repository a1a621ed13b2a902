"""Equality with the official implementation on the golden weights and images.

Tolerances: coordinates 1e-3 px, scores ``SCORE_ATOL`` (the official code's own
spread across CPUs, see conftest); rows are aligned by their coarse cells and
``MAX_MISSING`` may differ (a near-tie in the 4D max-pool). The golden README
lists ``diag_fragile_mid_idx``: mid coordinates within 1e-3 of an integer whose
truncation (the fine patch centre) can legitimately flip in float arithmetic;
those rows are compared at the mid level only.
"""

import numpy as np
import pytest
import torch
from conftest import SCORE_ATOL, align_rows

from p2p_hloc.preprocess import load_image

CASES = [
    ("A", "default", 1024),
    ("A", "s512", 512),
    ("B", "default", 1024),
    ("B", "s512", 512),
]


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c[0]}_{c[1]}")
def case(request, golden_dir, golden_model):
    pair, setting, imsize = request.param
    ref = np.load(golden_dir / f"outputs_{pair}_{setting}.npz")
    paths = [golden_dir / f"pair{pair}_{i}.png" for i in (1, 2)]
    x0, s0, size0 = load_image(paths[0], imsize)
    x1, s1, size1 = load_image(paths[1], imsize)
    with torch.inference_mode():
        pred = golden_model({"image0": x0[None], "image1": x1[None]}, stages=True)
    return dict(
        ref=ref,
        pred=pred,
        x=(x0, x1),
        s=(s0, s1),
        sizes=(size0, size1),
        paths=paths,
        imsize=imsize,
    )


def _np(t):
    return t.detach().cpu().numpy()


def test_preprocessing(case):
    ref = case["ref"]
    x0, x1 = case["x"]
    assert list(x0.shape[1:][::-1]) == list(ref["im1_size_resized_wh"])
    assert list(x1.shape[1:][::-1]) == list(ref["im2_size_resized_wh"])
    assert list(case["sizes"][0]) == list(ref["im1_size_orig_wh"])
    np.testing.assert_array_equal(np.concatenate(case["s"]), ref["upscale"])


def test_coarse(case):
    ref, pred = case["ref"], case["pred"]
    ip, ir = align_rows(
        _np(pred["raw_coarse_matches"]), ref["raw_coarse_matches_resized"], 0
    )
    np.testing.assert_allclose(
        _np(pred["raw_coarse_scores"])[ip],
        ref["raw_coarse_scores"][ir],
        atol=SCORE_ATOL,
    )
    ip, ir = align_rows(_np(pred["coarse_matches"]), ref["coarse_matches_resized"], 0)
    np.testing.assert_allclose(
        _np(pred["coarse_scores"])[ip], ref["coarse_scores"][ir], atol=SCORE_ATOL
    )


def test_mid_and_fine(case):
    ref, pred = case["ref"], case["pred"]
    ip, ir = align_rows(_np(pred["coarse_matches"]), ref["coarse_matches_resized"], 0)

    def close(key, ref_key, atol, rows=slice(None)):
        np.testing.assert_allclose(
            _np(pred[key])[ip][rows], ref[ref_key][ir][rows], atol=atol
        )

    close("mid_matches", "mid_matches_resized", 1e-3)
    close("mid_scores", "mid_scores", SCORE_ATOL)
    close("mid_logits", "mid_regressor_raw", 1e-3)
    ok = ~np.isin(ir, ref["diag_fragile_mid_idx"])  # truncation-sensitive (doc)
    close("fine_matches", "fine_matches_resized", 1e-3, ok)
    close("scores", "fine_scores", SCORE_ATOL, ok)
    close("fine_logits", "fine_regressor_raw", 1e-3, ok)
    # in original pixels: resized * upscale
    np.testing.assert_allclose(
        _np(pred["fine_matches"]).astype(np.float64)[ip][ok] * ref["upscale"],
        ref["fine_matches"][ir][ok],
        atol=1e-3,
    )


def test_final_thresholds(case, golden_model):
    from p2p_hloc.model import select_matches

    ref, pred = case["ref"], case["pred"]
    s0, s1 = case["s"]
    fragile = ref["coarse_matches_resized"][ref["diag_fragile_mid_idx"]]
    for thr in ref["setting_io_thres"]:
        key = f"final_thr{int(round(thr * 100)):03d}"
        out = select_matches(
            pred, s0, s1, float(thr), keep_all_if_none=True, stages=True
        )
        n_pass = int((_np(pred["scores"]) > thr).sum())
        assert abs(n_pass - int(ref[f"{key}_n_pass"])) <= 1
        ip, ir = align_rows(_np(out["coarse_matches"]), ref[f"{key}_coarse"], 0)
        ok = ~(ref[f"{key}_coarse"][ir][:, None] == fragile[None]).all(-1).any(-1)
        m = np.concatenate([_np(out["keypoints0"]), _np(out["keypoints1"])], 1)
        np.testing.assert_allclose(m[ip][ok], ref[f"{key}_matches"][ir][ok], atol=1e-3)
        np.testing.assert_allclose(
            _np(out["scores"])[ip][ok], ref[f"{key}_scores"][ir][ok], atol=SCORE_ATOL
        )


def test_keep_all_if_none_is_opt_in(case):
    from p2p_hloc.model import select_matches

    pred = case["pred"]
    out = select_matches(pred, threshold=1.0)
    assert len(out["scores"]) == 0
    out = select_matches(pred, threshold=1.0, keep_all_if_none=True)
    assert len(out["scores"]) == len(pred["scores"])


def test_match_api_in_original_pixels(case, golden_model):
    """``match`` returns the official final matches in original pixels."""
    ref = case["ref"]
    thr = float(ref["setting_io_thres"][0])
    key = f"final_thr{int(round(thr * 100)):03d}"
    out = golden_model.match(
        *case["paths"], imsize=case["imsize"], threshold=thr, keep_all_if_none=True
    )
    assert out["keypoints0"].dtype == torch.float64
    kp = np.concatenate([_np(out["keypoints0"]), _np(out["keypoints1"])], 1)
    fragile = ref["fine_matches"][ref["diag_fragile_mid_idx"]]
    ip, ir = align_rows(kp, ref[f"{key}_matches"], 1e-3, 1 + len(fragile))
    assert len(ir) >= len(ref[f"{key}_matches"]) - 1 - len(fragile)
    np.testing.assert_allclose(
        _np(out["scores"])[ip], ref[f"{key}_scores"][ir], atol=SCORE_ATOL
    )


def test_refine_given_proposals_equals_coarse_path(case, golden_model):
    """Refining the NCNet proposals given from outside reproduces the fine stage."""
    ref = case["ref"]
    x0, x1 = case["x"]
    prop = torch.from_numpy(ref["coarse_matches_resized"]).float()
    with torch.inference_mode():
        out = golden_model({"image0": x0[None], "image1": x1[None], "proposals": prop})
    ok = np.ones(len(prop), bool)
    ok[ref["diag_fragile_mid_idx"]] = False
    kp = np.concatenate([_np(out["keypoints0"]), _np(out["keypoints1"])], 1)
    np.testing.assert_allclose(kp[ok], ref["fine_matches_resized"][ok], atol=1e-3)
