"""lightseg.Segmenter, the one high-level API, and the deploy package's layering."""
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
    calib = tmp_path / "calib"  # an output may not go inside an input folder: the calibration images apart
    calib.mkdir()
    assert cv2.imwrite(str(calib / "street.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    kwargs = {"calibration": str(calib)} if backend == "onnxruntime_int8" else {}
    seg = lightseg.Segmenter.from_checkpoint(ckpt, backend=backend, **kwargs)
    assert seg.classes == list(CAMVID_CLASSES) and seg.device.type == "cpu"
    label = seg(rgb)
    assert label.shape == (72, 96) and label.dtype == np.uint8 and label.max() < 11
    argv = ["predict", "--checkpoint", str(ckpt), "--input", str(tmp_path / "street.png"), "--output", str(tmp_path / "out"),
            "--backend", backend] + (["--calib", str(calib)] if kwargs else [])
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


@pytest.fixture(scope="module")
def seg(trained):  # noqa: F811 - one Segmenter for the tests that only call it
    return lightseg.Segmenter.from_checkpoint(trained[0])


def test_overlay_of_the_returned_label_runs_the_model_once(ckpt):
    seg = lightseg.Segmenter.from_checkpoint(ckpt)
    rgb = images(1)[0]
    label = seg(rgb)
    picture = seg.overlay(rgb, label)  # as README's first example
    assert len(seg.latencies_ms) == 1
    np.testing.assert_array_equal(picture, seg.overlay(rgb))  # the same picture as predicting it again
    assert len(seg.latencies_ms) == 2
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    np.testing.assert_array_equal(seg.overlay(bgr, label, channel_order="bgr"), picture)  # drawn in RGB
    with pytest.raises(LightsegError, match="one image"):
        seg.overlay(np.stack([rgb, rgb]))


def test_every_input_kind_gives_the_labels_of_the_rgb_array(seg, ckpt, tmp_path):
    from PIL import Image

    rgb, other = images(2)
    ref, ref_other = seg(rgb), seg(other)
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    assert cv2.imwrite(str(tmp_path / "street.png"), bgr)  # PNG: lossless, so the file holds rgb exactly
    chw = torch.from_numpy(rgb).permute(2, 0, 1)
    same = {
        "path str": seg(str(tmp_path / "street.png")),
        "pathlib.Path": seg.predict(source=tmp_path / "street.png"),
        "PIL RGB": seg(Image.fromarray(rgb)),
        "PIL RGBA": seg(Image.fromarray(rgb).convert("RGBA")),
        "BGR, call argument": seg(bgr, channel_order="bgr"),
        "BGR, Segmenter argument": lightseg.Segmenter.from_checkpoint(ckpt, channel_order="bgr")(bgr),
        "tensor CHW uint8": seg(chw),
        "tensor CHW float 0..1": seg(chw.float() / 255),
        "tensor CHW BGR": seg(chw.flip(0).contiguous(), channel_order="bgr"),
    }
    for kind, label in same.items():
        assert isinstance(label, np.ndarray) and label.shape == rgb.shape[:2], kind
        np.testing.assert_array_equal(label, ref, err_msg=kind)
    batches = {"NHWC array": seg(np.stack([rgb, other])), "NCHW tensor": seg(torch.from_numpy(np.stack([rgb, other])).permute(0, 3, 1, 2))}
    for kind, labels in batches.items():
        assert isinstance(labels, np.ndarray) and labels.shape == (2,) + rgb.shape[:2], kind
        np.testing.assert_array_equal(labels, np.stack([ref, ref_other]), err_msg=kind)
    mixed = seg([str(tmp_path / "street.png"), Image.fromarray(other), chw, np.stack([other, rgb])])
    assert isinstance(mixed, list) and len(mixed) == 5  # the batch inside the list adds its two images
    for label, want in zip(mixed, [ref, ref_other, ref, ref_other, ref]):
        np.testing.assert_array_equal(label, want)


def test_probabilities_are_the_softmax_of_the_model_and_their_argmax_is_the_label(seg, trained):  # noqa: F811
    from lightseg.data.base import NORMALIZATIONS

    rgb, other = images(2)
    label, probs = seg.predict(source=rgb, probs=True)
    np.testing.assert_array_equal(label, seg(rgb))
    assert probs.shape == (11,) + rgb.shape[:2] and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    # The class the label names holds the highest probability (argmax, ties included).
    np.testing.assert_array_equal(np.take_along_axis(probs, label[None].astype(np.int64), 0)[0], probs.max(0))
    # By hand: the checkpoint's normalisation (minus_one_one), the model, a softmax over the classes.
    mean, std = NORMALIZATIONS["minus_one_one"]
    x = (torch.from_numpy(rgb).permute(2, 0, 1).float()[None] - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        want = torch.softmax(trained[1](x), dim=1)[0].numpy()
    np.testing.assert_allclose(probs, want, atol=1e-4)
    labels, batch_probs = seg.predict(source=np.stack([rgb, other]), probs=True)
    assert labels.shape == (2,) + rgb.shape[:2] and batch_probs.shape == (2, 11) + rgb.shape[:2]
    np.testing.assert_allclose(batch_probs[0], probs, atol=1e-5)
    listed, listed_probs = seg.predict(source=[rgb, other], probs=True)
    assert isinstance(listed_probs, list) and len(listed_probs) == 2
    np.testing.assert_allclose(listed_probs[1], batch_probs[1], atol=1e-5)


def test_unusable_inputs_are_refused_naming_shape_dtype_and_fix(seg, trained, tmp_path):  # noqa: F811
    calls = len(seg.latencies_ms)
    cases = [
        (np.zeros((64, 64), np.uint8), r"uint8 of shape \(64, 64\).*np\.dstack"),
        (np.zeros((64, 64, 4), np.uint8), r"shape \(64, 64, 4\).*img\[\.\.\., :3\]"),
        (np.full((64, 64, 3), 0.5, np.float32), r"float32 of shape \(64, 64, 3\).*\* 255"),
        (np.zeros((3, 64, 64), np.uint8), r"shape \(3, 64, 64\).*transpose\(1, 2, 0\)"),
        (np.zeros((2, 3, 64, 64), np.uint8), r"shape \(2, 3, 64, 64\).*transpose\(0, 2, 3, 1\)"),
        (np.zeros((2, 64, 64, 4), np.uint8), r"shape \(64, 64, 4\).*RGBA"),
        (torch.full((3, 64, 64), 200.0), r"0\.\.1, got torch\.float32 in 200\.\.200.*by 255"),
        (torch.full((3, 64, 64), float("nan")), r"0\.\.1"),
        (torch.zeros(64, 64, 3, dtype=torch.uint8), r"shape \(64, 64, 3\).*permute\(2, 0, 1\)"),
        (torch.zeros(3, 64, 64, dtype=torch.int64), r"torch\.int64"),
        (42, r"cannot read a int.*image path"),
        (str(tmp_path / "missing.png"), r"missing\.png"),
    ]
    for bad, pattern in cases:
        with pytest.raises(LightsegError, match=pattern):
            seg(bad)
    with pytest.raises(LightsegError, match=r"channel_order='xyz'.*'bgr'"):
        seg(images(1)[0], channel_order="xyz")
    with pytest.raises(LightsegError, match="channel_order"):
        lightseg.Segmenter(trained[1], channel_order="BGRA")
    assert len(seg.latencies_ms) == calls  # nothing reached the model


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
DEPLOY_LAYERS = {"fuse": 0, "quantize": 0, "roofline": 0, "metadata": 0, "timing": 0, "export": 1, "format_openvino": 2,
                 "format_executorch": 2, "format_ncnn": 2, "runtime": 3, "auto": 4, "segmenter": 5, "predict": 6,
                 "bench": 6, "commands": 6}


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
