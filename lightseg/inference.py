"""The one inference function of lightseg: ``lightseg eval`` and ``lightseg predict`` (the
:class:`lightseg.Segmenter`) both call :func:`predict_probabilities` / :func:`predict_labels`.

Two modes, as mmsegmentation and PaddleSeg offer them:

* ``whole``: the image (resized to ``eval_size`` x scale) in one forward pass.
* ``slide``: windows of ``crop`` (H, W) moved by ``stride`` (H, W); the last window of a row or column
  is aligned with the image's far edge, so every pixel is covered. Where windows overlap, their logits
  are averaged. An image smaller than the window is one window of its own size, so a window as large as
  the image gives exactly the ``whole`` result.

On top of either mode: multi-scale and horizontal-flip testing average the softmax probabilities of
every pass, each resized (bilinear) to the output size first. :func:`predict_scores` stops before the
argmax, so that a pipeline can take it in another thread (:func:`argmax_classes`).
"""
from __future__ import annotations

import math

import torch

from .errors import ConfigError
from .models.base import MIN_SIZE, resize_to

MODES = ("whole", "slide")


def _pair(value, what):
    if value is None:
        return None
    if isinstance(value, int):
        value = (value, value)
    try:
        h, w = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be [H, W] (two integers), got {value!r}") from None
    return h, w


def check_mode(mode="whole", crop=None, stride=None):
    """Validate a mode and its window; returns ``(mode, crop, stride)`` with the default stride filled in
    (two thirds of the crop: a third of each window overlaps its neighbour)."""
    if mode not in MODES:
        raise ConfigError(f"inference mode {mode!r} is unknown; use one of {', '.join(MODES)}")
    if mode == "whole":
        return mode, None, None
    crop = _pair(crop, "eval.crop (--crop)")
    if crop is None:
        raise ConfigError("slide inference needs a window: set eval.crop: [H, W] (or --crop H W), e.g. [512, 1024]")
    if min(crop) < MIN_SIZE:
        raise ConfigError(f"eval.crop {list(crop)}: windows must be at least {MIN_SIZE}x{MIN_SIZE} (the models' smallest input)")
    stride = _pair(stride, "eval.stride (--stride)") or (max(1, math.ceil(crop[0] * 2 / 3)), max(1, math.ceil(crop[1] * 2 / 3)))
    if min(stride) < 1 or stride[0] > crop[0] or stride[1] > crop[1]:
        raise ConfigError(f"eval.stride {list(stride)}: each side must be between 1 and the crop {list(crop)}, "
                          "or windows would leave gaps")
    return mode, crop, stride


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start offsets of the windows along one side: every ``stride``, the last one ending at ``length``."""
    if length <= window:
        return [0]
    count = (length - window + stride - 1) // stride + 1
    return sorted({min(i * stride, length - window) for i in range(count)})


def forward_logits(model, x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` as float logits at ``x``'s size (a train-mode dict gives its ``out``)."""
    logits = model(x)
    if isinstance(logits, dict):
        logits = logits["out"]
    return resize_to(logits.float(), x.shape[-2:])


MAX_WINDOWS = 4096  # a 4096x4096 image in 64-pixel steps: a --stride far smaller than --crop asks for more


def window_count(h: int, w: int, crop, stride) -> int:
    """How many windows slide mode runs over an h x w image."""
    ch, cw = min(crop[0], h), min(crop[1], w)
    return len(window_starts(h, ch, stride[0])) * len(window_starts(w, cw, stride[1]))


def check_window_count(h: int, w: int, crop, stride) -> None:
    """Refuse, before the first window runs, a slide over more than :data:`MAX_WINDOWS` windows."""
    n = window_count(h, w, crop, stride)
    if n > MAX_WINDOWS:
        raise ConfigError(f"slide mode over {h}x{w} with crop {crop[0]}x{crop[1]} and stride {stride[0]}x{stride[1]} "
                          f"would run {n} windows, over the limit of {MAX_WINDOWS}; use a larger --stride (two thirds "
                          "of --crop is the default) or a larger --crop")


def slide_logits(model, x: torch.Tensor, crop, stride) -> torch.Tensor:
    """Logits of ``x`` (N, 3, H, W) from windows of ``crop`` every ``stride``, overlaps averaged."""
    h, w = x.shape[-2:]
    ch, cw = min(crop[0], h), min(crop[1], w)
    check_window_count(h, w, crop, stride)
    total = count = None
    for y in window_starts(h, ch, stride[0]):
        for x0 in window_starts(w, cw, stride[1]):
            out = forward_logits(model, x[..., y:y + ch, x0:x0 + cw])
            if total is None:
                total = out.new_zeros(out.shape[0], out.shape[1], h, w)
                count = out.new_zeros(1, 1, h, w)
            total[..., y:y + ch, x0:x0 + cw] += out
            count[..., y:y + ch, x0:x0 + cw] += 1
    return total / count


def _passes(model, images, out_size, flip, scales, eval_size, mode, crop, stride):
    """Yield the logits of every (scale, flip) pass, resized to ``out_size``."""
    mode, crop, stride = check_mode(mode, crop, stride)
    base = tuple(int(s) for s in (eval_size or images.shape[-2:]))
    for scale in scales:
        size = (max(1, round(base[0] * scale)), max(1, round(base[1] * scale)))
        x = resize_to(images, size)
        for flipped in (False, True) if flip else (False,):
            xi = x.flip(-1) if flipped else x
            logits = forward_logits(model, xi) if mode == "whole" else slide_logits(model, xi, crop, stride)
            if flipped:
                logits = logits.flip(-1)
            yield resize_to(logits, out_size)


def predict_probabilities(model, images: torch.Tensor, out_size, flip: bool = False, scales=(1.0,), eval_size=None,
                          mode: str = "whole", crop=None, stride=None) -> torch.Tensor:
    """Class probabilities (N, C, *out_size): the mean softmax over scales (and horizontal flips).

    Each scale resizes the input to ``scale * base`` (``base`` = ``eval_size`` or the input size) and
    runs ``mode`` (``whole`` or ``slide`` with ``crop``/``stride``, in the resized image's pixels);
    logits are bilinearly resized to ``out_size`` before the softmax.
    """
    total, count = None, 0
    for logits in _passes(model, images, out_size, flip, scales, eval_size, mode, crop, stride):
        probs = logits.softmax(dim=1)
        total = probs if total is None else total + probs
        count += 1
    return total / count


def argmax_classes(scores: torch.Tensor) -> torch.Tensor:
    """``scores.argmax(dim=1)`` (N, H, W), int64, the first maximum on ties. On the CPU through numpy:
    torch's argmax over the channel dimension of an NCHW tensor is a strided reduction, 4.5x slower
    (mininet_211k's 11 x 360 x 480 logits: 26 vs 5.6 ms of CPU on 2-core Zen 4), as long as the model."""
    if scores.device.type != "cpu":
        return scores.argmax(dim=1)
    return torch.from_numpy(scores.detach().numpy().argmax(axis=1))


def predict_scores(model, images: torch.Tensor, out_size, flip: bool = False, scales=(1.0,), eval_size=None,
                   mode: str = "whole", crop=None, stride=None) -> torch.Tensor:
    """Scores (N, C, *out_size) whose argmax is the prediction: with a single pass (one scale, no flip)
    the logits, as the softmax would not change the argmax; else :func:`predict_probabilities`."""
    scales = tuple(scales)
    if len(scales) == 1 and not flip:
        return next(_passes(model, images, out_size, flip, scales, eval_size, mode, crop, stride))
    return predict_probabilities(model, images, out_size, flip, scales, eval_size, mode, crop, stride)


def predict_labels(model, images: torch.Tensor, out_size, flip: bool = False, scales=(1.0,), eval_size=None,
                   mode: str = "whole", crop=None, stride=None) -> torch.Tensor:
    """Label map (N, *out_size), int64: the argmax of :func:`predict_scores`."""
    return argmax_classes(predict_scores(model, images, out_size, flip, scales, eval_size, mode, crop, stride))
