"""lightseg eval of the deployed model: `eval --checkpoint model.onnx|.xml|.pte|.ncnn.param` (the file's metadata
names the model, classes and normalisation) and `eval --backend openvino|executorch|ncnn` of a .pt score what
PyTorch scores, within each format's tolerance."""
import json

import cv2
import numpy as np
import pytest

import lightseg
from lightseg.checkpoint import save_checkpoint
from lightseg.cli import main

from test_deploy_formats import NAMES, _needs
from test_export import randomize

CLASSES = ["ground", "square"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A 2-image folder dataset at 64x64, a 2-class mininet_95k checkpoint (random weights, BatchNorm statistics
    made non-trivial) trained 'on it' with minus_one_one normalisation, and the recipe that evaluates it."""
    root = tmp_path_factory.mktemp("deploy_eval")
    rng = np.random.default_rng(0)
    for d in ("images", "labels"):
        (root / "data" / d).mkdir(parents=True)
    for i in range(2):
        label = np.zeros((64, 64), np.uint8)
        label[10 + 8 * i:40 + 8 * i, 12:44] = 1
        image = (label[..., None] * 150 + rng.integers(0, 100, (64, 64, 3))).astype(np.uint8)
        cv2.imwrite(str(root / "data" / "images" / f"s{i}.png"), image)
        cv2.imwrite(str(root / "data" / "labels" / f"s{i}.png"), label)
    model = randomize(lightseg.create_model("mininet_95k", num_classes=2))
    ckpt = root / "run" / "best.pt"
    save_checkpoint({"model": model.state_dict(), "model_name": "mininet_95k", "num_classes": 2, "classes": CLASSES,
                     "palette": [[0, 0, 0], [255, 255, 255]], "config": {"data": {"normalize": "minus_one_one"}}}, ckpt)
    recipe = root / "recipe.yaml"
    recipe.write_text(f"model: {{name: mininet_95k, num_classes: 2}}\n"
                      f"data: {{name: folder, root: {root / 'data'}, image_dir: images, label_dir: labels, "
                      f"classes: {CLASSES}, normalize: minus_one_one, num_workers: 0}}\n"
                      f"train: {{device: cpu}}\noutput_dir: {root / 'out'}\n")
    return root, recipe, ckpt


def _eval(recipe, checkpoint, out, capsys, *extra):
    assert main(["eval", str(recipe), "--checkpoint", str(checkpoint), "--json", "--output", str(out), *extra]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def reference(setup, tmp_path_factory):
    root, recipe, ckpt = setup
    out = tmp_path_factory.mktemp("ref") / "m.json"
    assert main(["eval", str(recipe), "--checkpoint", str(ckpt), "--output", str(out)]) == 0
    return json.loads(out.read_text())


# fp32 formats pass their export's parity check (argmax equal on >= 99.9% of the pixels of a random input); agreeing
# as well on these 8192 pixels, at most 8 labels move, each moving the mIoU by at most 1/1920 (each class's union
# holds at least 1920 pixels: the squares cover 2 x 960): 0.01 bounds the change with room. ncnn runs fp32 by default
# (pnnx's fp16 weights and ncnn's fp16 storage/arithmetic off), so it is held to the same bound.
FP32_MIOU_TOL = 0.01


@pytest.mark.parametrize("fmt", ["onnx", "openvino", pytest.param("executorch", marks=pytest.mark.slow), "ncnn"])
def test_eval_of_an_export_scores_what_pytorch_scores(fmt, setup, reference, tmp_path, capsys):
    _needs(fmt)
    root, recipe, ckpt = setup
    exported = tmp_path / NAMES[fmt]
    assert main(["export", "--checkpoint", str(ckpt), "--size", "64", "64", "-o", str(exported)]) == 0
    capsys.readouterr()
    report = _eval(recipe, exported, tmp_path / "m.json", capsys)  # no --model, no --backend: the file says both
    assert report["backend"] == {"onnx": "onnxruntime"}.get(fmt, fmt) and report["model"] == "mininet_95k"
    assert report["num_images"] == 2 and report["checkpoint"] == str(exported)
    assert abs(report["miou"] - reference["miou"]) <= FP32_MIOU_TOL, (report["miou"], reference["miou"])
    assert sum(map(sum, report["confusion_matrix"])) == sum(map(sum, reference["confusion_matrix"]))


def test_eval_backend_of_a_checkpoint_and_refusals(setup, reference, tmp_path, capsys):
    _needs("openvino")
    root, recipe, ckpt = setup
    report = _eval(recipe, ckpt, tmp_path / "ov.json", capsys, "--backend", "openvino", "--precision", "f32")
    assert report["backend"] == "openvino" and report["precision"] == "f32"
    assert abs(report["miou"] - reference["miou"]) <= FP32_MIOU_TOL
    # a static export at another size than the images: refused at the first image with the fix, no traceback
    small = tmp_path / "small.xml"
    assert main(["export", "--checkpoint", str(ckpt), "--size", "64", "96", "-o", str(small)]) == 0
    capsys.readouterr()
    assert main(["eval", str(recipe), "--checkpoint", str(small), "--output", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert "exported for 64x96" in err and "--size 64 64" in err and "Traceback" not in err
    # the file's format decides the backend; another one is refused naming the right one
    assert main(["eval", str(recipe), "--checkpoint", str(small), "--backend", "ncnn"]) == 2
    assert "--backend openvino" in capsys.readouterr().err
    # --precision where it would be ignored (eager PyTorch) is refused rather than dropped
    assert main(["eval", str(recipe), "--checkpoint", str(ckpt), "--precision", "fp16"]) == 2
    assert "--precision applies to --backend openvino or ncnn, not eager" in capsys.readouterr().err


def test_eval_and_predict_backend_auto_share_one_measurement(setup, reference, tmp_path, capsys, monkeypatch):
    from lightseg.deploy import auto

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("LIGHTSEG_CACHE", raising=False)
    monkeypatch.setattr(auto, "AUTO_CANDIDATES", ("eager", "onnxruntime"))  # two quick ones
    root, recipe, ckpt = setup
    report = _eval(recipe, ckpt, tmp_path / "a.json", capsys, "--backend", "auto")
    assert report["backend"] in ("eager", "onnxruntime") and report["backend_auto"]["cached"] is False
    assert abs(report["miou"] - reference["miou"]) <= FP32_MIOU_TOL
    # the same weights at the same size on the same CPU: predict reads the choice eval measured
    assert main(["predict", "--checkpoint", str(ckpt), "--input", str(root / "data" / "images"), "--size", "64", "64",
                 "--backend", "auto", "--output", str(tmp_path / "pred")]) == 0
    out = capsys.readouterr()
    assert "measuring" not in out.err and f"({report['backend']}, cpu)" in out.out


def test_eval_of_an_ncnn_fp16_export_within_its_looser_bound(setup, reference, tmp_path, capsys):
    """ncnn with --precision fp16 stores fp16 weights and runs with ncnn's fp16 storage and arithmetic (where the CPU
    has them), which is why it differs from PyTorch: its export check allows argmax agreement down to 99%, so up to
    82 of these 8192 labels may move, each moving the mIoU by at most 1/1920 (the smallest class union here): 0.05
    bounds the change. The bound follows from the check, not from what one CPU happened to give."""
    _needs("ncnn")
    root, recipe, ckpt = setup
    exported = tmp_path / "h.ncnn.param"
    assert main(["export", "--checkpoint", str(ckpt), "--size", "64", "64", "--precision", "fp16", "-o", str(exported)]) == 0
    capsys.readouterr()
    report = _eval(recipe, exported, tmp_path / "m.json", capsys)
    assert report["backend"] == "ncnn" and report["precision"] == "fp16"
    assert abs(report["miou"] - reference["miou"]) <= 0.05, (report["miou"], reference["miou"])
