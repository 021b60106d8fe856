import math

import pytest
import torch
import torch.nn as nn

import lightseg
from lightseg.models import create_model, model_info
from lightseg.models.base import resize_to
from lightseg.models.mininet import DecoderStep, MiniNet, SPCBlock, SPPDownsample
from lightseg.profile import count_macs, count_params

# (name, paper params, paper MACs at 512x1024)
TARGETS = [("mininet_95k", 95e3, 2.1e9), ("mininet_211k", 211e3, 2.4e9)]


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {name: create_model(name, num_classes=19).eval() for name, _, _ in TARGETS}


@pytest.mark.parametrize("name", [t[0] for t in TARGETS])
def test_eval_output_at_input_size(models, name):
    m = models[name]
    with torch.no_grad():
        for h, w in [(360, 480), (512, 1024), (250, 330)]:
            y = m(torch.randn(1, 3, h, w))
            assert isinstance(y, torch.Tensor) and y.shape == (1, 19, h, w)
            assert torch.isfinite(y).all()


@pytest.mark.parametrize("name,params,macs", TARGETS)
def test_params_and_macs_match_paper(models, name, params, macs):
    m = models[name]
    n = count_params(m)
    assert abs(n - params) / params < 0.08, f"{name}: {n} params vs paper {params:.0f}"
    gm = count_macs(m, (512, 1024), device="meta")
    assert abs(gm - macs) / macs < 0.15, f"{name}: {gm / 1e9:.3f} GMACs vs paper {macs / 1e9}"
    info = model_info(name)
    assert info.paper_size == (512, 1024) and info.paper_params == params and info.paper_macs == macs


def test_train_mode_aux_outputs_odd_size_and_backward():
    torch.manual_seed(0)
    m = create_model("mininet_95k", num_classes=11).train()
    assert m.aux_names == ("f2", "f3", "f4")
    x = torch.randn(2, 3, 100, 130)
    y = m(x)
    assert set(y) == {"out", "aux"} and y["out"].shape == (2, 11, 100, 130)
    # side outputs at their own stride: 100x130 -> 50x65 -> 25x33 -> 13x17 -> 7x9 (ceil halving)
    assert [tuple(a.shape) for a in y["aux"]] == [(2, 11, 25, 33), (2, 11, 13, 17), (2, 11, 7, 9)]
    loss = y["out"].square().mean() + sum(a.square().mean() for a in y["aux"])
    loss.backward()
    for pname, p in m.named_parameters():
        assert p.grad is not None, f"{pname} gets no gradient"
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"{pname} has an all-zero gradient"


def test_deep_supervision_off_returns_plain_logits():
    m = create_model("mininet_95k", num_classes=5, deep_supervision=False).train()
    assert m.aux_names == ()
    y = m(torch.randn(2, 3, 64, 64))
    assert isinstance(y, torch.Tensor) and y.shape == (2, 5, 64, 64)
    # the three 1x1 heads (32, 64, 64 channels -> 5 classes, with bias) are gone from the count
    full = count_params(create_model("mininet_95k", num_classes=5))
    assert full - count_params(m) == (32 + 64 + 64) * 5 + 3 * 5


def test_spc_branches_and_dilations():
    m = create_model("mininet_211k")
    expected = {"stage2": (32, 2, (1, 3, 5)), "stage3": (64, 3, (1, 3, 5, 7)), "stage4": (96, 10, (1, 3, 5, 7))}
    for stage, (channels, n_blocks, dilations) in expected.items():
        blocks = getattr(m, stage).blocks
        assert len(blocks) == n_blocks
        for b in blocks:
            assert isinstance(b, SPCBlock) and b.dilations == dilations
            for conv, d in zip((br[0] for br in b.branches), dilations):
                assert conv.groups == channels and conv.dilation == (d, d) and conv.padding == (d, d)
    assert len(m.stage1.blocks) == 2


def test_spc_block_param_count_by_hand():
    # 1x1 (8*8) + BN (2*8) + PReLU (8) + two depthwise 3x3 (2*9*8) + two BN (2*2*8) + PReLU (8)
    b = SPCBlock(8, (1, 3))
    assert count_params(b) == 64 + 16 + 8 + 144 + 32 + 8
    x = torch.randn(1, 8, 9, 11)
    assert b(x).shape == x.shape


def test_spp_downsample_hand_computed():
    # 1 -> 2 channels: conv branch gives 1, the 2x2 ceil-mode max-pool of the 3x3 input gives the other.
    d = SPPDownsample(1, 2, separable=False).eval()
    x = torch.arange(9.0).view(1, 1, 3, 3)
    y = d(x)
    assert y.shape == (1, 2, 2, 2)
    # fresh BN in eval: x / sqrt(1 + eps); values positive so PReLU is the identity
    pooled = torch.tensor([[4.0, 5.0], [7.0, 8.0]]) / math.sqrt(1 + d.bn.eps)
    assert torch.allclose(y[0, 1], pooled)
    # separable, odd map: both branches give ceil(H/2) x ceil(W/2)
    assert SPPDownsample(16, 32)(torch.randn(2, 16, 25, 33)).shape == (2, 32, 13, 17)
    # in == out (config #1 stage 4): the pooled input is added to a full-width conv branch
    same = SPPDownsample(4, 4)
    assert same.conv[1].out_channels == 4 and same(torch.randn(2, 4, 7, 9)).shape == (2, 4, 4, 5)
    with pytest.raises(ValueError, match="out_channels"):
        SPPDownsample(8, 4)


def test_decoder_1x1_before_upsampling_is_exact():
    # The decoder applies its 1x1 conv before upsampling because the two commute (see DecoderStep).
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 4, 1, bias=False)
    x = torch.randn(1, 6, 7, 9)
    assert torch.allclose(resize_to(conv(x), (13, 17)), conv(resize_to(x, (13, 17))), atol=1e-6)
    step = DecoderStep(6, 4)
    assert step(x, torch.randn(1, 4, 13, 17)).shape == (1, 4, 13, 17)


def test_bad_input_and_bad_config():
    m = create_model("mininet_95k").eval()
    for bad, word in [(torch.zeros(3, 64, 64), "4-D"), (torch.zeros(1, 3, 32, 64), "at least 64"),
                      (torch.zeros(1, 1, 64, 64), "3 input channels")]:
        with pytest.raises(ValueError, match=word):
            m(bad)
    with pytest.raises(ValueError, match="4 channels"):
        MiniNet(channels=(16, 32, 64))
    with pytest.raises(lightseg.LightsegError, match="mininet_95k"):
        create_model("mininet_95k", no_such_switch=1)
