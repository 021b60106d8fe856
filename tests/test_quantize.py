"""Deployment rewrites (reparameterize, PReLU as convolutions, ceil_mode) and the int8 path."""

import warnings

import cv2
import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn

import lightseg
from lightseg.cli import main
from lightseg.data.base import NORMALIZATIONS
from lightseg.deploy.export import export_onnx, export_to_bytes, ort_session
from lightseg.deploy.fuse import PReLUAsConv, _pool_output_is_exact, prepare_for_inference
from lightseg.deploy.quantize import (INT8_MODES, calibration_images, choose_int8_mode, mode_warning, quantize_onnx,
                                      resolve_int8_mode)
from lightseg.hardware import cpu_from_flags
from lightseg.deploy.runtime import Runtime
from lightseg.errors import LightsegError
from lightseg.models.mininet import SPPDownsample
from lightseg.models.rdsnet import RDSBlock


def scramble(model, seed=0):
    """Non-trivial BatchNorm statistics (negative scales too) and PReLU slopes outside [0, 1]: the rewrites
    must be exact for any values, not only for the identity-like ones of a fresh model."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.weight.uniform_(-1.5, 1.5, generator=g)
                m.bias.uniform_(-0.3, 0.3, generator=g)
            elif isinstance(m, nn.PReLU):
                m.weight.uniform_(-0.5, 1.5, generator=g)
    return model.eval()


# ---------------------------------------------------------------------- exact rewrites
def test_prelu_as_conv_hand_values():
    prelu = nn.PReLU(3)
    with torch.no_grad():
        prelu.weight.copy_(torch.tensor([0.25, -0.5, 1.5]))
    x = torch.tensor([-2.0, -1.0, 0.0, 3.0]).view(1, 1, 1, 4).repeat(1, 3, 1, 1)
    expected = torch.tensor([[-0.5, -0.25, 0.0, 3.0], [1.0, 0.5, 0.0, 3.0], [-3.0, -1.5, 0.0, 3.0]]).view(1, 3, 1, 4)
    torch.testing.assert_close(PReLUAsConv(prelu, 3)(x), expected)
    shared = nn.PReLU()  # one slope for all channels
    torch.testing.assert_close(PReLUAsConv(shared, 5)(x.repeat(1, 2, 1, 1)[:, :5]), shared(x.repeat(1, 2, 1, 1)[:, :5]))
    with pytest.raises(ValueError, match="slopes"):
        PReLUAsConv(prelu, 4)


def test_pool_exactness_rule_matches_torch():
    for k, s, p in [(2, 2, 0), (3, 2, 1), (3, 2, 0)]:
        for n in range(6, 14):
            x = torch.randn(1, 2, n, n + 1)
            floor = nn.MaxPool2d(k, s, p, ceil_mode=False)
            ceil = nn.MaxPool2d(k, s, p, ceil_mode=True)
            same = floor(x).shape == ceil(x).shape and torch.equal(floor(x), ceil(x))
            assert _pool_output_is_exact(ceil, x.shape) == same, (k, s, p, n)


def test_rds_block_folds_its_shuffle():
    block = scramble(RDSBlock(16, dilation=2))
    x = torch.randn(2, 16, 12, 10)
    with torch.no_grad():
        ref = block(x)
        assert block.reparameterize() is block and block.shuffle_groups == 1
        torch.testing.assert_close(block(x), ref, atol=1e-6, rtol=1e-5)


def test_spp_downsample_without_pool_is_left_to_conv_bn_folding():
    down = SPPDownsample(32, 32)  # C_in == C_out: the paper omits the pool branch; conv -> BN folds generically
    assert down.pool is None and down.reparameterize() is down


@pytest.mark.parametrize("cin,cout,separable", [(3, 16, False), (16, 32, True), (64, 96, True)])
def test_spp_downsample_merge_is_exact(cin, cout, separable):
    down = scramble(SPPDownsample(cin, cout, separable=separable))
    x = torch.randn(2, cin, 15, 22)  # odd height: the pool's ceil_mode matters
    with torch.no_grad():
        ref = down(x)
        merged = down.reparameterize()
        assert not any(isinstance(m, nn.BatchNorm2d) for m in merged.modules())
        torch.testing.assert_close(merged(x), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["rdsnet", "mininet_211k", "mininet_95k"])
def test_prepare_for_inference_exact_and_complete(name):
    model = scramble(lightseg.create_model(name, num_classes=7))
    prepared = prepare_for_inference(model, input_size=(128, 192), for_onnx=True, static_shape=True)
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.PReLU)) for m in prepared.modules() if name == "rdsnet")
    assert not any(isinstance(m, nn.PReLU) for m in prepared.modules())
    pools = [m for m in prepared.modules() if isinstance(m, nn.MaxPool2d)]
    assert pools and not any(p.ceil_mode for p in pools)  # 128x192 halves evenly down to the last pool
    x = torch.randn(1, 3, 128, 192)
    with torch.no_grad():
        torch.testing.assert_close(prepared(x), model(x), atol=1e-4, rtol=1e-4)
    # at a size with odd intermediate maps the pools that see them keep ceil_mode, and the result stays exact
    odd = prepare_for_inference(model, input_size=(100, 150), for_onnx=True, static_shape=True)
    assert any(m.ceil_mode for m in odd.modules() if isinstance(m, nn.MaxPool2d))
    x = torch.randn(1, 3, 100, 150)
    with torch.no_grad():
        torch.testing.assert_close(odd(x), model(x), atol=1e-4, rtol=1e-4)
    assert any(isinstance(m, nn.PReLU) for m in model.modules()) == name.startswith("mininet")  # original untouched


def test_prepare_for_inference_refuses_a_wrong_rewrite():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            return self.conv(x)

        def reparameterize(self):
            return nn.Conv2d(3, 4, 3, padding=1)  # different weights: not the same function

    with pytest.raises(RuntimeError, match="changed the output"):
        prepare_for_inference(nn.Sequential(Broken()))


# ---------------------------------------------------------------------- calibration
def write_rgb(path, rgb):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(np.asarray(rgb, np.uint8), cv2.COLOR_RGB2BGR))


def test_calibration_images_from_a_folder(tmp_path):
    for i in range(5):
        write_rgb(tmp_path / "imgs" / f"sub{i % 2}" / f"{i}.png", np.full((20, 30, 3), (10 * i, 100, 200)))
    images = calibration_images(tmp_path / "imgs", size=(8, 12), count=3)
    assert len(images) == 3 and all(im.shape == (3, 8, 12) and im.dtype == np.float32 for im in images)
    mean, std = NORMALIZATIONS["imagenet"]
    # sorted paths: sub0/0, sub0/2, sub0/4, sub1/1, sub1/3; three evenly spread -> 0, 4, 3
    for im, i in zip(images, [0, 4, 3]):
        expected = (np.array([10 * i, 100, 200]) - np.array(mean)) / np.array(std)
        np.testing.assert_allclose(im[:, 4, 6], expected, rtol=1e-5)
    minus = calibration_images(tmp_path / "imgs", size=(8, 12), count=1, normalize="minus_one_one")
    np.testing.assert_allclose(minus[0][:, 0, 0], (np.array([0, 100, 200]) - 127.5) / 127.5, rtol=1e-5)
    synthetic = calibration_images(None, size=(64, 96), count=2)
    assert len(synthetic) == 2 and synthetic[0].shape == (3, 64, 96)
    np.testing.assert_array_equal(synthetic[0], calibration_images(None, size=(64, 96), count=1)[0])  # deterministic


def test_calibration_errors_name_the_path(tmp_path):
    with pytest.raises(LightsegError, match="does not exist"):
        calibration_images(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LightsegError, match="holds no images"):
        calibration_images(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(LightsegError, match="broken.png"):
        calibration_images(tmp_path / "bad")
    with pytest.raises(LightsegError, match="count"):
        calibration_images(None, count=0)


# ---------------------------------------------------------------------- int8
def node_types(model_bytes):
    return [n.op_type for n in onnx.load_model_from_string(model_bytes).graph.node]


# What each CPU kind gets, whatever machine runs the test. Flags as /proc/cpuinfo spells them.
CPU_KINDS = {
    "zen3_avx2": ("x86_64", "avx avx2 fma f16c", "u8s8_reduce_range"),
    "skylake_avx512_no_vnni": ("x86_64", "avx2 fma avx512f avx512bw avx512dq avx512vl", "u8s8_reduce_range"),
    "zen4_avx512_vnni": ("x86_64", "avx2 fma avx512f avx512bw avx512dq avx512vl avx512_vnni avx512_bf16", "u8s8"),
    "alder_lake_avx_vnni": ("x86_64", "avx2 fma avx_vnni", "u8s8"),
    "sapphire_rapids_amx": ("x86_64", "avx2 fma avx512f avx512bw avx512_vnni avx_vnni amx_tile amx_int8 amx_bf16", "u8s8"),
    # MLAS runs the AVX-512 core kernel when AVX512BW is there: AVX-VNNI alone does not help then.
    "avx512bw_with_only_avx_vnni": ("x86_64", "avx2 fma avx512f avx512bw avx_vnni", "u8s8_reduce_range"),
    "sse_only": ("x86_64", "sse sse2 ssse3 sse4_1", "u8s8_reduce_range"),
    "arm_dotprod": ("aarch64", "fp asimd evtstrm aes crc32 asimddp", "u8s8"),
    "arm_no_dotprod": ("aarch64", "fp asimd evtstrm crc32", "u8s8"),
    "apple_dotprod": ("arm64", "dotprod", "u8s8"),
}


@pytest.mark.parametrize("kind", CPU_KINDS)
def test_int8_mode_chosen_per_cpu_kind(kind):
    arch, flags, expected = CPU_KINDS[kind]
    cpu = cpu_from_flags(flags, arch=arch)
    mode, reason = choose_int8_mode(cpu)
    assert mode == expected and mode in INT8_MODES and reason
    # a full-range model is flagged exactly where it saturates; 7-bit and uint8 weights never are
    assert (mode_warning("u8s8", cpu) is not None) == (expected != "u8s8")
    assert mode_warning("u8s8_reduce_range", cpu) is None and mode_warning("u8u8", cpu) is None
    assert resolve_int8_mode("auto", cpu) == (mode, reason) and resolve_int8_mode("u8u8", cpu)[0] == "u8u8"


def test_int8_mode_unknown_is_refused():
    with pytest.raises(LightsegError, match="u8s8_reduce_range"):
        resolve_int8_mode("int4")


def int8_weights(model_bytes):
    """The quantised conv weights (>= 2-D integer initializers) as numpy arrays."""
    from onnx import numpy_helper

    graph = onnx.load_model_from_string(model_bytes).graph
    arrays = [numpy_helper.to_array(t) for t in graph.initializer]
    return [a for a in arrays if a.ndim >= 2 and a.dtype in (np.int8, np.uint8)]


def metadata(model_bytes):
    return {p.key: p.value for p in onnx.load_model_from_string(model_bytes).metadata_props}


@pytest.fixture(scope="module")
def rdsnet_fp32():
    model = scramble(lightseg.create_model("rdsnet", num_classes=5))
    size = (96, 128)
    calib = calibration_images(None, size, count=4)
    fp32 = export_to_bytes(model, size)
    return fp32, calib, ort_session(fp32).run(None, {"images": calib[1][None]})[0]


def assert_close_to_fp32(int8, calib, ref):
    out = ort_session(int8).run(None, {"images": calib[1][None]})[0]
    rel = np.linalg.norm(out - ref) / np.linalg.norm(ref)
    assert rel < 0.1, rel  # quantisation noise, not a different function
    assert (out.argmax(1) == ref.argmax(1)).mean() > 0.8


def test_quantize_rdsnet_close_to_fp32(rdsnet_fp32):
    # Closeness with the mode lightseg chooses for the CPU running the test: a full-range u8s8 model is not
    # exact on x86 without VNNI (that is why the mode exists).
    fp32, calib, ref = rdsnet_fp32
    int8 = quantize_onnx(fp32, calib)
    assert metadata(int8)["lightseg.int8_mode"] == choose_int8_mode()[0]
    types = node_types(int8)
    assert types.count("QuantizeLinear") > 5 and types.count("DequantizeLinear") > 10  # QDQ around the convs
    graph = onnx.load_model_from_string(int8).graph
    resize = next(n for n in graph.node if n.op_type == "Resize")
    producer = next(n for n in graph.node if resize.input[0] in n.output)
    assert producer.op_type == "DequantizeLinear"  # the final upsampling runs in float, as documented
    assert len(int8) < 0.5 * len(fp32)  # int8 weights
    assert_close_to_fp32(int8, calib, ref)


@pytest.mark.parametrize("mode", INT8_MODES)
def test_int8_modes_store_their_weight_format(mode, rdsnet_fp32):
    fp32, calib, ref = rdsnet_fp32
    int8 = quantize_onnx(fp32, calib, mode=mode)
    weights = int8_weights(int8)
    assert len(weights) > 10
    if mode == "u8u8":
        assert all(w.dtype == np.uint8 for w in weights)
    else:
        assert all(w.dtype == np.int8 for w in weights)
        largest = max(int(np.abs(w.astype(np.int32)).max()) for w in weights)
        # symmetric per channel: each channel's largest weight maps to the end of the range
        assert largest == (64 if mode == "u8s8_reduce_range" else 127)
    meta = metadata(int8)
    assert meta["lightseg.int8_mode"] == mode and meta["lightseg.int8_chosen_on"]
    if mode_warning(mode) is None:  # every mode this CPU computes without saturation is close to fp32 too
        assert_close_to_fp32(int8, calib, ref)


def test_int8_runtime_batches_and_calibrates_per_shape():
    model = scramble(lightseg.create_model("mininet_95k", num_classes=4))
    rt = Runtime(model, backend="onnxruntime_int8", calibration_count=2)
    assert rt.int8_mode == choose_int8_mode()[0]  # this CPU's mode, the one the bound below is for
    x = torch.from_numpy(np.stack(calibration_images(None, (64, 96), count=2)))
    out = rt(x)
    with torch.no_grad():
        ref = model(x)
    assert out.shape == ref.shape == (2, 4, 64, 96) and out.dtype == torch.float32
    assert torch.linalg.norm(out - ref) / torch.linalg.norm(ref) < 0.15
    with pytest.raises(LightsegError, match="float32 only"):
        Runtime(model, backend="onnxruntime_int8", dtype="float16")
    with pytest.raises(LightsegError, match="onnxruntime_int8"):
        Runtime(model, backend="onnxruntime", int8_mode="u8u8")


@pytest.mark.parametrize("name", lightseg.list_models())
def test_every_model_quantizes_and_runs(name):
    model = lightseg.create_model(name, num_classes=6).eval()
    size = (96, 128)
    int8 = quantize_onnx(export_to_bytes(model, size), calibration_images(None, size, count=1))
    out = ort_session(int8).run(None, {"images": np.zeros((1, 3, *size), np.float32)})[0]
    assert out.shape == (1, 6, *size) and np.isfinite(out).all()
    assert "QLinearConv" in node_types(int8) or "DequantizeLinear" in node_types(int8)


def test_export_int8_cli(tmp_path, capsys):
    for i in range(3):
        write_rgb(tmp_path / "calib" / f"{i}.jpg", np.random.default_rng(i).integers(0, 256, (40, 60, 3)))
    out = tmp_path / "rds_int8.onnx"
    assert main(["export", "--model", "rdsnet", "--num-classes", "5", "--size", "64", "96", "--int8",
                 "--calib", str(tmp_path / "calib"), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "int8 vs PyTorch fp32" in text and "argmax agreement" in text and "int8" in text.splitlines()[-1]
    assert "DequantizeLinear" in node_types(out.read_bytes())
    logits = Runtime(out, backend="onnxruntime")(torch.zeros(1, 3, 64, 96))  # the file runs as it is
    assert logits.shape == (1, 5, 64, 96)
    # calibration options without --int8, and a calibration folder that is not there: exit 2, nothing written
    for argv, words in [(["--calib", str(tmp_path / "calib")], ["--int8"]),
                        (["--int8", "--calib", str(tmp_path / "nope")], ["nope", "does not exist"])]:
        target = tmp_path / "x.onnx"
        assert main(["export", "--model", "rdsnet", "--size", "64", "96", *argv, "-o", str(target)]) == 2
        err = capsys.readouterr().err
        assert all(w in err for w in words) and "Traceback" not in err, err
        assert not target.exists()
    # an ONNX file given to the int8 backend is refused with the way to quantise it
    with pytest.raises(LightsegError, match="--int8"):
        Runtime(out, backend="onnxruntime_int8")


def test_export_records_the_int8_mode_and_loading_flags_a_saturating_cpu(tmp_path, capsys, monkeypatch):
    import lightseg.deploy.quantize as quantize

    out = tmp_path / "full.onnx"
    assert main(["export", "--model", "rdsnet", "--num-classes", "3", "--size", "64", "64", "--int8",
                 "--int8-mode", "u8s8", "--calib-count", "1", "-o", str(out)]) == 0
    assert "int8 mode u8s8 (requested)" in capsys.readouterr().out
    assert metadata(out.read_bytes())["lightseg.int8_mode"] == "u8s8"
    # the same file loaded on an AVX2 CPU without VNNI: a warning naming the mode to export with
    monkeypatch.setattr(quantize, "cpu_info", lambda: cpu_from_flags("avx2 fma", model="AMD EPYC 7B13"))
    with pytest.warns(UserWarning, match="u8s8_reduce_range"):
        rt = Runtime(out, backend="onnxruntime")
    assert rt.int8_mode == "u8s8"
    monkeypatch.setattr(quantize, "cpu_info", lambda: cpu_from_flags("avx2 fma avx512bw avx512_vnni"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Runtime(out, backend="onnxruntime")  # a VNNI CPU: nothing to say
    # auto on the injected AVX2 CPU exports 7-bit weights
    monkeypatch.setattr(quantize, "cpu_info", lambda: cpu_from_flags("avx2 fma"))
    r = export_onnx(lightseg.create_model("rdsnet", num_classes=3), tmp_path / "auto.onnx", input_size=(64, 64), int8=True,
                    calibration_count=1, verbose=False)
    assert r["int8_mode"] == "u8s8_reduce_range" == metadata((tmp_path / "auto.onnx").read_bytes())["lightseg.int8_mode"]
    # --int8-mode without --int8: exit 2, nothing written
    assert main(["export", "--model", "rdsnet", "--size", "64", "64", "--int8-mode", "u8u8", "-o", str(tmp_path / "x.onnx")]) == 2
    assert "--int8" in capsys.readouterr().err and not (tmp_path / "x.onnx").exists()


def test_export_onnx_int8_python_api(tmp_path):
    model = scramble(lightseg.create_model("rdsnet", num_classes=3))
    r = export_onnx(model, tmp_path / "m.onnx", input_size=(64, 64), int8=True, calibration_count=2, verbose=False)
    assert r["int8"] and r["ok"] and 0.0 <= r["argmax_agreement"] <= 100.0
    assert (tmp_path / "m.onnx").stat().st_size == r["bytes"]


def test_dynamic_int8_export_runs_at_other_sizes(tmp_path):
    model = scramble(lightseg.create_model("mininet_95k", num_classes=3))
    r = export_onnx(model, tmp_path / "d.onnx", input_size=(64, 96), dynamic=True, int8=True, calibration_count=1, verbose=False)
    assert r["int8"] and r["dynamic"]
    x = torch.randn(2, 3, 80, 112)
    out = Runtime(tmp_path / "d.onnx", backend="onnxruntime")(x)
    with torch.no_grad():
        ref = model(x)
    assert out.shape == ref.shape == (2, 3, 80, 112)
