"""Dual ASPP and the DeepLabV3+ baseline: output contract, gradients, paper parameter targets, MAC
ordering (paper Table 2), the 1/4 skip switch (Table 4)."""
import pytest
import torch

import lightseg
from lightseg.models import model_info
from lightseg.profile import count_macs, count_params

DA = ["dualaspp_mobilenetv2", "dualaspp_mobilenetv3_large", "dualaspp_mobilenetv3_small"]
DL = ["deeplabv3plus_mobilenetv2", "deeplabv3plus_mobilenetv3_large", "deeplabv3plus_mobilenetv3_small"]


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {name: lightseg.create_model(name).eval() for name in DA + DL}


@pytest.mark.parametrize("name", DA + DL)
@pytest.mark.parametrize("size", [(360, 480), (250, 330)])
def test_eval_output_at_input_size(models, name, size):
    with torch.no_grad():
        y = models[name](torch.randn(1, 3, *size))
    assert y.shape == (1, 19, *size)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", ["dualaspp_mobilenetv2", "deeplabv3plus_mobilenetv3_small"])
def test_eval_output_512x1024(models, name):
    with torch.no_grad():
        assert models[name](torch.randn(1, 3, 512, 1024)).shape == (1, 19, 512, 1024)


def test_logits_stride_before_upsampling(models):
    # Dual ASPP predicts at 1/8 (x8 to the input), DeepLabV3+ at 1/4 (x4); 360x480 -> 45x60 / 90x120.
    x = torch.randn(1, 3, 360, 480)
    with torch.no_grad():
        da, aux = models["dualaspp_mobilenetv2"].forward_features(x)
        dl, _ = models["deeplabv3plus_mobilenetv2"].forward_features(x)
    assert da.shape == (1, 19, 45, 60) and aux == []
    assert dl.shape == (1, 19, 90, 120)


def test_encoder_output_strides_and_rates(models):
    for name in DA:
        m = models[name]
        assert m.backbone.output_stride == 32
        # ASPP1 rates 6/12/18 (1/32 features), ASPP2 rates 12/24/36 (1/8 features); branch 0 is the 1x1.
        assert [b[0][0].dilation[0] for b in m.aspp1.branches[1:4]] == [6, 12, 18]
        assert [b[0][0].dilation[0] for b in m.aspp2.branches[1:4]] == [12, 24, 36]
        assert m.aspp1.out_channels == 128 and m.aspp2.out_channels == 19
    for name in DL:
        assert models[name].backbone.output_stride == 16


def test_refine_block_hand_count(models):
    # Two separable 3x3 at 147 = 128 + 19 channels: depthwise 147*9 + BN 2*147, pointwise 147*147
    # + BN 2*147; then the 1x1 classifier 147*19 + 19 bias.
    c = 128 + 19
    separable = c * 9 + 2 * c + c * c + 2 * c
    assert count_params(models["dualaspp_mobilenetv2"].refine) == 2 * separable + c * 19 + 19


@pytest.mark.parametrize("name", ["dualaspp_mobilenetv2", "deeplabv3plus_mobilenetv3_small", "dualaspp_mobilenetv3_large"])
def test_backward_reaches_every_parameter(name):
    torch.manual_seed(0)
    m = lightseg.create_model(name, num_classes=5).train()
    y = m(torch.randn(2, 3, 96, 96))
    assert isinstance(y, torch.Tensor) and y.shape == (2, 5, 96, 96)  # no aux heads
    y.square().mean().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []


@pytest.mark.parametrize("name", ["dualaspp_mobilenetv2"] + DL)
def test_params_within_paper_targets(models, name):
    target = model_info(name).paper_params
    assert target is not None
    assert abs(count_params(models[name]) - target) <= 0.10 * target, (name, count_params(models[name]), target)


@pytest.mark.parametrize("da,dl", list(zip(DA, DL)))
def test_dual_aspp_fewer_macs_than_deeplabv3plus(models, da, dl):
    # Paper Table 2 at 1024x2048.
    assert count_macs(models[da], (1024, 2048), device="meta") < count_macs(models[dl], (1024, 2048), device="meta")


def test_skip_switch_adds_quarter_skip(models):
    base = models["dualaspp_mobilenetv2"]
    m = lightseg.create_model("dualaspp_mobilenetv2", skip=True).eval()
    # Extra: 1x1 24->48 + BN, and the refine block widened from 147 to 147 + 48 = 195 channels.
    def refine(c):
        return 2 * (c * 9 + 2 * c + c * c + 2 * c) + c * 19 + 19
    assert count_params(m) - count_params(base) == 24 * 48 + 2 * 48 + refine(195) - refine(147)
    x = torch.randn(1, 3, 130, 170)
    with torch.no_grad():
        low, _ = m.forward_features(x)
        assert m(x).shape == (1, 19, 130, 170)
    assert low.shape[-2:] == (33, 43)  # logits now at the 1/4 map's size (ceil of 130/4, 170/4)
    assert count_macs(m, (128, 256), device="meta") > count_macs(base, (128, 256), device="meta")


def test_registry_figures():
    info = model_info("dualaspp_mobilenetv2")
    assert info.paper_size == (1024, 2048) and info.paper_fps == 61 and info.paper_params == 2.16e6
    assert [model_info(n).paper_params for n in DL] == [2.72e6, 2.14e6, 1.03e6]


@pytest.mark.parametrize(
    "bad,word",
    [
        (torch.zeros(3, 96, 96), "4-D"),
        (torch.zeros(1, 1, 96, 96), "3 input channels"),
        (torch.zeros(1, 3, 48, 96), "at least 64"),
        (torch.zeros(1, 3, 96, 96, dtype=torch.uint8), "floating"),
    ],
)
def test_bad_input_raises_value_error(models, bad, word):
    with pytest.raises(ValueError, match=word):
        models["dualaspp_mobilenetv3_small"](bad)


def test_unknown_switch_is_user_error():
    with pytest.raises(lightseg.LightsegError, match="skip"):
        lightseg.create_model("deeplabv3plus_mobilenetv2", skip=True)
