import math

import pytest
import torch

from lightseg.models import create_model, model_info
from lightseg.models.blocks import channel_shuffle
from lightseg.models.rdsnet import ENetDownsample, RDSBlock, RDSNet
from lightseg.profile import count_macs, count_params


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("rdsnet", num_classes=19).eval()


def test_eval_output_at_input_size(model):
    with torch.no_grad():
        for h, w in [(360, 480), (512, 1024), (250, 330)]:
            y = model(torch.randn(1, 3, h, w))
            assert isinstance(y, torch.Tensor) and y.shape == (1, 19, h, w)
            assert torch.isfinite(y).all()


def test_no_aux_in_train_mode_and_backward_reaches_every_parameter():
    torch.manual_seed(0)
    m = create_model("rdsnet", num_classes=11).train()
    assert m.aux_names == ()
    y = m(torch.randn(2, 3, 67, 93))
    assert isinstance(y, torch.Tensor) and y.shape == (2, 11, 67, 93)
    y.square().mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None, f"{name} gets no gradient"
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def _rds_block_params(c):
    return 9 * c + 2 * c + 9 * c * c + 2 * c  # depthwise 3x3 + BN, standard 3x3 + BN (ReLU has no parameters)


@pytest.mark.parametrize("num_classes", [19, 11])
def test_param_count_by_hand(num_classes):
    down = lambda cin, cout: 9 * cin * (cout - cin) + 2 * cout  # conv gives out-in channels; BN on the concat
    expected = (
        down(3, 32) + down(32, 64) + 3 * _rds_block_params(64) + down(64, 128) + 5 * _rds_block_params(128)
        + 9 * 128 * num_classes + num_classes  # 3x3 classifier with bias
    )
    assert count_params(create_model("rdsnet", num_classes=num_classes)) == expected
    assert expected == {19: 927_906, 11: 918_682}[num_classes]


def test_macs_and_registry(model):
    info = model_info("rdsnet")
    assert info.paper_size == (360, 640) and info.paper_fps == 77.0 and info.paper_hardware == "GTX 1050"  # Table V
    # Dominated by the standard 3x3 convs of the RDS blocks: 3 x 64*64*9 at 1/4 and 5 x 128*128*9 at 1/8
    # of 360x640 (90x160 and 45x80 maps).
    dominant = 3 * 64 * 64 * 9 * 90 * 160 + 5 * 128 * 128 * 9 * 45 * 80
    macs = count_macs(model, (360, 640), device="meta")
    assert dominant < macs < 1.15 * dominant


def test_enet_downsample_hand_computed():
    d = ENetDownsample(3, 32)
    assert d.conv.out_channels == 29 and d.conv.stride == (2, 2)
    assert d(torch.randn(2, 3, 25, 33)).shape == (2, 32, 13, 17)  # odd size: both branches ceil(H/2)
    one = ENetDownsample(1, 2).eval()
    y = one(torch.arange(9.0).view(1, 1, 3, 3))
    # channel 1 is the ceil-mode 2x2 max-pool of [[0 1 2] [3 4 5] [6 7 8]], through a fresh eval BN and ReLU
    assert torch.allclose(y[0, 1], torch.tensor([[4.0, 5.0], [7.0, 8.0]]) / math.sqrt(1 + one.bn.eps))
    with pytest.raises(ValueError, match="must exceed"):
        ENetDownsample(64, 64)


def _identity_convs(b, c):
    with torch.no_grad():
        b.depthwise.weight.zero_()
        b.depthwise.weight[:, 0, 1, 1] = 1
        b.conv.weight.zero_()
        for o in range(c):
            b.conv.weight[o, o, 1, 1] = 1


def test_rds_block_order_and_shuffle():
    # Sec. III.C: depthwise conv -> BN -> ReLU (M is "stacked non-linear layers", Eq. (1)) -> 3x3 conv -> BN
    # -> shuffle (4 groups) -> + x -> ReLU. Convs set to identities, fresh eval BNs divide by s = sqrt(1 + eps).
    c = 8
    b = RDSBlock(c, dilation=2).eval()
    assert b.depthwise.dilation == (2, 2) and b.depthwise.padding == (2, 2) and b.depthwise.groups == c
    assert b.conv.kernel_size == (3, 3) and b.conv.groups == 1  # the pointwise conv replaced by a 3x3
    _identity_convs(b, c)
    x = torch.randn(1, c, 5, 6)
    s = math.sqrt(1 + b.bn1.eps)
    expected = torch.relu(x + channel_shuffle(torch.relu(x / s) / s, 4))
    assert torch.allclose(b(x), expected, atol=1e-6)
    # the linear branch (inner_activation=False): negative values pass through M
    lin = RDSBlock(c, dilation=2, inner_activation=False).eval()
    _identity_convs(lin, c)
    assert torch.allclose(lin(x), torch.relu(x + channel_shuffle(x / s / s, 4)), atol=1e-6)
    assert not torch.allclose(lin(x), b(x))
    # hand check of the permutation itself: groups of 2 channels, 4 groups -> [0 2 4 6 1 3 5 7]
    assert channel_shuffle(torch.arange(8.0).view(1, 8, 1, 1), 4).flatten().tolist() == [0, 2, 4, 6, 1, 3, 5, 7]


def test_table_one_dropouts_are_the_rates_in_use():
    # Table I: 0.5 in the three 64-channel blocks, 0.3 in the five 128-channel blocks. The rates are read
    # from the dropout modules that actually run in a training forward pass.
    m = create_model("rdsnet", num_classes=5).train()
    ran = []
    hooks = [mod.register_forward_hook(lambda mod, i, o: ran.append(mod))
             for mod in m.modules() if isinstance(mod, torch.nn.Dropout2d)]
    m(torch.randn(1, 3, 64, 64))
    for h in hooks:
        h.remove()
    assert [d.p for d in ran] == [0.5] * 3 + [0.3] * 5
    assert [blk.dropout for blk in m.stage1] + [blk.dropout for blk in m.stage2] == ran
    # spatial dropout zeroes whole channels with about that rate (64 channels x 8 images x 3 blocks)
    d = m.stage1[0].dropout
    torch.manual_seed(0)
    zeroed = (d(torch.ones(8, 64, 4, 4)).flatten(2).amax(-1) == 0).float().mean().item()
    assert 0.35 < zeroed < 0.65


def test_dilations_and_dropout_switches():
    m = RDSNet(dropout=0.2, dropout_early=0.0)
    assert [blk.depthwise.dilation[0] for blk in m.stage2] == [1, 2, 4, 8, 16]
    assert [blk.dropout.p for blk in m.stage2] == [0.2] * 5
    assert all(isinstance(blk.dropout, torch.nn.Identity) for blk in m.stage1)
    m.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(m(x), m(x))  # dropout is off in eval
    with pytest.raises(ValueError, match="dropout"):
        RDSNet(dropout=1.5)
    assert all(isinstance(blk.act1, torch.nn.Identity) for blk in create_model("rdsnet", inner_activation=False).stage2)


def test_bad_input(model):
    for bad, word in [(torch.zeros(1, 3, 64, 63), "at least 64"), (torch.zeros(1, 3, 64, 64, dtype=torch.int64), "floating")]:
        with pytest.raises(ValueError, match=word):
            model(bad)
    with pytest.raises(ValueError, match="4-D"):
        model(torch.zeros(3, 64, 64))
