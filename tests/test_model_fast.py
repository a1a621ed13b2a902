"""The fast model kernels against tiny naive references on random inputs."""

import copy

import pytest
import torch
import torch.nn.functional as F
from reference_ncnet import argmax_lookup, correlation_4d, maxpool4d

from p2p_hloc.model import Patch2Pix
from p2p_hloc.model.ncnet import (
    NeighConsensus,
    coarse_matches,
    correlation_maxpool,
    decode_argmax,
    pool_argmax,
)
from p2p_hloc.model.patches import gather_patches, patch_tables


def conv4d_ref(
    x: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """Direct 4D cross-correlation, padding 1: x (C, H1, W1, H2, W2), kernel
    (O, C, 3, 3, 3, 3) -> (O, H1, W1, H2, W2)."""
    _, h1, w1, h2, w2 = x.shape
    xp = F.pad(x, (1, 1, 1, 1, 1, 1, 1, 1))
    out = bias[:, None, None, None, None].expand(-1, h1, w1, h2, w2).clone()
    for a in range(3):
        for b in range(3):
            for e in range(3):
                for f in range(3):
                    win = xp[:, a : a + h1, b : b + w1, e : e + h2, f : f + w2]
                    out += torch.einsum(
                        "oc,cijkl->oijkl", kernel[:, :, a, b, e, f], win
                    )
    return out


@pytest.mark.parametrize("block", [1 << 16, 40])  # whole rows; 2 of 5 cells
def test_neigh_consensus_matches_naive(block):
    torch.manual_seed(0)
    ncn = NeighConsensus()
    ncn.block = block
    for p in ncn.parameters():
        torch.nn.init.normal_(p)
    x = torch.rand(1, 1, 4, 5, 3, 6, dtype=torch.float64)
    ncn = ncn.double()
    l1, l2 = ncn.conv[0], ncn.conv[2]

    def f(v):
        h = conv4d_ref(v, l1.kernel, l1.bias).relu()
        return conv4d_ref(h, l2.kernel, l2.bias).relu()

    ref = f(x[0]) + f(x[0].permute(0, 3, 4, 1, 2)).permute(0, 3, 4, 1, 2)
    with torch.no_grad():
        out = ncn(x)
    torch.testing.assert_close(out[0], ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("chunk", [1, 200, 1 << 22])
def test_correlation_maxpool_matches_two_step(chunk):
    torch.manual_seed(1)
    f0, f1 = torch.rand(1, 16, 6, 8), torch.rand(1, 16, 4, 10)
    pooled_ref, off_ref = maxpool4d(correlation_4d(f0, f1), 2)
    pooled = correlation_maxpool(f0, f1, 2, chunk=chunk)
    torch.testing.assert_close(pooled, pooled_ref)
    # the argmax recomputed at every pooled cell pair
    c0, c1 = torch.meshgrid(torch.arange(3 * 4), torch.arange(2 * 5), indexing="ij")
    index = pool_argmax(f0, f1, c0.flatten(), c1.flatten(), 2)
    assert torch.equal(decode_argmax(index).view(off_ref.shape), off_ref)
    corr = torch.rand_like(pooled)
    recomputed = coarse_matches(corr, lambda a, b: pool_argmax(f0, f1, a, b, 2))
    for a, b in zip(recomputed, coarse_matches(corr, argmax_lookup(off_ref))):
        assert torch.equal(a, b)


def test_pool_argmax_ties_take_the_first_candidate():
    f = torch.ones(1, 4, 2, 2)
    cell = torch.zeros(1, dtype=torch.long)
    assert pool_argmax(f, f, cell, cell, 2).item() == 0


def test_maxpool_ties_take_the_first_candidate():
    x = torch.zeros(1, 1, 2, 2, 2, 2)
    pooled, off = maxpool4d(x, 2)
    assert pooled.item() == 0 and off.sum() == 0


@pytest.mark.parametrize("w, h", [(40, 24), (45, 29)])
def test_gather_patches_matches_naive(w, h):
    """Sides not multiples of the strides: the backbone's maps are then larger
    than ``W // s`` (rounded up) and reads are clamped to ``W // s - 1``."""
    torch.manual_seed(2)
    psize = 16
    strides = [1, 2, 4, 8]
    feats = [
        torch.rand(c, -(-h // s), -(-w // s)) for c, s in zip([3, 5, 4, 6], strides)
    ]
    points = torch.tensor([[0, 0], [w - 1, h - 1], [17, 9], [8, 20]])
    out, _ = gather_patches(patch_tables(feats, strides), points, (w, h), psize)
    assert out.shape == (4, psize, psize, 18)
    for n, (x, y) in enumerate(points.tolist()):
        for i, dy in enumerate(range(-8, 8)):
            for j, dx in enumerate(range(-8, 8)):
                v = []
                for f, s in zip(feats, strides):
                    xi = min(max((x + dx) // s, 0), w // s - 1)
                    yi = min(max((y + dy) // s, 0), h // s - 1)
                    v.append(f[:, yi, xi])
                v = torch.cat(v)
                torch.testing.assert_close(
                    out[n, i, j], v / torch.sqrt((v * v).sum() + 1e-6)
                )


def test_precision_modes():
    model = Patch2Pix()
    assert model.precision == "fp32"
    with pytest.raises(ValueError):
        model.precision = "int8"
    model.precision = "bf16"
    torch.manual_seed(3)
    x0, x1 = torch.rand(1, 3, 64, 96), torch.rand(1, 3, 80, 64)
    with torch.no_grad():
        pred = model({"image0": x0, "image1": x1}, stages=True)
    assert pred["keypoints0"].dtype == pred["keypoints1"].dtype == torch.float32
    assert pred["scores"].dtype == pred["mid_logits"].dtype == torch.float32
    assert len(pred["keypoints0"]) == len(pred["coarse_matches"]) > 0


@pytest.mark.parametrize("level", ["mid", "fine"])
def test_cell_share_regression_equals_full_conv(level, golden_model):
    """The eval-mode regressor (stride-4 and -8 levels through ``CellShare``, folded
    BatchNorm, Winograd second conv) against the plain layers over all 518
    channels, at borders and odd centres."""
    torch.manual_seed(4)
    model = golden_model
    sizes = [(101, 70), (83, 45)]  # maps rounded up, as the backbone's
    feats = []
    for w, h in sizes:
        feats.append(
            [
                torch.randn(1, c, -(-h // s), -(-w // s))
                for c, s in zip([3, 64, 64, 128], [1, 2, 4, 8])
            ]
        )
    n = 150  # more than one regressor batch
    gen = torch.Generator().manual_seed(5)
    pts = torch.cat(
        [
            torch.randint(-3, 104, (n, 1), generator=gen).float(),
            torch.randint(-3, 73, (n, 1), generator=gen).float(),
            torch.randint(-3, 86, (n, 1), generator=gen).float(),
            torch.randint(-3, 48, (n, 1), generator=gen).float(),
        ],
        1,
    ) + torch.rand(n, 4, generator=gen)
    net = model.regress_mid if level == "mid" else model.regress_fine
    tables = [model.patch_tables(fs) for fs in feats]
    with torch.no_grad():
        out = net.refine(*tables, pts, *sizes)["logits"]
        c = pts.long()
        x0, _ = gather_patches(tables[0], c[:, :2], sizes[0])
        x1, _ = gather_patches(tables[1], c[:, 2:], sizes[1])
        ref = net.fc(net.conv(torch.cat([x0, x1], -1).permute(0, 3, 1, 2)).flatten(1))
    assert out.std(0).min() > 0.5  # outputs that differ between proposals
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", [(5, 8, 8, 40), (3, 4, 12, 16)])
def test_winograd_conv3x3_amax(shape):
    from p2p_hloc.model.winograd import conv3x3_amax, transform_weight

    torch.manual_seed(8)
    x = torch.randn(shape)
    w = torch.randn(24, shape[-1], 3, 3) / shape[-1] ** 0.5
    out = conv3x3_amax(x, transform_weight(w))
    ref = F.conv2d(x.double().permute(0, 3, 1, 2), w.double(), padding=1)
    ref = ref.amax((2, 3))
    # float32 Winograd: errors about 1e-5 of the magnitude (a direct conv: ~3e-6)
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=1e-5 * ref.abs().max())


def test_folded_convs_follow_the_weights(golden_model):
    """The folded (and Winograd) weights are cached until a weight changes."""
    net = copy.deepcopy(golden_model.regress_fine)
    first = net._fast_form()
    assert net._fast_form() is first
    assert first.convs[-1].winograd is not None and first.convs[0].winograd is None
    x = torch.randn(3, 518, 16, 16).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        before = net(x)
        net.conv[2].weight.mul_(2)
        after = net(x)
        ref = net.fc(net.conv(x).flatten(1))
    assert net._fast_form() is not first
    assert (after - before).abs().max() > 1e-2
    torch.testing.assert_close(after, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("psize", [12, 16])
def test_eval_regressor_on_other_patch_sizes(psize):
    """6x6 maps (P = 12) take the direct second conv, 8x8 ones Winograd; both
    equal the plain layers."""
    from p2p_hloc.model.regressor import FeatRegressNet

    torch.manual_seed(9)
    net = FeatRegressNet(feat_dim=20, psize=psize, conv_dims=(48, 40)).eval()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(m.running_var, 0.5, 2)
            torch.nn.init.normal_(m.running_mean)
    x = torch.randn(7, 40, psize, psize)
    with torch.no_grad():
        out, ref = net(x), net.fc(net.conv(x).flatten(1))
    assert (net._fast_form().convs[-1].winograd is not None) and out.shape == (7, 5)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matmul_nt(dtype):
    from p2p_hloc.model.ops import matmul_nt

    torch.manual_seed(6)
    a, b = torch.randn(70, 33, dtype=dtype), torch.randn(50, 33, dtype=dtype)
    out = matmul_nt(a[::2], b)  # a strided input is made contiguous
    assert out.dtype == dtype and out.shape == (35, 50)
    torch.testing.assert_close(out, a[::2] @ b.t())
    b.requires_grad_(True)  # gradients take the differentiable product
    matmul_nt(a, b).sum().backward()
    torch.testing.assert_close(b.grad, a.sum(0).expand_as(b))


@pytest.mark.parametrize("freeze_bn", [False, True])
def test_regress_in_training_has_gradients(freeze_bn):
    """Training takes the plain layers (no folding, CellShare or Winograd), in
    train mode and with frozen BatchNorm (eval mode, gradients on) alike;
    with frozen BatchNorm the outputs are those of inference."""
    from p2p_hloc.train.trainer import set_train_mode

    torch.manual_seed(7)
    model = Patch2Pix()
    set_train_mode(model, freeze_bn)
    feats = [
        [
            torch.randn(1, c, 64 // s, 96 // s)
            for c, s in zip([3, 64, 64, 128], [1, 2, 4, 8])
        ]
        for _ in range(2)
    ]
    props = torch.tensor([[20.0, 20.0, 30.0, 30.0], [50.0, 40.0, 60.0, 10.0]])
    data = {"features0": feats[0], "features1": feats[1], "proposals": props}
    out = model(data, stages=True)["mid_logits"]
    out.sum().backward()
    for layer in (0, 2):  # both convs
        assert model.regress_mid.conv[layer].weight.grad.abs().sum() > 0
    if freeze_bn:
        with torch.no_grad():
            fast = model(data, stages=True)["mid_logits"]
        torch.testing.assert_close(out.detach(), fast, rtol=1e-4, atol=1e-4)
