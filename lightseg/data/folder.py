"""Custom data: a folder of images with a folder of label PNGs, or a list file of pairs."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from .base import IMAGE_EXTENSIONS, SegmentationDataset, check_pairs, layout_error, pair_by_stem, read_pair_list
from .classes import IGNORE_INDEX, generate_palette

FOLDER_LAYOUT = """\
mydata/                          data.image_dir: images/{split}   data.label_dir: labels/{split}
├── images/train/  a.jpg b.png ...
└── labels/train/  a.png b.png ...   (same stems; single-channel or palette PNG of class indices)
or a list file (data.list_file: {split}.txt) of lines "images/a.jpg labels/a.png", relative to the root
"""


class FolderDataset(SegmentationDataset):
    """Images in ``image_dir`` with same-stem ``.png`` labels in ``label_dir``, or the pairs of
    ``list_file``; all three relative to ``root``, ``{split}`` replaced by the split name.

    ``classes`` (names) is required; ``palette`` is generated if absent; ``label_map`` {raw value:
    train id} maps raw label values, every unmapped value becoming 255 (ignore). Without a map the
    label values must already be 0..len(classes)-1 or 255.
    """

    name = "folder"

    def __init__(self, root, split="train", classes=None, palette=None, label_map=None, image_dir=None,
                 label_dir=None, list_file=None, normalize="imagenet", transform=None):
        self.root = Path(root)
        self.split = split
        if not classes:
            raise ConfigError("data.classes is required for a folder dataset: the list of class names, "
                              "e.g. classes: [background, road, car]")
        if palette is None:
            palette = generate_palette(len(classes))
        elif len(palette) != len(classes) or any(len(c) != 3 for c in palette):
            raise ConfigError(f"data.palette must hold one [R, G, B] per class ({len(classes)}), got {palette!r}")
        if not self.root.is_dir():
            raise layout_error(self.root, "no dataset folder", FOLDER_LAYOUT)
        if list_file:
            files = self._from_list(self.root / list_file.replace("{split}", split))
        elif image_dir and label_dir:
            files = self._from_folders(self.root / image_dir.replace("{split}", split),
                                       self.root / label_dir.replace("{split}", split))
        else:
            raise ConfigError("a folder dataset needs data.image_dir and data.label_dir, or data.list_file")
        super().__init__(files, classes, palette, normalize, transform)
        if label_map:
            lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
            for raw, train_id in label_map.items():
                raw, train_id = int(raw), int(train_id)
                if not 0 <= raw <= 255 or not (0 <= train_id < len(classes) or train_id == IGNORE_INDEX):
                    raise ConfigError(f"data.label_map entry {raw}: {train_id} is invalid; raw values are 0..255 and "
                                      f"train ids 0..{len(classes) - 1} or {IGNORE_INDEX}")
                lut[raw] = train_id
            self.label_lut = lut

    def _from_list(self, list_file: Path):
        if not list_file.is_file():
            raise layout_error(self.root, f"no list file {list_file}", FOLDER_LAYOUT)
        files = read_pair_list(list_file, lambda listed: self.root / listed)
        if not files:
            raise DataError(f"{list_file} lists no samples; expected lines 'image_path label_path'")
        check_pairs(files, self.root, f"fix the line in {list_file} or restore the file")
        return files

    def _from_folders(self, image_dir: Path, label_dir: Path):
        for d in (image_dir, label_dir):
            if not d.is_dir():
                raise layout_error(self.root, f"no folder {d}", FOLDER_LAYOUT)
        files = pair_by_stem((p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS),
                             lambda img: label_dir / (img.stem + ".png"))
        if not files:
            raise layout_error(self.root, f"no images in {image_dir}", FOLDER_LAYOUT)
        return files
