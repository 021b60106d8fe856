"""Mapillary Vistas v1.2, mapped to the 19 Cityscapes train classes (MiniNet's use of the set)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError
from .base import SegmentationDataset, layout_error, pair_by_stem
from .classes import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, MAPILLARY_V12_CLASSES, mapillary_label_lut

MAPILLARY_LAYOUT = """\
mapillary/
├── training/
│   ├── images/  xxxx.jpg ...
│   └── labels/  xxxx.png ...   (v1.2: class index 0..65 per pixel)
└── validation/
    ├── images/
    └── labels/
"""

# Recipes say train/val like every other dataset; Vistas names the folders training/validation.
SPLIT_FOLDERS = {"train": "training", "val": "validation", "test": "testing"}


class Mapillary(SegmentationDataset):
    """``{training,validation}/images/*.jpg`` + ``labels/*.png`` holding the 66 v1.2 class indices.

    Mapping to Cityscapes trainIds (``classes.MAPILLARY_TO_CITYSCAPES``, ``classes.mapillary_label_lut``):

    ============================  =================================================================
    Cityscapes class              Mapillary v1.2 classes
    ============================  =================================================================
    road                          flat--road, flat--bike-lane, flat--service-lane,
                                  flat--crosswalk-plain, marking--crosswalk-zebra, marking--general
    sidewalk                      flat--sidewalk, flat--pedestrian-area, flat--curb-cut, barrier--curb
    building / wall / fence       structure--building / barrier--wall / barrier--fence
    pole                          support--pole, support--utility-pole, support--traffic-sign-frame
    traffic light                 object--traffic-light
    traffic sign                  traffic-sign--front, traffic-sign--back   (MiniNet: both sides)
    vegetation / terrain / sky    nature--vegetation / nature--terrain / nature--sky
    person                        human--person
    rider                         rider--bicyclist, rider--motorcyclist, rider--other-rider (MiniNet)
    car / truck / bus             vehicle--car / vehicle--truck / vehicle--bus
    train                         vehicle--on-rails
    motorcycle / bicycle          vehicle--motorcycle / vehicle--bicycle
    ignored (255)                 the other 30 classes (animals, guard rail, bridge, tunnel, water,
                                  street light, caravan, trailer, boat, other vehicle, void, ...)
    ============================  =================================================================
    """

    name = "mapillary"

    def __init__(self, root, split="training", normalize="imagenet", transform=None):
        self.root = Path(root)
        self.split = split
        folder = SPLIT_FOLDERS.get(split, split)
        image_dir, label_dir = self.root / folder / "images", self.root / folder / "labels"
        if not image_dir.is_dir() or not label_dir.is_dir():
            raise layout_error(self.root, f"split '{split}': no folders {folder}/images and {folder}/labels",
                               MAPILLARY_LAYOUT)
        files = pair_by_stem(image_dir.glob("*.jpg"), lambda img: label_dir / (img.stem + ".png"))
        if not files:
            raise layout_error(self.root, f"no .jpg images in {image_dir}", MAPILLARY_LAYOUT)
        super().__init__(files, CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, normalize, transform)
        self.label_lut = mapillary_label_lut()

    def map_label(self, raw, path):
        # The lookup table would silently ignore indices >= 66, e.g. v2.0 labels (124 classes): refuse them.
        if raw.size and raw.max() >= len(MAPILLARY_V12_CLASSES):
            bad = np.unique(raw[raw >= len(MAPILLARY_V12_CLASSES)])[:10].tolist()
            raise DataError(f"{path}: label values {bad} are not Mapillary v1.2 class indices (0..65); "
                            "point data.root at the v1.2 release (v2.0 labels have 124 classes)")
        return self.label_lut[raw]
