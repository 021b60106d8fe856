"""ShuffleNet V2 x1.0 backbone and the shufflenetv2_dpc / shufflenetv2_basic models."""
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lightseg.errors import CheckpointError, ConfigError, LightsegError
from lightseg.models import create_model
from lightseg.models.backbones.shufflenetv2 import ShuffleNetV2
from lightseg.profile import count_macs, count_params
from lightseg.zoo import paper_rows


@pytest.fixture(scope="module")
def dpc():
    torch.manual_seed(0)
    return create_model("shufflenetv2_dpc")


# ------------------------------------------------------------------ backbone
def test_torchvision_names_and_shapes():
    sd = ShuffleNetV2().state_dict()
    expected = {
        "conv1.0.weight": (24, 3, 3, 3),
        "conv1.1.running_mean": (24,),
        "stage2.0.branch1.0.weight": (24, 1, 3, 3),
        "stage2.0.branch1.2.weight": (58, 24, 1, 1),
        "stage2.0.branch2.0.weight": (58, 24, 1, 1),
        "stage2.0.branch2.3.weight": (58, 1, 3, 3),
        "stage2.3.branch2.5.weight": (58, 58, 1, 1),
        "stage3.0.branch1.0.weight": (116, 1, 3, 3),
        "stage3.7.branch2.6.running_var": (116,),
        "stage4.0.branch1.2.weight": (232, 232, 1, 1),
        "stage4.3.branch2.5.weight": (232, 232, 1, 1),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    # Only the first unit of each stage has branch1; no conv5 / fc (the paper drops them).
    assert not any(k.startswith(("stage2.1.branch1", "conv5", "fc")) for k in sd)
    assert [len(getattr(ShuffleNetV2(), f"stage{i}")) for i in (2, 3, 4)] == [4, 8, 4]
    # torchvision's shufflenet_v2_x1_0 has 2,278,604 parameters; conv5 (+BN) and fc are what we drop.
    assert count_params(ShuffleNetV2()) + 464 * 1024 + 2 * 1024 + 1024 * 1000 + 1000 == 2_278_604


def test_backbone_contract_and_imagenet_macs():
    net = ShuffleNetV2().eval()
    with torch.no_grad():
        feats = net(torch.randn(1, 3, 64, 96))
    assert [f.shape[1] for f in feats] == net.channels == [24, 116, 232, 464]
    assert net.reductions == [4, 8, 16, 32]
    assert [tuple(f.shape[-2:]) for f in feats] == [(64 // r, 96 // r) for r in net.reductions]
    # Ma et al. 2018, Table 5: ShuffleNet V2 1x is 146M FLOPs (multiply-adds) at 224x224, including
    # conv5 (464->1024 1x1 at 7x7) and the 1024->1000 classifier that this backbone leaves out.
    full = count_macs(net, (224, 224), device="meta") + 464 * 1024 * 7 * 7 + 1024 * 1000
    assert abs(full - 146e6) / 146e6 < 0.02


def _depthwise(net, stage):
    return [(m.stride[0], m.dilation) for n, m in net.named_modules()
            if n.startswith(stage) and isinstance(m, nn.Conv2d) and m.groups > 1 and "branch2" in n]


def test_output_stride_16_dilation_switch():
    paper = ShuffleNetV2(output_stride=16)
    tf_code = ShuffleNetV2(output_stride=16, atrous=False)
    assert paper.reductions == tf_code.reductions == [4, 8, 16, 16]
    # Paper, Table 1: stage 4 = one unit at rate 1 then three at rate 2, all stride 1.
    assert _depthwise(paper, "stage4") == [(1, (1, 1))] + [(1, (2, 2))] * 3
    assert _depthwise(tf_code, "stage4") == [(1, (1, 1))] * 4
    assert _depthwise(ShuffleNetV2(), "stage4") == [(2, (1, 1))] + [(1, (1, 1))] * 3
    # OS 8: stage 3 at rate 2 after its first unit, stage 4 at rate 4 after its first unit (at rate 2).
    assert _depthwise(ShuffleNetV2(output_stride=8), "stage4") == [(1, (2, 2))] + [(1, (4, 4))] * 3
    m = create_model("shufflenetv2_dpc", stage4_dilation=1)
    assert _depthwise(m.backbone, "stage4") == [(1, (1, 1))] * 4
    with pytest.raises(LightsegError, match="stage4_dilation"):
        create_model("shufflenetv2_dpc", stage4_dilation=3)
    with pytest.raises(ConfigError, match="output_stride"):
        ShuffleNetV2(output_stride=12)


def test_pretrained_backbone_roundtrip_and_mismatch(tmp_path):
    torch.manual_seed(1)
    state = {k: torch.randn_like(v) if v.is_floating_point() else v.clone() for k, v in ShuffleNetV2().state_dict().items()}
    # The keys torchvision's shufflenet_v2_x1_0 checkpoint has beyond the backbone.
    state["conv5.0.weight"] = torch.randn(1024, 464, 1, 1)
    for k in ("weight", "bias", "running_mean", "running_var"):
        state[f"conv5.1.{k}"] = torch.randn(1024)
    state["conv5.1.num_batches_tracked"] = torch.tensor(0)
    state["fc.weight"] = torch.randn(1000, 1024)
    state["fc.bias"] = torch.randn(1000)
    path = tmp_path / "shufflenetv2_x1-5666bf0f80.pth"
    torch.save(state, path)
    for name in ("shufflenetv2_dpc", "shufflenetv2_basic"):
        loaded = create_model(name, pretrained_backbone=str(path)).backbone.state_dict()
        for key in ("conv1.0.weight", "stage2.0.branch1.0.weight", "stage4.3.branch2.6.running_mean"):
            assert torch.equal(loaded[key], state[key]), key

    bad = dict(state)
    bad["stage3.0.branch1.0.weight"] = torch.zeros(116, 1, 5, 5)
    torch.save(bad, tmp_path / "bad_shape.pth")
    with pytest.raises(CheckpointError, match=r"stage3\.0\.branch1\.0\.weight file \(116, 1, 5, 5\)"):
        create_model("shufflenetv2_dpc", pretrained_backbone=str(tmp_path / "bad_shape.pth"))
    del bad["stage3.0.branch1.0.weight"]
    torch.save(bad, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"missing from the file: stage3\.0\.branch1\.0\.weight"):
        create_model("shufflenetv2_dpc", pretrained_backbone=str(tmp_path / "missing.pth"))


# ------------------------------------------------------------------ heads
def test_dpc_wiring_follows_chen_2018():
    head = create_model("shufflenetv2_dpc").head
    depthwise = [b[0][0] for b in head.branches]
    assert [c.dilation for c in depthwise] == [(1, 6), (18, 15), (6, 3), (1, 1), (6, 21)]
    assert [c.padding for c in depthwise] == [(1, 6), (18, 15), (6, 3), (1, 1), (6, 21)]
    assert [c.in_channels for c in depthwise] == [464, 256, 256, 256, 256]
    seen = {}
    hooks = [b.register_forward_hook(lambda m, i, o, k=k: seen.__setitem__(k, (i[0], o))) for k, b in enumerate(head.branches)]
    x = torch.randn(1, 464, 9, 11)
    head.eval()
    with torch.no_grad():
        y = head(x)
    for h in hooks:
        h.remove()
    # branch inputs: features -> b0; b0 -> b1; b1 -> b2; b0 -> b3; b0 -> b4
    assert seen[0][0] is x
    assert seen[1][0] is seen[0][1] and seen[2][0] is seen[1][1]
    assert seen[3][0] is seen[0][1] and seen[4][0] is seen[0][1]
    assert y.shape == (1, 256, 9, 11)


def test_head_params_hand_computed():
    bn = 2  # BatchNorm weight + bias per channel
    dpc = create_model("shufflenetv2_dpc")
    sep = lambda cin: cin * 9 + bn * cin + cin * 256 + bn * 256  # noqa: E731 - depthwise + pointwise
    assert count_params(dpc.head) == sep(464) + 4 * sep(256) + 1280 * 256 + bn * 256
    basic = create_model("shufflenetv2_basic")
    assert count_params(basic.head) == 2 * (464 * 256 + bn * 256) + 512 * 256 + bn * 256
    assert count_params(dpc.classifier) == 256 * 19 + 19


@pytest.mark.parametrize("name, target", [("shufflenetv2_dpc", 1.5e6), ("shufflenetv2_basic", 1.15e6)])
def test_params_within_target(name, target):
    assert abs(count_params(create_model(name)) - target) / target < 0.15


def test_macs_head_hand_computed(dpc):
    # 1024x2048 at output stride 16 -> 64x128 positions for every head layer.
    px = 64 * 128
    head = px * (464 * 9 + 464 * 256 + 4 * (256 * 9 + 256 * 256) + 1280 * 256 + 256 * 19)
    total = count_macs(dpc, (1024, 2048), device="meta")
    assert total - count_macs(dpc.backbone, (1024, 2048), device="meta") == head


@pytest.mark.parametrize("hw", [(360, 480), (250, 330), (512, 1024)])
def test_eval_shapes(dpc, hw):
    dpc.eval()
    with torch.no_grad():
        assert dpc(torch.randn(1, 3, *hw)).shape == (1, 19, *hw)


def test_basic_eval_shape():
    model = create_model("shufflenetv2_basic", num_classes=11).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 250, 330)).shape == (1, 11, 250, 330)


@pytest.mark.parametrize("name", ["shufflenetv2_dpc", "shufflenetv2_basic"])
def test_train_backward_reaches_all_params(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=5).train()
    assert model.aux_names == ()
    # Batch 2: the basic head's image-pooling BN sees one value per channel and sample in training.
    x = torch.randn(2, 3, 96, 128)
    out = model(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 5, 96, 128)
    F.cross_entropy(out, torch.randint(0, 5, (2, 96, 128))).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


def test_bad_input(dpc):
    with pytest.raises(ValueError, match="4-D"):
        dpc(torch.zeros(3, 64, 64))
    with pytest.raises(ValueError, match="floating"):
        dpc(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))


# ------------------------------------------------------------------ switches and the paper's tables
def test_output_stride_8_doubles_dpc_rates():
    # DeepLab (authors' model.py): conv_rate_multiplier = 16 // output_stride.
    m = create_model("shufflenetv2_dpc", output_stride=8)
    depthwise = [b[0][0] for b in m.head.branches]
    assert [c.dilation for c in depthwise] == [(2, 12), (36, 30), (12, 6), (2, 2), (12, 42)]
    assert [c.padding for c in depthwise] == [c.dilation for c in depthwise]
    assert m.backbone.reductions == [4, 8, 8, 8]
    m.eval()
    with torch.no_grad():
        assert m.forward_features(torch.randn(1, 3, 96, 128))[0].shape == (1, 19, 12, 16)
    with pytest.raises(LightsegError, match="output stride 16"):
        create_model("shufflenetv2_dpc", output_stride=32)
    basic = create_model("shufflenetv2_basic", output_stride=32)  # no rates to scale
    assert basic.backbone.reductions[-1] == 32


def test_head_and_backbone_switches():
    # Table 5: {ShuffleNet V2, MobileNet V2} x {basic, DPC}; one model name per head, both switchable.
    assert type(create_model("shufflenetv2_dpc", head="basic").head).__name__ == "ASPP"
    assert type(create_model("shufflenetv2_basic", head="dpc").head).__name__ == "DensePredictionCell"
    m = create_model("shufflenetv2_dpc", backbone="mobilenetv2")
    assert m.backbone.channels[-1] == 320 and m.backbone.output_stride == 16
    assert m.head.branches[0][0][0].in_channels == 320
    with pytest.raises(LightsegError, match="stage4_dilation"):
        create_model("shufflenetv2_dpc", backbone="mobilenetv2", stage4_dilation=1)
    with pytest.raises(LightsegError, match="head"):
        create_model("shufflenetv2_dpc", head="aspp")
    with pytest.raises(LightsegError, match="backbone"):
        create_model("shufflenetv2_dpc", backbone="resnet18")


def test_table5_rows():
    """Table 5 at the phone's 224x224 input: GFLOPs (= 2 x MACs) and model size (fp32 bytes / 4 = params)."""
    rows = paper_rows("shufflenetv2_dpc")
    assert [r["label"] for r in rows] == ["ShuffleNet V2, basic", "ShuffleNet V2, DPC", "MobileNet V2, basic", "MobileNet V2, DPC"]
    for r in rows:
        assert r["input_size"] == [224, 224] and r["flops_per_mac"] == 2
        assert abs(r["flops_delta"]) < 0.02 and abs(r["params_delta"]) < 0.02, r


@pytest.mark.filterwarnings("ignore:Detected call of")  # rates only: no optimiser steps here
def test_recipe_slow_start_is_186_constant_steps():
    from lightseg.config import load_config
    from lightseg.engine.optim import IterationScheduler

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "shufflenetv2_dpc_cityscapes.yaml")
    t = cfg["train"]
    opt = torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=t["optimizer"]["lr"])
    s = IterationScheduler(opt, t["scheduler"], t["optimizer"]["lr"], t["iters"])
    lrs = [s.step(i) for i in range(188)]
    poly = [1e-3 * (1 - i / 120000) ** 0.9 for i in range(188)]
    assert lrs == pytest.approx([p / 10 for p in poly[:186]] + poly[186:], rel=1e-9)
