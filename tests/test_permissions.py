"""Outputs are created with the user's umask, like any file they write: mkstemp's 0600 is not kept."""
import contextlib
import os
import stat

import cv2
import numpy as np
import pytest
import torch

import lightseg
from lightseg.checkpoint import atomic_write_bytes, new_file_mode, save_checkpoint
from lightseg.cli import main

MODEL = "dualaspp_mobilenetv3_small"


@contextlib.contextmanager
def umask(mask):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_atomic_writes_follow_the_umask(tmp_path, mask):
    with umask(mask):
        assert new_file_mode() == 0o666 & ~mask
        atomic_write_bytes(tmp_path / "a.json", lambda f: f.write(b"{}"))
        with open(tmp_path / "plain", "w"):  # what open() gives, for comparison
            pass
        save_checkpoint({"model": {"w": torch.zeros(1)}}, tmp_path / "last.pt")
    assert mode(tmp_path / "a.json") == mode(tmp_path / "plain") == mode(tmp_path / "last.pt") == 0o666 & ~mask


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_exported_onnx_and_predicted_pngs_and_video_are_readable_by_the_group(tmp_path, capsys):
    model = lightseg.create_model(MODEL, num_classes=3).eval()
    ckpt = tmp_path / "best.pt"
    with umask(0o027):
        save_checkpoint({"model": model.state_dict(), "model_name": MODEL, "num_classes": 3}, ckpt)
        assert main(["export", "--model", MODEL, "--checkpoint", str(ckpt), "--size", "64", "64",
                     "-o", str(tmp_path / "m.onnx")]) == 0
        rgb = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
        (tmp_path / "in").mkdir()
        assert cv2.imwrite(str(tmp_path / "in" / "a.png"), rgb)
        video = tmp_path / "clip.mp4"
        writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (96, 64))
        for _ in range(2):
            writer.write(rgb)
        writer.release()
        for src, out in [(tmp_path / "in", "pngs"), (video, "video")]:
            assert main(["predict", "--model", MODEL, "--checkpoint", str(ckpt), "--input", str(src),
                         "--output", str(tmp_path / out)]) == 0
    written = [tmp_path / "m.onnx", *(tmp_path / "pngs").iterdir(), *(tmp_path / "video").iterdir()]
    assert len(written) >= 3 and any(p.suffix == ".mp4" for p in written)
    assert {p.name: mode(p) for p in written} == {p.name: 0o640 for p in written}
