"""`lightseg predict` on an image, a folder and a video; both backends; bad inputs (issue 5)."""
import cv2
import numpy as np
import pytest
import torch

import lightseg
from lightseg.checkpoint import save_checkpoint
from lightseg.cli import main
from lightseg.data.base import NORMALIZATIONS
from lightseg.data.classes import CAMVID_CLASSES, CAMVID_PALETTE
from lightseg.deploy.predict import predict
from lightseg.errors import LightsegError

MODEL = "dualaspp_mobilenetv3_small"  # the smallest registered model: fast at these sizes


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A checkpoint as `lightseg train` writes it (random weights), and the model itself."""
    torch.manual_seed(0)
    model = lightseg.create_model(MODEL, num_classes=11).eval()
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    save_checkpoint({"model": model.state_dict(), "model_name": MODEL, "num_classes": 11,
                     "classes": list(CAMVID_CLASSES), "palette": [list(c) for c in CAMVID_PALETTE],
                     "config": {"data": {"normalize": "minus_one_one"}}}, path)
    return path, model


def write_image(path, h=80, w=112, seed=0):
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return rgb


def read_rgb(path):
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def test_image_outputs_match_the_model(trained, tmp_path):
    ckpt, model = trained
    rgb = write_image(tmp_path / "street.png")
    out = tmp_path / "out"
    s = predict(MODEL, ckpt, tmp_path / "street.png", out)
    assert s["images"] == 1 and s["normalize"] == "minus_one_one" and len(s["files"]) == 3

    # the label map is the model's argmax on the checkpoint's normalisation (x / 127.5 - 1)
    mean, std = NORMALIZATIONS["minus_one_one"]
    x = (torch.from_numpy(rgb).permute(2, 0, 1)[None].float() - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model(x)[0].argmax(0).numpy()
    label = cv2.imread(str(out / "street_label.png"), cv2.IMREAD_UNCHANGED)
    assert label.dtype == np.uint8 and label.shape == (80, 112)
    np.testing.assert_array_equal(label, expected)
    colour = read_rgb(out / "street_color.png")
    np.testing.assert_array_equal(colour, np.array(CAMVID_PALETTE, np.uint8)[label])
    overlay = read_rgb(out / "street_overlay.png")
    assert overlay.shape[0] == 80 and overlay.shape[1] > 112  # legend panel to the right
    blended = np.floor(0.5 * rgb.astype(np.float32) + 0.5 * colour + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(overlay[:, :112], blended)


def test_folder_both_backends_same_labels_and_nothing_deleted(trained, tmp_path):
    ckpt, _ = trained
    src = tmp_path / "imgs"
    src.mkdir()
    write_image(src / "a.png", seed=1)
    write_image(src / "b.jpg", 72, 100, seed=2)
    (src / "notes.txt").write_text("not an image; skipped in a folder")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    labels = {}
    for backend in ["eager", "onnxruntime"]:
        s = predict(MODEL, ckpt, src, out / backend, backend=backend, size=(64, 96))
        assert s["images"] == 2 and s["fps"] > 0
        names = sorted(p.name for p in (out / backend).iterdir())
        assert names == sorted(f"{stem}_{k}.png" for stem in "ab" for k in ("label", "color", "overlay"))
        labels[backend] = [cv2.imread(str(out / backend / f"{stem}_label.png"), cv2.IMREAD_UNCHANGED) for stem in "ab"]
    assert labels["eager"][1].shape == (72, 100)  # --size resizes the model input, not the output
    for e, o in zip(labels["eager"], labels["onnxruntime"]):
        np.testing.assert_array_equal(e, o)
    assert (out / "keep.txt").read_text() == "mine"
    # int8, calibrated on the folder itself: same outputs written, labels mostly those of fp32
    s = predict(MODEL, ckpt, src, out / "int8", backend="onnxruntime_int8", size=(64, 96), calibration=src)
    assert s["images"] == 2 and s["backend"] == "onnxruntime_int8"
    for stem, e in zip("ab", labels["eager"]):
        q = cv2.imread(str(out / "int8" / f"{stem}_label.png"), cv2.IMREAD_UNCHANGED)
        assert q.shape == e.shape and (q == e).mean() > 0.8
    with pytest.raises(LightsegError, match="onnxruntime_int8"):
        predict(MODEL, ckpt, src, out / "x", backend="onnxruntime", calibration=src)


def test_video_annotated_and_readable(trained, tmp_path, capsys):
    ckpt, _ = trained
    video = tmp_path / "drive.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (96, 64))
    assert writer.isOpened()
    for i in range(6):
        writer.write(np.full((64, 96, 3), 40 * i, np.uint8))
    writer.release()
    assert main(["predict", "--model", MODEL, "--checkpoint", str(ckpt), "--input", str(video),
                 "--output", str(tmp_path / "out"), "--backend", "onnxruntime"]) == 0
    assert "6 video frame(s)" in capsys.readouterr().out
    cap = cv2.VideoCapture(str(tmp_path / "out" / "drive_overlay.mp4"))
    frames = []
    ok, frame = cap.read()
    while ok:
        frames.append(frame)
        ok, frame = cap.read()
    cap.release()
    assert len(frames) == 6
    assert frames[0].shape[0] == 64 and frames[0].shape[1] > 96  # frame + legend
    # the FPS label: white text (frame 0 is black, so its blend stays <= 0.5 * 222) with a black outline
    # (frame 5 is grey 200, so its blend stays >= 100) in the top-left corner
    assert (frames[0][5:30, 5:120].min(axis=2) > 200).sum() > 30
    assert (frames[-1][5:30, 5:120].max(axis=2) < 40).sum() > 30
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["drive_overlay.mp4"]  # no temp file left


def test_bad_inputs_exit_2(trained, tmp_path, capsys):
    ckpt, _ = trained
    (tmp_path / "readme.txt").write_text("hello")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    (tmp_path / "broken.mp4").write_bytes(b"\0" * 100)
    (tmp_path / "empty").mkdir()
    cases = [
        (["--input", str(tmp_path / "readme.txt")], ["readme.txt", "not an image or a video"]),
        (["--input", str(tmp_path / "broken.png")], ["broken.png"]),
        (["--input", str(tmp_path / "broken.mp4")], ["broken.mp4", "cannot read video"]),
        (["--input", str(tmp_path / "empty")], ["holds no images"]),
        (["--input", str(tmp_path / "missing.png")], ["missing.png", "not found"]),
    ]
    for argv, words in cases:
        assert main(["predict", "--model", MODEL, "--checkpoint", str(ckpt), *argv, "--output", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert all(w in err for w in words) and "Traceback" not in err, err
    write_image(tmp_path / "ok.png")
    assert main(["predict", "--model", "mininet_95k", "--checkpoint", str(ckpt), "--input", str(tmp_path / "ok.png")]) == 2
    err = capsys.readouterr().err
    assert f"holds a {MODEL!r} model" in err and f"--model {MODEL}" in err
