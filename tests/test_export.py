"""BatchNorm folding, ONNX export and ONNX Runtime parity."""

import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn

import lightseg
from lightseg.checkpoint import save_checkpoint
from lightseg.cli import main
from lightseg.deploy.export import PARITY_MAX_ABS, PARITY_MIN_AGREEMENT, export_onnx
from lightseg.deploy.fuse import count_batchnorms, fold_bn_into_conv, fuse_conv_bn
from lightseg.deploy.runtime import Runtime
from lightseg.models.base import SegmentationModel, resize_to
from lightseg.models.blocks import ConvBNAct


def randomize(model, seed=0):
    """Random weights are already there; give every BatchNorm non-trivial statistics and affine terms,
    so that folding and export are tested on something other than the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                if m.affine:
                    m.weight.uniform_(0.5, 1.5, generator=g)
                    m.bias.uniform_(-0.3, 0.3, generator=g)
    return model.eval()


# ---------------------------------------------------------------------- BN folding
def test_fold_hand_computed():
    conv = nn.Conv2d(1, 1, 1, bias=False)
    bn = nn.BatchNorm2d(1, eps=1.0).eval()
    with torch.no_grad():
        conv.weight.fill_(2.0)
        bn.running_mean.fill_(1.0)
        bn.running_var.fill_(3.0)  # sqrt(3 + eps) = 2
        bn.weight.fill_(2.0)
        bn.bias.fill_(0.5)
    # bn(conv(x)) = (2x - 1) / 2 * 2 + 0.5 = 2x - 0.5
    fold_bn_into_conv(conv, bn)
    assert conv.weight.item() == pytest.approx(2.0)
    assert conv.bias.item() == pytest.approx(-0.5)


class Wiring(nn.Module):
    """Every way a conv feeds a BN that the models use, plus two that must not be folded."""

    def __init__(self):
        super().__init__()
        self.stem = ConvBNAct(3, 8, 3, stride=2)                           # Sequential conv/bn/act
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1, groups=4, bias=True)   # torchvision-style pair, grouped, bias
        self.bn1 = nn.BatchNorm2d(8)
        self.up = nn.ConvTranspose2d(8, 6, 2, stride=2)
        self.bn_up = nn.BatchNorm2d(6)
        self.conv_relu = nn.Conv2d(6, 6, 1)
        self.relu = nn.ReLU(inplace=True)
        self.bn_after_relu = nn.BatchNorm2d(6)                            # conv -> in-place ReLU -> BN: not a pair
        self.cat_bn = nn.BatchNorm2d(12)                                  # BN after concat: not a pair

    def forward(self, x):
        y = self.stem(x)
        y = torch.relu(self.bn1(self.conv1(y)))
        y = self.bn_up(self.up(y))
        z = self.bn_after_relu(self.relu(self.conv_relu(y)))
        return self.cat_bn(torch.cat([y, z], 1))


def test_fuse_is_exact_and_skips_what_it_must():
    model = randomize(Wiring())
    x = torch.randn(2, 3, 40, 56)
    fused = fuse_conv_bn(model)
    assert fused.fused_bn_pairs == 3            # stem, conv1/bn1, up/bn_up
    assert count_batchnorms(fused) == 2         # bn_after_relu and cat_bn stay
    assert isinstance(fused.bn1, nn.Identity) and isinstance(fused.bn_after_relu, nn.BatchNorm2d)
    assert count_batchnorms(model) == 5         # the original is untouched
    with torch.no_grad():
        ref, out = model(x), fused(x)
    assert (ref - out).abs().max().item() <= 1e-5 * (1 + ref.abs().max().item())


class PreBNReused(nn.Module):
    """The conv's output also feeds a skip connection: folding the BN would change that path."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


def test_fuse_falls_back_when_the_pre_bn_tensor_is_reused():
    model = randomize(PreBNReused())
    with pytest.warns(RuntimeWarning, match="unfused"):
        fused = fuse_conv_bn(model)
    assert fused.fused_bn_pairs == 0 and count_batchnorms(fused) == 1
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x))


# BNs left after folding: ATONet keeps only those of its train-only aux heads; MiniNet keeps every BN whose
# input is a sum or a concatenation, not one conv's output. mininet_95k by hand: stage 1: SPP concat, 2 blocks
# (Eq. (1): BN after "+ F"), long residual = 4; stage 2: concat + 2 SPC + long = 4; stage 3: concat + 3 SPC +
# long = 5; stage 4 (64 -> 64: conv-only SPP, folded) 4 SPC + long = 5; decoder: 3 SPC (sums of branches) = 3.
@pytest.mark.parametrize("name,left", [("atonet_r18", None), ("mininet_95k", 21)])
def test_fuse_registered_models_exact(name, left):
    model = randomize(lightseg.create_model(name, num_classes=11))
    fused = fuse_conv_bn(model)
    if left is None:
        assert count_batchnorms(fused) < count_batchnorms(model) / 4
    else:
        assert count_batchnorms(model) == 25 and count_batchnorms(fused) == left
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        ref, out = model(x), fused(x)
    assert (ref - out).abs().max().item() <= 1e-5 * (1 + ref.abs().max().item())


# ---------------------------------------------------------------------- export + ORT parity, every model
def _parity_sizes(name):
    """CamVid's 360x480 (not a multiple of 32: every model's size alignment), and Cityscapes' 1:2 aspect at
    256x512, which takes the same graph as 512x1024 in a quarter of the time for every model but ATONet, whose
    pyramid pooling windows follow the input size (``aspect_bins``): it is checked at 512x1024 itself."""
    return [(360, 480), (512, 1024) if name.startswith("atonet") else (256, 512)]


@pytest.mark.slow  # the heaviest test in CI: every model exported and run twice
@pytest.mark.parametrize("name", lightseg.list_models())
def test_export_parity_every_model(name, tmp_path):
    model = randomize(lightseg.create_model(name, num_classes=19))
    for size in _parity_sizes(name):
        path = tmp_path / f"{name}_{size[0]}x{size[1]}.onnx"
        r = export_onnx(model, path, input_size=size, verbose=False)
        c = r["checks"][0]
        assert c["shape_ok"], c
        assert c["max_abs_diff"] <= PARITY_MAX_ABS, (size, c)
        assert c["argmax_agreement"] >= PARITY_MIN_AGREEMENT, (size, c)
        assert path.is_file() and r["bytes"] == path.stat().st_size
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # atomic: no temp files left
    assert not model.training


class Tiny(SegmentationModel):
    """Decoder aligned by size (1/4 and 1/8 maps) with an image-pooling branch: what dynamic H/W must follow."""

    aux_names = ()

    def __init__(self, num_classes=4):
        super().__init__()
        self.num_classes = num_classes
        self.s4 = nn.Sequential(ConvBNAct(3, 8, 3, 2), ConvBNAct(8, 8, 3, 2))
        self.s8 = ConvBNAct(8, 16, 3, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Conv2d(8 + 16 + 16, num_classes, 1)

    def forward_features(self, x):
        a = self.s4(x)
        b = self.s8(a)
        g = resize_to(self.pool(b), a.shape[-2:])
        return self.head(torch.cat([a, resize_to(b, a.shape[-2:]), g], 1)), []


def test_dynamic_export_runs_at_other_sizes(tmp_path, capsys):
    model = randomize(Tiny())
    r = export_onnx(model, tmp_path / "tiny.onnx", input_size=(96, 128), dynamic=True)
    assert r["ok"] and len(r["checks"]) == 2
    assert r["checks"][1]["batch"] == 2 and r["checks"][1]["size"] != [96, 128]
    assert "argmax agreement" in capsys.readouterr().out
    shapes = [d.dim_param for d in onnx.load(str(tmp_path / "tiny.onnx")).graph.input[0].type.tensor_type.shape.dim]
    assert shapes == ["batch", "", "height", "width"]
    # sizes that are not multiples of 8, where 1/4 and 1/8 maps do not halve exactly
    rt = Runtime(tmp_path / "tiny.onnx", backend="onnxruntime")
    for h, w in [(250, 330), (65, 97)]:
        x = torch.randn(3, 3, h, w)
        with torch.no_grad():
            ref = model(x)
        torch.testing.assert_close(rt(x), ref, atol=1e-4, rtol=1e-4)


def test_dynamic_export_registered_model(tmp_path):
    model = randomize(lightseg.create_model("dualaspp_mobilenetv3_small", num_classes=11))
    r = export_onnx(model, tmp_path / "m.onnx", input_size=(128, 192), dynamic=True, verbose=False)
    assert r["ok"], r["checks"]


# ---------------------------------------------------------------------- runtime backends
def test_runtime_backends_agree():
    model = randomize(Tiny())
    x = torch.randn(2, 3, 70, 90)
    with torch.no_grad():
        ref = model(x)
    for backend in ["eager_nchw", "eager", "onnxruntime"]:
        out = Runtime(model, backend=backend, input_size=(70, 90))(x)
        assert out.dtype == torch.float32 and out.shape == ref.shape
        torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    bf16 = Runtime(model, backend="eager", dtype="bfloat16")(x)
    assert (bf16.argmax(1) == ref.argmax(1)).float().mean() > 0.9
    with pytest.raises(lightseg.LightsegError, match="float32 only"):
        Runtime(model, backend="onnxruntime", dtype="bfloat16")
    with pytest.raises(lightseg.LightsegError, match="backend"):
        Runtime(model, backend="tensorrt")


# ---------------------------------------------------------------------- CLI
def test_export_command_with_checkpoint(tmp_path, capsys):
    model = randomize(lightseg.create_model("dualaspp_mobilenetv3_small", num_classes=5))
    ckpt = tmp_path / "best.pt"
    save_checkpoint({"model": model.state_dict(), "model_name": "dualaspp_mobilenetv3_small", "num_classes": 5}, ckpt)
    out = tmp_path / "sub" / "m.onnx"
    assert main(["export", "--model", "dualaspp_mobilenetv3_small", "--checkpoint", str(ckpt), "--size", "96", "128", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "parity 1x3x96x128" in text and "OK" in text and "wrote" in text
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        ref = model(x)  # the checkpoint's weights went into the export
    got = session.run(None, {"images": x.numpy()})[0]
    assert got.shape == (1, 5, 96, 128) and abs(got - ref.numpy()).max() < 1e-3

    # num_classes disagreeing with the checkpoint, a different model, an unknown model: exit 2, one line
    for argv, words in [
        (["--model", "dualaspp_mobilenetv3_small", "--checkpoint", str(ckpt), "--num-classes", "7"], ["num_classes=5", "--num-classes"]),
        (["--model", "mininet_95k", "--checkpoint", str(ckpt)], ["dualaspp_mobilenetv3_small", "--model"]),
        (["--model", "mininet_9k"], ["unknown model", "mininet_95k"]),
    ]:
        assert main(["export", *argv, "--size", "96", "128", "-o", str(tmp_path / "x.onnx")]) == 2
        err = capsys.readouterr().err
        assert all(w in err for w in words), err
        assert "Traceback" not in err
    assert not (tmp_path / "x.onnx").exists()
