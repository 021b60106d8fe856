"""lightseg.Segmenter, the one high-level API, and the deploy package's layering (issue 14)."""
import ast
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import lightseg
from lightseg.cli import main
from lightseg.data.classes import CAMVID_CLASSES
from lightseg.devices import resolve_device
from lightseg.errors import LightsegError
from lightseg.viz import overlay

from test_predict import trained  # noqa: F401 - fixture: a checkpoint as `lightseg train` writes it


@pytest.fixture
def ckpt(trained):  # noqa: F811
    return trained[0]


def images(n=2, h=72, w=96):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


@pytest.mark.parametrize("backend", ["eager", "onnxruntime", "onnxruntime_int8"])
def test_segmenter_gives_the_labels_of_lightseg_predict(ckpt, tmp_path, backend):
    rgb = images(1)[0]
    assert cv2.imwrite(str(tmp_path / "street.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    kwargs = {"calibration": str(tmp_path)} if backend == "onnxruntime_int8" else {}
    seg = lightseg.Segmenter.from_checkpoint(ckpt, backend=backend, **kwargs)
    assert seg.classes == list(CAMVID_CLASSES) and seg.device.type == "cpu"
    label = seg(rgb)
    assert label.shape == (72, 96) and label.dtype == np.uint8 and label.max() < 11
    argv = ["predict", "--checkpoint", str(ckpt), "--input", str(tmp_path / "street.png"), "--output", str(tmp_path / "out"),
            "--backend", backend] + (["--calib", str(tmp_path)] if kwargs else [])
    assert main(argv) == 0  # no --model: the checkpoint names it
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "out" / "street_label.png"), cv2.IMREAD_UNCHANGED), label)
    if backend != "eager":
        eager = lightseg.Segmenter.from_checkpoint(ckpt)(rgb)
        agreement = (eager == label).mean()
        assert agreement == 1.0 if backend == "onnxruntime" else agreement > 0.8


def test_segmenter_batches_lists_and_draws_overlays(ckpt):
    seg = lightseg.Segmenter.from_checkpoint(ckpt)
    calls = []
    real = seg.runtime

    class Counting:
        def prepare(self, shape):
            real.prepare(shape)

        def __call__(self, x):
            calls.append(tuple(x.shape))
            return real(x)

    seg._runner.runtime = Counting()
    imgs = images(3) + images(1, 80, 64)
    labels = seg(imgs, batch_size=2)
    assert calls == [(2, 3, 72, 96), (1, 3, 72, 96), (1, 3, 80, 64)]  # batches of 2, split at the size change
    singles = [seg(img) for img in imgs]
    for a, b in zip(labels, singles):
        np.testing.assert_array_equal(a, b)
    picture = seg.overlay(imgs[0])
    assert picture.shape[0] == 72 and picture.shape[1] > 96  # legend to the right
    np.testing.assert_array_equal(picture[:, :96], overlay(imgs[0], singles[0], seg.palette))
    np.testing.assert_array_equal(seg.overlay(imgs[0], singles[0], legend=False), overlay(imgs[0], singles[0], seg.palette))
    t = seg.timing()
    assert t["warm_calls"] == len(seg.latencies_ms) - 1 and t["first_ms"] == round(seg.latencies_ms[0], 2)
    assert t["median_ms"] > 0 and t["fps"] == pytest.approx(1000 / t["median_ms"], rel=0.01)


def test_segmenter_input_errors_and_slide_mode(ckpt):
    seg = lightseg.Segmenter.from_checkpoint(ckpt)
    for bad, word in [(np.zeros((64, 64), np.uint8), "grey"), (np.zeros((64, 64, 4), np.uint8), "RGBA"),
                      (np.zeros((64, 64, 3), np.float32), "float"), ([[1, 2]], "RGB uint8")]:
        with pytest.raises(LightsegError, match=word):
            seg(bad) if not isinstance(bad, list) else seg.predict_batch(bad)
    rgb = images(1, 96, 128)[0]
    whole = seg(rgb)
    same = lightseg.Segmenter.from_checkpoint(ckpt, mode="slide", crop=(96, 128))(rgb)
    np.testing.assert_array_equal(same, whole)  # one window as large as the image is the whole image
    tiled = lightseg.Segmenter.from_checkpoint(ckpt, mode="slide", crop=(64, 64), stride=(32, 32))(rgb)
    assert tiled.shape == whole.shape
    with pytest.raises(LightsegError, match="crop"):
        lightseg.Segmenter.from_checkpoint(ckpt, mode="slide")
    with pytest.raises(LightsegError, match="backend"):
        lightseg.Segmenter.from_checkpoint(ckpt, backend="tensorrt")


def test_device_auto_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("lightseg.devices.mps_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr("lightseg.devices.mps_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("lightseg.devices.mps_available", lambda: False)
    for name in ("cuda", "mps"):
        with pytest.raises(LightsegError, match=f"{name}.*not available"):
            resolve_device(name)


# ------------------------------------------------------------------ structure
DEPLOY_LAYERS = {"fuse": 0, "quantize": 0, "roofline": 0, "metadata": 0, "export": 1, "format_openvino": 2,
                 "format_executorch": 2, "format_ncnn": 2, "runtime": 3, "segmenter": 4, "predict": 5, "bench": 5,
                 "commands": 5}


def _deploy_imports(path: Path):
    """Names of lightseg.deploy modules that ``path`` imports (at any depth in the file)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            out.add(node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.level == 1:
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lightseg.deploy."):
            out.add(node.module.split(".")[2])
    return out


def test_deploy_package_imports_point_one_way():
    """export at the bottom, runtime above it, the Segmenter above that, predict/bench/commands on top:
    no module imports one of its own layer or above (so no import circle)."""
    folder = Path(lightseg.__file__).parent / "deploy"
    modules = {p.stem for p in folder.glob("*.py") if p.stem != "__init__"}
    assert modules <= set(DEPLOY_LAYERS), f"place the new deploy modules in DEPLOY_LAYERS: {modules - set(DEPLOY_LAYERS)}"
    for name in modules:
        for dep in _deploy_imports(folder / f"{name}.py"):
            assert DEPLOY_LAYERS[dep] < DEPLOY_LAYERS[name], f"deploy/{name}.py imports deploy/{dep}.py (same layer or above)"
