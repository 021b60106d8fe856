"""CamVid in SegNet's release layout (11 classes), and the original 32-class colour labels (``camvid32``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError
from .base import IMAGE_EXTENSIONS, SegmentationDataset, check_pairs, layout_error, pair_by_stem, read_pair_list
from .classes import CAMVID_CLASSES, CAMVID_PALETTE, IGNORE_INDEX, camvid32_colour_to_train_id

CAMVID_LAYOUT = """\
camvid/
├── train/        0001TP_006690.png (or .jpg) ...
├── trainannot/   0001TP_006690.png ...  (single-channel, values 0..10, 11 = void)
├── val/  valannot/  (test/  testannot/)
└── train.txt  val.txt  (optional: lines "train/x.png trainannot/x.png")
"""


def _resolve(root: Path, listed: str) -> Path:
    """A path from a list file: relative to the root; else (SegNet's lists say /SegNet/CamVid/train/x.png)
    root/<its folder>/<its name>; else the same stem with another image extension (the images may have
    been re-encoded, e.g. as .jpg, while the list still names .png)."""
    p = Path(listed)
    candidates = [root / listed.lstrip("/"), p, root / p.parent.name / p.name]
    for c in candidates:
        if c.is_file():
            return c
    base = root / p.parent.name / p.stem
    for ext in IMAGE_EXTENSIONS:
        if (c := base.with_suffix(ext)).is_file():
            return c
    return candidates[0]


def list_segnet_split(root: Path, split: str, layout: str):
    """(image, label) pairs of ``split``: from ``{split}.txt`` if present, else ``{split}/`` + ``{split}annot/``."""
    root = Path(root)
    if not root.is_dir():
        raise layout_error(root, "no dataset folder", layout)
    list_file = root / f"{split}.txt"
    if list_file.is_file():
        files = read_pair_list(list_file, lambda listed: _resolve(root, listed))
        if not files:
            raise DataError(f"{list_file} lists no samples; expected lines 'image_path label_path'")
        check_pairs(files, root, f"fix the line in {list_file} or restore the file")
        return files
    image_dir, label_dir = root / split, root / f"{split}annot"
    if not image_dir.is_dir() or not label_dir.is_dir():
        raise layout_error(root, f"split '{split}': neither {list_file.name} nor {split}/ and {split}annot/ found",
                           layout)
    files = pair_by_stem((p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS),
                         lambda img: label_dir / (img.stem + ".png"))
    if not files:
        raise layout_error(root, f"no images in {image_dir}", layout)
    return files


class CamVid(SegmentationDataset):
    """SegNet's CamVid: 11 classes; label 11 (void) -> 255; any other value >= 11 is an error."""

    name = "camvid"

    def __init__(self, root, split="train", normalize="imagenet", transform=None):
        self.root = Path(root)
        self.split = split
        files = list_segnet_split(self.root, split, CAMVID_LAYOUT)
        super().__init__(files, CAMVID_CLASSES, CAMVID_PALETTE, normalize, transform)
        lut = np.arange(256, dtype=np.uint8)  # values > 11 stay as they are so check_label reports them
        lut[11] = IGNORE_INDEX
        self.label_lut = lut

    def fix_hint(self) -> str:
        return "CamVid labels hold 0..10 and 11 (void); is this a 32-class colour label (use data.name: camvid32)?"


CAMVID32_LAYOUT = """\
camvid/
├── train/          0001TP_006690.png ...
├── train_labels/   0001TP_006690_L.png ...  (RGB colours of the 32 original classes)
├── val/  val_labels/  (test/  test_labels/)
"""


class CamVid32(SegmentationDataset):
    """The original CamVid colour labels (32 classes, ``*_L.png``) grouped into SegNet's 11 classes.

    Layout ``{split}/x.png`` + ``{split}_labels/x_L.png`` (the common repackaging of Brostow et al.'s
    701 frames). The grouping (``classes.CAMVID32_COLOURS``): Building <- Building, Wall, Bridge, Tunnel,
    Archway; Pole <- Column_Pole, TrafficCone; Road <- Road, LaneMkgsDriv, LaneMkgsNonDriv; Pavement <-
    Sidewalk, ParkingBlock, RoadShoulder; Tree <- Tree, VegetationMisc; SignSymbol <- SignSymbol,
    Misc_Text, TrafficLight; Car <- Car, SUVPickupTruck, Truck_Bus, Train, OtherMoving; Pedestrian <-
    Pedestrian, Child, CartLuggagePram, Animal; Bicyclist <- Bicyclist, MotorcycleScooter; Sky, Fence
    one-to-one; Void -> 255. A colour outside the 32 is an error.
    """

    name = "camvid32"
    colour_labels = True

    def __init__(self, root, split="train", normalize="imagenet", transform=None):
        self.root = Path(root)
        self.split = split
        image_dir, label_dir = self.root / split, self.root / f"{split}_labels"
        if not image_dir.is_dir() or not label_dir.is_dir():
            raise layout_error(self.root, f"split '{split}': {split}/ or {split}_labels/ not found", CAMVID32_LAYOUT)
        files = pair_by_stem((p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS),
                             lambda img: label_dir / f"{img.stem}_L.png")
        if not files:
            raise layout_error(self.root, f"no images in {image_dir}", CAMVID32_LAYOUT)
        super().__init__(files, CAMVID_CLASSES, CAMVID_PALETTE, normalize, transform)
        # Colours packed as r * 65536 + g * 256 + b; sorted keys for a searchsorted lookup.
        table = camvid32_colour_to_train_id()
        keys = np.array([(r << 16) | (g << 8) | b for r, g, b in table], dtype=np.int64)
        order = np.argsort(keys)
        self._keys = keys[order]
        self._ids = np.array(list(table.values()), dtype=np.uint8)[order]

    def map_label(self, raw, path):
        packed = (raw[..., 0].astype(np.int64) << 16) | (raw[..., 1].astype(np.int64) << 8) | raw[..., 2]
        pos = np.clip(np.searchsorted(self._keys, packed), 0, len(self._keys) - 1)
        known = self._keys[pos] == packed
        if not known.all():
            colours = np.unique(packed[~known])[:5]
            names = [((int(c) >> 16) & 255, (int(c) >> 8) & 255, int(c) & 255) for c in colours]
            raise DataError(f"{path}: colours {names} (RGB) are not CamVid 32-class colours; "
                            "fix the label or check that it is an original *_L.png colour label")
        return self._ids[pos]
