"""Datasets: layouts, label mappings, the data contract, and the DataError cases (fixtures in tmp_path)."""
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from lightseg.data import build_dataset, validate_dataset
from lightseg.data.base import NORMALIZATIONS
from lightseg.data.classes import (CAMVID32_COLOURS, CAMVID_CLASSES, CITYSCAPES_CATEGORIES, CITYSCAPES_CLASSES,
                                   CITYSCAPES_LABELS, CITYSCAPES_PALETTE, CITYSCAPES_TRAINID_TO_CATEGORY,
                                   CITYSCAPES_TRAINID_TO_LABELID, MAPILLARY_V12_CLASSES, cityscapes_label_lut,
                                   mapillary_label_lut)
from lightseg.errors import ConfigError, DataError

H, W = 64, 96


def write_rgb(path: Path, rgb: np.ndarray):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def write_label(path: Path, label: np.ndarray):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), label)


def random_rgb(seed, h=H, w=W):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def camvid_label(seed, h=H, w=W):
    """Values 0..11 (11 = void)."""
    return np.random.default_rng(seed).integers(0, 12, (h, w), dtype=np.uint8)


def make_camvid(root: Path, n_train=3, n_val=2, list_style="segnet"):
    """SegNet layout. ``list_style``: "segnet" writes SegNet's absolute-looking paths and names the .jpg
    images .png (as the real list does after a re-encode); "none" writes no list files."""
    for split, n in (("train", n_train), ("val", n_val)):
        lines = []
        for i in range(n):
            ext = ".jpg" if i == 1 else ".png"  # one JPEG re-encode per split
            write_rgb(root / split / f"f{i}{ext}", random_rgb(i))
            write_label(root / f"{split}annot" / f"f{i}.png", camvid_label(i))
            lines.append(f"/SegNet/CamVid/{split}/f{i}.png /SegNet/CamVid/{split}annot/f{i}.png")
        if list_style == "segnet":
            (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def camvid_cfg(root, **kw):
    return {"name": "camvid", "root": str(root), **kw}


# ---------------------------------------------------------------- CamVid
@pytest.mark.parametrize("list_style", ["segnet", "none"])
def test_camvid_fixture_contract(tmp_path, list_style):
    root = make_camvid(tmp_path / "camvid", list_style=list_style)
    ds = build_dataset(camvid_cfg(root), "train", train=False)
    assert len(ds) == 3 and len(build_dataset(camvid_cfg(root), "val", train=False)) == 2
    assert ds.classes == CAMVID_CLASSES and ds.num_classes == 11 and ds.ignore_index == 255
    assert len(ds.palette) == 11 and [Path(img).suffix for img, _ in ds.files] == [".png", ".jpg", ".png"]
    image, label = ds[0]
    assert image.dtype == torch.float32 and image.shape == (3, H, W)
    assert label.dtype == torch.int64 and label.shape == (H, W)
    raw = camvid_label(0)
    expected = np.where(raw == 11, 255, raw)
    assert np.array_equal(label.numpy(), expected) and np.array_equal(ds.load_label(0), expected)
    # ImageNet normalisation of the lossless PNG, by hand: (v - 255 * mean) / (255 * std).
    rgb = random_rgb(0)
    assert np.array_equal(ds.load_image(0), rgb)
    r = (rgb[5, 7, 0] - 0.485 * 255) / (0.229 * 255)
    assert image[0, 5, 7].item() == pytest.approx(r, abs=1e-4)


def test_minus_one_one_normalisation(tmp_path):
    root = make_camvid(tmp_path / "camvid")
    ds = build_dataset(camvid_cfg(root, normalize="minus_one_one"), "train", train=False)
    image, _ = ds[0]
    expected = torch.from_numpy(random_rgb(0)).permute(2, 0, 1).float() / 127.5 - 1
    assert torch.allclose(image, expected, atol=1e-5)
    assert NORMALIZATIONS["minus_one_one"][0] == (127.5,) * 3


def test_train_transforms_apply_only_when_train(tmp_path):
    root = make_camvid(tmp_path / "camvid")
    cfg = camvid_cfg(root, train_transforms={"crop": [80, 40], "flip": True})
    image, label = build_dataset(cfg, "train", train=True)[0]
    assert image.shape == (3, 80, 40) and label.shape == (80, 40)
    assert (label[H:] == 255).all()  # padded rows are ignored
    # Image padding is the normalisation mean, i.e. 0 after normalising.
    assert torch.allclose(image[:, H:], torch.zeros(3, 80 - H, 40), atol=1e-2)
    assert build_dataset(cfg, "train", train=False)[0][0].shape == (3, H, W)


def test_split_roles_resolve_to_configured_split_names(tmp_path):
    root = make_camvid(tmp_path / "camvid")
    (root / "trainval.txt").write_text((root / "train.txt").read_text() + (root / "val.txt").read_text())
    cfg = camvid_cfg(root, train_split="trainval")
    assert len(build_dataset(cfg, "train", train=True)) == 5
    assert len(build_dataset(cfg, "trainval", train=True)) == 5
    assert len(build_dataset(cfg, "val", train=False)) == 2


def test_split_lists_join_splits(tmp_path):
    # The papers' CamVid protocol trains on train + val: data.train_split: [train, val]
    root = make_camvid(tmp_path / "camvid")
    both = build_dataset(camvid_cfg(root, train_split=["train", "val"]), "train", train=True)
    train = build_dataset(camvid_cfg(root), "train", train=False)
    val = build_dataset(camvid_cfg(root), "val", train=False)
    assert both.files == train.files + val.files and len(both) == 5 and both.split == "train+val"
    assert torch.equal(build_dataset(camvid_cfg(root, train_split=["train", "val"]), "train", train=False)[3][1], val[0][1])
    for bad in ([], ["train", "train"], ["train", ""]):
        with pytest.raises(ConfigError, match="split list"):
            build_dataset(camvid_cfg(root, train_split=bad), "train", train=True)
    with pytest.raises(DataError, match="tset"):
        build_dataset(camvid_cfg(root, train_split=["train", "tset"]), "train", train=True)


def test_real_camvid(camvid):
    train = build_dataset(camvid_cfg(camvid), "train", train=False)
    val = build_dataset(camvid_cfg(camvid), "val", train=False)
    assert len(train) == 367 and len(val) == 101
    for ds, i in ((train, 0), (val, len(val) - 1)):
        image, label = ds[i]
        assert image.shape == (3, 360, 480) and label.shape == (360, 480)
        assert set(torch.unique(label).tolist()) <= set(range(11)) | {255}
    assert validate_dataset(val) == []


# ---------------------------------------------------------------- CamVid 32-class colours
def test_camvid32_colour_mapping(tmp_path):
    root = tmp_path / "camvid701"
    colours = {name: CAMVID32_COLOURS[name][0] for name in ("Sky", "LaneMkgsDriv", "Child", "Void", "Wall", "SUVPickupTruck")}
    expected_ids = [0, 3, 9, 255, 1, 8]  # Sky, Road, Pedestrian, ignore, Building, Car
    label_rgb = np.zeros((H, W, 3), np.uint8)
    for k, colour in enumerate(colours.values()):
        label_rgb[:, k * 16:(k + 1) * 16] = colour
    write_rgb(root / "train" / "0001TP_006690.png", random_rgb(0))
    write_rgb(root / "train_labels" / "0001TP_006690_L.png", label_rgb)
    ds = build_dataset({"name": "camvid32", "root": str(root)}, "train", train=False)
    label = ds.load_label(0)
    assert [int(label[0, k * 16]) for k in range(6)] == expected_ids
    label_rgb[0, 0] = (1, 2, 3)
    write_rgb(root / "train_labels" / "0001TP_006690_L.png", label_rgb)
    with pytest.raises(DataError, match=r"0001TP_006690_L.png: colours \[\(1, 2, 3\)\]"):
        ds.load_label(0)


# ---------------------------------------------------------------- Cityscapes
def test_cityscapes_lut_hand_values():
    lut = cityscapes_label_lut()
    hand = {7: 0, 8: 1, 11: 2, 17: 5, 20: 7, 23: 10, 24: 11, 26: 13, 31: 16, 33: 18,
            0: 255, 1: 255, 6: 255, 9: 255, 14: 255, 18: 255, 29: 255, 30: 255, 34: 255, 255: 255}
    assert {k: int(lut[k]) for k in hand} == hand
    assert lut.shape == (256,) and lut.dtype == np.uint8
    assert (lut[34:] == 255).all() and sorted(set(lut.tolist()) - {255}) == list(range(19))
    assert len([row for row in CITYSCAPES_LABELS if row[1] >= 0]) == 34


def test_cityscapes_names_palette_categories():
    assert len(CITYSCAPES_CLASSES) == 19 and CITYSCAPES_CLASSES[0] == "road" and CITYSCAPES_CLASSES[13] == "car"
    assert CITYSCAPES_PALETTE[0] == (128, 64, 128) and CITYSCAPES_PALETTE[18] == (119, 11, 32)
    assert CITYSCAPES_CATEGORIES == ("flat", "construction", "object", "nature", "sky", "human", "vehicle")
    cat = {CITYSCAPES_CLASSES[t]: CITYSCAPES_CATEGORIES[c] for t, c in enumerate(CITYSCAPES_TRAINID_TO_CATEGORY)}
    assert cat["road"] == cat["sidewalk"] == "flat"
    assert cat["building"] == cat["wall"] == cat["fence"] == "construction"
    assert cat["pole"] == cat["traffic light"] == cat["traffic sign"] == "object"
    assert cat["vegetation"] == cat["terrain"] == "nature" and cat["sky"] == "sky"
    assert cat["person"] == cat["rider"] == "human"
    assert {cat[c] for c in CITYSCAPES_CLASSES[13:]} == {"vehicle"}
    assert CITYSCAPES_TRAINID_TO_LABELID[:3] == (7, 8, 11) and CITYSCAPES_TRAINID_TO_LABELID[18] == 33


def test_cityscapes_dataset(tmp_path):
    root = tmp_path / "cityscapes"
    label_ids = np.array([0, 7, 8, 26, 33, 34, 24, 255], np.uint8)
    label = np.repeat(label_ids, W // 8)[None].repeat(H, 0)
    for city, n in (("aachen", 2), ("bremen", 1)):
        for i in range(n):
            stem = f"{city}_{i:06d}_000019"
            write_rgb(root / "leftImg8bit/train" / city / f"{stem}_leftImg8bit.png", random_rgb(i))
            write_label(root / "gtFine/train" / city / f"{stem}_gtFine_labelIds.png", label)
            write_label(root / "gtFine/train" / city / f"{stem}_gtFine_color.png", label)  # must be skipped
    ds = build_dataset({"name": "cityscapes", "root": str(root)}, "train", train=False)
    assert len(ds) == 3 and ds.num_classes == 19 and ds.categories == CITYSCAPES_CATEGORIES
    assert Path(ds.files[2][0]).parent.name == "bremen"
    _, target = ds[0]
    assert target[0, ::W // 8].tolist() == [255, 0, 1, 13, 18, 255, 11, 255]
    assert ds.train_id_to_category[13] == 6


# ---------------------------------------------------------------- Mapillary
def write_palette_png(path: Path, indices: np.ndarray):
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(indices.astype(np.uint8), mode="P")
    im.putpalette(np.random.default_rng(0).integers(0, 256, 768).tolist())
    im.save(path)


def test_mapillary_mapping_table():
    lut = mapillary_label_lut()
    idx = MAPILLARY_V12_CLASSES.index
    assert len(MAPILLARY_V12_CLASSES) == 66
    city = CITYSCAPES_CLASSES.index
    assert lut[idx("object--traffic-sign--front")] == lut[idx("object--traffic-sign--back")] == city("traffic sign")
    for rider in ("bicyclist", "motorcyclist", "other-rider"):
        assert lut[idx(f"human--rider--{rider}")] == city("rider")
    assert lut[idx("construction--flat--road")] == 0 and lut[13] == 0  # road is index 13 in v1.2
    assert lut[idx("object--vehicle--car")] == 13 and lut[55] == 13
    assert lut[idx("object--vehicle--on-rails")] == city("train")
    for ignored in ("animal--bird", "object--vehicle--caravan", "construction--barrier--guard-rail", "void--unlabeled"):
        assert lut[idx(ignored)] == 255
    assert sorted(set(lut.tolist()) - {255}) == list(range(19))


def test_mapillary_dataset_reads_palette_indices(tmp_path):
    root = tmp_path / "vistas"
    raw = np.array([13, 49, 50, 20, 55, 65, 0, 58], np.uint8)
    indices = np.repeat(raw, W // 8)[None].repeat(H, 0)
    write_rgb(root / "validation/images/abc.jpg", random_rgb(0))
    write_palette_png(root / "validation/labels/abc.png", indices)
    ds = build_dataset({"name": "mapillary", "root": str(root)}, "val", train=False)  # "val" -> validation/
    assert len(ds) == 1 and ds.classes == CITYSCAPES_CLASSES
    assert ds.load_label(0)[0, ::W // 8].tolist() == [0, 7, 7, 12, 13, 255, 255, 16]
    write_palette_png(root / "validation/labels/abc.png", np.full((H, W), 100))
    with pytest.raises(DataError, match=r"abc.png: label values \[100\] are not Mapillary v1.2"):
        ds.load_label(0)


# ---------------------------------------------------------------- folder / list
def test_folder_dataset_dirs_list_and_label_map(tmp_path):
    root = tmp_path / "mydata"
    for i in range(2):
        write_rgb(root / "images/train" / f"s{i}.jpg", random_rgb(i))
        write_label(root / "labels/train" / f"s{i}.png", np.full((H, W), 10 * (i + 1), np.uint8))
    base = {"name": "folder", "root": str(root), "classes": ["background", "thing"],
            "image_dir": "images/{split}", "label_dir": "labels/{split}", "label_map": {10: 0, 20: 1}}
    ds = build_dataset(base, "train", train=False)
    assert len(ds) == 2 and ds.classes == ("background", "thing") and len(ds.palette) == 2
    assert len(set(ds.palette)) == 2
    assert ds[0][1].unique().tolist() == [0] and ds[1][1].unique().tolist() == [1]
    # Unmapped raw values become ignore.
    ds = build_dataset({**base, "label_map": {10: 1}}, "train", train=False)
    assert ds[1][1].unique().tolist() == [255]
    # List file variant; without a label map raw values must already be class ids.
    (root / "train.txt").write_text("images/train/s0.jpg labels/train/s0.png\n")
    listed = {"name": "folder", "root": str(root), "classes": ["a", "b"], "list_file": "{split}.txt",
              "palette": [[1, 2, 3], [4, 5, 6]]}
    ds = build_dataset(listed, "train", train=False)
    assert len(ds) == 1 and ds.palette == ((1, 2, 3), (4, 5, 6))
    with pytest.raises(DataError, match=r"s0.png: label values \[10\] are outside the class range 0..1"):
        ds[0]
    with pytest.raises(ConfigError, match="data.classes is required"):
        build_dataset({**base, "classes": None}, "train", train=False)


# ---------------------------------------------------------------- configuration errors
def test_unknown_dataset_name_and_normalisation(tmp_path):
    with pytest.raises(ConfigError, match="data.name = 'kitti' is unknown"):
        build_dataset({"name": "kitti", "root": str(tmp_path)}, "train", train=False)
    with pytest.raises(ConfigError, match="data.normalize = 'zscore'"):
        build_dataset(camvid_cfg(tmp_path, normalize="zscore"), "train", train=False)


# ---------------------------------------------------------------- DataError cases
def test_missing_dataset_directory_shows_layout(tmp_path):
    with pytest.raises(DataError) as e:
        build_dataset(camvid_cfg(tmp_path / "nowhere"), "train", train=False)
    msg = str(e.value)
    assert str(tmp_path / "nowhere") in msg and "Expected layout" in msg and "trainannot/" in msg
    with pytest.raises(DataError, match="gtFine"):
        build_dataset({"name": "cityscapes", "root": str(tmp_path)}, "train", train=False)
    with pytest.raises(DataError, match=r"test.txt.*\n.*camvid/"):
        build_dataset(camvid_cfg(make_camvid(tmp_path / "camvid")), "test", train=False)


def test_missing_pair_member(tmp_path):
    root = make_camvid(tmp_path / "camvid")
    (root / "trainannot/f2.png").unlink()
    with pytest.raises(DataError, match=r"missing .*trainannot/f2.png.*train.txt"):
        build_dataset(camvid_cfg(root), "train", train=False)
    root = make_camvid(tmp_path / "nolist", list_style="none")
    (root / "valannot/f0.png").unlink()
    with pytest.raises(DataError, match=r"image .*val/f0.png has no label .*valannot/f0.png"):
        build_dataset(camvid_cfg(root), "val", train=False)


def test_size_mismatch_names_both_files(tmp_path):
    root = make_camvid(tmp_path / "camvid")
    write_label(root / "trainannot/f0.png", camvid_label(0, 32, 48))
    ds = build_dataset(camvid_cfg(root), "train", train=False)
    with pytest.raises(DataError) as e:
        ds[0]
    msg = str(e.value)
    assert "train/f0.png is 64x96" in msg and "trainannot/f0.png is 32x48" in msg
    problems = validate_dataset(ds)
    assert len(problems) == 1 and "trainannot/f0.png is 32x48" in problems[0]


@pytest.mark.parametrize("name", ["f0.png", "f1.jpg"])
def test_truncated_image_names_the_file(tmp_path, name):
    root = make_camvid(tmp_path / "camvid")
    path = root / "train" / name
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    ds = build_dataset(camvid_cfg(root), "train", train=False)
    with pytest.raises(DataError, match=f"{name}: image file is truncated"):
        ds[int(name[1])]
    path.write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=f"{name}: cannot decode the image"):
        ds[int(name[1])]
    ds[2]  # the intact sample still loads


def test_label_values_out_of_range(tmp_path):
    root = make_camvid(tmp_path / "camvid")
    bad = camvid_label(0)
    bad[0, :3] = [12, 40, 11]  # 11 is void (fine), 12 and 40 are not CamVid classes
    write_label(root / "trainannot/f0.png", bad)
    ds = build_dataset(camvid_cfg(root), "train", train=False)
    with pytest.raises(DataError, match=r"trainannot/f0.png: label values \[12, 40\] are outside the class range 0..10"):
        ds[0]
    write_rgb(root / "trainannot/f1.png", random_rgb(1))
    with pytest.raises(DataError, match="f1.png: label has 3 channels"):
        ds.load_label(1)
    problems = validate_dataset(ds)
    assert len(problems) == 2 and "[12, 40]" in problems[0] and "3 channels" in problems[1]
