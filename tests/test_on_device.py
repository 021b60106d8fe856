"""data.on_device: the training set decoded once into the device's memory and augmented there. On the CPU
these tests check each augmentation against the CPU pipeline's pixels (exact where both sample whole
pixels), the errors, and that a run of the CLI with it stops and resumes exactly."""
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from lightseg.checkpoint import load_checkpoint
from lightseg.config import load_config
from lightseg.data import build_dataset, merged_data_cfg
from lightseg.data.classes import IGNORE_INDEX
from lightseg.data.on_device import DeviceTrainSet
from lightseg.data.transforms import ColorJitter
from lightseg.engine.train import Trainer
from lightseg.errors import ConfigError, DataError
from test_resume import ROOT, _env, _start, _wait_for_iter
from test_train import make_camvid_like, tiny_recipe

TRANSFORMS = merged_data_cfg({})["train_transforms"]


def _dataset(root):
    return build_dataset({"name": "camvid", "root": str(root)}, "train", train=False)


def _set(root, **transforms):
    return DeviceTrainSet(_dataset(root), {**TRANSFORMS, **transforms}, "cpu")


def _rgb(dts, images):
    """Normalised images back to grey levels (exact: the values were whole numbers before normalising)."""
    return torch.round(images / dts.inv_std + dts.mean)


def _seed_where(dts, test, limit=500):
    for seed in range(limit):
        if test(dts.draw(seed)):
            return seed
    raise AssertionError("no seed in range draws such parameters")


@pytest.fixture
def data(tmp_path):
    return make_camvid_like(tmp_path / "data", n_train=4, n_val=1, size=(48, 64))


def test_without_augmentation_the_batch_is_the_datasets_own_samples(data):
    ds = _dataset(data)
    dts = _set(data)
    images, labels, bad = dts.batch([(2, 7), (0, 9)])
    assert bad == [] and images.shape == (2, 3, 48, 64) and labels.dtype == torch.int64
    for k, i in enumerate((2, 0)):
        image, label = ds[i]
        torch.testing.assert_close(images[k], image, atol=1e-5, rtol=0)
        assert torch.equal(labels[k], label)


def test_a_flip_mirrors_image_and_label(data):
    ds, dts = _dataset(data), _set(data, flip=True)
    seed = _seed_where(dts, lambda p: p["flip"])
    images, labels, _ = dts.batch([(1, seed)])
    image, label = ds[1]
    torch.testing.assert_close(images[0], image.flip(-1), atol=1e-5, rtol=0)
    assert torch.equal(labels[0], label.flip(-1))
    seed = _seed_where(dts, lambda p: not p["flip"])
    assert torch.equal(dts.batch([(1, seed)])[1][0], label)


def test_shift_and_crop_cut_whole_pixels_and_pad_with_the_mean_and_ignore(data):
    ds = _dataset(data)
    dts = _set(data, translate=3, crop=[40, 70])  # wider than the 64-pixel image: padded on the right
    seed = _seed_where(dts, lambda p: p["shift"][0] > 0 and p["shift"][1] < 0)
    p = dts.draw(seed)
    (dy, dx), (y, x) = p["shift"], p["crop"]
    image, label = ds.load_pair(3)
    fill = np.array(ds.image_fill(), np.float64)
    # by hand: the shifted image on a canvas of fill / 255, then the crop window
    canvas = np.tile(fill, (48 + 40, 64 + 70, 1))
    lab = np.full((48 + 40, 64 + 70), IGNORE_INDEX)
    canvas[dy:48, 0:64 + dx] = image[0:48 - dy, -dx:64]
    lab[dy:48, 0:64 + dx] = label[0:48 - dy, -dx:64]
    images, labels, _ = dts.batch([(3, seed)])
    want = torch.from_numpy(np.round(canvas[y:y + 40, x:x + 70]).transpose(2, 0, 1)).float()
    assert torch.equal(_rgb(dts, images)[0], want)
    assert torch.equal(labels[0], torch.from_numpy(lab[y:y + 40, x:x + 70]).long())


def test_scale_two_is_opencvs_bilinear_within_a_grey_level_and_its_nearest_label_exactly(data):
    ds = _dataset(data)
    dts = _set(data, scale=[2.0, 2.0], crop=[96, 128])
    images, labels, _ = dts.batch([(0, 1)])
    image, label = ds.load_pair(0)
    up = cv2.resize(image, (128, 96), interpolation=cv2.INTER_LINEAR).astype(np.float32).transpose(2, 0, 1)
    diff = (_rgb(dts, images)[0] - torch.from_numpy(up)).abs()
    assert diff.max() <= 1  # OpenCV's fixed-point bilinear rounds differently, by at most one level
    up_label = cv2.resize(label, (128, 96), interpolation=cv2.INTER_NEAREST)
    assert torch.equal(labels[0], torch.from_numpy(up_label).long())


def test_the_scale_is_drawn_from_the_range_or_its_steps(data):
    dts = _set(data, scale=[0.5, 2.0], crop=[32, 32])
    heights = {dts.draw(seed)["scaled"][0] for seed in range(200)}
    assert min(heights) >= 24 and max(heights) <= 96 and len(heights) > 30
    stepped = _set(data, scale=[0.5, 2.0], scale_step=0.5, crop=[32, 32])
    assert {stepped.draw(seed)["scaled"][0] for seed in range(200)} == {24, 48, 72, 96}


def test_colour_jitter_matches_the_cpu_transform_within_a_grey_level(data, monkeypatch):
    ds = _dataset(data)
    dts = _set(data, color_jitter=0.4)
    seed = 11
    factors = dts.draw(seed)["jitter"]
    image, _ = ds.load_pair(2)
    monkeypatch.setattr(np.random, "uniform", lambda lo, hi, size: np.array(factors))
    want, _ = ColorJitter(0.4)(image, None)
    images, _, _ = dts.batch([(2, seed)])
    got = _rgb(dts, images)[0].permute(1, 2, 0).numpy()
    assert np.abs(got - want.astype(np.float32)).max() <= 1


def test_the_same_seed_draws_the_same_batch_and_another_seed_another(data):
    dts = _set(data, scale=[0.5, 2.0], crop=[32, 32], flip=True, translate=2, color_jitter=0.2)
    a, b, c = (dts.batch([(0, s), (1, s + 1)])[0] for s in (5, 5, 6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_images_of_different_sizes_are_refused_naming_two_of_them_and_the_fix(tmp_path):
    data = make_camvid_like(tmp_path / "data", n_train=4, n_val=1, size=(64, 64))
    image = cv2.imread(str(data / "train" / "s001.png"))
    cv2.imwrite(str(data / "train" / "s001.png"), cv2.resize(image, (96, 80)))
    label = cv2.imread(str(data / "trainannot" / "s001.png"), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(data / "trainannot" / "s001.png"), cv2.resize(label, (96, 80), interpolation=cv2.INTER_NEAREST))
    with pytest.raises(ConfigError) as e:
        _set(data)
    assert "s001.png is 80x96" in str(e.value) and "data.train_transforms.resize" in str(e.value)
    resized = _set(data, resize=[64, 64])  # the fix: one size for all
    assert resized.images.shape == (4, 3, 64, 64)
    recipe = tiny_recipe(tmp_path, data, iters=2)
    proc = subprocess.run([sys.executable, "-m", "lightseg", "train", str(recipe), "--set", "data.on_device=true"],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "s001.png is 80x96" in proc.stderr


def test_a_training_set_that_cannot_fit_is_refused_before_it_is_allocated(data, monkeypatch):
    import lightseg.bounds as bounds
    import lightseg.data.on_device as on_device

    def check_with(available):
        def check(what, need, fix):  # bounds.check_fits as it runs with that much memory free (the per-image
            with monkeypatch.context() as m:  # decode checks, which also read it, keep the machine's figure)
                m.setattr(bounds, "available_memory", lambda: available)
                return bounds.check_fits(what, need, fix)
        return check

    monkeypatch.setattr(on_device, "check_fits", check_with(40_000))  # 4 pairs of 48x64 need 49,152 bytes
    with pytest.raises(DataError) as e:
        _set(data)
    assert "4 training samples of 48x64" in str(e.value) and "data.on_device: false" in str(e.value)
    monkeypatch.setattr(on_device, "check_fits", check_with(60_000))
    assert _set(data).images.shape == (4, 3, 48, 64)


def test_a_bad_file_is_named_or_with_skip_bad_left_out_of_every_batch(data):
    (data / "train" / "s002.png").write_bytes(b"not a png")
    with pytest.raises(DataError) as e:
        _set(data)
    assert "s002.png" in str(e.value)
    dts = DeviceTrainSet(_dataset(data), TRANSFORMS, "cpu", skip_bad=True)
    images, labels, bad = dts.batch([(2, 0), (1, 0)])
    assert images.shape[0] == 1 and [i for i, _ in bad] == [2] and "s002.png" in bad[0][1]


def test_train_from_the_cli_with_on_device_stops_and_resumes_exactly(tmp_path):
    data = make_camvid_like(tmp_path / "data", n_train=6, n_val=2)
    extra = "  val_interval: 0"
    recipe = tiny_recipe(tmp_path, data, iters=12, extra=extra)
    recipe.write_text(recipe.read_text().replace(
        "num_workers: 0}", "num_workers: 0, on_device: true, train_transforms: {scale: [0.5, 2.0], crop: [64, 64], "
        "flip: true, translate: 2}}"))
    torch.set_num_threads(1)
    whole = load_checkpoint(Trainer(load_config(recipe, [f"output_dir={tmp_path / 'whole'}"])).fit() / "last.pt")
    run_dir = tmp_path / "run"
    proc = _start(recipe)
    _wait_for_iter(run_dir, proc, 3)
    proc.send_signal(subprocess.signal.SIGTERM)
    proc.communicate(timeout=120)
    assert load_checkpoint(run_dir / "last.pt")["iteration"] < 12
    proc = _start(recipe, "--resume", str(run_dir))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    final = load_checkpoint(run_dir / "last.pt")
    assert final["iteration"] == 12
    for k, v in whole["model"].items():
        assert torch.equal(final["model"][k], v), k


def test_the_gpu_schedule_script_continues_a_run_starts_the_others_and_packs_each(tmp_path):
    """tools/gpu_schedules.py with --device cpu: the dry run of what a GPU session runs. The runs end on their
    own (train.iters) well inside the budget, so that the test does not depend on the machine's speed."""
    import json
    import tarfile

    data = make_camvid_like(tmp_path / "data", n_train=4, n_val=1)
    runs, out = tmp_path / "runs", tmp_path / "out"
    small = ["--set", "train.batch_size=2", "--set", "data.train_transforms.crop=[64,64]", "--set", "train.val_interval=0"]
    tool = [sys.executable, str(ROOT / "tools" / "gpu_schedules.py"), "run", "--data-root", str(data), "--runs", str(runs),
            "--device", "cpu", "--budget-s", "600", *small]
    first = subprocess.run([*tool, "--out", str(out / "1"), "--set", "train.iters=2", "--only", "mininet_95k_camvid_trainval"],
                           env=_env(), capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    assert load_checkpoint(runs / "mininet_95k_camvid_trainval" / "last.pt")["iteration"] == 2
    here = tmp_path / "here"  # the run folders on the CPU machine, one of them at the state the GPU continues
    shutil.copytree(runs / "mininet_95k_camvid_trainval", here / "mininet_95k_camvid_trainval")
    second = subprocess.run([*tool, "--out", str(out / "2"), "--set", "train.iters=4",
                             "--only", "mininet_95k_camvid_trainval", "rdsnet_camvid_trainval"],
                            env=_env(), capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    summary = json.loads((out / "2" / "summary.json").read_text())["runs"]
    assert summary["mininet_95k_camvid_trainval"]["iterations_from"] == 2  # continued, not restarted
    assert summary["mininet_95k_camvid_trainval"]["iterations_to"] == 4
    assert summary["rdsnet_camvid_trainval"] == {**summary["rdsnet_camvid_trainval"], "iterations_from": 0,
                                                 "iterations_to": 4, "exit": 0}
    ckpt = load_checkpoint(runs / "rdsnet_camvid_trainval" / "last.pt")
    assert ckpt["config"]["data"]["on_device"] is True and ckpt["train_samples"] == 5  # train + val
    with tarfile.open(out / "2" / "rdsnet_camvid_trainval.tar") as tar:
        assert sorted(tar.getnames()) == [f"rdsnet_camvid_trainval/{f}" for f in ("config.yaml", "last.pt", "log.jsonl")]

    script = [sys.executable, str(ROOT / "tools" / "gpu_schedules.py")]
    back = subprocess.run([*script, "unpack", str(out / "2"), "--into", str(here)], env=_env(), capture_output=True,
                          text=True, timeout=300)
    assert back.returncode == 0, back.stderr[-2000:]
    assert load_checkpoint(here / "mininet_95k_camvid_trainval" / "last.pt")["iteration"] == 4
    assert load_checkpoint(here / "mininet_95k_camvid_trainval.before-gpu" / "last.pt")["iteration"] == 2  # kept
    assert load_checkpoint(here / "rdsnet_camvid_trainval" / "last.pt")["iteration"] == 4
    older = subprocess.run([*script, "unpack", str(out / "1"), "--into", str(here)], env=_env(), capture_output=True,
                           text=True, timeout=300)
    assert older.returncode == 0 and "kept" in older.stdout  # the folder here has gone further: not replaced
    assert load_checkpoint(here / "mininet_95k_camvid_trainval" / "last.pt")["iteration"] == 4

    carry = tmp_path / "carry"
    ready = subprocess.run([*script, "prepare", "--camvid", str(data), "--runs", str(here), "--into", str(carry)],
                           env=_env(), capture_output=True, text=True, timeout=300)
    assert ready.returncode == 0, ready.stderr[-2000:]
    assert sorted(p.name for p in (carry / "camvid" / "train").iterdir()) == [f"s{i:03d}.png" for i in range(4)]
    assert ready.stdout.count("exact, iteration 4") == 2
    carried = load_checkpoint(carry / "runs" / "rdsnet_camvid_trainval" / "last.pt")
    assert carried["optimizer"]["state"] and not carried.get("optimizer_moments_dropped")  # exact: Adam's moments too

    # where the exact runs would not fit beside the checkout and the data, they travel as landed copies
    import argparse
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_schedules", ROOT / "tools" / "gpu_schedules.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    tool.TRAVEL_LIMIT = tool.tracked_bytes() + tool.folder_bytes(data) + 1000
    tool.prepare(argparse.Namespace(camvid=str(data), runs=str(here), into=str(tmp_path / "tight")))
    landed = load_checkpoint(tmp_path / "tight" / "runs" / "rdsnet_camvid_trainval" / "last.pt")
    assert landed["optimizer_moments_dropped"] and landed["iteration"] == 4
