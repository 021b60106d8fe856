"""ATONet (atonet_r18) and its ResNet-18 backbone."""
import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lightseg import LightsegError
from lightseg.errors import CheckpointError, ConfigError
from lightseg.models import create_model
from lightseg.models.atonet import adaptive_avg_pool2d_matmul, aspect_bins
from lightseg.models.backbones.resnet import ResNet18
from lightseg.profile import count_macs, count_params


def _half(n):  # one stride-2 conv/pool with "same" padding: ceil(n / 2)
    return (n + 1) // 2


def _down(n, times):
    for _ in range(times):
        n = _half(n)
    return n


@pytest.fixture(scope="module")
def atonet():
    torch.manual_seed(0)
    return create_model("atonet_r18")


# ------------------------------------------------------------------ backbone
def test_resnet18_torchvision_names_and_shapes():
    sd = ResNet18().state_dict()
    expected = {
        "conv1.weight": (64, 3, 7, 7),
        "bn1.running_var": (64,),
        "layer1.0.conv1.weight": (64, 64, 3, 3),
        "layer1.1.bn2.weight": (64,),
        "layer2.0.conv1.weight": (128, 64, 3, 3),
        "layer2.0.downsample.0.weight": (128, 64, 1, 1),
        "layer2.0.downsample.1.running_mean": (128,),
        "layer3.1.conv2.weight": (256, 256, 3, 3),
        "layer4.0.downsample.0.weight": (512, 256, 1, 1),
        "layer4.1.bn2.bias": (512,),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    assert "layer1.0.downsample.0.weight" not in sd
    # torchvision's resnet18 state dict has 122 entries; fc.weight and fc.bias are the two we drop.
    assert len(sd) == 120 and not any(k.startswith("fc.") for k in sd)
    # torchvision's resnet18 has 11,689,512 parameters, fc (512*1000 + 1000) included.
    assert count_params(ResNet18()) + 512 * 1000 + 1000 == 11_689_512


def test_resnet18_contract_and_imagenet_macs():
    net = ResNet18().eval()
    with torch.no_grad():
        feats = net(torch.randn(1, 3, 96, 130))
    assert [f.shape[1] for f in feats] == net.channels == [64, 128, 256, 512]
    assert [f.shape[-2:] for f in feats] == [(_down(96, r.bit_length() - 1), _down(130, r.bit_length() - 1)) for r in net.reductions]
    # torchvision reports 1.81 GFLOPs (= MACs) for resnet18 at 224x224; fc is 512*1000 MACs of that.
    assert abs(count_macs(net, (224, 224), device="meta") + 512 * 1000 - 1.814e9) / 1.814e9 < 0.005


@pytest.mark.parametrize("os_, reductions, dil", [(16, [4, 8, 16, 16], 2), (8, [4, 8, 8, 8], 4)])
def test_resnet18_output_stride_uses_dilation(os_, reductions, dil):
    net = ResNet18(output_stride=os_).eval()
    assert net.reductions == reductions
    assert net.layer4[1].conv1.dilation == (dil, dil) and net.layer4[0].conv1.stride == (1, 1)
    # Same parameter set as OS 32: an ImageNet checkpoint still loads.
    assert {k: v.shape for k, v in net.state_dict().items()} == {k: v.shape for k, v in ResNet18().state_dict().items()}
    with torch.no_grad():
        assert net(torch.randn(1, 3, 64, 80))[-1].shape[-2:] == (64 // os_, 80 // os_)
    with pytest.raises(ConfigError, match="output_stride"):
        ResNet18(output_stride=4)


def test_pretrained_backbone_roundtrip_and_mismatch(tmp_path):
    torch.manual_seed(1)
    state = {k: torch.randn_like(v.float()).to(v.dtype) if v.is_floating_point() else v.clone()
             for k, v in ResNet18().state_dict().items()}
    # The keys torchvision's checkpoint has beyond the backbone.
    state["fc.weight"] = torch.randn(1000, 512)
    state["fc.bias"] = torch.randn(1000)
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(state, path)
    model = create_model("atonet_r18", pretrained_backbone=str(path))
    loaded = model.backbone.state_dict()
    for key in ("conv1.weight", "layer1.0.conv1.weight", "layer4.1.bn2.running_var"):
        assert torch.equal(loaded[key], state[key]), key

    bad = dict(state)
    del bad["layer1.0.conv1.weight"]
    bad["layer5.0.conv1.weight"] = torch.zeros(1)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"layer1\.0\.conv1\.weight(.|\n)*layer5\.0\.conv1\.weight"):
        create_model("atonet_r18", pretrained_backbone=str(tmp_path / "bad.pth"))


# ------------------------------------------------------------------ aspect-ratio pooling
@pytest.mark.parametrize("in_hw, out_hw", [((12, 15), (8, 10)), ((13, 17), (4, 5)), ((7, 11), (2, 3)),
                                            ((8, 11), (8, 11)), ((3, 5), (8, 13)), ((32, 64), (8, 16))])
def test_matmul_pooling_equals_adaptive_avg_pool(in_hw, out_hw):
    x = torch.randn(2, 3, *in_hw)
    ref = F.adaptive_avg_pool2d(x, out_hw)
    got = adaptive_avg_pool2d_matmul(x, out_hw)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)


def test_aspect_bins_hand_computed():
    # Cityscapes 1024x2048 -> layer4 32x64: aspect 2.
    assert [aspect_bins(32, 64, b) for b in (8, 4, 2)] == [(8, 16), (4, 8), (2, 4)]
    # CamVid 360x480 -> 12x15: 8*1.25 = 10, 4*1.25 = 5, 2*1.25 = 2.5 -> 2, as the authors' Python round()
    # (half to even); 6*1.25 = 7.5 -> 8 (half to even rounds up from 7).
    assert [aspect_bins(12, 15, b) for b in (8, 4, 2, 6)] == [(8, 10), (4, 5), (2, 2), (6, 8)]
    assert [aspect_bins(h, w, b)[1] for h, w, b in [(12, 15, 2), (12, 15, 6), (7, 11, 3)]] == \
        [round(w / h * b) for h, w, b in [(12, 15, 2), (12, 15, 6), (7, 11, 3)]]
    assert aspect_bins(40, 1, 2) == (2, 1)  # never zero columns
    # The traced (tensor) path gives the same grid.
    assert int(aspect_bins(torch.tensor(12), torch.tensor(15), 2)[1]) == 2
    assert int(aspect_bins(torch.tensor(12), torch.tensor(15), 6)[1]) == 8


# ------------------------------------------------------------------ model
def _aux_head_params(c, mid, classes=19):  # 3x3 conv (no bias) + BN + 1x1 to classes with bias
    return c * mid * 9 + 2 * mid + mid * classes + classes


def test_params_paper_count_excludes_aux_heads():
    full = count_params(create_model("atonet_r18"))
    deploy = count_params(create_model("atonet_r18", aux_losses=()))
    # The paper's heads loss3, loss4, loss5 on layer3 (256 ch), layer4 (512) and the SPP (128), mid width 128.
    assert full - deploy == sum(_aux_head_params(c, 128) for c in (256, 512, 128))
    assert abs(deploy - 13.3e6) / 13.3e6 < 0.05  # the paper's 13.3M is the inference network
    assert abs(full - 13.3e6) / 13.3e6 > 0.05  # with the aux heads it would not match
    # All five heads: loss1 on layer1 keeps its 64 channels (authors' code), loss2 on layer2 uses 128.
    all5 = count_params(create_model("atonet_r18", aux_losses=(1, 2, 3, 4, 5)))
    assert all5 - deploy == _aux_head_params(64, 64) + sum(_aux_head_params(c, 128) for c in (128, 256, 512, 128))


def test_macs_within_paper_target(atonet):
    macs = count_macs(atonet, (1024, 2048), device="meta")
    assert abs(macs - 134.5e9) / 134.5e9 < 0.05, macs / 1e9
    # Eval mode does not run the aux heads.
    assert macs == count_macs(create_model("atonet_r18", aux_losses=()), (1024, 2048), device="meta")


def test_paper_text_structure(atonet):
    # "SPP modules with pooling sizes of 8, 4, and 2"; "processed into 128 dimensions"; dropout 0.1;
    # the seg module ends in a 1x1 conv to the classes; the total loss is main + loss3 + loss4 + loss5.
    assert atonet.spp.bins == (8, 4, 2) and len(atonet.spp.branches) == 3
    assert [m[0].out_channels for m in atonet.up] == [128] * 5
    assert [m[0].in_channels for m in atonet.up] == [64, 128, 256, 512, 128]
    assert all(len(m) == 2 and isinstance(m[1], torch.nn.BatchNorm2d) for m in atonet.up)  # conv-BN, ReLU after the sum
    assert atonet.head[1].p == 0.1 and atonet.head[2].kernel_size == (1, 1) and atonet.head[2].out_channels == 19
    assert atonet.final[0].kernel_size == (3, 3)
    assert atonet.aux_losses == (3, 4, 5) and atonet.aux_names == ("layer3", "layer4", "spp")
    assert atonet.aux_weights == (1.0, 1.0, 1.0)


def test_up_kernel_switch():
    one = create_model("atonet_r18", up_kernel=1, aux_losses=())
    assert [m[0].kernel_size for m in one.up] == [(1, 1)] * 5
    three = create_model("atonet_r18", aux_losses=())
    assert [m[0].kernel_size for m in three.up] == [(3, 3)] * 5
    # 3x3 -> 1x1 removes 8 of the 9 taps of every up conv: (64 + 128 + 256 + 512 + 128) * 128 * 8 weights.
    assert count_params(three) - count_params(one) == (64 + 128 + 256 + 512 + 128) * 128 * 8
    with pytest.raises(LightsegError, match="up_kernel"):
        create_model("atonet_r18", up_kernel=5)


@pytest.mark.parametrize("bins", [(6, 3, 2, 1), (8, 4, 2, 1), (8, 4, 2)])
def test_bins_switch_pools_to_aspect_grids(bins):
    model = create_model("atonet_r18", bins=bins, aux_losses=()).eval()
    assert model.spp.bins == bins
    grids = []
    for conv in model.spp.branches:
        conv.register_forward_hook(lambda m, i, o: grids.append(tuple(i[0].shape[-2:])))
    with torch.no_grad():
        model(torch.randn(1, 3, 256, 512))  # layer4 at 8x16: aspect 2
    assert grids == [(b, 2 * b) for b in bins]
    # Each bin: a 1x1 conv-BN 512 -> 128; the fuse conv reads 512 + 128 per bin.
    base = count_params(create_model("atonet_r18", bins=(8, 4, 2), aux_losses=()))
    extra = len(bins) - 3
    assert count_params(model) - base == extra * (512 * 128 + 2 * 128 + 128 * 128)


@pytest.mark.parametrize("bad", [(), (0, 2), (8, 4.5), "842"])
def test_bad_bins(bad):
    with pytest.raises(LightsegError, match="bins"):
        create_model("atonet_r18", bins=bad)


@pytest.mark.parametrize("bad", [(0,), (6,), (3, 3), (True,), "345"])
def test_bad_aux_losses(bad):
    with pytest.raises(LightsegError, match="aux_losses"):
        create_model("atonet_r18", aux_losses=bad)


@pytest.mark.parametrize("hw", [(360, 480), (250, 330), (512, 1024)])
def test_eval_shapes(atonet, hw):
    atonet.eval()
    with torch.no_grad():
        assert atonet(torch.randn(1, 3, *hw)).shape == (1, 19, *hw)


def test_train_aux_at_own_stride_and_backward_reaches_all_params():
    torch.manual_seed(0)
    model = create_model("atonet_r18", num_classes=5, aux_losses=(1, 2, 3, 4, 5)).train()
    h, w = 100, 140  # odd sizes on the way down: 100 -> 50 -> 25 -> 13 -> 7 -> 4
    x = torch.randn(2, 3, h, w)
    target = torch.randint(0, 5, (2, h, w))
    out = model(x)
    assert model.aux_names == ("layer1", "layer2", "layer3", "layer4", "spp")
    assert out["out"].shape == (2, 5, h, w)
    halvings = (2, 3, 4, 5, 5)  # layer1 at 1/4 ... layer4 and SPP at 1/32
    assert [a.shape for a in out["aux"]] == [(2, 5, _down(h, s), _down(w, s)) for s in halvings]
    loss = F.cross_entropy(out["out"], target)
    for a in out["aux"]:
        small = F.interpolate(target[:, None].float(), size=a.shape[-2:], mode="nearest")[:, 0].long()
        loss = loss + F.cross_entropy(a, small)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


# Every network of Table 4: the three SPP pooling sets and the aux-loss combinations.
TABLE4 = [dict(bins=(6, 3, 2, 1), aux_losses=()), dict(bins=(8, 4, 2, 1), aux_losses=()), dict(aux_losses=()),
          dict(aux_losses=(1,)), dict(aux_losses=(1, 2)), dict(aux_losses=(1, 2, 3)), dict(aux_losses=(1, 2, 3, 4)),
          dict(aux_losses=(1, 2, 3, 4, 5)), dict(aux_losses=(2, 3, 4, 5)), dict(), dict(aux_losses=(4, 5)),
          dict(aux_losses=(5,))]


@pytest.mark.parametrize("kwargs", TABLE4, ids=lambda k: ",".join(f"{a}={v}" for a, v in k.items()) or "paper")
def test_table4_variants_train_one_step(kwargs):
    """One SGD step of each Table 4 network with the loss the trainer builds from a recipe whose
    aux_weights are null: the model's own weights (1 per head, the paper's w_i)."""
    from lightseg.losses import build_criterion

    torch.manual_seed(0)
    model = create_model("atonet_r18", num_classes=3, **kwargs).train()
    crit = build_criterion({"name": "ce", "aux_weights": None, "aux_mode": "downsample"}, 3,
                           aux_names=model.aux_names, default_aux_weights=model.aux_weights)
    assert crit.aux_weights == [1.0] * len(kwargs.get("aux_losses", (3, 4, 5)))
    x, y = torch.randn(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    before = model.head[2].weight.detach().clone()
    total, parts = crit(model(x), y)
    assert set(parts) == {"out", *model.aux_names} and torch.isfinite(total)
    total.backward()
    opt.step()
    assert not torch.equal(before, model.head[2].weight)


def test_deploy_variant_has_no_aux():
    model = create_model("atonet_r18", aux_losses=()).train()
    assert model.aux_names == () and model.aux_weights == ()
    out = model(torch.randn(2, 3, 64, 96))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 19, 64, 96)


def test_bad_input_and_bad_switches(atonet):
    with pytest.raises(ValueError, match="at least 64"):
        atonet(torch.zeros(1, 3, 32, 64))
    with pytest.raises(ValueError, match="3 input channels"):
        atonet(torch.zeros(1, 1, 64, 64))
    with pytest.raises(LightsegError, match="atonet_r18"):
        create_model("atonet_r18", no_such_switch=1)


# ------------------------------------------------------------------ ONNX
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning")
def test_onnx_export_static_and_dynamic(atonet):
    ort = pytest.importorskip("onnxruntime")
    model = atonet.eval()
    x = torch.randn(1, 3, 360, 480)
    with torch.no_grad():
        ref = model(x).numpy()

    f = io.BytesIO()
    torch.onnx.export(model, x, f, dynamo=False, opset_version=17, input_names=["image"], output_names=["logits"])
    sess = ort.InferenceSession(f.getvalue(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"image": x.numpy()})[0]
    assert got.shape == (1, 19, 360, 480)
    assert np.abs(got - ref).max() <= 1e-3

    # Dynamic H/W: exported at 360x480 (aspect 4:3), run at 250x330 and at 128x256 (aspect 2:1, other bins).
    f = io.BytesIO()
    axes = {0: "n", 2: "h", 3: "w"}
    torch.onnx.export(model, x, f, dynamo=False, opset_version=17, input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": axes, "logits": axes})
    sess = ort.InferenceSession(f.getvalue(), providers=["CPUExecutionProvider"])
    for hw in [(250, 330), (128, 256)]:
        x2 = torch.randn(1, 3, *hw)
        with torch.no_grad():
            ref2 = model(x2).numpy()
        got2 = sess.run(None, {"image": x2.numpy()})[0]
        assert got2.shape == ref2.shape
        assert np.abs(got2 - ref2).max() <= 1e-3
