"""Should data/transforms.py use albumentations? On real CamVid training images, for the
augmentation of the CamVid recipes (MiniNet's scale + crop + flip, RDS-Net's flip + 2-pixel translation)
and for colour jitter (which no recipe uses), it measures

* the augmentation alone (images decoded once): lightseg's own vs the same pipeline in albumentations;
* the loader rate the trainer sees (decode, augment, normalise: ``dataset[i]``), with either;

and checks that albumentations, reseeded per sample the way the trainer seeds ours, repeats itself
(what exact resume needs). Writes benchmarks/results/transforms_albumentations.json.

    .venv/bin/pip install -c constraints.txt albumentations   # not a lightseg dependency
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/transforms_albumentations.py [--data ../shared/data/camvid]
"""
from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

import cv2
import numpy as np

from _common import conditions, save  # noqa: E402 (run from the checkout root or benchmarks/)

from lightseg.config import load_config
from lightseg.data import build_dataset
from lightseg.data.base import NORMALIZATIONS, read_image, read_label
from lightseg.data.transforms import build_train_transforms

PIPELINES = {
    "mininet_camvid (scale 0.5-2, crop 360x480, flip)": {"scale": [0.5, 2.0], "crop": [360, 480], "flip": True},
    "rdsnet_camvid (flip, translate 2 px)": {"flip": True, "translate": 2},
    "colour jitter 0.3 (no recipe uses it)": {"color_jitter": 0.3},
}


def albumentations_pipeline(cfg, fill):
    import albumentations as A

    ts = []
    if cfg.get("scale"):
        lo, hi = cfg["scale"]
        ts.append(A.RandomScale(scale_limit=(lo - 1, hi - 1), interpolation=cv2.INTER_LINEAR, p=1.0))
    if cfg.get("translate"):
        m = cfg["translate"]
        ts.append(A.Affine(translate_px={"x": (-m, m), "y": (-m, m)}, interpolation=cv2.INTER_NEAREST,
                           border_mode=cv2.BORDER_CONSTANT, fill=fill, fill_mask=255, p=1.0))
    if cfg.get("crop"):
        ts += [A.PadIfNeeded(*cfg["crop"], position="top_left", border_mode=cv2.BORDER_CONSTANT, fill=fill, fill_mask=255),
               A.RandomCrop(*cfg["crop"])]
    if cfg.get("flip"):
        ts.append(A.HorizontalFlip(p=0.5))
    if cfg.get("color_jitter"):
        s = cfg["color_jitter"]
        ts.append(A.ColorJitter(brightness=s, contrast=s, saturation=s, hue=0, p=1.0))
    return A.Compose(ts)


class Albumented:
    """An albumentations pipeline behind lightseg's transform interface, reseeded per sample from the
    global numpy generator (which the trainer seeds per sample)."""

    def __init__(self, pipeline):
        self.pipeline = pipeline

    def __call__(self, image, label):
        self.pipeline.set_random_seed(int(np.random.randint(2**31)))
        out = self.pipeline(image=image, mask=label)
        return out["image"], out["mask"]


def rate(fn, items, repeats=3) -> float:
    """Median over repeats of items/s; every item seeded as the trainer seeds a sample."""
    rates = []
    for r in range(repeats):
        t0 = time.perf_counter()
        for i, item in enumerate(items):
            random.seed(1000 * r + i)
            np.random.seed(1000 * r + i)
            fn(item)
        rates.append(len(items) / (time.perf_counter() - t0))
    return round(statistics.median(rates), 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/camvid", help="CamVid root (SegNet layout)")
    ap.add_argument("--images", type=int, default=100, help="training images used")
    args = ap.parse_args()
    import albumentations

    root = Path(args.data)
    pairs = [line.split() for line in (root / "train.txt").read_text().splitlines() if line.strip()][: args.images]
    samples = [(read_image(root / a), read_label(root / b)) for a, b in pairs]
    fill = tuple(int(round(v)) for v in NORMALIZATIONS["imagenet"][0])
    rows = []
    for name, cfg in PIPELINES.items():
        ours, albu = build_train_transforms(cfg, image_fill=fill), Albumented(albumentations_pipeline(cfg, fill))
        twice = []
        for _ in range(2):
            np.random.seed(7)
            twice.append([albu(i, lab) for i, lab in samples[:10]])
        same = all(np.array_equal(a, b) for x, y in zip(*twice) for a, b in zip(x, y))
        row = {"pipeline": name, "config": cfg, "augment_per_s": {"lightseg": rate(lambda s: ours(*s), samples),
                                                                   "albumentations": rate(lambda s: albu(*s), samples)},
               "albumentations_repeats_with_per_sample_seed": same}
        # the loader rate: decode + augment + normalise, as the training DataLoader's workers do it
        data_cfg = load_config("mininet_211k_camvid", [f"data.root={root}"])["data"]
        data_cfg["train_transforms"] = {**data_cfg["train_transforms"], "scale": None, "crop": None, "flip": False,
                                        "translate": 0, "color_jitter": 0.0, **cfg}
        ds = build_dataset(data_cfg, data_cfg["train_split"], train=True)
        idx = list(range(min(len(ds), args.images)))
        row["loader_per_s"] = {"lightseg": rate(lambda i: ds[i], idx, repeats=1)}
        ds.transform = albu
        row["loader_per_s"]["albumentations"] = rate(lambda i: ds[i], idx, repeats=1)
        rows.append(row)
        print(f"{name}: augment {row['augment_per_s']}, loader {row['loader_per_s']} samples/s; "
              f"albumentations repeats itself when reseeded per sample: {same}")
    save("transforms_albumentations.json", {"conditions": conditions(), "images": len(samples),
                                            "albumentations": albumentations.__version__, "rows": rows})


if __name__ == "__main__":
    main()
