"""MiniNet checked against its paper (../shared/papers/mininet.txt): structure of each module as Sec. 3 and
Eqs. (1)-(3) state it, values against hand computation, and every row of Tables 1, 2 and 4 rebuilt."""
import math

import pytest
import torch
import torch.nn as nn

import lightseg
from lightseg.models import create_model, model_info
from lightseg.models.base import resize_to
from lightseg.models.mininet import (AUX_WEIGHTS, DecoderStep, LongResidual, MiniNet, ResidualConvBlock, SPCModule,
                                     SPPDownsample, spc_dilations)
from lightseg.profile import count_inference_params, count_params
from lightseg.zoo import paper_rows

# Table 2(g) rows the decoder's 1/2-scale SPC makes more expensive than the paper's count (docs/models.md).
DOCUMENTED_FLOPS_OUTLIERS = {("Table 2(g)", "(16,64,128,128)"), ("Table 2(g)", "(32,64,128,128)")}


@pytest.fixture(scope="module")
def rows():
    return paper_rows("mininet")


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {name: create_model(name, num_classes=19).eval() for name in ("mininet_95k", "mininet_211k")}


def _set_eval_bn(module, scale=1.0, shift=0.0):
    """Make every BN in ``module`` the affine map scale * x + shift (running stats 0/1)."""
    for bn in module.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.eval()
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)
            bn.weight.data.fill_(scale)
            bn.bias.data.fill_(shift)


# ------------------------------------------------------------------ the paper's tables
def test_every_table_row_within_tolerance(rows):
    """Tables 1, 2(a)-(h), 4: params within 5% on every row; FLOPs (= MACs here) within 15% except the two
    documented Table 2(g) rows."""
    labels = {(r["table"], r["label"]) for r in rows}
    assert len([r for r in rows if r["table"].startswith("Table 2")]) == 28 and len(rows) == 32
    assert DOCUMENTED_FLOPS_OUTLIERS <= labels
    for r in rows:
        assert abs(r["params_delta"]) <= 0.05, (r["table"], r["label"], r["params"], r["paper_params"])
        if (r["table"], r["label"]) not in DOCUMENTED_FLOPS_OUTLIERS:
            assert abs(r["flops_delta"]) <= 0.15, (r["table"], r["label"], r["flops"], r["paper_flops"])
        assert r["flops_per_mac"] == 1  # the paper's FLOPs are multiply-adds (Sec. 4.1)


def test_headline_numbers(rows):
    by = {(r["table"], r["model"]): r for r in rows}
    # Table 1 at 512x1024 / 19 classes, Table 4 at CamVid's 360x480 / 11 classes
    for table, name, params, flops in [("Table 1", "mininet_95k", 95e3, 2.1e9), ("Table 1", "mininet_211k", 211e3, 2.4e9),
                                       ("Table 4", "mininet_95k", 95e3, 0.7e9), ("Table 4", "mininet_211k", 211e3, 0.8e9)]:
        r = by[(table, name)]
        assert r["paper_params"] == params and r["paper_flops"] == flops
        assert abs(r["params"] - params) / params <= 0.05 and abs(r["flops"] - flops) / flops <= 0.15, r
    assert by[("Table 4", "mininet_95k")]["input_size"] == [360, 480] and by[("Table 4", "mininet_95k")]["num_classes"] == 11


def test_ablation_deltas_match_the_paper(rows):
    """The differences the ablations isolate, against the paper's: the long residual is 15K params (Table 2(b)),
    each SPC module of stage 4 13K (Table 2(h): P4 5 -> 10 is +65K)."""
    by = {(r["table"], r["label"]): r for r in rows}
    long_ = by[("Table 2(b)", "w/ all")]["params"] - by[("Table 2(b)", "w/o long")]["params"]
    assert abs(long_ - 15e3) < 1e3
    # by hand: sum over stages of C_k^2 (1x1 conv) + 3 C_k (BN + PReLU)
    assert long_ == sum(c * c + 3 * c for c in (16, 32, 64, 96))
    p4 = by[("Table 2(h)", "(2,2,3,10)")]["params"] - by[("Table 2(h)", "(2,2,3,5)")]["params"]
    assert p4 == 5 * (96 * 96 + 9 * 4 * 96 + 3 * 96)  # 5 SPC modules: pointwise, 4 depthwise branches, BN, PReLU
    assert by[("Table 2(d)", "w/o")]["params"] == by[("Table 2(d)", "w/")]["params"]  # heads are train-only


def test_channels_and_blocks_are_keywords():
    m = create_model("mininet_211k", channels=(32, 64, 96, 128), blocks=(1, 1, 3, 10))
    assert m.channels == (32, 64, 96, 128) and len(m.stage1.blocks) == 1 and len(m.stage4.blocks) == 10
    assert m.stage4.blocks[0].pointwise.out_channels == 128
    assert isinstance(create_model("mininet_95k", activation="relu").stage2.blocks[0].act, nn.ReLU)


# ------------------------------------------------------------------ module structure and values
def test_spc_dilations_are_powers_of_two():
    # Sec. 3: rates 1, 2, ..., 2^(r-1); "a four-branch SPC module has a receptive field of 17"
    assert spc_dilations(3) == (1, 2, 4) and spc_dilations(4) == (1, 2, 4, 8)
    receptive = 1 + sum(2 * d for d in [max(spc_dilations(4))])  # a 3x3 kernel at dilation d spans 2d + 1
    assert receptive == 17
    m = create_model("mininet_211k")
    for stage, channels, n, dil in [("stage2", 32, 2, (1, 2, 4)), ("stage3", 64, 3, (1, 2, 4, 8)),
                                    ("stage4", 96, 10, (1, 2, 4, 8))]:
        blocks = getattr(m, stage).blocks
        assert len(blocks) == n
        for b in blocks:
            assert isinstance(b, SPCModule) and b.dilations == dil
            for conv, d in zip(b.branches, dil):
                assert conv.groups == channels and conv.dilation == (d, d) and conv.padding == (d, d)
                assert conv.kernel_size == (3, 3)


def test_spc_order_sum_then_residual_then_bn_then_prelu():
    # Fig. 1(a): PReLU(BN(sum_i DW_i(PW x) + x)), a single BN after the residual add, none between PW and DW.
    torch.manual_seed(0)
    b = SPCModule(4, 4, branches=2)
    assert count_params(b) == 4 * 4 + 2 * 9 * 4 + 2 * 4 + 4  # "C^2 + rCt^2" + BN + PReLU
    assert [type(m) for m in b.modules() if isinstance(m, nn.BatchNorm2d)] == [nn.BatchNorm2d]
    _set_eval_bn(b, scale=2.0, shift=-0.5)
    with torch.no_grad():
        b.act.weight.fill_(0.25)
    x = torch.randn(1, 4, 6, 7)
    pw = nn.functional.conv2d(x, b.pointwise.weight)
    y = sum(nn.functional.conv2d(pw, c.weight, padding=d, dilation=d, groups=4) for c, d in zip(b.branches, (1, 2)))
    z = 2.0 * (y + x) - 0.5
    expected = torch.where(z > 0, z, 0.25 * z)
    torch.testing.assert_close(b(x), expected, atol=1e-5, rtol=1e-5)
    # channel-changing SPC (the decoder's): no identity residual
    assert SPCModule(8, 4, 2).residual is False and SPCModule(4, 4, 2, residual=False).residual is False


def test_stage1_block_is_eq_1():
    # Eq. (1): F^l = PReLU(BN(W * F^(l-1) + F^(l-1))), one 3x3 conv, no bias.
    torch.manual_seed(0)
    b = ResidualConvBlock(3)
    convs = [m for m in b.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 and convs[0].kernel_size == (3, 3) and convs[0].bias is None
    _set_eval_bn(b, scale=0.5, shift=0.1)
    x = torch.randn(2, 3, 5, 5)
    z = 0.5 * (nn.functional.conv2d(x, b.conv.weight, padding=1) + x) + 0.1
    torch.testing.assert_close(b(x), torch.where(z > 0, z, b.act.weight.view(1, -1, 1, 1) * z), atol=1e-5, rtol=1e-5)
    # "w/o short" (Table 2(b)) drops the + F^(l-1)
    nb = ResidualConvBlock(3, residual=False)
    _set_eval_bn(nb)
    torch.testing.assert_close(nb(x), nb.act(nn.functional.conv2d(x, nb.conv.weight, padding=1)), atol=1e-5, rtol=1e-5)


def test_long_residual_is_eq_2_on_every_stage():
    m = create_model("mininet_211k")
    for stage, c in zip((m.stage1, m.stage2, m.stage3, m.stage4), (16, 32, 64, 96)):
        assert isinstance(stage.long, LongResidual)
        assert stage.long.conv.kernel_size == (1, 1) and stage.long.conv.weight.shape == (c, c, 1, 1)
    torch.manual_seed(0)
    lr = LongResidual(3, 3)
    _set_eval_bn(lr, scale=1.5)
    f0, fp = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)
    z = 1.5 * (nn.functional.conv2d(f0, lr.conv.weight) + fp)
    torch.testing.assert_close(lr(f0, fp), torch.where(z > 0, z, lr.act.weight.view(1, -1, 1, 1) * z))
    assert all(s.long is None for s in (create_model("mininet_211k", long_residual=False).stage3,))


def test_spp_branches():
    # C_in < C_out: the pool gives C_in channels, the conv C_out - C_in; C_in == C_out: the pool is omitted.
    d = SPPDownsample(1, 2, separable=False).eval()
    x = torch.arange(9.0).view(1, 1, 3, 3)
    y = d(x)
    assert y.shape == (1, 2, 2, 2) and d.conv.out_channels == 1
    pooled = torch.tensor([[4.0, 5.0], [7.0, 8.0]]) / math.sqrt(1 + d.bn.eps)  # fresh BN; PReLU identity on > 0
    assert torch.allclose(y[0, 1], pooled)
    assert SPPDownsample(16, 32)(torch.randn(2, 16, 25, 33)).shape == (2, 32, 13, 17)  # ceil on odd sizes
    same = SPPDownsample(64, 64)
    assert same.pool is None and same.conv[1].out_channels == 64
    assert create_model("mininet_95k").stage4.down.pool is None  # config #1 stage 4 is 64 -> 64
    assert create_model("mininet_211k").stage4.down.pool is not None  # 64 -> 96
    # stage 1 uses a standard conv (Fig. 1(b)), later stages depthwise + pointwise (Fig. 1(c))
    m = create_model("mininet_211k")
    assert isinstance(m.stage1.down.conv, nn.Conv2d) and m.stage1.down.conv.kernel_size == (3, 3)
    assert m.stage2.down.conv[0].groups == 16 and m.stage2.down.conv[1].kernel_size == (1, 1)
    # Table 2(c): pool only keeps C_(k-1) channels (the next SPC widens them), conv only gives all C_k
    pool = create_model("mininet_211k", spp="pool")
    assert pool.stage2.down.conv is None and pool.stage2.down.out_channels == 16
    assert pool.stage2.blocks[0].pointwise.in_channels == 16 and pool.stage2.long.conv.in_channels == 16
    assert pool.stage1.down.pool is None  # the image is downsampled by a strided conv (Sec. 4.2)
    conv = create_model("mininet_211k", spp="conv")
    assert conv.stage3.down.pool is None and conv.stage3.down.conv[1].out_channels == 64


def test_decoder_is_eq_3():
    """F_k^D = PReLU(BN(W_k^D F_k^P) + SPC(Up(F_(k+1)^D))): W_k^D is C_(k+1) x C_k, F_4^D = F_4^P, the SPC has
    no PReLU, and the classifier is a 1x1 conv on F_1^D."""
    m = create_model("mininet_211k", num_classes=7).eval()
    c1, c2, c3, c4 = 16, 32, 64, 96
    for step, (enc, deep, out) in [(m.up3, (c3, c4, c4)), (m.up2, (c2, c4, c3)), (m.up1, (c1, c3, c2))]:
        assert step.project.weight.shape == (out, enc, 1, 1) and isinstance(step.project_bn, nn.BatchNorm2d)
        assert step.spc.pointwise.in_channels == deep and step.spc.pointwise.out_channels == out
        assert isinstance(step.spc.act, nn.Identity) and isinstance(step.act, nn.PReLU)
    assert m.classifier.kernel_size == (1, 1) and m.classifier.in_channels == c2 and m.classifier.out_channels == 7
    # shapes of F_k^D on a 360x480 input: 1/8, 1/4, 1/2
    seen = {}
    hooks = [s.register_forward_hook(lambda mod, i, o, n=n: seen.__setitem__(n, tuple(o.shape)))
             for n, s in (("d3", m.up3), ("d2", m.up2), ("d1", m.up1))]
    with torch.no_grad():
        m(torch.randn(1, 3, 360, 480))
    for h in hooks:
        h.remove()
    assert seen == {"d3": (1, c4, 45, 60), "d2": (1, c3, 90, 120), "d1": (1, c2, 180, 240)}


def test_decoder_step_values_and_pointwise_first_is_exact():
    torch.manual_seed(0)
    step = DecoderStep(3, 5, 4, branches=2)
    _set_eval_bn(step, scale=0.7, shift=0.2)
    enc, deep = torch.randn(1, 3, 9, 11), torch.randn(1, 5, 5, 6)
    up = resize_to(deep, (9, 11))
    pw = nn.functional.conv2d(up, step.spc.pointwise.weight)
    spc = 0.7 * sum(nn.functional.conv2d(pw, c.weight, padding=d, dilation=d, groups=4)
                    for c, d in zip(step.spc.branches, (1, 2))) + 0.2
    z = 0.7 * nn.functional.conv2d(enc, step.project.weight) + 0.2 + spc
    expected = torch.where(z > 0, z, step.act.weight.view(1, -1, 1, 1) * z)
    torch.testing.assert_close(step(enc, deep), expected, atol=1e-5, rtol=1e-5)
    # the deployment form runs the pointwise conv before the upsampling: same function
    step.reparameterize()
    torch.testing.assert_close(step(enc, deep), expected, atol=1e-5, rtol=1e-5)
    # also with a residual (C_in == C_out) and on a whole model
    m = create_model("mininet_95k", num_classes=5).eval()
    x = torch.randn(1, 3, 100, 130)
    with torch.no_grad():
        ref = m(x)
        for s in (m.up1, m.up2, m.up3):
            s.reparameterize()
        torch.testing.assert_close(m(x), ref, atol=1e-4, rtol=1e-4)
    assert m.up3.spc.residual  # 64 -> 64


def test_deep_supervision_upsampled_full_resolution_with_paper_weights():
    torch.manual_seed(0)
    m = create_model("mininet_95k", num_classes=11).train()
    assert m.aux_names == ("f2", "f3", "f4") and m.aux_weights == AUX_WEIGHTS == (0.4, 0.4, 0.4)
    assert [h.kernel_size for h in m.aux_heads] == [(1, 1)] * 3
    assert [h.in_channels for h in m.aux_heads] == [64, 64, 64]  # F_2^D: C3, F_3^D: C4, F_4^D: C4
    x = torch.randn(2, 3, 100, 130)
    y = m(x)
    assert set(y) == {"out", "aux"} and y["out"].shape == (2, 11, 100, 130)
    # Sec. 3: a 1x1 conv and an upsampling after F_2^D..F_4^D, compared with the full-resolution labels
    assert [tuple(a.shape) for a in y["aux"]] == [(2, 11, 100, 130)] * 3
    loss = y["out"].square().mean() + sum(a.square().mean() for a in y["aux"])
    loss.backward()
    for pname, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, pname


def test_switch_errors_and_no_decoder():
    off = create_model("mininet_211k", decoder=False).train()
    assert off.aux_names == () and off.classifier.in_channels == 96
    assert off(torch.randn(1, 3, 64, 64)).shape == (1, 19, 64, 64)
    with pytest.raises(lightseg.LightsegError, match="deep supervision"):
        create_model("mininet_211k", decoder=False, deep_supervision=True)
    with pytest.raises(lightseg.LightsegError, match="scale"):
        create_model("mininet_211k", scale=4)
    with pytest.raises(lightseg.LightsegError, match="prelu"):
        create_model("mininet_211k", activation="gelu")
    with pytest.raises(lightseg.LightsegError, match="4 channels"):
        create_model("mininet_211k", channels=(16, 32, 64))
    with pytest.raises(lightseg.LightsegError, match="mininet_95k"):
        create_model("mininet_95k", no_such_switch=1)
    eighth = create_model("mininet_211k", scale=8).eval()
    assert eighth.stage4.down.conv[0].stride == (1, 1) and eighth.stage4.down.pool is None
    with torch.no_grad():
        assert eighth(torch.randn(1, 3, 64, 96)).shape == (1, 19, 64, 96)


@pytest.mark.parametrize("name", ["mininet_95k", "mininet_211k"])
def test_eval_output_at_input_size(models, name):
    m = models[name]
    with torch.no_grad():
        for h, w in [(360, 480), (250, 330)]:
            y = m(torch.randn(1, 3, h, w))
            assert isinstance(y, torch.Tensor) and y.shape == (1, 19, h, w) and torch.isfinite(y).all()
    info = model_info(name)
    assert info.paper_size == (512, 1024) and info.paper_hardware == "TITAN Xp"
    assert count_inference_params(m) < count_params(m)  # deep-supervision heads are train-only


def test_bad_input(models):
    m = models["mininet_95k"]
    for bad, word in [(torch.zeros(3, 64, 64), "4-D"), (torch.zeros(1, 3, 32, 64), "at least 64"),
                      (torch.zeros(1, 1, 64, 64), "3 input channels")]:
        with pytest.raises(ValueError, match=word):
            m(bad)
    with pytest.raises(ValueError, match="4 channels"):
        MiniNet(channels=(16, 32, 64))
