"""lightseg export --format onnx|openvino|executorch|ncnn: self-describing files, parity, and running them
through Segmenter.from_exported and `lightseg predict --checkpoint FILE` with no --model."""
import importlib.util

import cv2
import numpy as np
import onnx
import pytest
import torch

import lightseg
from lightseg.checkpoint import save_checkpoint
from lightseg.cli import main
from lightseg.deploy.export import export_to_bytes
from lightseg.deploy.metadata import MetadataError, read_metadata, state_dict_sha256

from test_export import randomize

CLASSES = ["road", "car", "sky", "tree", "person"]
PALETTE = [[128, 64, 128], [0, 0, 142], [70, 130, 180], [107, 142, 35], [220, 20, 60]]
PACKAGES = {"onnx": "onnxruntime", "openvino": "openvino", "executorch": "executorch", "ncnn": "ncnn"}
NAMES = {"onnx": "m.onnx", "openvino": "m.xml", "executorch": "m.pte", "ncnn": "m.ncnn.param"}


def _needs(fmt):
    if importlib.util.find_spec(PACKAGES[fmt]) is None or (fmt == "ncnn" and importlib.util.find_spec("pnnx") is None):
        pytest.skip(f"{PACKAGES[fmt]} is not installed: pip install 'lightseg[{fmt}]'")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    model = randomize(lightseg.create_model("mininet_95k", num_classes=5))
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    save_checkpoint({"model": model.state_dict(), "model_name": "mininet_95k", "num_classes": 5, "classes": CLASSES,
                     "palette": PALETTE, "config": {"data": {"normalize": "minus_one_one"}}}, path)
    return path, model


@pytest.mark.parametrize("fmt", ["onnx", "openvino", pytest.param("executorch", marks=pytest.mark.slow), "ncnn"])
def test_export_runs_alone_through_segmenter_and_predict(fmt, ckpt, tmp_path, capsys):
    _needs(fmt)
    path, model = ckpt
    out = tmp_path / NAMES[fmt]
    assert main(["export", "--checkpoint", str(path), "--size", "64", "96", "--format", fmt, "-o", str(out)]) == 0
    text = capsys.readouterr()
    assert "argmax agreement" in text.out and "OK" in text.out and "random weights" not in text.err
    meta = read_metadata(out)  # metadata round trip
    assert meta["model"] == "mininet_95k" and meta["classes"] == CLASSES and meta["palette"] == PALETTE
    assert meta["normalize"] == "minus_one_one" and meta["mean"] == [127.5] * 3 and meta["input_size"] == [64, 96]
    assert meta["channel_order"] == "RGB" and meta["format"] == fmt and meta["lightseg_version"] == lightseg.__version__
    assert meta["weights_sha256"] == state_dict_sha256(model) and meta["weights_source"] == str(path)

    rgb = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    seg = lightseg.Segmenter.from_exported(out)
    assert seg.classes == CLASSES and seg.normalize == "minus_one_one" and seg.backend == {"onnx": "onnxruntime"}.get(fmt, fmt)
    label = seg(rgb)
    reference = lightseg.Segmenter.from_checkpoint(path)(rgb)
    assert (label == reference).mean() >= 0.99
    assert cv2.imwrite(str(tmp_path / "street.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert main(["predict", "--checkpoint", str(out), "--input", str(tmp_path / "street.png"),
                 "--output", str(tmp_path / "pred")]) == 0  # no --model, no --backend: the file says both
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "pred" / "street_label.png"), cv2.IMREAD_UNCHANGED), label)


def test_ncnn_fp16_is_held_to_its_own_tolerance(ckpt, tmp_path, capsys):
    _needs("ncnn")
    path, model = ckpt
    out = tmp_path / "h.ncnn.param"
    assert main(["export", "--checkpoint", str(path), "--size", "64", "96", "--precision", "fp16", "-o", str(out)]) == 0
    assert "agreement >= 99%" in capsys.readouterr().out
    assert read_metadata(out)["precision"] == "fp16"
    assert (tmp_path / "h.ncnn.bin").stat().st_size < 0.6 * sum(p.numel() * 4 for p in model.parameters())  # fp16 weights


def test_files_without_lightseg_metadata_are_refused(ckpt, tmp_path, capsys):
    path, model = ckpt
    plain = tmp_path / "plain.onnx"
    plain.write_bytes(export_to_bytes(model, (64, 96)))
    with pytest.raises(MetadataError, match="no lightseg metadata.*lightseg export"):
        lightseg.Segmenter.from_exported(plain)
    assert cv2.imwrite(str(tmp_path / "a.png"), np.zeros((64, 96, 3), np.uint8))
    assert main(["predict", "--checkpoint", str(plain), "--input", str(tmp_path / "a.png"), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no lightseg metadata" in err and "--format onnx" in err and "Traceback" not in err
    side = tmp_path / "x.pte"
    side.write_bytes(b"\0")
    with pytest.raises(MetadataError, match="x.pte.json"):
        read_metadata(side)


def test_random_weights_warn_and_metadata_survives_int8(tmp_path, capsys):
    out = tmp_path / "r.onnx"
    assert main(["export", "--model", "mininet_95k", "--size", "64", "96", "--int8", "--calib-count", "1", "-o", str(out)]) == 0
    assert "random weights: pass --checkpoint or --weights" in capsys.readouterr().err
    meta = read_metadata(out)
    assert meta["weights_source"] == "random" and meta["precision"] == "int8" and meta["int8_mode"]
    keys = [p.key for p in onnx.load(str(out)).metadata_props]
    assert "lightseg.int8_mode" in keys and "lightseg.metadata" in keys


def test_export_format_and_name_must_agree(ckpt, tmp_path, capsys):
    path, _ = ckpt
    for argv, words in [(["--format", "ncnn", "-o", str(tmp_path / "m.xml")], ["openvino", "model.ncnn.param"]),
                        (["--format", "openvino", "--int8", "-o", str(tmp_path / "m.xml")], ["--int8"]),
                        (["-o", str(path)], ["checkpoint"])]:
        assert main(["export", "--checkpoint", str(path), "--size", "64", "96", *argv]) == 2
        err = capsys.readouterr().err
        assert all(w in err for w in words) and "Traceback" not in err, err


def test_openvino_precision_follows_the_cpu():
    from lightseg.deploy.format_openvino import default_precision
    from lightseg.hardware import cpu_from_flags

    assert default_precision(cpu_from_flags("avx2 avx512f avx512_vnni")) == "f32"
    assert default_precision(cpu_from_flags("avx512f avx512_bf16")) == "bf16"
    assert default_precision(cpu_from_flags("amx_tile amx_bf16 amx_int8")) == "bf16"


# lightseg's OpenVINO runners made and released in the order bench makes them (its openvino and peer_openvino
# rows), then a signal whose handler runs on the thread's alternate signal stack (Python installs its handlers
# with SA_ONSTACK). With one openvino.Core per runner, the stack left installed was unmapped memory and the
# kernel killed the process with SIGSEGV here; a DataLoader worker's SIGCHLD did the same in the test suite.
RUNNERS_RELEASED_THEN_A_SIGNAL = r"""
import gc, os, signal, sys, tempfile
import lightseg
from lightseg.deploy.bench import PeerOpenVINO
from lightseg.deploy.format_openvino import OpenVINOModel, convert

model = lightseg.create_model("mininet_95k", num_classes=2).eval()
xml = convert(model, (64, 64), tempfile.mkdtemp(), "m.xml")
runners = [OpenVINOModel(xml, precision="f32"), OpenVINOModel(xml, precision="f32"), PeerOpenVINO(model)]
runners[2].prepare((1, 3, 64, 64))
while runners:
    runners.pop(0)
    gc.collect()
signal.signal(signal.SIGUSR1, lambda *_: print("handled"))
os.kill(os.getpid(), signal.SIGUSR1)
"""


def test_openvino_runners_released_in_order_leave_signals_working():
    import subprocess
    import sys

    _needs("openvino")
    run = subprocess.run([sys.executable, "-c", RUNNERS_RELEASED_THEN_A_SIGNAL], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.split() == ["handled"], (run.returncode, run.stdout, run.stderr[-2000:])
