"""Whole classes of fault in what lightseg reads: image and label decoding, recipe and checkpoint values,
the settings weights were trained with, what a resume trusts, and command-line values. Each bad input ends
in a result or in exit 2 with one line naming the file, key or value, and what was written before stays
byte-for-byte as it was."""
import hashlib
import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import lightseg
from lightseg.checkpoint import load_checkpoint, save_checkpoint
from lightseg.cli import main
from lightseg.config import DEFAULTS, FREE_KEYS, SCHEMA, load_config
from lightseg.data import build_dataset, read_image, read_label
from lightseg.losses import cached_class_weights

CLASSES = ["background", "thing"]


# ---------------------------------------------------------------- helpers
def write_png(path, values, bit_depth, colour_type, palette=None):
    """A PNG written byte by byte (IHDR, optional PLTE, IDAT, IEND), so that every bit depth and colour type
    the format allows can be made, whatever OpenCV or Pillow would write."""
    values = np.asarray(values)
    h, w = values.shape[:2]
    rows = []
    for row in values.reshape(h, w, -1):
        flat = row.reshape(-1)
        if bit_depth < 8:
            per = 8 // bit_depth
            packed = bytearray((w * bit_depth + 7) // 8)
            for x, v in enumerate(flat):
                packed[x // per] |= int(v) << (8 - bit_depth * (x % per + 1))
            rows.append(b"\0" + bytes(packed))
        else:
            rows.append(b"\0" + flat.astype(">u2" if bit_depth == 16 else np.uint8).tobytes())

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, bit_depth, colour_type, 0, 0, 0))
    if palette is not None:
        data += chunk(b"PLTE", bytes(np.asarray(palette, np.uint8).reshape(-1)))
    data += chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b"")
    Path(path).write_bytes(data)
    return Path(path)


def _rgb(seed, h=64, w=64):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _labels(seed, n_classes=2, h=64, w=64):
    return np.random.default_rng(seed).integers(0, n_classes, (h, w), dtype=np.uint8)


def make_folder_data(root, n=2, size=(64, 64)):
    """images/s<i>.png + labels/s<i>.png, 2 classes."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        cv2.imwrite(str(root / "images" / f"s{i}.png"), _rgb(i, *size))
        cv2.imwrite(str(root / "labels" / f"s{i}.png"), _labels(i, h=size[0], w=size[1]))
    return root


def write_recipe(path, data_root, output_dir, extra=""):
    path.write_text(f"""
model: {{name: mininet_95k, num_classes: 2}}
data: {{name: folder, root: {data_root}, image_dir: images, label_dir: labels, classes: {CLASSES}, num_workers: 0}}
train:
  iters: 2
  batch_size: 2
  ckpt_interval: 2
  val_interval: 1000
  log_interval: 1
  loss: {{aux_weights: [0.4, 0.4, 0.4], aux_mode: upsample}}
{extra}
output_dir: {output_dir}
""")
    return path


def untrained_checkpoint(path, recipe, **meta):
    """A checkpoint as lightseg train writes it, of an untrained model (no training needed to test loading)."""
    cfg = load_config(recipe)
    torch.manual_seed(0)
    model = lightseg.create_model("mininet_95k", num_classes=2)
    state = {"model": model.state_dict(), "model_name": "mininet_95k", "num_classes": 2, "classes": list(CLASSES),
             "palette": [[0, 0, 0], [255, 255, 255]], "config": cfg, **meta}
    save_checkpoint(state, path)
    return path


def tree(folder) -> dict:
    """{relative path: sha256} of every file under ``folder``."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def cli(argv, capsys) -> tuple[int, str]:
    """Exit status and stderr of `lightseg ARGV`; never a traceback."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, err


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def folder(tmp_path):
    """(recipe, checkpoint, data root): 2 samples of a 2-class folder dataset and an untrained checkpoint."""
    data = make_folder_data(tmp_path / "data")
    recipe = write_recipe(tmp_path / "r.yaml", data, tmp_path / "run")
    return recipe, untrained_checkpoint(tmp_path / "model.pt", recipe), data


# ---------------------------------------------------------------- 1: decoding of images and labels
# (bit depth, colour type, values): each label kind a PNG can be, with values that fit it
LABEL_KINDS = {
    "1-bit grayscale": (1, 0, 2), "2-bit grayscale": (2, 0, 4), "4-bit grayscale": (4, 0, 16),
    "8-bit grayscale": (8, 0, 256), "16-bit grayscale": (16, 0, 256), "1-bit palette": (1, 3, 2),
    "2-bit palette": (2, 3, 4), "4-bit palette": (4, 3, 16), "8-bit palette": (8, 3, 256),
}


@pytest.mark.parametrize("kind", LABEL_KINDS)
def test_label_values_are_read_exactly_and_image_agrees(tmp_path, kind):
    bit_depth, colour_type, n = LABEL_KINDS[kind]
    values = np.random.default_rng(bit_depth + colour_type).integers(0, n, (64, 48))
    palette = np.random.default_rng(1).integers(0, 256, (n, 3)) if colour_type == 3 else None
    path = write_png(tmp_path / "x.png", values, bit_depth, colour_type, palette)
    label = read_label(path)
    assert label.shape == (64, 48) and np.array_equal(label, values)  # the stored values, not scaled or coloured
    image = read_image(path)  # the same file as an image: same size; palette -> its colours, gray -> gray
    assert image.shape == (64, 48, 3)
    if colour_type == 3:
        assert np.array_equal(image, palette[values])
    else:
        assert np.array_equal(image[..., 0], (values * (255 // (2 ** bit_depth - 1)) if bit_depth < 8 else
                                              values if bit_depth == 8 else values >> 8).astype(np.uint8))


def test_one_bit_label_trains_as_its_two_classes(tmp_path):
    """A 2-class dataset of 1-bit PNG labels: foreground is class 1, not 255 (ignore) as 0/255 decoding gave."""
    data = make_folder_data(tmp_path / "data", n=1)
    values = _labels(5)
    write_png(data / "labels" / "s0.png", values, 1, 0)
    ds = build_dataset({"name": "folder", "root": str(data), "image_dir": "images", "label_dir": "labels",
                        "classes": CLASSES}, "train", train=False)
    image, label = ds[0]
    assert tuple(image.shape) == (3, 64, 64) and np.array_equal(label.numpy(), values)


def _cmyk_jpeg(path):
    Image.fromarray(_rgb(1)).convert("CMYK").save(path, "JPEG")


def _rotated_jpeg(path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees to display"
    Image.fromarray(_rgb(2)).save(path, "JPEG", exif=exif.tobytes())


def _translucent_png(path):
    rgba = np.dstack([_rgb(3), np.full((64, 64), 255, np.uint8)])
    rgba[:5, :5, 3] = 0
    Image.fromarray(rgba, "RGBA").save(path)


def _translucent_label(path):
    alpha = np.full((64, 64), 255, np.uint8)
    alpha[10:20, 10:20] = 0
    write_png(path, np.dstack([_labels(4), alpha]), 8, 4)


def _label_16bit_over_255(path):
    values = _labels(6).astype(np.uint16)
    values[0, 0] = 300
    write_png(path, values, 16, 0)


def _label_outside_classes(path):
    values = _labels(7)
    values[3, 3] = 7  # 2 classes: 7 is neither a class nor 255 (ignore)
    cv2.imwrite(str(path), values)


# (which file of sample 1 is replaced, how, its name, words the refusal must hold)
BAD_FILES = {
    "cmyk image": ("images", _cmyk_jpeg, "s1.jpg", ["CMYK", "convert"]),
    "exif-rotated image": ("images", _rotated_jpeg, "s1.jpg", ["EXIF orientation 6", "auto-orient"]),
    "transparent image": ("images", _translucent_png, "s1.png", ["transparent", "RGBA"]),
    "transparent label": ("labels", _translucent_label, "s1.png", ["transparent", "grayscale+alpha", "255"]),
    "16-bit label value 300": ("labels", _label_16bit_over_255, "s1.png", ["[300]", "8 bits"]),
    "label value outside the classes": ("labels", _label_outside_classes, "s1.png", ["[7]", "0..1"]),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_refused_file_kinds_are_found_by_the_pre_scan(folder, tmp_path, capsys, case):
    recipe, ckpt, data = folder
    sub, write, name, words = BAD_FILES[case]
    for old in (data / sub).glob("s1.*"):
        old.unlink()
    write(data / sub / name)
    before = tree(tmp_path)
    code, err = cli(["eval", recipe, "--checkpoint", ckpt, "--output", tmp_path / "m.json"], capsys)
    assert code == 2 and name in err and "cannot be evaluated" in err, err  # found before any model ran
    assert all(w in err for w in words), err
    assert tree(tmp_path) == before


def test_predict_turns_an_exif_rotated_image_upright(folder, tmp_path, capsys):
    """An image without a label is segmented as a viewer shows it: EXIF orientation 6 (rotate 90 degrees)
    makes the 64x96 pixels stored a 96x64 picture, and the label map has the picture's size."""
    _, ckpt, _ = folder
    photo = tmp_path / "photo.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(_rgb(2, 64, 96)).save(photo, "JPEG", exif=exif.tobytes())
    code, err = cli(["predict", "--checkpoint", ckpt, "--input", photo, "--output", tmp_path / "out"], capsys)
    assert code == 0, err
    assert cv2.imread(str(tmp_path / "out" / "photo_label.png"), cv2.IMREAD_UNCHANGED).shape == (96, 64)


# ---------------------------------------------------------------- 2: settings, checkpoint and manifest values
def test_every_recipe_key_has_a_rule_that_its_default_passes():
    def leaves(t, prefix=""):
        for k, v in t.items():
            path = prefix + k
            if isinstance(v, dict) and path not in FREE_KEYS:
                yield from leaves(v, path + ".")
            else:
                yield path, v

    defaults = dict(leaves(DEFAULTS))
    assert set(defaults) == set(SCHEMA)
    assert [k for k, v in defaults.items() if not SCHEMA[k].ok(v)] == []


@pytest.mark.parametrize("override", [
    "train.batch_size=null", "train.log_interval=null", "train.ckpt_interval=null", "eval.batch_size=null",
    "data.train_transforms.scale_step=fast", "data.palette=[[300, 0, 0], [0, 0, 0]]", "data.classes=[1, 2]",
    "train.scheduler.plateau_factor=2", "train.loss.ohem_thresh=5", "model.pretrained_backbone=5", "train.device=cuda:x",
])
def test_values_that_crashed_later_are_refused_before_anything_runs(folder, tmp_path, capsys, override):
    recipe, _, _ = folder
    code, err = cli(["train", recipe, "--set", override], capsys)
    assert code == 2 and override.split("=")[0] in err and f"--set {override}" in err, err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("key, value, words", [
    ("palette", [[300, 0, 0], [0, 0, 0]], ["'palette'", "0..255"]),
    ("iteration", -5, ["'iteration'", ">= 0"]),
    ("classes", ["only one"], ["'classes'", "'num_classes' is 2"]),
    ("config", {"data": {"normalize": "bogus"}}, ["data.normalize", "imagenet"]),
    ("normalize", "bogus", ["'normalize'", "minus_one_one"]),
    ("num_threads", 0, ["'num_threads'", "positive"]),
])
def test_malformed_checkpoint_metadata_is_named(folder, tmp_path, capsys, key, value, words):
    recipe, ckpt, _ = folder
    bad = tmp_path / "bad.pt"
    torch.save({**torch.load(ckpt, weights_only=True), key: value}, bad)
    before = tree(tmp_path)
    code, err = cli(["eval", recipe, "--checkpoint", bad, "--output", tmp_path / "m.json"], capsys)
    assert code == 2 and str(bad) in err and all(w in err for w in words), err
    assert tree(tmp_path) == before


@pytest.mark.parametrize("how", ["complex", "sparse"])
def test_checkpoint_tensors_of_another_dtype_or_layout_are_named(folder, tmp_path, capsys, how):
    recipe, ckpt, _ = folder
    obj = torch.load(ckpt, weights_only=True)
    name = next(k for k, v in obj["model"].items() if v.dim() == 4)
    w = obj["model"][name]
    obj["model"][name] = w.to(torch.complex64) if how == "complex" else w.reshape(w.shape[0], -1).to_sparse()
    bad = tmp_path / "bad.pt"
    torch.save(obj, bad)
    code, err = cli(["eval", recipe, "--checkpoint", bad, "--output", tmp_path / "m.json"], capsys)
    assert code == 2 and str(bad) in err and name in err, err


def test_manifest_record_with_a_path_or_bad_hash_is_refused(tmp_path, monkeypatch, capsys):
    from lightseg.weights import list_weights
    import lightseg.weights as registry

    record = {"model": "mininet_95k", "weights": "w", "file": "../outside.pt", "sha256": "0" * 64, "dataset": "d",
              "num_classes": 2, "classes": CLASSES, "palette": [[0, 0, 0], [1, 1, 1]]}
    monkeypatch.setattr(registry, "WEIGHTS_DIR", tmp_path)
    for bad, words in (({}, ["file", "no path"]), ({"file": "w.pt", "sha256": "xyz"}, ["sha256", "hex"]),
                       ({"file": "w.pt", "classes": ["a"]}, ["1 classes", "num_classes 2"])):
        (tmp_path / "manifest.json").write_text(json.dumps({"weights": [{**record, **bad}]}))
        with pytest.raises(lightseg.LightsegError) as e:
            list_weights()
        assert "manifest.json" in str(e.value) and all(w in str(e.value) for w in words), str(e.value)


def test_a_run_refused_at_its_first_batch_does_not_block_the_next(tmp_path, capsys, one_thread):
    data = make_folder_data(tmp_path / "data", n=1)
    cv2.imwrite(str(data / "images" / "s1.png"), _rgb(1, 80, 80))  # two sizes and no crop: no batch can form
    cv2.imwrite(str(data / "labels" / "s1.png"), _labels(1, h=80, w=80))
    recipe = write_recipe(tmp_path / "r.yaml", data, tmp_path / "run")
    for _ in range(2):
        code, err = cli(["train", recipe], capsys)
        assert code == 2 and "different sizes" in err and "already holds" not in err, err
    # the failed start took back what it wrote: the folder it created is gone, or holds nothing of a run
    run = tmp_path / "run"
    assert not run.exists() or not [p for p in run.iterdir() if not p.name.startswith(".")]


# ---------------------------------------------------------------- 3: what the weights were trained with
@pytest.mark.parametrize("setting, words", [
    (["--set", "data.normalize=minus_one_one"], ["data.normalize", "'imagenet'", "'minus_one_one'"]),
    (["--set", "data.classes=[background, road]"], ["classes", "'thing' vs 'road'"]),
])
def test_eval_refuses_other_input_than_the_weights_were_trained_on(folder, tmp_path, capsys, setting, words):
    recipe, ckpt, _ = folder
    code, err = cli(["eval", recipe, "--checkpoint", ckpt, "--output", tmp_path / "m.json", *setting], capsys)
    assert code == 2 and str(ckpt) in err and all(w in err for w in words), err
    assert not (tmp_path / "m.json").exists()


def test_eval_refuses_shipped_weights_with_another_normalisation(folder, tmp_path, capsys):
    recipe, _, data = folder
    for p in (data / "labels").glob("*.png"):
        cv2.imwrite(str(p), _labels(0, n_classes=11))
    classes = "[" + ", ".join(lightseg.data.classes.CAMVID_CLASSES) + "]"
    code, err = cli(["eval", recipe, "--weights", "camvid", "--output", tmp_path / "m.json", "--set",
                     "model.name=mininet_95k", "--set", "model.num_classes=11", "--set", f"data.classes={classes}",
                     "--set", "data.normalize=minus_one_one"], capsys)
    assert code == 2 and "weights 'camvid'" in err and "'imagenet'" in err and "'minus_one_one'" in err, err


def test_two_images_never_share_a_label_or_a_prediction_name(folder, tmp_path, capsys):
    recipe, ckpt, data = folder
    cv2.imwrite(str(data / "images" / "s0.jpg"), _rgb(9))  # s0.png and s0.jpg: both would take labels/s0.png
    code, err = cli(["eval", recipe, "--checkpoint", ckpt, "--output", tmp_path / "m.json"], capsys)
    assert code == 2 and "s0.jpg" in err and "s0.png" in err and "share the label" in err, err
    (data / "images" / "s0.jpg").unlink()
    # a list file naming two images of one name in two folders: their predictions would overwrite each other
    (data / "other").mkdir()
    shutil.copy(data / "images" / "s1.png", data / "other" / "S0.png")
    (data / "list.txt").write_text("images/s0.png labels/s0.png\nother/S0.png labels/s1.png\n")
    listed = write_recipe(tmp_path / "l.yaml", data, tmp_path / "run").read_text()
    (tmp_path / "l.yaml").write_text(listed.replace("image_dir: images, label_dir: labels", "list_file: list.txt"))
    code, err = cli(["eval", tmp_path / "l.yaml", "--checkpoint", ckpt, "--output", tmp_path / "m.json",
                     "--save-predictions", tmp_path / "pred"], capsys)
    assert code == 2 and "s0.png" in err and "S0.png" in err and "both be saved" in err, err
    assert not (tmp_path / "pred").exists() or not any((tmp_path / "pred").iterdir())  # refused before any work


def test_score_refuses_two_predictions_or_labels_of_one_name(tmp_path, capsys):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    for d in (gt, pred / "a", pred / "b"):
        d.mkdir(parents=True)
        cv2.imwrite(str(d / "x.png"), _labels(0, n_classes=11))
    code, err = cli(["score", "--pred-dir", pred, "--gt-dir", gt, "--dataset", "camvid"], capsys)
    assert code == 2 and str(pred / "a" / "x.png") in err and str(pred / "b" / "x.png") in err, err
    shutil.rmtree(pred / "b")
    (gt / "sub").mkdir()
    cv2.imwrite(str(gt / "sub" / "x.png"), _labels(1, n_classes=11))
    code, err = cli(["score", "--pred-dir", pred, "--gt-dir", gt, "--dataset", "camvid"], capsys)
    assert code == 2 and str(gt / "x.png") in err and str(gt / "sub" / "x.png") in err, err


# ---------------------------------------------------------------- 4: what a resume and the caches trust
@pytest.fixture
def trained(tmp_path, monkeypatch, one_thread):
    """A finished 2-iteration run, in a folder of its own with relative paths: (recipe, run folder, data)."""
    monkeypatch.chdir(tmp_path)
    make_folder_data(tmp_path / "data", n=2)
    recipe = write_recipe(tmp_path / "r.yaml", "data", "run")
    assert main(["train", str(recipe)]) == 0
    return recipe, tmp_path / "run", tmp_path / "data"


def test_resume_names_training_files_changed_in_place(trained, capsys):
    recipe, run, data = trained
    image = data / "images" / "s1.png"
    cv2.imwrite(str(image), _rgb(99))  # same name, same count, other pixels
    os.utime(image, ns=(1_000_000_000, 1_000_000_000))
    before = tree(run)
    code, err = cli(["train", "--resume", run], capsys)
    assert code == 2 and "data/images/s1.png" in err and "changed" in err and "--force-override" in err, err
    assert tree(run) == before


def test_resume_continues_on_a_copy_of_the_data_with_new_modification_times(trained, capsys):
    # a copy to another machine or folder keeps names, sizes and bytes but not modification times
    recipe, run, data = trained
    for f in data.rglob("*.png"):
        os.utime(f, ns=(2_000_000_000, 2_000_000_000))
    code, err = cli(["train", "--resume", run, "--set", "train.iters=3", "--force-override"], capsys)
    assert code == 0 and "training data" not in err, err
    assert load_checkpoint(run / "last.pt")["iteration"] == 3


def test_resume_of_a_checkpoint_with_the_older_fingerprint_asks_for_force_and_then_records_the_new_one(trained, capsys):
    recipe, run, _ = trained
    ckpt = torch.load(run / "last.pt", weights_only=True)
    ckpt["data_samples"] = ["0" * 16 for _ in ckpt["data_samples"]]  # what the mtime-based hash gives after a copy
    ckpt["data_fingerprint"] = "0" * 32
    del ckpt["data_fingerprint_kind"]
    torch.save(ckpt, run / "last.pt")
    code, err = cli(["train", "--resume", run], capsys)
    assert code == 2 and "earlier lightseg" in err and "modification times" in err and "--force-override" in err, err
    code, err = cli(["train", "--resume", run, "--set", "train.iters=3", "--force-override"], capsys)
    assert code == 0, err
    saved = load_checkpoint(run / "last.pt")
    assert saved["data_fingerprint_kind"] == "name-size-edges" and saved["data_samples"][0] != "0" * 16


def test_resume_refuses_a_malformed_log_line_before_writing(trained, capsys):
    recipe, run, _ = trained
    lines = (run / "log.jsonl").read_text().splitlines()
    (run / "log.jsonl").write_text("\n".join([lines[0], "[1, 2]", *lines[1:]]) + "\n")
    before = tree(run)
    code, err = cli(["train", "--resume", run, "--set", "train.iters=4", "--force-override"], capsys)
    assert code == 2 and "log.jsonl:2" in err, err
    assert tree(run) == before


def test_resume_uses_the_thread_count_the_run_was_trained_with(trained, capsys):
    recipe, run, _ = trained
    assert load_checkpoint(run / "last.pt")["num_threads"] == 1
    torch.set_num_threads(2)
    code, err = cli(["train", "--resume", run, "--set", "train.iters=3", "--force-override"], capsys)
    assert code == 0 and "1 intra-op threads" in err, err
    assert load_checkpoint(run / "last.pt")["num_threads"] == 1  # what it trained with after the resume
    assert torch.get_num_threads() == 2  # and the process's own setting is back


def test_class_weight_cache_sees_a_label_edited_in_place(tmp_path):
    data = make_folder_data(tmp_path / "data", n=2)
    ds = build_dataset({"name": "folder", "root": str(data), "image_dir": "images", "label_dir": "labels",
                        "classes": CLASSES}, "train", train=False)
    first = cached_class_weights(ds, "enet", tmp_path / "cache")
    label = data / "labels" / "s0.png"
    cv2.imwrite(str(label), np.ones((64, 64), np.uint8))  # same name: every pixel class 1 now
    os.utime(label, ns=(2_000_000_000, 2_000_000_000))
    again = cached_class_weights(ds, "enet", tmp_path / "cache")
    fresh = cached_class_weights(ds, "enet", tmp_path / "other_cache")
    assert not torch.equal(first, again) and torch.equal(again, fresh)


# ---------------------------------------------------------------- 5: command-line values
@pytest.mark.parametrize("value", ["-1", "99999999999", "\u0663", "\u00b2", "+3"])
def test_odd_camera_indices_exit_2_naming_the_value(folder, tmp_path, capsys, value, monkeypatch):
    _, ckpt, _ = folder
    monkeypatch.chdir(tmp_path)
    code, err = cli(["predict", "--checkpoint", ckpt, "--input", value, "--output", tmp_path / "out"], capsys)
    assert code == 2 and value in err and "camera index" in err and "0..255" in err, err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_folder_named_like_a_camera_index_is_read(folder, tmp_path, capsys, monkeypatch):
    _, ckpt, data = folder
    monkeypatch.chdir(tmp_path)
    (tmp_path / "0").mkdir()
    shutil.copy(data / "images" / "s0.png", tmp_path / "0" / "a.png")
    code, err = cli(["predict", "--checkpoint", ckpt, "--input", "0", "--output", tmp_path / "out"], capsys)
    assert code == 0 and "reading the folder 0" in err, err
    assert any(p.name.startswith("a_") for p in (tmp_path / "out").iterdir())  # the folder's image was segmented


# ---------------------------------------------------------------- 6: inputs smaller than the models take
@pytest.mark.parametrize("override, words", [
    ([], ["s0.png", "32x32", "data.root", "data.train_transforms.resize=[64,64]"]),
    (["--set", "data.train_transforms.crop=[32,48]"], ["data.train_transforms.crop=[32, 48]", "32x48"]),
    (["--set", "data.train_transforms.resize=[64,64]", "--set", "data.train_transforms.scale=[0.5,1.0]"],
     ["resize=[64, 64]", "scale=[0.5, 1.0]", "32x32"]),
])
def test_training_inputs_under_64_px_are_refused_before_training(tmp_path, capsys, override, words):
    data = make_folder_data(tmp_path / "data", size=(32, 32))
    recipe = write_recipe(tmp_path / "r.yaml", data, tmp_path / "run", extra="  val_interval: 0")
    recipe.write_text(recipe.read_text().replace("  val_interval: 1000\n", ""))
    before = tree(tmp_path)
    code, err = cli(["train", recipe, *override], capsys)
    assert code == 2 and "minimum input of 64x64" in err and all(w in err for w in words), err
    assert len(err.strip().splitlines()) == 1
    assert tree(tmp_path) == before and not (tmp_path / "run").exists()


def test_eval_and_predict_inputs_under_64_px_exit_2_naming_them(tmp_path, capsys):
    data = make_folder_data(tmp_path / "data", size=(32, 32))
    recipe = write_recipe(tmp_path / "r.yaml", data, tmp_path / "run")
    ckpt = untrained_checkpoint(tmp_path / "model.pt", recipe)
    code, err = cli(["eval", recipe, "--checkpoint", ckpt, "--output", tmp_path / "m.json"], capsys)
    assert code == 2 and "s0.png" in err and "32x32" in err and "data.eval_size" in err, err
    code, err = cli(["predict", "--checkpoint", ckpt, "--input", data / "images", "--output", tmp_path / "out"], capsys)
    assert code == 2 and "s0.png" in err and "--size H W" in err, err
    assert not (tmp_path / "m.json").exists()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
