"""`lightseg predict` on an image, a folder and a video; both backends; bad inputs."""
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


# ------------------------------------------------------------------ inputs, batching, pipeline
def write_video(path, frames=6, h=64, w=96, fps=10.0):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    assert writer.isOpened()
    for i in range(frames):
        writer.write(np.full((h, w, 3), 40 * i % 256, np.uint8))
    writer.release()
    return path


def test_glob_batch_and_warm_timing(trained, tmp_path):
    ckpt, _ = trained
    src = tmp_path / "imgs"
    src.mkdir()
    for i in range(3):
        write_image(src / f"f{i}.png", seed=i)
    write_image(src / "other.jpg", seed=9)
    one = predict(None, ckpt, str(src / "f*.png"), tmp_path / "b1")  # a glob; --model comes from the checkpoint
    assert one["images"] == 3 and one["warm_calls"] == 2 and one["first_call_ms"] > 0 and one["fps"] > 0
    two = predict(MODEL, ckpt, str(src / "f*.png"), tmp_path / "b2", batch=2)
    assert two["batch"] == 2 and one["end_to_end_fps"] and two["end_to_end_fps"]
    for i in range(3):
        a = cv2.imread(str(tmp_path / "b1" / f"f{i}_label.png"), cv2.IMREAD_UNCHANGED)
        b = cv2.imread(str(tmp_path / "b2" / f"f{i}_label.png"), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(a, b)
    assert not (tmp_path / "b1" / "other_label.png").exists()
    # one image: a second, warm call is timed, so the FPS printed is not the first call's
    single = predict(MODEL, ckpt, src / "other.jpg", tmp_path / "b3")
    assert single["warm_calls"] == 1 and single["latency_ms_median"] > 0
    with pytest.raises(LightsegError, match="glob"):
        predict(MODEL, ckpt, str(src / "*.tif"), tmp_path / "b4")


def test_camera_without_camera_fails_clearly(trained, tmp_path, capsys):
    ckpt, _ = trained
    probe = cv2.VideoCapture(0)
    if probe.isOpened():
        probe.release()
        pytest.skip("this machine has a camera 0")
    assert main(["predict", "--checkpoint", str(ckpt), "--input", "0", "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "cannot open camera 0" in err and "Traceback" not in err
    assert not list((tmp_path / "o").glob("*.mp4"))


def test_stream_url_of_a_local_video_and_both_rates(trained, tmp_path, capsys):
    ckpt, _ = trained
    video = write_video(tmp_path / "drive.mp4", frames=8)
    assert main(["predict", "--checkpoint", str(ckpt), "--input", video.resolve().as_uri(), "--max-frames", "5",
                 "--output", str(tmp_path / "out"), "--size", "64", "96"]) == 0
    out = capsys.readouterr().out
    assert "5 stream frame(s)" in out and "ms/frame" in out and "end to end" in out and "warm-up" in out
    cap = cv2.VideoCapture(str(tmp_path / "out" / "drive_overlay.mp4"))
    count = 0
    while cap.read()[0]:
        count += 1
    assert count == 5
    assert main(["predict", "--checkpoint", str(ckpt), "--input", "file:///nonexistent/x.mp4"]) == 2
    assert "not found" in capsys.readouterr().err


def test_video_frames_stay_in_order(trained, tmp_path):
    ckpt, _ = trained
    video = write_video(tmp_path / "ramp.mp4", frames=7)
    s = predict(MODEL, ckpt, video, tmp_path / "out", backend="eager")
    assert s["frames"] == 7 and s["fps"] and s["end_to_end_fps"]
    cap = cv2.VideoCapture(str(tmp_path / "out" / "ramp_overlay.mp4"))
    means = []
    ok, frame = cap.read()
    while ok:
        means.append(float(frame[40:, 10:90].mean()))  # below the FPS text, left of the legend
        ok, frame = cap.read()
    assert len(means) == 7 and means == sorted(means)  # the input frames get brighter one by one


class FakeSegmenter:
    """Labels = the frame's first pixel; each model call sleeps a random time (the order must not depend on it)."""

    def __init__(self, fail_at=None):
        self.calls, self.fail_at = [], fail_at

    def prepare(self, frames):
        return torch.tensor([[float(f[0, 0, 0])] for f in frames])

    def scores(self, x, out_size):
        import time

        self.calls.append(x.shape[0])
        if self.fail_at is not None and int(x[0, 0]) == self.fail_at:
            raise LightsegError("model failed")
        time.sleep(np.random.default_rng(len(self.calls)).uniform(0, 0.01))
        return x.view(-1, 1, 1, 1).expand(-1, 1, *out_size)

    def labels(self, scores):
        return [s[0].numpy().astype(np.uint8) for s in scores]


def test_run_pipeline_order_batches_and_errors():
    from lightseg.deploy.predict import run_pipeline

    frames = [(i, np.full((4, 4, 3), i, np.uint8)) for i in range(10)]
    got = []
    seg = FakeSegmenter()
    assert run_pipeline(iter(frames), seg, lambda k, rgb, label: got.append((k, int(label[0, 0]))), batch_size=3) == 10
    assert got == [(i, i) for i in range(10)] and sum(seg.calls) == 10 and max(seg.calls) <= 3

    def bad_reader():
        yield frames[0]
        raise LightsegError("cannot decode frame 1")

    with pytest.raises(LightsegError, match="decode frame 1"):
        run_pipeline(bad_reader(), FakeSegmenter(), lambda *a: None)
    with pytest.raises(LightsegError, match="model failed"):
        run_pipeline(iter(frames), FakeSegmenter(fail_at=4), lambda *a: None)
    with pytest.raises(ValueError, match="writer"):
        run_pipeline(iter(frames), FakeSegmenter(), lambda k, *a: (_ for _ in ()).throw(ValueError("writer")) if k == 2 else None)


def test_show_window(trained, tmp_path, capsys, monkeypatch):
    ckpt, _ = trained
    video = write_video(tmp_path / "v.mp4", frames=6)
    argv = ["predict", "--checkpoint", str(ckpt), "--input", str(video), "--output", str(tmp_path / "o"), "--show"]
    try:
        cv2.namedWindow("lightseg-probe")
        cv2.destroyWindow("lightseg-probe")
    except cv2.error:  # headless OpenCV: a clear error, not a crash
        assert main(argv) == 2
        assert "--show needs an OpenCV build with a GUI" in capsys.readouterr().err
    shown = []
    monkeypatch.setattr(cv2, "namedWindow", lambda *a: None)
    monkeypatch.setattr(cv2, "destroyWindow", lambda *a: None)
    monkeypatch.setattr(cv2, "imshow", lambda name, bgr: shown.append(bgr))
    monkeypatch.setattr(cv2, "waitKey", lambda ms: ord("q") if len(shown) == 3 else -1)
    assert main(argv) == 0  # q after the third frame stops the run; the video of those frames is kept
    assert len(shown) == 3 and "3 video frame(s)" in capsys.readouterr().out
    assert (shown[2][5:30, 5:120].min(axis=2) > 200).sum() > 30  # the FPS text
    assert main(["predict", "--checkpoint", str(ckpt), "--input", str(video), "--show", "--output", str(tmp_path / "p"),
                 "--max-frames", "2"]) == 0


# ------------------------------------------------------------------ flags that would do nothing are refused
def test_window_flags_without_slide_and_max_frames_on_images_exit_2(trained, tmp_path, capsys):
    ckpt, _ = trained
    write_image(tmp_path / "a.png")
    base = ["predict", "--checkpoint", str(ckpt), "--input", str(tmp_path / "a.png"), "--output", str(tmp_path / "o")]
    cases = [
        (["--crop", "64", "64"], ["--crop", "add --mode slide"]),
        (["--stride", "32", "32"], ["--stride", "add --mode slide"]),
        (["--mode", "whole", "--crop", "64", "64", "--stride", "32", "32"], ["--crop and --stride", "add --mode slide"]),
        (["--max-frames", "3"], ["--max-frames 3", "video, camera or stream", "drop --max-frames"]),
    ]
    for extra, words in cases:
        assert main([*base, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert all(w in err for w in words) and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()  # refused before any work


def test_show_without_gui_says_to_replace_the_headless_build(trained, tmp_path, capsys, monkeypatch):
    ckpt, _ = trained
    video = write_video(tmp_path / "v.mp4", frames=2)

    def no_gui(*args):
        raise cv2.error("The function is not implemented. Rebuild the library with GTK+ support")

    monkeypatch.setattr(cv2, "namedWindow", no_gui)
    assert main(["predict", "--checkpoint", str(ckpt), "--input", str(video), "--output", str(tmp_path / "o"), "--show"]) == 2
    err = capsys.readouterr().err
    assert "pip uninstall opencv-python-headless && pip install opencv-python" in err
    assert "drop --show" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
