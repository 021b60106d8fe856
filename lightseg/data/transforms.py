"""Joint image/label augmentations on numpy arrays (plain OpenCV + numpy).

Every transform is called as ``image, label = t(image, label)`` with ``image`` an RGB uint8 array
(H, W, 3) and ``label`` a uint8 train-id array (H, W). Images are resampled bilinearly, labels with
nearest neighbour so no new (interpolated) class ids appear. Randomness comes from numpy's global RNG,
so ``np.random.seed`` (and, in ``DataLoader`` workers, ``lightseg.data.worker_init_fn``) makes it
reproducible.

Plain OpenCV is used instead of albumentations: the six operations below are a few lines each, the
integer translation and padding are exact, and there is one fewer library between the recipe and the
pixels. Measured (benchmarks/transforms_albumentations.py, CamVid, 2-core Zen 4 at load 7): albumentations 2.0.8,
reseeded per sample, would keep exact resume, but runs the CamVid recipes' augmentation 1.6x slower
(MiniNet's scale + crop + flip: 426 vs 676 images/s; RDS-Net's flip + translate: 691 vs 1105); only its
colour jitter, which no recipe uses, is faster (1561 vs 262).
"""
from __future__ import annotations

import cv2
import numpy as np

from ..errors import ConfigError
from .classes import IGNORE_INDEX


class Compose:
    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, image, label):
        for t in self.transforms:
            image, label = t(image, label)
        return image, label

    def __len__(self):
        return len(self.transforms)

    def __repr__(self):
        return "Compose(" + ", ".join(repr(t) for t in self.transforms) + ")"


def _resize(image, label, height: int, width: int):
    if image.shape[:2] == (height, width):
        return image, label
    image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    label = cv2.resize(label, (width, height), interpolation=cv2.INTER_NEAREST)
    return image, label


class Resize:
    """Fixed resize to (H, W), e.g. training Cityscapes at 512x1024."""

    def __init__(self, size):
        self.size = (int(size[0]), int(size[1]))

    def __call__(self, image, label):
        return _resize(image, label, *self.size)

    def __repr__(self):
        return f"Resize({self.size})"


class RandomScale:
    """Rescale by a factor drawn from [min, max]: continuous, or from {min, min+step, ..., max}."""

    def __init__(self, scale_range, step=None):
        self.min, self.max = float(scale_range[0]), float(scale_range[1])
        self.step = None if step is None else float(step)
        if self.step:
            n = int(round((self.max - self.min) / self.step))
            self.choices = self.min + self.step * np.arange(n + 1)
        else:
            self.choices = None

    def sample(self) -> float:
        if self.choices is not None:
            return float(self.choices[np.random.randint(len(self.choices))])
        return float(np.random.uniform(self.min, self.max))

    def __call__(self, image, label):
        s = self.sample()
        h, w = label.shape
        return _resize(image, label, max(1, int(round(h * s))), max(1, int(round(w * s))))

    def __repr__(self):
        return f"RandomScale(({self.min}, {self.max}), step={self.step})"


def _pad(image, label, top, bottom, left, right, image_fill):
    image = cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=tuple(image_fill))
    label = cv2.copyMakeBorder(label, top, bottom, left, right, cv2.BORDER_CONSTANT, value=IGNORE_INDEX)
    return image, label


class RandomCrop:
    """Random (H, W) crop. A smaller sample is first padded at the bottom/right: the image with
    ``image_fill`` (the normalisation mean, so padding becomes 0 after normalising), the label with
    255 so the padding is ignored by the loss."""

    def __init__(self, size, image_fill=(0, 0, 0)):
        self.size = (int(size[0]), int(size[1]))
        self.image_fill = tuple(int(round(v)) for v in image_fill)

    def __call__(self, image, label):
        ch, cw = self.size
        h, w = label.shape
        if h < ch or w < cw:
            image, label = _pad(image, label, 0, max(ch - h, 0), 0, max(cw - w, 0), self.image_fill)
            h, w = label.shape
        y = np.random.randint(h - ch + 1)
        x = np.random.randint(w - cw + 1)
        return image[y:y + ch, x:x + cw], label[y:y + ch, x:x + cw]

    def __repr__(self):
        return f"RandomCrop({self.size})"


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, image, label):
        if np.random.random() < self.p:
            # ascontiguousarray: later OpenCV calls and torch.from_numpy need positive strides.
            return np.ascontiguousarray(image[:, ::-1]), np.ascontiguousarray(label[:, ::-1])
        return image, label

    def __repr__(self):
        return f"RandomHorizontalFlip(p={self.p})"


class RandomTranslate:
    """Shift by integers dx, dy in [-max_shift, max_shift] (RDS-Net trains with up to 2 pixels); the
    uncovered border is ``image_fill`` in the image and 255 (ignore) in the label. Size is unchanged."""

    def __init__(self, max_shift: int, image_fill=(0, 0, 0)):
        self.max_shift = int(max_shift)
        self.image_fill = tuple(int(round(v)) for v in image_fill)

    def __call__(self, image, label):
        m = self.max_shift
        dy, dx = np.random.randint(-m, m + 1, size=2)
        if dx == 0 and dy == 0:
            return image, label
        h, w = label.shape
        # Pad the border the shift uncovers (top for dy > 0, left for dx > 0), then cut back to (h, w).
        image, label = _pad(image, label, max(dy, 0), max(-dy, 0), max(dx, 0), max(-dx, 0), self.image_fill)
        y0, x0 = max(-dy, 0), max(-dx, 0)
        return image[y0:y0 + h, x0:x0 + w], label[y0:y0 + h, x0:x0 + w]

    def __repr__(self):
        return f"RandomTranslate({self.max_shift})"


class ColorJitter:
    """Photometric jitter: brightness, contrast and saturation factors each drawn from
    [1 - strength, 1 + strength]. The label is untouched."""

    def __init__(self, strength: float):
        self.strength = float(strength)

    def __call__(self, image, label):
        s = self.strength
        # Python floats keep the arithmetic in float32 (a numpy float64 scalar would promote it).
        b, c, sat = (float(v) for v in np.random.uniform(1 - s, 1 + s, size=3))
        img = image.astype(np.float32) * b
        mean_grey = float(cv2.cvtColor(np.clip(img, 0, 255), cv2.COLOR_RGB2GRAY).mean())
        img = (img - mean_grey) * c + mean_grey
        grey = cv2.cvtColor(np.clip(img, 0, 255), cv2.COLOR_RGB2GRAY)[..., None]
        img = (img - grey) * sat + grey
        return np.clip(img + 0.5, 0, 255).astype(np.uint8), label  # + 0.5: round, astype truncates

    def __repr__(self):
        return f"ColorJitter({self.strength})"


def _pair(cfg_key, value):
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ConfigError(f"data.train_transforms.{cfg_key} must be a pair [a, b] or null, got {value!r}")
    return value


def build_train_transforms(cfg: dict, image_fill=(0, 0, 0)) -> Compose:
    """The train pipeline from ``data.train_transforms``: resize -> scale -> translate -> crop -> flip ->
    colour jitter. ``image_fill`` is the RGB value padding takes (the normalisation mean)."""
    known = {"scale", "scale_step", "crop", "flip", "translate", "color_jitter", "resize"}
    unknown = set(cfg) - known
    if unknown:
        raise ConfigError(f"unknown key(s) data.train_transforms.{', '.join(sorted(unknown))}; "
                          f"known keys: {', '.join(sorted(known))}")
    ts = []
    resize = _pair("resize", cfg.get("resize"))
    if resize:
        if min(resize) < 1:
            raise ConfigError(f"data.train_transforms.resize must be positive [H, W], got {resize!r}")
        ts.append(Resize(resize))
    scale = _pair("scale", cfg.get("scale"))
    if scale:
        if not 0 < scale[0] <= scale[1]:
            raise ConfigError(f"data.train_transforms.scale must be [min, max] with 0 < min <= max, got {scale!r}")
        step = cfg.get("scale_step")
        if step is not None and step <= 0:
            raise ConfigError(f"data.train_transforms.scale_step must be > 0 or null, got {step!r}")
        ts.append(RandomScale(scale, step))
    translate = cfg.get("translate") or 0
    if translate < 0:
        raise ConfigError(f"data.train_transforms.translate must be >= 0 pixels, got {translate!r}")
    if translate:
        ts.append(RandomTranslate(translate, image_fill))
    crop = _pair("crop", cfg.get("crop"))
    if crop:
        if min(crop) < 1:
            raise ConfigError(f"data.train_transforms.crop must be positive [H, W], got {crop!r}")
        ts.append(RandomCrop(crop, image_fill))
    if cfg.get("flip"):
        ts.append(RandomHorizontalFlip(0.5))
    jitter = cfg.get("color_jitter") or 0.0
    if not 0 <= jitter < 1:
        raise ConfigError(f"data.train_transforms.color_jitter must be in [0, 1), got {jitter!r}")
    if jitter:
        ts.append(ColorJitter(jitter))
    return Compose(ts)


def smallest_train_input(cfg: dict, h: int, w: int) -> tuple[int, int]:
    """The smallest (H, W) that the pipeline of :func:`build_train_transforms` gives a sample of ``h x w``:
    a crop's size (a smaller sample is padded up to it), else the resize (or the sample's own size) at the
    smallest scale. Translation keeps the size."""
    crop = cfg.get("crop")
    if crop:
        return int(crop[0]), int(crop[1])
    base = cfg.get("resize") or (h, w)
    s = float(cfg["scale"][0]) if cfg.get("scale") else 1.0
    return max(1, int(round(base[0] * s))), max(1, int(round(base[1] * s)))
