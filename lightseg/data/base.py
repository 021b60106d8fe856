"""The one data path every dataset shares.

file -> decode (OpenCV; labels unchanged) -> label mapping (to train ids, ignore = 255) -> augmentation on
numpy -> float tensor, normalised. Datasets differ only in how they list ``files`` and map labels
(``map_label``); problems a user can fix raise ``DataError`` naming the file and the fix.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from ..bounds import check_decoded_size, header_size, read_list_file
from ..errors import DataError
from .classes import IGNORE_INDEX

# Normalisation in pixel units (0..255). "imagenet": torchvision's mean/std, which ImageNet-pretrained
# backbones expect; "minus_one_one": x / 127.5 - 1, the ShuffleNetV2+DPC (TF DeepLab) recipe.
NORMALIZATIONS = {
    "imagenet": ((0.485 * 255, 0.456 * 255, 0.406 * 255), (0.229 * 255, 0.224 * 255, 0.225 * 255)),
    "minus_one_one": ((127.5, 127.5, 127.5), (127.5, 127.5, 127.5)),
}

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def _read_bytes(path: Path) -> np.ndarray:
    try:
        return np.fromfile(str(path), dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found; check the dataset root and list file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror}); check the file's permissions") from None


def _looks_truncated(head: bytes, tail: bytes) -> bool:
    """Cheap test on the first 4 and last 64 bytes: a JPEG should end with its EOI marker, a PNG with IEND."""
    tail = tail.rstrip(b"\x00\r\n ")
    return (head[:2] == b"\xff\xd8" and not tail.endswith(b"\xff\xd9")) or (head == b"\x89PNG" and b"IEND" not in tail)


def _decodes_to_the_end(data: bytes) -> bool:
    """Pillow decodes the whole image without running out of data, and the end marker is there. True for
    a complete image followed by extra bytes (phone cameras append trailers after the JPEG's EOI)."""
    import io

    from PIL import Image

    end_marker = b"IEND" if data[:4] == b"\x89PNG" else b"\xff\xd9"
    if end_marker not in data:
        return False
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    except Exception:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ValueError... for damaged data
        return False
    return True


def _check_complete(data: np.ndarray, path: Path) -> None:
    """OpenCV decodes a truncated JPEG without error (grey bottom rows), so check the end marker."""
    if _looks_truncated(data[:4].tobytes(), data[-64:].tobytes()) and not _decodes_to_the_end(data.tobytes()):
        raise DataError(f"{path}: image file is truncated (incomplete download or copy); "
                        "re-copy it or remove it from the dataset")


def check_file_complete(path) -> None:
    """:func:`_check_complete` reading only the file's first and last bytes (the whole file only when
    those look wrong): cheap enough to run over a whole split before training."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(4)
            size = f.seek(0, 2)
            f.seek(max(0, size - 64))
            tail = f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found; check the dataset root and list file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror}); check the file's permissions") from None
    if size == 0:
        raise DataError(f"{path}: file is empty; re-copy it or remove it from the dataset")
    if _looks_truncated(head, tail):
        _check_complete(_read_bytes(path), path)


def read_image(path) -> np.ndarray:
    """RGB uint8 (H, W, 3)."""
    path = Path(path)
    data = _read_bytes(path)
    if data.size == 0:
        raise DataError(f"{path}: image file is empty; re-copy it or remove it from the dataset")
    _check_complete(data, path)
    check_decoded_size(path, data[:65536].tobytes())  # from the header, before decoding
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if image is None:
        raise DataError(f"{path}: cannot decode the image (corrupt or not an image); re-copy it or remove it")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_label(path, colour: bool = False) -> np.ndarray:
    """The raw label as stored: (H, W) class values, or (H, W, 3) RGB when ``colour``.

    Palette ("P" mode) PNGs, as written by Mapillary Vistas and many annotation tools, store the class
    index and a colour table; OpenCV would expand them to colours, so they are read with Pillow.
    """
    path = Path(path)
    data = _read_bytes(path)
    if data.size == 0:
        raise DataError(f"{path}: label file is empty; re-copy it or remove it from the dataset")
    _check_complete(data, path)
    check_decoded_size(path, data[:65536].tobytes())  # from the header, before decoding
    # PNG colour type (byte 25 of the IHDR chunk) 3 = palette.
    if not colour and data.size > 25 and data[:4].tobytes() == b"\x89PNG" and data[25] == 3:
        import io

        from PIL import Image

        try:
            return np.array(Image.open(io.BytesIO(data.tobytes())))
        except OSError as e:
            raise DataError(f"{path}: cannot decode the label ({e}); re-copy it or remove it") from None
    label = cv2.imdecode(data, cv2.IMREAD_COLOR if colour else cv2.IMREAD_UNCHANGED)
    if label is None:
        raise DataError(f"{path}: cannot decode the label (corrupt or not an image); re-copy it or remove it")
    if colour:
        return cv2.cvtColor(label, cv2.COLOR_BGR2RGB)
    if label.ndim == 3:
        raise DataError(f"{path}: label has {label.shape[2]} channels; expected a single-channel PNG of class "
                        "indices (colour-coded labels must be converted to indices first)")
    return label


def image_size(path) -> tuple[int, int]:
    """(H, W) from the file header only (cheap; used by validate_dataset)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size[1], im.size[0]
    except Image.DecompressionBombError:  # Pillow's guard stays on: read the size from the header ourselves
        with open(path, "rb") as f:
            size = header_size(f.read(65536))
        if size is None:
            raise DataError(f"{path}: declares an image too large to open safely (Pillow: over "
                            f"{2 * Image.MAX_IMAGE_PIXELS} pixels); resize or tile it, or remove it") from None
        return size
    except FileNotFoundError:
        raise DataError(f"{path}: file not found; check the dataset root and list file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read the image header ({e}); re-copy it or remove it") from None


def _listed_path(text: str, utf8: bool, resolve) -> Path:
    """A list file's path. A list that is not UTF-8 (latin-1, cp1252...) is read as raw file-name bytes
    (surrogateescape: what the file system holds when the files were named in that encoding too); when
    no such file exists, the bytes are read as latin-1 (files named in UTF-8 by the unpacking tool)."""
    path = resolve(text)
    if not utf8 and not path.exists():
        latin = resolve(text.encode("utf-8", "surrogateescape").decode("latin-1"))
        if latin.exists():
            return latin
    return path


def read_pair_list(list_file: Path, resolve) -> list[tuple[Path, Path]]:
    """Parse a list file of ``image_path label_path`` lines (blank lines skipped); ``resolve(str) -> Path``.

    A path that contains spaces is written in double quotes: ``"images/a b.png" "labels/a b.png"``.
    """
    import shlex

    data = read_list_file(list_file)  # bounded: size and line length
    try:
        text, utf8 = data.decode("utf-8"), True
    except UnicodeDecodeError:
        text, utf8 = data.decode("utf-8", errors="surrogateescape"), False
    files = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 and ('"' in line or "'" in line):
            try:
                parts = shlex.split(line)
            except ValueError:
                pass
        if len(parts) != 2:
            hint = (" A path with spaces must be in double quotes: \"images/a b.png\" \"labels/a b.png\"."
                    if len(parts) > 2 else "")
            raise DataError(f"{list_file}:{n}: expected 'image_path label_path' (two paths separated by a space), "
                            f"got {len(parts)} field(s) in {line!r}.{hint}")
        files.append((_listed_path(parts[0], utf8, resolve), _listed_path(parts[1], utf8, resolve)))
    return files


def pair_by_stem(images, label_for) -> list[tuple[Path, Path]]:
    """Pair each image (sorted) with ``label_for(image_path)``; a missing label is a DataError naming both."""
    files = []
    for img in sorted(images):
        lbl = label_for(img)
        if not lbl.is_file():
            raise DataError(f"image {img} has no label {lbl}; add the label or remove the image")
        files.append((img, lbl))
    return files


def layout_error(root, what: str, tree: str) -> DataError:
    fix = "Point lightseg at the folder that contains this tree: --data-root DIR (or --set data.root=DIR)."
    root = Path(root)
    if not root.is_dir():  # e.g. a shipped recipe's ../shared/data/camvid, run from another folder
        where = "" if root.is_absolute() else f" (relative to the current folder {Path.cwd()})"
        return DataError(f"data.root {str(root)!r} does not exist{where}. {fix} Expected layout:\n{tree.rstrip()}")
    return DataError(f"{what} under dataset root {root}. Expected layout:\n{tree.rstrip()}\n{fix}")


class SegmentationDataset(Dataset):
    """Base class: subclasses fill ``files`` (list of (image_path, label_path)) and may override
    ``map_label(raw, path) -> uint8 train ids`` (default: a 256-entry lookup table ``label_lut``, or
    the identity)."""

    name = "dataset"
    label_lut: np.ndarray | None = None  # raw value -> train id
    colour_labels = False  # labels are RGB colours (camvid32) rather than indices

    def __init__(self, files, classes, palette, normalize="imagenet", transform=None):
        if normalize not in NORMALIZATIONS:
            raise DataError(f"data.normalize = {normalize!r} is unknown; use one of {', '.join(NORMALIZATIONS)}")
        self.files = list(files)
        self.classes = tuple(classes)
        self.palette = tuple(tuple(int(v) for v in c) for c in palette)
        self.num_classes = len(self.classes)
        self.ignore_index = IGNORE_INDEX
        self.normalize = normalize
        self.transform = transform

    def __len__(self):
        return len(self.files)

    def __repr__(self):
        return f"{type(self).__name__}({len(self)} samples, {self.num_classes} classes, transform={self.transform!r})"

    # ------------------------------------------------------------ decoding
    def load_image(self, i: int) -> np.ndarray:
        return read_image(self.files[i][0])

    def load_raw_label(self, i: int) -> np.ndarray:
        return read_label(self.files[i][1], colour=self.colour_labels)

    def map_label(self, raw: np.ndarray, path) -> np.ndarray:
        if raw.dtype != np.uint8:
            if raw.size and raw.max() > 255:
                bad = np.unique(raw[raw > 255])[:10].tolist()
                raise DataError(f"{path}: label values {bad} do not fit in 8 bits; this dataset expects class "
                                f"indices 0..{self.num_classes - 1} (or {IGNORE_INDEX} = ignore)")
            raw = raw.astype(np.uint8)
        return raw if self.label_lut is None else self.label_lut[raw]

    def check_label(self, label: np.ndarray, path) -> None:
        # bincount over 256 values is cheaper than np.unique on a full-size label.
        counts = np.bincount(label.ravel(), minlength=256)
        counts[IGNORE_INDEX] = 0
        bad = np.flatnonzero(counts[self.num_classes:]) + self.num_classes
        if bad.size:
            raise DataError(f"{path}: label values {bad.tolist()} are outside the class range 0..{self.num_classes - 1} "
                            f"and are not the ignore value {IGNORE_INDEX}; {self.fix_hint()}")

    def fix_hint(self) -> str:
        return "fix the label file or map the values (data.label_map for a folder dataset)"

    def load_label(self, i: int) -> np.ndarray:
        """(H, W) uint8 train-id label, no augmentation; raises DataError on out-of-range values."""
        path = self.files[i][1]
        label = self.map_label(self.load_raw_label(i), path)
        self.check_label(label, path)
        return label

    # ------------------------------------------------------------ samples
    def load_pair(self, i: int):
        image, label = self.load_image(i), self.load_label(i)
        if image.shape[:2] != label.shape[:2]:
            img_path, lbl_path = self.files[i]
            raise DataError(f"image {img_path} is {image.shape[0]}x{image.shape[1]} but its label {lbl_path} is "
                            f"{label.shape[0]}x{label.shape[1]} (HxW); they must be the same size: "
                            "check that the pair belongs together")
        return image, label

    def __getitem__(self, i: int):
        image, label = self.load_pair(i)
        if self.transform is not None:
            image, label = self.transform(image, label)
        return self.to_tensor(image), torch.from_numpy(np.ascontiguousarray(label)).long()

    def to_tensor(self, image: np.ndarray) -> torch.Tensor:
        # Channel by channel in numpy: ~20x faster than torch's permute + float + broadcast on a
        # 360x480 image with few cores, and runs in every loader worker.
        mean, std = NORMALIZATIONS[self.normalize]
        x = np.empty((3,) + image.shape[:2], dtype=np.float32)
        for c in range(3):
            x[c] = (image[:, :, c].astype(np.float32) - np.float32(mean[c])) * np.float32(1.0 / std[c])
        return torch.from_numpy(x)

    def image_fill(self) -> tuple:
        """RGB padding value that normalises to 0."""
        return NORMALIZATIONS[self.normalize][0]


def check_pairs(files, root, hint: str) -> None:
    """Listing-time check: every image and label exists."""
    for img, lbl in files:
        missing = [str(p) for p in (img, lbl) if not Path(p).is_file()]
        if missing:
            raise DataError(f"missing {' and '.join(missing)} (pair image {img}, label {lbl}) in dataset {root}; {hint}")
