"""Classes of fault, each tried through the CLI: links planted where lightseg writes, outputs pointed at
inputs, small files declaring huge contents, requests that cannot fit, and temporary files left by a
killed process. Each refusal is exit 2, one line naming the file, no traceback; every file written before
stays byte-identical and nothing appears outside the folders the command was given."""
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

import lightseg.bounds
from lightseg.checkpoint import save_checkpoint
from lightseg.cli import main
from lightseg.models import create_model
from test_train import make_camvid_like, one_thread, tiny_recipe  # noqa: F401 - fixture

LINK = "is a symbolic link; lightseg does not write through links"


def _tree(root: Path) -> dict:
    """Every file under ``root`` (links as links) -> its bytes or its link target."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            out[str(p)] = ("link", str(p.readlink()))
        elif p.is_file():
            out[str(p)] = p.read_bytes()
    return out


def _refused(argv, capsys, *named) -> str:
    """`lightseg ARGV` exits 2 with one message, no traceback, naming each of ``named``."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    for n in named:
        assert str(n) in err, (n, err)
    return err


def make_world(tmp: Path) -> dict:
    """A tiny CamVid-like dataset, a checkpoint, a folder of two images (nothing trained) and a file
    outside them, in ``tmp``."""
    data = make_camvid_like(tmp / "data", n_train=2, n_val=1)
    model = create_model("mininet_95k", num_classes=11)
    ckpt = save_checkpoint({"model": model.state_dict(), "model_name": "mininet_95k", "num_classes": 11}, tmp / "m.pt")
    photos = tmp / "photos"
    photos.mkdir()
    for i in range(2):
        cv2.imwrite(str(photos / f"p{i}.png"), np.full((64, 64, 3), 40 * i, np.uint8))
    outside = tmp / "outside"
    outside.mkdir()
    (outside / "target").write_bytes(b"must stay as it is")
    return {"tmp": tmp, "data": data, "ckpt": ckpt, "photos": photos, "outside": outside}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"))


@pytest.fixture
def before(world):
    """The state of every file of the world; the test checks it is unchanged at its end."""
    snap = _tree(world["tmp"])
    yield snap


def _unchanged(world, before, *allowed):
    """Every earlier file byte-identical; no new file except under ``allowed`` folders."""
    now = _tree(world["tmp"])
    assert {k: v for k, v in now.items() if k in before} == before
    new = [k for k in now if k not in before and not any(k.startswith(str(a)) for a in allowed)]
    assert not new, new


# ---------------------------------------------------------------- 1. links planted where lightseg writes
def _plant(folder: Path, name: str, target: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / name
    link.symlink_to(target)
    return link


@pytest.mark.parametrize("name,dangling", [(".lightseg-train.lock", False), ("log.jsonl", True), ("config.yaml", True),
                                           ("last.pt", True), ("tensorboard", False)])
def test_train_never_writes_through_a_link_in_the_run_folder(world, tmp_path, capsys, name, dangling):
    target = world["outside"] / ("missing" if dangling else "target")
    run = tmp_path / "run"
    link = _plant(run, name, target)
    snap = _tree(world["tmp"])
    _refused(["train", tiny_recipe(tmp_path, world["data"], iters=2)], capsys, link, LINK)
    assert not (world["outside"] / "missing").exists()
    assert _tree(world["tmp"]) == snap  # the link's target untouched


@pytest.mark.parametrize("command", ["predict", "export", "eval"])
def test_deploy_commands_never_write_through_a_link(world, before, tmp_path, capsys, command):
    out = tmp_path / "out"
    target = world["outside"] / "target"
    if command == "predict":
        link = _plant(out, "p0_label.png", target)
        argv = ["predict", "--checkpoint", world["ckpt"], "--input", world["photos"], "--output", out]
    elif command == "export":
        link = _plant(out, "m.onnx", target)
        argv = ["export", "--checkpoint", world["ckpt"], "--size", 64, 64, "-o", link]
    else:
        link = _plant(out, "metrics.json", target)
        argv = ["eval", tiny_recipe(tmp_path, world["data"]), "--checkpoint", world["ckpt"], "--output", link]
    _refused(argv, capsys, link, LINK)
    _unchanged(world, before)
    assert sorted(p.name for p in out.iterdir()) == [link.name]


# ---------------------------------------------------------------- 2. outputs onto inputs
def test_eval_refuses_to_save_predictions_over_the_ground_truth(world, before, tmp_path, capsys):
    annot = world["data"] / "valannot"
    _refused(["eval", tiny_recipe(tmp_path, world["data"]), "--checkpoint", world["ckpt"], "--output",
              tmp_path / "m.json", "--save-predictions", annot], capsys, annot, "onto an input")
    _unchanged(world, before)


@pytest.mark.parametrize("case", ["predict_into_its_input", "export_over_its_checkpoint", "export_into_calib",
                                  "train_into_its_data"])
def test_outputs_onto_inputs_are_refused_before_any_work(world, before, tmp_path, capsys, case):
    if case == "predict_into_its_input":
        argv = ["predict", "--checkpoint", world["ckpt"], "--input", world["photos"], "--output", world["photos"]]
        named = world["photos"]
    elif case == "export_over_its_checkpoint":
        argv = ["export", "--checkpoint", world["ckpt"], "--size", 64, 64, "-o", world["ckpt"]]
        named = world["ckpt"]
    elif case == "export_into_calib":
        named = world["photos"] / "m.onnx"
        argv = ["export", "--checkpoint", world["ckpt"], "--size", 64, 64, "--int8", "--calib", world["photos"], "-o", named]
    else:
        named = world["data"] / "runs"
        argv = ["train", tiny_recipe(tmp_path, world["data"], iters=2), "--set", f"output_dir={named}"]
    _refused(argv, capsys, named, "onto an input")
    _unchanged(world, before)


def test_plot_refuses_to_write_over_the_log_it_reads(world, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    log = run / "log.jsonl"
    log.write_text('{"kind": "train", "iter": 1, "loss": 1.0, "lr": 0.1}\n')
    snap = log.read_bytes()
    _refused(["plot", run, "--output", log], capsys, log, "onto an input")
    assert log.read_bytes() == snap


# ---------------------------------------------------------------- 3. small files that take gigabytes
def _alias_bomb(levels=9, width=4) -> str:
    text = "x0: &x0 [a, a, a, a]\n"
    for i in range(1, levels):
        text += f"x{i}: &x{i} [{', '.join([f'*x{i - 1}'] * width)}]\n"
    return text


def test_recipe_alias_bomb_is_refused_while_parsing(world, before, tmp_path, capsys):
    recipe = tmp_path / "bomb.yaml"
    recipe.write_text(tiny_recipe(tmp_path, world["data"]).read_text() + _alias_bomb())
    assert recipe.stat().st_size < 2048
    _refused(["train", recipe], capsys, recipe, "aliases")
    _refused(["train", tiny_recipe(tmp_path, world["data"]), "--set", "train.iters=[&x [a], " + ",".join(["*x"] * 200) + "]"],
             capsys, "aliases")
    _unchanged(world, before, tmp_path)


def test_recipe_nested_too_deep_or_too_big(world, tmp_path, capsys):
    deep = tmp_path / "deep.yaml"
    deep.write_text("a: " + "[" * 200 + "]" * 200 + "\n")
    _refused(["train", deep], capsys, deep, "nested deeper")
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * (2 * 1024 ** 2) + "\n")
    _refused(["train", big], capsys, big, "MiB")


def _png_declaring(path: Path, h: int, w: int) -> Path:
    """A valid 1-bit greyscale PNG of h x w black pixels: a few KB on disk, h*w*3 bytes once decoded."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" + b"\x00" * ((w + 7) // 8)
    raw = zlib.compress(row * h, 9)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", raw) + chunk(b"IEND", b""))
    return path


def test_predict_reads_a_bomb_images_size_from_its_header(world, tmp_path, capsys, monkeypatch):
    """Pillow refuses to open an image over its decompression-bomb limit; predict then reads the header
    itself and still compares the size with the memory, instead of decoding it unchecked."""
    import PIL.Image

    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 100_000)  # the same path as a real 14000x14000 image, small
    monkeypatch.setattr("lightseg.deploy.predict.available_memory", lambda: 64 * 1024 ** 2)
    img = _png_declaring(tmp_path / "bomb.png", 1500, 1500)
    out = tmp_path / "out"
    _refused(["predict", "--checkpoint", world["ckpt"], "--input", img, "--output", out], capsys, img, "GB")
    assert not out.exists() or not any(out.iterdir())


def test_predict_refuses_a_video_whose_frames_cannot_fit_before_decoding_one(world, tmp_path, capsys, monkeypatch):
    """The frame size the container declares is compared with the memory before the first frame is read."""
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (1024, 768))
    for _ in range(2):
        writer.write(np.zeros((768, 1024, 3), np.uint8))
    writer.release()

    real_capture = cv2.VideoCapture

    class CountingCapture:
        """Counts the frames read. A wrapper, not a Python subclass of cv2.VideoCapture: with OpenCV 5 such a
        subclass is freed through the wrong allocator and corrupts Python's heap, which crashed later tests."""
        reads = 0

        def __init__(self, *args):
            self._capture = real_capture(*args)

        def read(self, *args):
            CountingCapture.reads += 1
            return self._capture.read(*args)

        def __getattr__(self, name):
            return getattr(self._capture, name)

    monkeypatch.setattr(cv2, "VideoCapture", CountingCapture)
    monkeypatch.setattr("lightseg.deploy.predict.available_memory", lambda: 64 * 1024 ** 2)
    out = tmp_path / "out"
    err = _refused(["predict", "--checkpoint", world["ckpt"], "--input", video, "--output", out], capsys,
                   f"{video} (frames)", "768x1024", "GB of memory", "0.1 GB is available")
    assert CountingCapture.reads == 0, err
    assert not out.exists() or not any(out.iterdir())


def test_data_images_are_bounded_before_decoding(world, tmp_path, capsys, monkeypatch):
    data = make_camvid_like(tmp_path / "data", n_train=1, n_val=1)
    img = _png_declaring(data / "val" / "s000.png", 4000, 4000)
    _png_declaring(data / "valannot" / "s000.png", 4000, 4000)
    monkeypatch.setattr(lightseg.bounds, "available_memory", lambda: 128 * 1024 ** 2)
    _refused(["eval", tiny_recipe(tmp_path, data), "--checkpoint", world["ckpt"], "--output", tmp_path / "m.json"],
             capsys, img, "decoding it would need")
    assert not (tmp_path / "m.json").exists()


def test_checkpoint_zip_bomb_is_refused_before_torch_load(world, before, tmp_path, capsys):
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(world["ckpt"]) as src, zipfile.ZipFile(bomb, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        dst.writestr(zipfile.ZipInfo("m/extra"), b"\x00" * (64 * 1024 ** 2), compress_type=zipfile.ZIP_DEFLATED)
    assert bomb.stat().st_size < 20 * 1024 ** 2
    for argv in (["export", "--checkpoint", bomb, "--size", 64, 64, "-o", tmp_path / "m.onnx"],
                 ["predict", "--checkpoint", bomb, "--input", world["photos"], "--output", tmp_path / "out"]):
        _refused(argv, capsys, bomb, "uncompressed")
    _unchanged(world, before, tmp_path / "out")


def test_list_file_with_an_endless_line(world, tmp_path, capsys):
    data = make_camvid_like(tmp_path / "data", n_train=1, n_val=1)
    (data / "val.txt").write_bytes(b"val/s000.png " + b"x" * 100_000 + b"\n")
    _refused(["eval", tiny_recipe(tmp_path, data), "--checkpoint", world["ckpt"], "--output", tmp_path / "m.json"],
             capsys, data / "val.txt", "bytes")


@pytest.mark.parametrize("argv,named", [
    (["bench", "--model", "mininet_95k", "--size", 1024, 2048, "--batch", 100000], ["--batch 100000", "GB of memory"]),
    (["bench", "--model", "mininet_95k", "--size", 60000, 60000], ["--size 60000 60000", "GB of memory"]),
])
def test_bench_refuses_what_cannot_fit_with_the_estimate(argv, named, capsys):
    """The message gives the estimate and the memory available (the limit)."""
    assert "GB is available" in _refused(argv, capsys, *named)


def test_slide_window_count_is_bounded(world, tmp_path, capsys):
    img = tmp_path / "big.png"
    cv2.imwrite(str(img), np.zeros((400, 400, 3), np.uint8))
    out = tmp_path / "out"
    _refused(["predict", "--checkpoint", world["ckpt"], "--input", img, "--output", out, "--mode", "slide",
              "--crop", 64, 64, "--stride", 1, 1], capsys, "windows", "4096")
    assert not out.exists() or not any(out.iterdir())


# ---------------------------------------------------------------- 4. leftovers of a killed process
def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_predict_and_export_remove_only_their_dead_temp_files(world, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    dead, alive = _dead_pid(), subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = [out / f".p0_label.png.{dead}.0123abcd.tmp", out / f".clip_overlay.mp4.{dead}.0123abcd.tmp.mp4",
                 out / f".m.onnx.{dead}.0123abcd.tmp"]
        kept = [out / f".p1_color.png.{alive.pid}.0123abcd.tmp",  # a writer still running
                out / f".notes.txt.{dead}.0123abcd.tmp",  # not a name lightseg writes here
                out / "p0.tmp"]
        for p in stale + kept:
            p.write_bytes(b"half")
        assert main(["predict", "--checkpoint", str(world["ckpt"]), "--input", str(world["photos"]),
                     "--output", str(out)]) == 0
        assert main(["export", "--checkpoint", str(world["ckpt"]), "--size", "64", "64", "-o", str(out / "m.onnx")]) == 0
        assert not [p for p in stale if p.exists()]
        assert all(p.exists() for p in kept)
    finally:
        alive.kill()
        alive.wait()
    assert "Traceback" not in capsys.readouterr().err
