"""Bad input and image formats for the model, the checkpoint loader and the CLI."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import SCORE_ATOL, align_rows
from PIL import Image

from p2p_hloc.cli import main as cli_main
from p2p_hloc.model import CheckpointError, load_model
from p2p_hloc.model.checkpoint import read_checkpoint
from p2p_hloc.preprocess import ImageError, load_image, target_size
from p2p_hloc.weights import WeightsNotFoundError, get_weights


@pytest.fixture(scope="module")
def ckpt(golden_weights):
    return read_checkpoint(golden_weights)


def test_target_size_rules():
    assert target_size(640, 480, 1024) == (640, 480)  # never upsampled
    assert target_size(500, 375, 1024) == (496, 368)  # floored to /16 per axis
    assert target_size(1024, 768, 512) == (512, 384)
    assert target_size(1000, 700, None) == (992, 688)
    assert target_size(1000, 700, 500, multiple=1) == (500, 350)


def test_missing_and_corrupt_images(tmp_path):
    with pytest.raises(ImageError, match="not found.*nope.png"):
        load_image(tmp_path / "nope.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ImageError, match="bad.png"):
        load_image(bad)


def test_too_small_image(tmp_path):
    p = tmp_path / "tiny.png"
    Image.fromarray(np.zeros((12, 40, 3), np.uint8)).save(p)
    with pytest.raises(ImageError, match="tiny.png.*too small"):
        load_image(p)


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16", "P"])
def test_image_modes_converted_to_rgb(tmp_path, mode, golden_dir):
    rgb = Image.open(golden_dir / "pairA_1.png").convert("RGB")
    if mode == "I;16":
        arr = np.asarray(rgb.convert("L"), np.uint16) * 257
        im = Image.fromarray(arr)  # 16-bit grayscale PNG
    else:
        im = rgb.convert(mode)
    p = tmp_path / f"im_{mode.replace(';', '')}.png"
    im.save(p)
    x, scale, size = load_image(p, 512)
    expected = Image.open(p).convert("RGB").resize((512, 384), Image.BICUBIC)
    assert x.shape == (3, 384, 512) and size == (640, 480)
    from p2p_hloc.preprocess import to_tensor

    torch.testing.assert_close(x, to_tensor(expected))


def test_checkpoint_key_errors(tmp_path, ckpt):
    state = dict(ckpt["state_dict"])
    broken = dict(
        ckpt, state_dict={k: v for k, v in state.items() if k != "ncn.conv.0.bias"}
    )
    broken["state_dict"]["regress_mid.extra.weight"] = torch.zeros(3)
    broken["state_dict"]["regress_fine.fc.6.bias"] = torch.zeros(7)
    path = tmp_path / "broken.pth"
    torch.save(broken, path)
    with pytest.raises(CheckpointError) as e:
        load_model(path, "cpu")
    msg = str(e.value)
    assert "missing keys: ncn.conv.0.bias" in msg
    assert "unexpected keys: regress_mid.extra.weight" in msg
    assert "regress_fine.fc.6.bias: file (7,) vs model (5,)" in msg


def test_corrupt_checkpoint(tmp_path):
    p = tmp_path / "corrupt.pth"
    p.write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="corrupt.pth"):
        load_model(p, "cpu")
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "absent.pth", "cpu")


def test_layer4_is_accepted_and_ignored(tmp_path, ckpt):
    extra = dict(ckpt)
    extra["state_dict"] = dict(ckpt["state_dict"])
    extra["state_dict"]["extract.layer4.0.conv1.weight"] = torch.zeros(512, 256, 3, 3)
    p = tmp_path / "with_layer4.pth"
    torch.save(extra, p)
    model = load_model(p, "cpu")
    assert not hasattr(model.extract, "layer4")


def test_ncnet_bare_state_dict_is_coarse_only(tmp_path, ckpt, golden_dir):
    coarse = {
        k: v
        for k, v in ckpt["state_dict"].items()
        if k.startswith(("extract.", "ncn."))
    }
    p = tmp_path / "ncn.pth"
    torch.save(coarse, p)
    model = load_model(p, "cpu")
    assert model.coarse_only
    ref = np.load(golden_dir / "outputs_B_default.npz")
    x0, s0, _ = load_image(golden_dir / "pairB_1.png", 1024)
    x1, s1, _ = load_image(golden_dir / "pairB_2.png", 1024)
    out = model.match(x0[None], x1[None], s0, s1, threshold=0.0)
    kp = np.concatenate([out["keypoints0"].numpy(), out["keypoints1"].numpy()], 1)
    np.testing.assert_allclose(kp, ref["coarse_matches"])


def test_save_checkpoint_round_trip(tmp_path, golden_model, ckpt):
    from p2p_hloc.model import save_checkpoint

    p = save_checkpoint(golden_model, tmp_path / "out.pth")
    again = read_checkpoint(p)
    assert set(again) >= {
        "backbone",
        "feat_idx",
        "change_stride",
        "regressor_config",
        "state_dict",
    }
    assert vars(again["regressor_config"])["conv_strs"] == [2, 1]
    assert set(again["state_dict"]) == set(ckpt["state_dict"])
    load_model(p, "cpu")


def test_weights_lookup(tmp_path, monkeypatch):
    monkeypatch.setenv("P2P_HLOC_HOME", str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match="p2p-hloc weights download"):
        get_weights()
    (tmp_path / "patch2pix_pretrained.pth").write_bytes(b"x")
    assert get_weights() == tmp_path / "patch2pix_pretrained.pth"


def test_cli_match_contract(tmp_path, golden_dir, golden_weights):
    out = tmp_path / "m.npz"
    plot = tmp_path / "m.png"
    rc = cli_main(
        [
            "match",
            str(golden_dir / "pairA_1.png"),
            str(golden_dir / "pairA_2.png"),
            "--weights",
            str(golden_weights),
            "--imsize",
            "512",
            "--threshold",
            "0.4",
            "--out",
            str(out),
            "--plot",
            str(plot),
        ]
    )
    assert rc == 0 and plot.stat().st_size > 0
    ref = np.load(golden_dir / "outputs_A_s512.npz")
    d = np.load(out)
    assert set(d.files) == {"keypoints0", "keypoints1", "scores"}
    kp = np.concatenate([d["keypoints0"], d["keypoints1"]], 1)
    ip, ir = align_rows(kp, ref["final_thr040_matches"])
    np.testing.assert_allclose(
        d["scores"][ip], ref["final_thr040_scores"][ir], atol=SCORE_ATOL
    )


def test_cli_match_bf16(tmp_path, golden_dir, golden_weights):
    """--precision bf16: same pairs of proposals, matches within a few px."""
    out = tmp_path / "b.npz"
    args = [str(golden_dir / "pairA_1.png"), str(golden_dir / "pairA_2.png")]
    args += ["--weights", str(golden_weights), "--imsize", "512", "--threshold", "0"]
    assert cli_main(["match", *args, "--precision", "bf16", "--out", str(out)]) == 0
    ref = np.load(golden_dir / "outputs_A_s512.npz")
    d = np.load(out)
    fine = ref["fine_matches"]
    # threshold 0: every proposal; rows aligned within 16 px (bf16 moves a few)
    ip, ir = align_rows(np.concatenate([d["keypoints0"], d["keypoints1"]], 1), fine, 16)
    err = np.abs(np.concatenate([d["keypoints0"], d["keypoints1"]], 1)[ip] - fine[ir])
    assert (
        0 < np.median(err) < 1.0
        and np.abs(d["scores"][ip] - ref["fine_scores"][ir]).max() < 0.5
    )


def test_cli_coarse_only_and_errors(tmp_path, golden_dir, golden_weights):
    out = tmp_path / "c.npz"
    args = [str(golden_dir / "pairB_1.png"), str(golden_dir / "pairB_2.png")]
    rc = cli_main(
        [
            "match",
            *args,
            "--weights",
            str(golden_weights),
            "--coarse-only",
            "--threshold",
            "0.9",
            "--out",
            str(out),
        ]
    )
    ref = np.load(golden_dir / "outputs_B_default.npz")
    d = np.load(out)
    assert rc == 0 and len(d["scores"]) == int((ref["coarse_scores"] > 0.9).sum())
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "p2p_hloc.cli",
            "match",
            args[0],
            str(tmp_path / "x.png"),
            "--weights",
            str(golden_weights),
            "--out",
            str(tmp_path / "e.npz"),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "x.png" in r.stderr
    assert not (tmp_path / "e.npz").exists()
