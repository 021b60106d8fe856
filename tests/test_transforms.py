"""Joint image/label transforms keep the pair aligned; padding is ignored; randomness is seedable."""
import time

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from lightseg.data import worker_init_fn
from lightseg.data.transforms import (ColorJitter, RandomCrop, RandomHorizontalFlip, RandomScale, RandomTranslate,
                                      Resize, build_train_transforms)
from lightseg.errors import ConfigError

H, W = 64, 96


def position_pair():
    """Image whose R channel is 2*x and G channel 3*y, with two labels holding x and y themselves:
    after any geometric transform, label == R/2 (resp. G/3) wherever the label is not ignored."""
    y, x = np.mgrid[0:H, 0:W]
    image = np.stack([2 * x, 3 * y, np.full_like(x, 50)], axis=-1).astype(np.uint8)
    return image, x.astype(np.uint8), y.astype(np.uint8)


def apply_twice(transform, seed):
    """Run the same random draw on (image, x-label) and (image, y-label)."""
    image, lx, ly = position_pair()
    np.random.seed(seed)
    img_a, out_x = transform(image, lx)
    np.random.seed(seed)
    img_b, out_y = transform(image, ly)
    assert np.array_equal(img_a, img_b)
    return img_a, out_x, out_y


@pytest.mark.parametrize("transform", [RandomHorizontalFlip(1.0), RandomCrop((40, 50)), RandomTranslate(2)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_transforms_keep_alignment(transform, seed):
    img, lx, ly = apply_twice(transform, seed)
    valid = lx != 255
    assert valid.any()
    assert np.array_equal(img[..., 0][valid] // 2, lx[valid])
    assert np.array_equal(img[..., 1][valid] // 3, ly[valid])


def test_flip_mirrors_columns():
    img, lx, _ = apply_twice(RandomHorizontalFlip(1.0), 0)
    assert lx[0, 0] == W - 1 and lx[0, -1] == 0
    assert img.flags["C_CONTIGUOUS"] and lx.flags["C_CONTIGUOUS"]
    image, label, _ = position_pair()
    same_img, same_lbl = RandomHorizontalFlip(0.0)(image, label)
    assert same_img is image and same_lbl is label


def test_crop_pads_label_with_ignore_and_image_with_fill():
    fill = (124, 116, 104)
    image, lx, _ = position_pair()
    np.random.seed(0)
    img, lbl = RandomCrop((H + 16, W + 4), image_fill=fill)(image, lx)
    assert img.shape == (H + 16, W + 4, 3) and lbl.shape == (H + 16, W + 4)
    # Padding goes to the bottom/right; the original sits at the top-left.
    assert np.array_equal(lbl[:H, :W], lx) and np.array_equal(img[:H, :W], image)
    assert (lbl[H:] == 255).all() and (lbl[:, W:] == 255).all()
    assert (img[H:] == fill).all() and (img[:, W:] == fill).all()
    # Crop larger in one dimension only: height padded, width cropped.
    img, lbl = RandomCrop((H + 2, W // 2))(image, lx)
    assert lbl.shape == (H + 2, W // 2) and (lbl[H:] == 255).all() and (lbl[:H] != 255).all()


def test_translate_shifts_by_at_most_max_and_fills_ignore():
    seen = set()
    for seed in range(20):
        img, lx, ly = apply_twice(RandomTranslate(2), seed)
        assert lx.shape == (H, W) and img.shape == (H, W, 3)
        valid = lx != 255
        x = np.broadcast_to(np.arange(W), (H, W))
        y = np.broadcast_to(np.arange(H)[:, None], (H, W))
        dx = set((x[valid] - lx[valid].astype(int)).tolist())
        dy = set((y[valid] - ly[valid].astype(int)).tolist())
        assert len(dx) == 1 and len(dy) == 1, "one rigid shift"
        dx, dy = dx.pop(), dy.pop()
        assert abs(dx) <= 2 and abs(dy) <= 2
        # The uncovered strips are exactly the ignored pixels.
        assert (~valid).sum() == H * W - (H - abs(dy)) * (W - abs(dx))
        seen.add((dx, dy))
    assert len(seen) > 5


@pytest.mark.parametrize("seed", [0, 3])
def test_scale_resizes_and_keeps_alignment(seed):
    img, lx, ly = apply_twice(RandomScale((0.5, 2.0)), seed)
    np.random.seed(seed)
    s = RandomScale((0.5, 2.0)).sample()
    assert lx.shape == (round(H * s), round(W * s)) and img.shape[:2] == lx.shape
    # Bilinear image vs nearest label: positions agree to within a pixel.
    assert np.abs(img[..., 0] / 2 - lx).max() <= 1.0
    assert np.abs(img[..., 1] / 3 - ly).max() <= 1.0
    # Nearest neighbour never invents label values.
    assert set(np.unique(lx)) <= set(range(W))


def test_stepped_scale_draws_only_the_steps():
    np.random.seed(0)
    t = RandomScale((0.5, 2.0), step=0.25)
    draws = {t.sample() for _ in range(300)}
    assert draws == {0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0}


def test_resize_label_nearest():
    image, lx, _ = position_pair()
    img, lbl = Resize((32, 48))(image, lx)
    assert img.shape == (32, 48, 3) and lbl.shape == (32, 48)
    # Halving: nearest picks source column 2*j or 2*j+1.
    assert set((lbl[0] - 2 * np.arange(48)).tolist()) <= {0, 1}


def test_color_jitter_is_photometric_only():
    image, lx, _ = position_pair()
    np.random.seed(0)
    img, lbl = ColorJitter(0.0)(image, lx)
    assert np.array_equal(img, image) and lbl is lx
    changed = 0
    grey = np.repeat(np.linspace(20, 230, H * W).reshape(H, W, 1), 3, axis=2).astype(np.uint8)
    for seed in range(5):
        np.random.seed(seed)
        out, _ = ColorJitter(0.4)(grey, lx)
        assert out.dtype == np.uint8 and out.shape == grey.shape
        # Saturation/contrast/brightness keep a grey image grey (up to rounding).
        assert np.abs(out.astype(int) - out[..., :1].astype(int)).max() <= 1
        changed += not np.array_equal(out, grey)
    assert changed == 5


def test_build_train_transforms_order_and_errors():
    t = build_train_transforms({"resize": [32, 48], "scale": [0.5, 1.5], "scale_step": 0.25, "translate": 2,
                                "crop": [24, 24], "flip": True, "color_jitter": 0.1})
    assert [type(x).__name__ for x in t.transforms] == [
        "Resize", "RandomScale", "RandomTranslate", "RandomCrop", "RandomHorizontalFlip", "ColorJitter"]
    assert len(build_train_transforms({"flip": False, "translate": 0, "color_jitter": 0.0})) == 0
    image, lx, _ = position_pair()
    img, lbl = t(image, lx)
    assert img.shape == (24, 24, 3) and lbl.shape == (24, 24)
    with pytest.raises(ConfigError, match="crop"):
        build_train_transforms({"crop": [512]})
    with pytest.raises(ConfigError, match="scale must be"):
        build_train_transforms({"scale": [2.0, 0.5]})
    with pytest.raises(ConfigError, match="unknown key.*rotate"):
        build_train_transforms({"rotate": 10})


class _RandomDraws(Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return torch.tensor(np.random.randint(0, 2**31))


def test_worker_init_fn_makes_numpy_draws_reproducible_and_distinct_per_worker():
    import cv2

    # Use OpenCV's thread pool in the parent first: a worker_init_fn that reconfigures OpenCV threads
    # after the fork deadlocks in exactly this situation (the loader timeout turns a hang into a failure).
    cv2.resize(np.zeros((600, 800, 3), np.uint8), (1200, 900))
    time.sleep(0.5)  # let the pool threads go idle (waiting), the state a training loop forks in

    def draws():
        torch.manual_seed(123)
        loader = DataLoader(_RandomDraws(), batch_size=1, num_workers=2, worker_init_fn=worker_init_fn, timeout=30)
        return [int(x) for x in loader]

    first, second = draws(), draws()
    assert first == second
    # Workers 0 and 1 take alternate samples; identical seeds would make them repeat each other's draws.
    assert first[0::2] != first[1::2]
