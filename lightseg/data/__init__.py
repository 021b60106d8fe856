"""Datasets and augmentations: ``build_dataset(data_cfg, split, train)``.

``dataset[i]`` is ``(image, label)``: a float32 (3, H, W) tensor normalised per ``data_cfg["normalize"]``
and an int64 (H, W) tensor of train ids (255 = ignore). ``train=True`` applies
``data_cfg["train_transforms"]``; ``train=False`` returns full-resolution samples.

Reproducibility: the transforms draw from numpy's global RNG. PyTorch >= 1.9 already reseeds numpy in
each ``DataLoader`` worker from the loader's base seed (older versions did not, and forked workers
repeated each other's augmentations). Pass ``worker_init_fn=lightseg.data.worker_init_fn`` anyway: it
seeds numpy and ``random`` from the worker's torch seed explicitly, so the guarantee does not rest on
a torch version. With ``torch.manual_seed`` set, augmentations are reproducible and differ between
workers and epochs.
"""
from __future__ import annotations

import copy
import os
import random
import sys

import numpy as np

from ..bounds import check_fits, estimate_memory
from ..errors import ConfigError, DataError, LightsegError
from .base import NORMALIZATIONS, SegmentationDataset, check_image, read_image, read_label
from .camvid import CamVid, CamVid32
from .cityscapes import Cityscapes
from .classes import IGNORE_INDEX
from .folder import FolderDataset
from .mapillary import Mapillary
from .transforms import build_train_transforms, smallest_train_input

DEFAULT_DATA_CFG = {
    "name": "camvid",
    "root": "../shared/data/camvid",
    "train_split": "train",
    "val_split": "val",
    "normalize": "imagenet",
    "num_workers": 2,
    # true: decode the training set once into the training device's memory and augment each batch there
    # (lightseg.data.on_device): for a GPU, which a CPU loader cannot keep busy with a small network
    "on_device": False,
    "image_dir": None,
    "label_dir": None,
    "list_file": None,
    "classes": None,
    "palette": None,
    "label_map": None,
    "train_transforms": {
        "scale": None,
        "scale_step": None,
        "crop": None,
        "flip": False,
        "translate": 0,
        "color_jitter": 0.0,
        "resize": None,
    },
    "eval_size": None,
}

DATASETS = {"camvid": CamVid, "camvid32": CamVid32, "cityscapes": Cityscapes, "mapillary": Mapillary,
            "folder": FolderDataset}


def merged_data_cfg(data_cfg: dict) -> dict:
    """``DEFAULT_DATA_CFG`` updated with ``data_cfg`` (train_transforms merged key by key)."""
    cfg = copy.deepcopy(DEFAULT_DATA_CFG)
    for key, value in (data_cfg or {}).items():
        if key == "train_transforms" and value is not None:
            if not isinstance(value, dict):
                raise ConfigError(f"data.train_transforms must be a mapping, got {value!r}")
            cfg[key].update(value)
        else:
            cfg[key] = value
    return cfg


def resolve_split(cfg: dict, split):
    """``"train"``/``"val"`` stand for ``data.train_split``/``data.val_split``; any other name is used as is.
    A split may be a list of names (``[train, val]``: the papers' CamVid protocol), whose samples are joined."""
    if isinstance(split, str) and split in ("train", "val"):
        configured = cfg[f"{split}_split"]
        split = split if configured is None else configured
    if isinstance(split, (list, tuple)):
        names = [str(s) for s in split]
        if not names or any(not s for s in names) or len(set(names)) != len(names):
            raise ConfigError(f"a split list must name distinct, non-empty splits, e.g. [train, val]; got {list(split)!r}")
        return names[0] if len(names) == 1 else names
    if not isinstance(split, str) or not split:
        raise ConfigError(f"a split is a name (train, val, test) or a list of names, got {split!r}")
    return split


def build_dataset(data_cfg: dict, split: str, train: bool) -> SegmentationDataset:
    cfg = merged_data_cfg(data_cfg)
    name = cfg["name"]
    if name not in DATASETS:
        raise ConfigError(f"data.name = {name!r} is unknown; use one of {', '.join(DATASETS)}")
    if cfg["normalize"] not in NORMALIZATIONS:
        raise ConfigError(f"data.normalize = {cfg['normalize']!r} is unknown; use one of {', '.join(NORMALIZATIONS)}")
    if not cfg["root"]:
        raise ConfigError("data.root is not set; point it at the dataset folder (or pass --data-root)")
    split = resolve_split(cfg, split)
    names = split if isinstance(split, list) else [split]
    parts = []
    for one in names:
        common = dict(split=one, normalize=cfg["normalize"])
        if name == "folder":
            parts.append(FolderDataset(cfg["root"], classes=cfg["classes"], palette=cfg["palette"],
                                       label_map=cfg["label_map"], image_dir=cfg["image_dir"],
                                       label_dir=cfg["label_dir"], list_file=cfg["list_file"], **common))
        else:
            parts.append(DATASETS[name](cfg["root"], **common))
    ds = parts[0]
    for other in parts[1:]:  # same dataset class and root: the splits differ only in their file lists
        ds.files.extend(other.files)
    if len(parts) > 1:
        ds.split = "+".join(names)
    if train:
        ds.transform = build_train_transforms(cfg["train_transforms"], image_fill=ds.image_fill())
    return ds


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask: a container's or taskset's share), else the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS and Windows have no sched_getaffinity
        return os.cpu_count() or 1


_CAPPED_SAID: set = set()


def loader_workers(requested: int, who: str = "lightseg", say: bool = True) -> int:
    """``data.num_workers`` capped at :func:`usable_cpus`: more loader processes than CPUs only compete with the
    model for them (and PyTorch warns about it). The cap is said once per process on stderr."""
    requested = int(requested or 0)
    cap = usable_cpus()
    if requested <= cap:
        return requested
    if say and (requested, cap) not in _CAPPED_SAID:
        _CAPPED_SAID.add((requested, cap))
        print(f"{who}: data.num_workers {requested} is more than the {cap} CPU(s) this process may use; "
              f"loading with {cap} worker(s)", file=sys.stderr)
    return cap


# How much of each file's start and end a sample fingerprint reads: an image edited in place changes its
# header or its first compressed rows, and with the size that tells it apart without reading whole files
# (Cityscapes' 5,950 training files: 190 MB read instead of 7 GB).
FINGERPRINT_EDGE_BYTES = 16 * 1024
# The kind of fingerprint a checkpoint records beside ``data_samples``; an earlier lightseg hashed names, sizes
# and modification times, which every copy to another machine changes.
FINGERPRINT_KIND = "name-size-edges"


def _file_edges(path, st_size: int) -> bytes:
    with open(path, "rb") as f:
        head = f.read(FINGERPRINT_EDGE_BYTES)
        if st_size > 2 * FINGERPRINT_EDGE_BYTES:  # else the rest is the end
            f.seek(-FINGERPRINT_EDGE_BYTES, 2)
        return head + f.read()


def sample_fingerprints(dataset) -> list[str]:
    """One short hash per sample over its files' names, sizes and the first and last
    :data:`FINGERPRINT_EDGE_BYTES` of each: content changed in place (same names, same count) changes it,
    while a copy of the same files (another machine, another folder, new modification times) keeps it, so a
    run resumes on a copied dataset."""
    import hashlib
    import os
    from pathlib import Path

    out = []
    for pair in dataset.files:
        h = hashlib.sha256()
        for p in pair:
            try:
                st = os.stat(p)
                h.update(f"{Path(p).name}\0{st.st_size}\0".encode("utf-8", "surrogateescape"))
                h.update(_file_edges(p, st.st_size))
            except OSError:
                h.update(f"{Path(p).name}\0missing\0".encode("utf-8", "surrogateescape"))
        out.append(h.hexdigest()[:16])
    return out


def data_fingerprint(dataset, samples: list[str] | None = None) -> str:
    """A hash of what a dataset gives: its samples' fingerprints (:func:`sample_fingerprints`), its class
    count and its label mapping. Checkpoints record it (a resume names changed files) and the class-weight
    cache is keyed by it."""
    import hashlib

    h = hashlib.sha256()
    h.update("\n".join(samples if samples is not None else sample_fingerprints(dataset)).encode())
    h.update(f"|{type(dataset).__name__}|{int(dataset.num_classes)}|".encode())
    lut = getattr(dataset, "label_lut", None)
    if lut is not None:
        h.update(np.ascontiguousarray(lut).tobytes())
    return h.hexdigest()[:32]


def worker_init_fn(worker_id: int) -> None:
    """Seed numpy and ``random`` in a DataLoader worker from its torch seed (distinct per worker and
    epoch, fixed by ``torch.manual_seed``).

    It deliberately does not call ``cv2.setNumThreads``: in a forked worker whose parent already ran
    OpenCV's thread pool, that call waits forever for the parent's pool threads (measured: the loader
    hangs). Parallel OpenCV calls themselves are fork-safe.
    """
    import torch

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def validate_dataset(dataset: SegmentationDataset, limit: int | None = None) -> list[str]:
    """Scan every sample cheaply (label decoded, image header only) and return the problems found, one
    message per bad sample: missing/unreadable files, size mismatches, out-of-range label values.
    A truncated image body is only found when the sample is loaded (``dataset[i]`` raises DataError)."""
    problems = []
    n = len(dataset) if limit is None else min(limit, len(dataset))
    for i in range(n):
        img_path, lbl_path = dataset.files[i]
        try:
            label = dataset.load_label(i)
            h, w = check_image(img_path).size
            if (h, w) != label.shape[:2]:
                problems.append(f"image {img_path} is {h}x{w} but its label {lbl_path} is "
                                f"{label.shape[0]}x{label.shape[1]} (HxW); they must be the same size")
        except LightsegError as e:
            problems.append(str(e))
    return problems


def scan_samples(dataset: SegmentationDataset, eval_size=None, scales=(1.0,), mode="whole",
                 crop=None) -> list[tuple[int, str]]:
    """``(index, problem)`` for each sample that cannot be evaluated, found before any model runs, by the
    loader's own checks: a missing, empty, truncated or unreadable image or label, a file that the decoding
    rules refuse (CMYK, EXIF orientation, transparency; see :mod:`lightseg.data.base`), label values outside
    the classes (the label is decoded and mapped as the loader does; images are only checked, not decoded),
    an image and label of different sizes, an image the models cannot take (under ``MIN_SIZE`` at some
    scale, unless ``eval_size`` resizes it), an image that at some scale would need more memory than is
    available (``mode``/``crop``: whole images or sliding windows, as the evaluation runs)."""
    from ..models.base import MIN_SIZE

    problems = []
    for i, (img_path, lbl_path) in enumerate(dataset.files):
        try:
            h, w = check_image(img_path).size
            lh, lw = dataset.load_label(i).shape[:2]
            if (h, w) != (lh, lw):
                raise DataError(f"image {img_path} is {h}x{w} but its label {lbl_path} is {lh}x{lw} (HxW); "
                                "they must be the same size")
            base = tuple(eval_size) if eval_size else (h, w)
            small = [s for s in scales if min(round(base[0] * s), round(base[1] * s)) < MIN_SIZE]
            if small:
                raise DataError(f"{img_path}: {h}x{w} is under the models' minimum input of {MIN_SIZE}x{MIN_SIZE} "
                                f"(at eval scale {small[0]}); remove it, or set data.eval_size: [H, W] to resize inputs")
            slide = mode == "slide" and crop  # slide mode without a window is refused by its own check
            for s in scales:  # the largest input the model would see, against the memory
                sh, sw = round(base[0] * s), round(base[1] * s)
                check_fits(f"{img_path}: {h}x{w} at eval scale {s:g} ({sh}x{sw})",
                           estimate_memory(h, w, getattr(dataset, "num_classes", None), "slide" if slide else "whole",
                                           tuple(crop) if slide else None, size=(sh, sw)),
                           "lower eval.scales (--scales), or set data.eval_size: [H, W] to resize inputs")
        except LightsegError as e:
            problems.append((i, str(e)))
    return problems


def check_train_sizes(dataset: SegmentationDataset, transforms_cfg: dict) -> None:
    """Refuse, before training, a training split whose samples the train pipeline (``transforms_cfg``:
    ``data.train_transforms``) makes smaller than the models' ``MIN_SIZE``. When a crop or a resize fixes
    the size, the recipe alone decides; otherwise each image's size is read from its header (an image that
    cannot be read is left to the loader, which refuses it or, with ``--skip-bad``, leaves it out)."""
    from ..models.base import MIN_SIZE

    fix = (f"resize or crop the training inputs to at least {MIN_SIZE}x{MIN_SIZE}, e.g. "
           f"--set data.train_transforms.resize=[{MIN_SIZE},{MIN_SIZE}] (or data.train_transforms.crop)")
    keys = [k for k in ("crop", "resize") if transforms_cfg.get(k)]
    if keys:
        h, w = smallest_train_input(transforms_cfg, 0, 0)
        if min(h, w) < MIN_SIZE:
            used = ["crop"] if "crop" in keys else ["resize", "scale"]  # a crop's size is what the model sees
            given = ", ".join(f"data.train_transforms.{k}={list(transforms_cfg[k])}" for k in used if transforms_cfg.get(k))
            raise ConfigError(f"{given} make training inputs of {h}x{w}, under the models' minimum input of "
                              f"{MIN_SIZE}x{MIN_SIZE}; {fix}")
        return
    for img_path, _ in dataset.files:
        try:
            ih, iw = check_image(img_path).size
        except LightsegError:  # a bad sample: refused when loaded, or left out with --skip-bad
            continue
        h, w = smallest_train_input(transforms_cfg, ih, iw)
        if min(h, w) < MIN_SIZE:
            scale = transforms_cfg.get("scale")
            at = f" (at data.train_transforms.scale {scale[0]:g}: {h}x{w})" if scale else ""
            raise DataError(f"{img_path}: training image of {ih}x{iw}{at} is under the models' minimum input of "
                            f"{MIN_SIZE}x{MIN_SIZE} (data.root {getattr(dataset, 'root', '?')}); {fix}")


__all__ = [
    "DEFAULT_DATA_CFG", "DATASETS", "IGNORE_INDEX", "build_dataset", "merged_data_cfg", "resolve_split",
    "worker_init_fn", "validate_dataset", "scan_samples", "check_train_sizes", "sample_fingerprints", "data_fingerprint", "SegmentationDataset", "CamVid", "CamVid32", "Cityscapes", "Mapillary",
    "FolderDataset", "read_image", "read_label", "DataError",
]
