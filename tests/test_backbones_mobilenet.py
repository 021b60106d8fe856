"""MobileNetV2 / V3-Large / V3-Small backbones: torchvision key names and shapes, output strides,
pretrained loading through create_model."""
import pytest
import torch

import lightseg
from lightseg.errors import CheckpointError, ConfigError
from lightseg.models.backbones.mobilenetv2 import MobileNetV2Backbone
from lightseg.models.backbones.mobilenetv3 import MobileNetV3Backbone
from lightseg.profile import count_params

# torchvision documents mobilenet_v2 / v3_large / v3_small at 3,504,872 / 5,483,032 / 2,542,856
# parameters. Minus their classifiers (Linear 1280->1000; 960->1280->1000; 576->1024->1000) that
# leaves the feature extractors, which our backbones with the last 1x1 conv must equal exactly.
TORCHVISION_FEATURES = {
    "v2": 3_504_872 - (1280 * 1000 + 1000),
    "large": 5_483_032 - (960 * 1280 + 1280 + 1280 * 1000 + 1000),
    "small": 2_542_856 - (576 * 1024 + 1024 + 1024 * 1000 + 1000),
}


def _backbone(kind, **kw):
    return MobileNetV2Backbone(**kw) if kind == "v2" else MobileNetV3Backbone(kind, **kw)


@pytest.mark.parametrize("kind", ["v2", "large", "small"])
def test_parameter_count_equals_torchvision_features(kind):
    assert count_params(_backbone(kind, include_last_conv=True)) == TORCHVISION_FEATURES[kind]
    # Without the last conv: minus cin*cout + BN(2*cout) of that 1x1 conv.
    last = {"v2": (320, 1280), "large": (160, 960), "small": (96, 576)}[kind]
    assert count_params(_backbone(kind)) == TORCHVISION_FEATURES[kind] - last[0] * last[1] - 2 * last[1]


@pytest.mark.parametrize(
    "kind,key,shape",
    [
        ("v2", "features.0.0.weight", (32, 3, 3, 3)),
        ("v2", "features.0.1.running_var", (32,)),
        ("v2", "features.1.conv.0.0.weight", (32, 1, 3, 3)),  # t=1 block: depthwise first
        ("v2", "features.1.conv.1.weight", (16, 32, 1, 1)),
        ("v2", "features.1.conv.2.bias", (16,)),  # BN of the projection
        ("v2", "features.2.conv.0.0.weight", (96, 16, 1, 1)),  # expand x6
        ("v2", "features.2.conv.1.0.weight", (96, 1, 3, 3)),
        ("v2", "features.17.conv.2.weight", (320, 960, 1, 1)),
        ("v2", "features.18.0.weight", (1280, 320, 1, 1)),
        ("large", "features.0.0.weight", (16, 3, 3, 3)),
        ("large", "features.1.block.0.0.weight", (16, 1, 3, 3)),  # exp == in: no expand conv
        ("large", "features.4.block.2.fc1.weight", (24, 72, 1, 1)),  # SE squeeze 72//4=18 -> 24
        ("large", "features.4.block.2.fc2.bias", (72,)),
        ("large", "features.4.block.1.0.weight", (72, 1, 5, 5)),
        ("large", "features.15.block.3.0.weight", (160, 960, 1, 1)),
        ("large", "features.16.0.weight", (960, 160, 1, 1)),
        ("small", "features.1.block.1.fc1.weight", (8, 16, 1, 1)),  # 16//4=4 -> 8
        ("small", "features.1.block.2.1.running_mean", (16,)),
        ("small", "features.11.block.3.0.weight", (96, 576, 1, 1)),
        ("small", "features.12.0.weight", (576, 96, 1, 1)),
    ],
)
def test_torchvision_key_names_and_shapes(kind, key, shape):
    state = _backbone(kind, include_last_conv=True).state_dict()
    assert key in state
    assert tuple(state[key].shape) == shape


def test_last_conv_dropped_and_ignored():
    b = MobileNetV2Backbone()
    assert not any(k.startswith("features.18.") for k in b.state_dict())
    assert "features.18." in b.pretrained_ignore and "classifier." in b.pretrained_ignore
    assert MobileNetV3Backbone("large").pretrained_ignore == ("classifier.", "features.16.")
    assert MobileNetV3Backbone("small").pretrained_ignore == ("classifier.", "features.12.")
    assert MobileNetV2Backbone(include_last_conv=True).pretrained_ignore == ("classifier.",)


def test_reduced_tail_halves_last_stage():
    b = MobileNetV3Backbone("large", reduced_tail=True, include_last_conv=True)
    state = b.state_dict()
    assert tuple(state["features.13.block.3.0.weight"].shape) == (80, 672, 1, 1)  # 160 // 2
    assert tuple(state["features.14.block.0.0.weight"].shape) == (480, 80, 1, 1)  # 960 // 2
    assert tuple(state["features.16.0.weight"].shape) == (480, 80, 1, 1)
    assert b.channels[-1] == 480  # the kept last conv is 6x the halved stage
    assert MobileNetV3Backbone("large", reduced_tail=True).channels[-1] == 80
    assert MobileNetV3Backbone("small", reduced_tail=True).channels[-1] == 48


def test_v3_batchnorm_eps_like_torchvision():
    bns = [m for m in MobileNetV3Backbone("small").modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.eps == 0.001 and m.momentum == 0.01 for m in bns)


@pytest.mark.parametrize("kind", ["v2", "large", "small"])
@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_output_strides(kind, output_stride):
    b = _backbone(kind, output_stride=output_stride).eval()
    expected = [min(r, output_stride) for r in (2, 4, 8, 16, 32)]
    assert b.reductions == expected
    with torch.no_grad():
        outs = b(torch.randn(1, 3, 128, 160))
    assert [o.shape[1] for o in outs] == b.channels
    assert [tuple(o.shape[-2:]) for o in outs] == [(128 // r, 160 // r) for r in expected]


def test_dilation_replaces_stride():
    # OS 16 on MobileNetV2: the 160-channel stage (features.14-16) runs at stride 1, depthwise dilation 2.
    dw = MobileNetV2Backbone(output_stride=16).features[14].conv[1][0]
    assert dw.stride == (1, 1) and dw.dilation == (2, 2) and dw.padding == (2, 2)
    # OS 8 on V3-Large: 1/16 stage dilated 2, 1/32 stage dilated 4 (5x5 kernel -> padding 8).
    f = MobileNetV3Backbone("large", output_stride=8).features
    assert f[7].block[1][0].dilation == (2, 2) and f[13].block[1][0].dilation == (4, 4)
    assert f[13].block[1][0].padding == (8, 8) and f[13].block[1][0].stride == (1, 1)


@pytest.mark.parametrize("bad", [4, 12, 64, "16"])
def test_bad_output_stride(bad):
    with pytest.raises(ConfigError, match="output_stride must be 8, 16 or 32"):
        MobileNetV2Backbone(output_stride=bad)
    with pytest.raises(ConfigError, match="output_stride"):
        MobileNetV3Backbone("small", output_stride=bad)


def _torchvision_like_file(tmp_path, kind, **kw):
    """A file shaped like torchvision's ImageNet checkpoint: every feature key (last conv included)
    with random values, plus classifier keys the backbone must ignore."""
    state = {k: torch.randn(v.shape) if v.is_floating_point() else v for k, v in _backbone(kind, include_last_conv=True, **kw).state_dict().items()}
    state["classifier.1.weight"] = torch.randn(1000, 8)
    state["classifier.1.bias"] = torch.randn(1000)
    path = tmp_path / f"{kind}.pth"
    torch.save(state, path)
    return path, state


@pytest.mark.parametrize(
    "model,kind,kwargs",
    [
        ("dualaspp_mobilenetv2", "v2", {}),
        ("deeplabv3plus_mobilenetv2", "v2", {}),
        ("dualaspp_mobilenetv3_large", "large", {}),
        ("deeplabv3plus_mobilenetv3_small", "small", {}),
    ],
)
def test_pretrained_round_trip_through_create_model(tmp_path, model, kind, kwargs):
    path, state = _torchvision_like_file(tmp_path, kind)
    m = lightseg.create_model(model, pretrained_backbone=str(path), **kwargs)
    own = m.backbone.state_dict()
    assert len(own) > 100
    for k, v in own.items():
        assert torch.equal(v, state[k]), k


def test_reduced_tail_model_loads_reduced_tail_file(tmp_path):
    path, state = _torchvision_like_file(tmp_path, "small", reduced_tail=True)
    m = lightseg.create_model("dualaspp_mobilenetv3_small", reduced_tail=True, pretrained_backbone=str(path))
    assert torch.equal(m.backbone.state_dict()["features.11.block.3.0.weight"], state["features.11.block.3.0.weight"])


def test_full_tail_file_into_reduced_tail_model_names_keys(tmp_path):
    path, _ = _torchvision_like_file(tmp_path, "large")
    with pytest.raises(CheckpointError, match=r"shape mismatch.*features\.13\.block\.3\.0\.weight.*reduced_tail=False"):
        lightseg.create_model("dualaspp_mobilenetv3_large", reduced_tail=True, pretrained_backbone=str(path))
    # The default (full tail) takes torchvision's file as it is.
    lightseg.create_model("dualaspp_mobilenetv3_large", pretrained_backbone=str(path))


def test_wrong_architecture_file_names_keys(tmp_path):
    path, _ = _torchvision_like_file(tmp_path, "v2")
    with pytest.raises(CheckpointError, match=r"missing from the file: features\.1\.block") as e:
        lightseg.create_model("deeplabv3plus_mobilenetv3_large", pretrained_backbone=str(path), reduced_tail=False)
    assert "not in the backbone: features.1.conv" in str(e.value)
