"""The training set held in the training device's memory and augmented there, a batch at a time.

``data.on_device: true``. On a GPU a small network's training step is short next to the time a few CPU cores
take to decode, scale and crop its batch, so the loader, not the GPU, would set the pace. This path decodes
every training pair once (uint8: 0.7 MB per 360x480 CamVid pair, 8.4 MB per 1024x2048 Cityscapes pair, 25 GB
for Cityscapes' 2975 training pairs) and then draws each batch with one ``grid_sample`` on the device.

It is the recipe's augmentation (``data.train_transforms``: resize, scale, translate, crop, flip, colour
jitter, in that order), drawn anew for each sample, not the CPU pipeline's pixels:

- scale, translation, crop and flip are one resampling of the decoded image (the CPU pipeline resamples
  once, for the scale, then shifts and cuts whole pixels); the pixels that the shift or the crop's padding
  uncover take the normalisation mean (0 after normalising) and the label 255, as on the CPU;
- labels are sampled at the nearest source pixel centre (``nearest-exact``) where OpenCV's INTER_NEAREST
  rounds the source coordinate down, so the label map stays aligned with the bilinear image;
- sampled values are rounded to whole grey levels, as the CPU pipeline's uint8 images are, then jittered
  with the CPU's formula (cv2's RGB to grey weights) and normalised.

The parameters come from a generator seeded by each sample's seed (the trainer's ``(seed, epoch, position)``),
so a resume draws the same augmentations without any saved state.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..bounds import check_fits
from ..errors import ConfigError, DataError
from .base import NORMALIZATIONS
from .classes import IGNORE_INDEX

GREY = (0.299, 0.587, 0.114)  # cv2.COLOR_RGB2GRAY, as the CPU ColorJitter uses


def _resize_pair(image, label, size):
    h, w = int(size[0]), int(size[1])
    if image.shape[:2] == (h, w):
        return image, label
    return (cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR),
            cv2.resize(label, (w, h), interpolation=cv2.INTER_NEAREST))


class DeviceTrainSet:
    """``dataset``'s pairs decoded into one uint8 tensor on ``device``; :meth:`batch` augments a batch there.

    ``transforms``: the merged ``data.train_transforms``. Its ``resize`` is applied once, while decoding
    (it is not random); images of different sizes need it. A pair that cannot be read raises its
    :class:`DataError` here, or with ``skip_bad`` is left out and reported each time it is drawn.
    """

    def __init__(self, dataset, transforms: dict, device, workers: int = 1, skip_bad: bool = False):
        self.device = torch.device(device)
        self.transforms = dict(transforms)
        resize = self.transforms.get("resize")
        self.num_samples = len(dataset)
        self.bad: dict[int, str] = {}
        self.files = getattr(dataset, "files", None)

        def load(i):
            try:
                image, label = dataset.load_pair(i)
            except DataError as e:
                if not skip_bad:
                    raise
                return i, None, None, str(e)
            if resize:
                image, label = _resize_pair(image, label, resize)
            return i, image, label, None

        first = None  # the first readable pair fixes the size and the tensors; the rest are copied in as decoded
        with ThreadPoolExecutor(max(1, int(workers))) as pool:  # OpenCV decodes without the GIL
            for i, image, label, reason in pool.map(load, range(self.num_samples)):
                if reason is not None:
                    self.bad[i] = reason
                    continue
                if first is None:
                    first = i
                    self._allocate(*image.shape[:2])
                elif image.shape[:2] != (self.height, self.width):
                    raise ConfigError(
                        f"data.on_device keeps the training set in one tensor, but {self._name(first)} is "
                        f"{self.height}x{self.width} and {self._name(i)} is {image.shape[0]}x{image.shape[1]}: set "
                        "data.train_transforms.resize: [H, W] to bring them to one size, or data.on_device: false")
                self.images[i] = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).to(self.device)
                self.labels[i] = torch.from_numpy(np.ascontiguousarray(label)).to(self.device)
        if first is None:
            raise DataError("no training sample could be read; fix the files, or check data.root and data.train_split")
        mean, std = NORMALIZATIONS[dataset.normalize]
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.inv_std = (1.0 / torch.tensor(std, dtype=torch.float64)).float().to(self.device).view(1, 3, 1, 1)
        self.out_size = self._output_size()

    def _allocate(self, height: int, width: int) -> None:
        """The uint8 image and label tensors for every sample, refused beforehand when they cannot fit."""
        self.height, self.width = height, width
        need = self.num_samples * 4 * height * width
        fix = ("train with data.on_device: false (the CPU loader reads each sample when it is drawn), or "
               "bring the images down with data.train_transforms.resize")
        what = f"data.on_device's {self.num_samples} training samples of {height}x{width}"
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            if need > 0.8 * free:  # the rest is for the network's training step
                raise DataError(f"{what} would take {need / 1e9:.1f} GB of the {free / 1e9:.1f} GB free on "
                                f"{self.device}; {fix}")
        elif self.device.type == "cpu":
            check_fits(what, need, fix)
        self.images = torch.zeros((self.num_samples, 3, height, width), dtype=torch.uint8, device=self.device)
        self.labels = torch.full((self.num_samples, height, width), IGNORE_INDEX, dtype=torch.uint8, device=self.device)

    def _name(self, i: int) -> str:
        return str(self.files[i][0]) if self.files is not None and i < len(self.files) else f"sample {i}"

    def _output_size(self) -> tuple[int, int]:
        t = self.transforms
        if t.get("crop"):
            return int(t["crop"][0]), int(t["crop"][1])
        scale = t.get("scale")
        if scale and float(scale[0]) != float(scale[1]):
            raise ConfigError("data.train_transforms.scale without a crop gives samples of different sizes, which "
                              "cannot be batched; set data.train_transforms.crop: [H, W]")
        s = float(scale[0]) if scale else 1.0
        return max(1, int(round(self.height * s))), max(1, int(round(self.width * s)))

    def draw(self, seed: int) -> dict:
        """One sample's augmentation parameters, in the CPU pipeline's order, from a generator seeded by ``seed``."""
        t, g = self.transforms, torch.Generator().manual_seed(int(seed))

        def uniform(lo, hi):
            return float(lo + (hi - lo) * torch.rand((), generator=g, dtype=torch.float64))

        def integer(lo, hi):  # lo..hi inclusive
            return int(torch.randint(int(lo), int(hi) + 1, (), generator=g))

        s = 1.0
        if t.get("scale"):
            lo, hi = float(t["scale"][0]), float(t["scale"][1])
            step = t.get("scale_step")
            if step:
                n = int(round((hi - lo) / float(step)))
                s = lo + float(step) * integer(0, n)
            else:
                s = uniform(lo, hi)
        hs, ws = max(1, int(round(self.height * s))), max(1, int(round(self.width * s)))
        m = int(t.get("translate") or 0)
        dy, dx = (integer(-m, m), integer(-m, m)) if m else (0, 0)
        oh, ow = self.out_size
        y = integer(0, max(hs, oh) - oh) if t.get("crop") else 0
        x = integer(0, max(ws, ow) - ow) if t.get("crop") else 0
        flip = bool(t.get("flip")) and uniform(0.0, 1.0) < 0.5
        j = float(t.get("color_jitter") or 0.0)
        jitter = tuple(uniform(1 - j, 1 + j) for _ in range(3)) if j else None
        return {"scaled": (hs, ws), "shift": (dy, dx), "crop": (y, x), "flip": flip, "jitter": jitter}

    def batch(self, samples):
        """``samples``: ``(index, seed)`` pairs. Returns ``(images, labels, bad)``: normalised float32 (B, 3, H, W)
        and int64 (B, H, W) on the device, and the indices of left-out samples with their reasons."""
        bad = [(i, self.bad[i]) for i, _ in samples if i in self.bad]
        samples = [(i, s) for i, s in samples if i not in self.bad]
        if not samples:
            return None, None, bad
        oh, ow = self.out_size
        params = [self.draw(seed) for _, seed in samples]
        dev, f32 = self.device, torch.float32
        cols = torch.arange(ow, device=dev, dtype=f32)
        rows = torch.arange(oh, device=dev, dtype=f32)
        p = torch.tensor([[*q["scaled"], *q["shift"], *q["crop"], q["flip"]] for q in params], dtype=f32, device=dev)
        hs, ws, dy, dx, y0, x0, flip = (p[:, k:k + 1] for k in range(7))
        # output column j is column x0 + j of the crop (x0 + ow - 1 - j when flipped), which is column
        # (that - dx) of the scaled image; a scaled image's pixel q samples the source at (q + 0.5) / ws
        qx = x0 + torch.where(flip > 0, ow - 1 - cols, cols) - dx
        qy = y0 + rows - dy
        gx, gy = 2 * (qx + 0.5) / ws - 1, 2 * (qy + 0.5) / hs - 1
        grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)
        inside = (((qy >= 0) & (qy < hs))[:, :, None] & ((qx >= 0) & (qx < ws))[:, None, :])
        index = torch.tensor([i for i, _ in samples], device=dev)
        images = F.grid_sample(self.images[index].to(f32), grid, mode="bilinear", padding_mode="border",
                               align_corners=False).round_()
        labels = F.grid_sample(self.labels[index, None].to(f32), grid, mode="nearest", padding_mode="border",
                               align_corners=False)[:, 0]
        images = torch.where(inside[:, None], images, self.mean)
        labels = torch.where(inside, labels, float(IGNORE_INDEX)).long()
        if params[0]["jitter"] is not None:
            images = self._jitter(images, torch.tensor([q["jitter"] for q in params], dtype=f32, device=dev))
        return (images - self.mean) * self.inv_std, labels, bad

    @staticmethod
    def _jitter(images, factors):
        """The CPU ColorJitter on a batch: brightness, contrast about the mean grey, saturation about each
        pixel's grey; clipped and rounded to whole grey levels."""
        weights = torch.tensor(GREY, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        b, c, s = (factors[:, k].view(-1, 1, 1, 1) for k in range(3))

        def grey(x):
            return (x.clamp(0, 255) * weights).sum(1, keepdim=True)

        x = images * b
        mean_grey = grey(x).mean(dim=(2, 3), keepdim=True)
        x = (x - mean_grey) * c + mean_grey
        g = grey(x)
        x = (x - g) * s + g
        return x.clamp(0, 255).round()
