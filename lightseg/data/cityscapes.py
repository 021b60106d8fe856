"""Cityscapes (fine annotations): labelIds mapped to the 19 train classes on the fly."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError
from .base import SegmentationDataset, layout_error
from .classes import (CITYSCAPES_CATEGORIES, CITYSCAPES_CLASSES, CITYSCAPES_PALETTE,
                      CITYSCAPES_TRAINID_TO_CATEGORY, cityscapes_label_lut)

CITYSCAPES_LAYOUT = """\
cityscapes/
├── leftImg8bit/
│   └── {split}/aachen/aachen_000000_000019_leftImg8bit.png ...
└── gtFine/
    └── {split}/aachen/aachen_000000_000019_gtFine_labelIds.png ...
"""


class Cityscapes(SegmentationDataset):
    """``leftImg8bit/{split}/{city}/*_leftImg8bit.png`` with ``gtFine/{split}/{city}/*_gtFine_labelIds.png``.

    Labels are read as labelIds and mapped through the official table (``classes.CITYSCAPES_LABELS``)
    with a 256-entry lookup table, so there is no preprocessing step to run. ``categories`` and
    ``train_id_to_category`` serve the category IoU metric.
    """

    name = "cityscapes"
    categories = CITYSCAPES_CATEGORIES
    train_id_to_category = np.array(CITYSCAPES_TRAINID_TO_CATEGORY, dtype=np.int64)

    def __init__(self, root, split="train", normalize="imagenet", transform=None):
        self.root = Path(root)
        self.split = split
        layout = CITYSCAPES_LAYOUT.replace("{split}", split)
        image_dir = self.root / "leftImg8bit" / split
        label_dir = self.root / "gtFine" / split
        if not image_dir.is_dir():
            raise layout_error(self.root, f"no folder leftImg8bit/{split}", layout)
        if not label_dir.is_dir():
            raise layout_error(self.root, f"no folder gtFine/{split} (download gtFine_trainvaltest.zip)", layout)
        files = []
        for img in sorted(image_dir.glob("*/*_leftImg8bit.png")):
            stem = img.name[: -len("_leftImg8bit.png")]
            lbl = label_dir / img.parent.name / f"{stem}_gtFine_labelIds.png"
            if not lbl.is_file():
                raise DataError(f"image {img} has no label {lbl}; restore gtFine from gtFine_trainvaltest.zip "
                                "or remove the image")
            files.append((img, lbl))
        if not files:
            raise layout_error(self.root, f"no *_leftImg8bit.png files in {image_dir}/<city>/", layout)
        super().__init__(files, CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, normalize, transform)
        self.label_lut = cityscapes_label_lut()
