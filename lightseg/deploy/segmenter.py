"""``Segmenter``: the one high-level API. An image in, a label map out.

    import lightseg
    seg = lightseg.Segmenter.from_checkpoint("runs/mininet_211k_camvid/best.pt")
    seg = lightseg.Segmenter.from_pretrained("mininet_211k", weights="camvid", backend="onnxruntime")
    seg = lightseg.Segmenter.from_exported("mininet_211k.xml")    # a lightseg export: OpenVINO here
    label = seg(rgb)              # (H, W) uint8 class ids at the image's size
    label = seg("street.jpg")     # a file, a PIL image, a torch tensor, a BGR array (channel_order="bgr") too
    labels = seg([rgb1, rgb2])    # a list: same-size images run as one batch
    label, probs = seg.predict(source=rgb, probs=True)   # + (C, H, W) softmax probabilities
    picture = seg.overlay(rgb, label)   # colours blended over the image, legend of the classes present

Everything the model needs besides pixels (class names, palette, normalisation) comes from the
checkpoint, the weights' manifest or the exported file's metadata (:meth:`Segmenter.from_exported`). It runs
on the backends of :class:`.runtime.Runtime` (``eager``, ``onnxruntime``, ``onnxruntime_int8``, ``openvino``,
``executorch``, ``ncnn``) and through :func:`lightseg.inference.predict_scores`, the
function ``lightseg eval`` uses, so ``mode="slide"`` works here as it does there. ``lightseg predict``
is a thin caller of this class.
"""
from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from ..data.base import NORMALIZATIONS, read_image
from ..errors import LightsegError
from ..inference import argmax_classes, check_mode, predict_scores
from .metadata import read_metadata
from .runtime import Runtime, checkpoint_normalization, file_backend, load_model

PREDICT_BACKENDS = ("eager", "onnxruntime", "onnxruntime_int8", "openvino", "executorch", "ncnn")


class _Exported:
    """What Segmenter reads from a model object, taken from an exported file's metadata."""

    def __init__(self, meta):
        self.lightseg_name, self.num_classes = meta["model"], meta["num_classes"]
        self.classes, self.palette, self.normalize = meta["classes"], meta["palette"], meta["normalize"]


CHANNEL_ORDERS = ("rgb", "bgr")


def _check_rgb(image) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise LightsegError(f"Segmenter expects an RGB uint8 numpy array (H, W, 3), got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        hint = (" (channels first: img.transpose(1, 2, 0)" if image.ndim == 3 and image.shape[0] == 3 and image.shape[2] != 3
                else " (a grey image: np.dstack([img] * 3); RGBA: img[..., :3]; float in 0..1: (img * 255).astype(np.uint8)"
                     " or pass it as a torch tensor")
        raise LightsegError(f"Segmenter expects an RGB uint8 array (H, W, 3), got {image.dtype} of shape {image.shape}"
                            f"{hint})")
    return image


def _check_channel_order(order) -> str:
    if order not in CHANNEL_ORDERS:
        raise LightsegError(f"channel_order={order!r} is unknown; use 'rgb' (PIL, torchvision, lightseg) or 'bgr' "
                            "(cv2.imread, cv2.VideoCapture)")
    return order


def _is_pil_image(item) -> bool:
    """A PIL.Image, recognised without importing Pillow (not a dependency)."""
    return type(item).__module__.split(".")[0] == "PIL" and hasattr(item, "convert") and hasattr(item, "mode")


def _tensor_images(tensor: torch.Tensor) -> list[np.ndarray]:
    """A (3, H, W) or (N, 3, H, W) tensor, uint8 in 0..255 or float in 0..1 -> RGB-or-BGR uint8 (H, W, 3)
    arrays (floats scaled by 255 and rounded: the models were trained on 8-bit images)."""
    t = tensor.detach().cpu()
    if t.ndim not in (3, 4) or t.shape[-3] != 3:
        hint = "; channels last: tensor.permute(2, 0, 1)" if t.ndim in (3, 4) and t.shape[-1] == 3 else ""
        raise LightsegError(f"Segmenter expects a tensor (3, H, W) or (N, 3, H, W), got shape {tuple(t.shape)}{hint}")
    if t.is_floating_point():
        lo, hi = (float(t.min()), float(t.max())) if t.numel() else (0.0, 0.0)
        if not (0.0 <= lo and hi <= 1.0):  # also false for NaN
            raise LightsegError(f"a float tensor must hold values in 0..1, got {t.dtype} in {lo:g}..{hi:g}; divide a "
                                "0..255 tensor by 255 or pass it as torch.uint8")
        t = (t.float() * 255.0).round().to(torch.uint8)
    elif t.dtype != torch.uint8:
        raise LightsegError(f"a tensor must be torch.uint8 (0..255) or float (0..1), got {t.dtype}; convert it with "
                            ".to(torch.uint8) or .float() / 255")
    t = t.permute(*range(t.ndim - 3), t.ndim - 2, t.ndim - 1, t.ndim - 3)  # channels last
    return [np.ascontiguousarray(a) for a in (t.numpy() if t.ndim == 4 else t.numpy()[None])]


def _images_of(item, order: str) -> tuple[list[np.ndarray], bool]:
    """One input -> (its RGB uint8 images, whether it was a batch). ``order``: the channel order of
    arrays and tensors; files and PIL images know their own."""
    if isinstance(item, (str, os.PathLike)):
        return [read_image(item)], False
    if _is_pil_image(item):
        return [np.asarray(item.convert("RGB"))], False
    if isinstance(item, torch.Tensor):
        images, batch = _tensor_images(item), item.ndim == 4
    elif isinstance(item, np.ndarray) and item.ndim == 4:
        if item.shape[1] == 3 and item.shape[3] != 3:
            raise LightsegError(f"Segmenter expects a batch array (N, H, W, 3), got {item.dtype} of shape {item.shape} "
                                "(channels first: batch.transpose(0, 2, 3, 1), or pass it as a torch tensor)")
        images, batch = [_check_rgb(a) for a in item], True
    elif isinstance(item, np.ndarray):
        images, batch = [_check_rgb(item)], False
    else:
        raise LightsegError(f"Segmenter cannot read a {type(item).__name__}; give an image path, a PIL image, an RGB "
                            "uint8 array (H, W, 3) or (N, H, W, 3), a tensor (3, H, W) or (N, 3, H, W), or a list of these")
    if order == "bgr":
        images = [np.ascontiguousarray(img[:, :, ::-1]) for img in images]
    return images, batch


def prepare_images(images, size, normalize) -> torch.Tensor:
    """Same-size RGB uint8 images -> the normalised (N, 3, H, W) float32 batch, resized (bilinear) to ``size``
    (H, W) when given: ``(pixel - mean[c]) / std[c]`` of the ``normalize`` statistics (``NORMALIZATIONS``),
    channel by channel in numpy, a fraction of the time torch's broadcast takes. What :meth:`Segmenter.prepare`
    runs and ``lightseg bench`` times end to end."""
    mean, std = NORMALIZATIONS[normalize]
    mean, inv_std = [np.float32(m) for m in mean], [np.float32(1.0 / s) for s in std]
    images = [_check_rgb(img) for img in images]
    if any(img.shape != images[0].shape for img in images):
        raise LightsegError("a batch needs images of one size; call the Segmenter on a list to group them")
    if size is not None:
        images = [img if img.shape[:2] == tuple(size) else
                  cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_LINEAR) for img in images]
    h, w = images[0].shape[:2]
    x = np.empty((len(images), 3, h, w), np.float32)
    for i, img in enumerate(images):
        for c in range(3):
            x[i, c] = (img[:, :, c].astype(np.float32) - mean[c]) * inv_std[c]
    return torch.from_numpy(x)


class NonFiniteOutput(LightsegError):
    """The model's scores hold NaN or infinity where the label is taken: the label map would be garbage."""


class _TimedRunner:
    """Calls the runtime and adds each call's wall time to ``elapsed_ms`` (slide mode calls it per window)."""

    def __init__(self, runtime):
        self.runtime = runtime
        self.elapsed_ms = 0.0

    def __call__(self, x):
        self.runtime.prepare(tuple(x.shape))  # one-off work (the ONNX export) stays out of the timing
        t0 = time.perf_counter()
        out = self.runtime(x)
        if out.device.type == "cuda":
            torch.cuda.synchronize(out.device)
        self.elapsed_ms += (time.perf_counter() - t0) * 1000.0
        return out


class Segmenter:
    """Image -> label map (H, W) at the image's size.

    ``seg(source)`` and ``seg.predict(source=..., probs=False)`` take, as ``source``:

    - a path (``str`` or ``pathlib.Path``) of an image file (read in RGB);
    - a ``PIL.Image`` in any mode (converted to RGB);
    - a uint8 numpy array (H, W, 3), or a batch (N, H, W, 3), in RGB order unless ``channel_order="bgr"``
      (what ``cv2.imread`` and ``cv2.VideoCapture`` give); grey, RGBA and float arrays are refused, the
      error saying how to convert them;
    - a torch tensor (3, H, W) or (N, 3, H, W) (torchvision's layout), ``torch.uint8`` in 0..255 or float
      in 0..1 (scaled by 255 and rounded to 8 bits, as the model was trained), on any device, RGB unless
      ``channel_order="bgr"``;
    - a list (or tuple) of any of these.

    One image gives one (H, W) label map (uint8; uint16 beyond 256 classes); a batch array or tensor a
    stacked (N, H, W) array; a list a list with one label map per image (a batch inside it adds its N).
    ``probs=True`` returns ``(labels, probs)``: for each image the (C, H, W) float32 softmax of the
    model's scores, whose argmax is its label map, shaped like the labels (an array, a stacked
    (N, C, H, W) array or a list). ``channel_order`` ("rgb" or "bgr") is set for the Segmenter and may
    be overridden per call.

    ``model``: an ``nn.Module`` (its ``classes``/``palette``/``normalize`` attributes are used when the
    arguments are not given), ``backend``: one of :data:`PREDICT_BACKENDS`, or ``auto``: the fastest of them
    that agrees with PyTorch on this CPU at ``size`` (default the model's paper size), measured once and cached
    (:mod:`.auto`; ``self.auto`` holds the measurement); ``device``: auto
    (CUDA, then MPS, then CPU), cpu, cuda or mps; ``size``: (H, W) the image is resized to before the
    model (the labels come back at the image's size); ``mode``/``crop``/``stride``: whole-image or
    sliding-window inference (:mod:`lightseg.inference`); ``calibration``/``calibration_count``/``int8_mode``:
    int8 calibration images (a folder; default the synthetic scenes) and weight format (default this CPU's);
    ``ort_spinning``: ONNX Runtime's idle threads spin (None: its default) or sleep (False: lightseg predict,
    whose reader and writer threads need the cores); ``channel_order``: "rgb" (default) or "bgr", the
    order of the arrays and tensors it is given. ``precision``: openvino (f32, bf16, fp16; default this
    CPU's) and ncnn (f32, fp16). ``model`` may also be the path of a file written by ``lightseg export``
    (:meth:`from_exported`).

    ``latencies_ms`` holds the model time of every call (per image; a batch's time is split evenly);
    :meth:`timing` summarises them without the first call, which pays one-off costs.
    """

    def __init__(self, model, classes=None, palette=None, normalize=None, backend="eager", device="auto", size=None,
                 mode="whole", crop=None, stride=None, calibration=None, calibration_count=None, int8_mode=None,
                 num_threads=None, ort_spinning=None, channel_order="rgb", precision=None):
        from ..viz import palette_for

        self.metadata = None
        if isinstance(model, (str, Path)):
            self.metadata = read_metadata(model)
            backend = file_backend(model, backend)
            if size is None and not self.metadata.get("dynamic"):
                size = tuple(self.metadata["input_size"])  # a static export takes its own size; labels come back at the image's
        self.auto = None
        if backend == "auto":  # the fastest path that agrees with PyTorch, measured once (see .auto)
            from .auto import auto_input_size, choose_backend

            if precision not in (None, "auto"):
                raise LightsegError(f"--precision {precision} does not go with --backend auto, which picks among the "
                                    "paths at their default precision; choose the backend (openvino or ncnn)")

            self.auto = choose_backend(model, auto_input_size(model, size), device=device, num_threads=num_threads)
            backend = self.auto["backend"]
        if backend not in PREDICT_BACKENDS:
            raise LightsegError(f"backend {backend!r} is unknown; use one of auto, {', '.join(PREDICT_BACKENDS)}")
        if backend != "onnxruntime_int8" and (calibration or calibration_count or int8_mode not in (None, "auto")):
            raise LightsegError("--calib, --calib-count and --int8-mode apply to int8 quantisation; use --backend "
                                "onnxruntime_int8 or drop them")
        self.channel_order = _check_channel_order(channel_order)
        self.mode, self.crop, self.stride = check_mode(mode, crop, stride)
        if size is not None:
            size = tuple(int(v) for v in size)
            if len(size) != 2 or min(size) < 64:
                raise LightsegError(f"size {size}: give H W, each at least 64")
        self.size = size
        described = _Exported(self.metadata) if self.metadata else model
        self.name = getattr(described, "lightseg_name", type(described).__name__)
        self.num_classes = int(getattr(described, "num_classes", 0) or 0) or None
        n = self.num_classes or len(classes or ()) or 1
        self.classes = list(classes or getattr(described, "classes", None) or [f"class {i}" for i in range(n)])
        pal = palette or getattr(described, "palette", None) or palette_for(min(max(n, 1), 255))
        self.palette = [tuple(int(v) for v in c) for c in pal]
        self.colors = np.asarray(self.palette, np.uint8)  # label map -> colours by indexing: colors[label]
        if self.num_classes and (len(self.classes) != self.num_classes or len(self.palette) < self.num_classes):
            raise LightsegError(f"{len(self.classes)} class names and {len(self.palette)} palette colours for a "
                                f"{self.num_classes}-class {self.name}; the checkpoint's metadata is inconsistent")
        self.normalize = normalize or getattr(described, "normalize", None) or "imagenet"
        if self.normalize not in NORMALIZATIONS:
            raise LightsegError(f"normalize {self.normalize!r} is unknown; use one of {', '.join(NORMALIZATIONS)}")
        self.backend = backend
        self.runtime = Runtime(model, backend=backend, device=device, input_size=size, calibration=calibration,
                               calibration_count=calibration_count, normalize=self.normalize, int8_mode=int8_mode,
                               num_threads=num_threads, ort_spinning=ort_spinning, precision=precision)
        self.device = self.runtime.device
        self._runner = _TimedRunner(self.runtime)
        self.latencies_ms: list[float] = []

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_checkpoint(cls, path, model: str | None = None, **kwargs) -> "Segmenter":
        """A Segmenter from a lightseg checkpoint (``model``: only needed for a bare state dict)."""
        net, ckpt = load_model(model, checkpoint=path)
        ckpt = ckpt or {}
        kwargs.setdefault("classes", ckpt.get("classes") or None)
        kwargs.setdefault("palette", ckpt.get("palette") or None)
        kwargs.setdefault("normalize", checkpoint_normalization(ckpt))
        return cls(net, **kwargs)

    @classmethod
    def from_exported(cls, path, **kwargs) -> "Segmenter":
        """A Segmenter from a file written by ``lightseg export`` (.onnx, OpenVINO .xml, ExecuTorch .pte, ncnn
        .ncnn.param): its metadata gives the model, classes, palette, normalisation and input size, and its
        format the backend. A file without lightseg metadata is refused, with the command that re-exports it."""
        return cls(Path(path), **kwargs)

    @classmethod
    def from_pretrained(cls, name: str, weights: str = "camvid", **kwargs) -> "Segmenter":
        """A Segmenter from weights shipped with lightseg (see ``lightseg models`` for which exist)."""
        from ..models import create_model

        return cls(create_model(name, weights=weights), **kwargs)

    # ------------------------------------------------------------------ inference
    # Three stages, which lightseg predict runs in three threads: prepare (resize, normalise), scores (the
    # model) and labels (argmax, back to uint8). predict_batch runs them one after another.
    def prepare(self, images) -> torch.Tensor:
        """Same-size RGB uint8 images -> the normalised (N, 3, H, W) float batch the model takes (resized
        to ``size`` when given). Channel by channel in numpy: a fraction of the time torch's broadcast takes."""
        return prepare_images(images, self.size, self.normalize)

    def scores(self, x: torch.Tensor, out_size) -> torch.Tensor:
        """The model on a prepared batch: scores (N, C, *out_size) whose argmax is the label map
        (:func:`lightseg.inference.predict_scores`, the function lightseg eval uses). Its model time is
        appended to ``latencies_ms``, split evenly over the batch."""
        self._runner.elapsed_ms = 0.0
        out = predict_scores(self._runner, x, tuple(out_size), mode=self.mode, crop=self.crop, stride=self.stride)
        self.latencies_ms.extend([self._runner.elapsed_ms / x.shape[0]] * x.shape[0])
        return out

    def labels(self, scores: torch.Tensor) -> list[np.ndarray]:
        """Scores -> one (H, W) uint8 label map per image (uint16 beyond 256 classes). Raises
        :class:`NonFiniteOutput` when a winning score is NaN or infinite: argmax would silently answer
        class 0 (or any class) for those pixels."""
        scores = scores.cpu()
        labels = argmax_classes(scores)
        # argmax picks a NaN over any number, so checking the winners (H*W values, not C*H*W) finds every NaN.
        top = scores.gather(1, labels.unsqueeze(1))
        if not bool(torch.isfinite(top).all()):
            bad = int((~torch.isfinite(top)).sum())
            raise NonFiniteOutput(f"the model's output is NaN or infinite at {bad} of {top.numel()} pixels, so its labels "
                                  "would be meaningless; the model's weights or its arithmetic are not finite (a diverged "
                                  "training, or float16 overflow): use another checkpoint (e.g. best.pt) or run in float32")
        labels = labels.numpy()
        return list(labels.astype(np.uint8 if self.num_classes is None or self.num_classes <= 256 else np.uint16))

    def _predict_run(self, images, probs: bool):
        """Label maps (and, with ``probs``, softmax probabilities) of same-size images, as one batch."""
        scores = self.scores(self.prepare(images), images[0].shape[:2])
        labels = self.labels(scores)
        return labels, (list(torch.softmax(scores.float(), dim=1).cpu().numpy()) if probs else [])

    def predict_batch(self, images) -> list[np.ndarray]:
        """Label maps of a list of same-size RGB uint8 images, run as one batch."""
        images = list(images)
        return self._predict_run(images, False)[0] if images else []

    def predict(self, source, probs: bool = False, batch_size: int = 8, channel_order: str | None = None):
        """Label maps of ``source`` (an image path, PIL image, array, tensor, batch or list: see the class
        docstring), with the (C, H, W) softmax probabilities too when ``probs``. Same-size images of a
        list run in batches of up to ``batch_size``."""
        order = self.channel_order if channel_order is None else _check_channel_order(channel_order)
        is_list = isinstance(source, (list, tuple))
        images: list = []
        batch = False
        for item in (source if is_list else [source]):
            found, batch = _images_of(item, order)
            images.extend(found)
        labels: list = []
        probabilities: list = []
        start = 0
        while start < len(images):  # runs of same-size images, at most batch_size long
            end = start + 1
            while end < len(images) and end - start < batch_size and images[end].shape == images[start].shape:
                end += 1
            found, found_probs = self._predict_run(images[start:end], probs)
            labels.extend(found)
            probabilities.extend(found_probs)
            start = end
        if is_list:  # a list of label maps, one per image
            pass
        elif batch:  # stacked, as the batch came
            hw = tuple(source.shape[-2:]) if isinstance(source, torch.Tensor) else tuple(source.shape[1:3])
            labels = np.stack(labels) if labels else np.zeros((0,) + hw, np.uint8)
            probabilities = np.stack(probabilities) if probabilities else np.zeros((0, len(self.classes)) + hw, np.float32)
        else:  # one image
            labels, probabilities = labels[0], (probabilities[0] if probs else None)
        return (labels, probabilities) if probs else labels

    def __call__(self, source, batch_size: int = 8, probs: bool = False, channel_order: str | None = None):
        """:meth:`predict`: one image -> its label map; a list -> a list of label maps (same-size runs batched)."""
        return self.predict(source, probs=probs, batch_size=batch_size, channel_order=channel_order)

    def overlay(self, image, label=None, alpha: float = 0.5, legend: bool = True,
                channel_order: str | None = None) -> np.ndarray:
        """``image`` (one image, any form :meth:`predict` takes) in RGB with the label colours blended in
        and, with ``legend``, a panel naming the classes present. Pass the ``label`` that ``seg(image)``
        returned to draw it without running the model again; it is predicted when not given."""
        from ..viz import draw_legend, overlay

        order = self.channel_order if channel_order is None else _check_channel_order(channel_order)
        if isinstance(image, (list, tuple)) or (isinstance(image, (np.ndarray, torch.Tensor)) and image.ndim == 4):
            raise LightsegError("Segmenter.overlay draws one image; call it once per image of a batch or list")
        image = _images_of(image, order)[0][0]
        label = self.predict(image, channel_order="rgb") if label is None else label
        blended = overlay(image, label, self.palette, alpha)
        return draw_legend(blended, self.classes, self.palette, present=np.unique(label)) if legend else blended

    def timing(self) -> dict:
        """Model time per image: the median of the warm calls (the first call, which pays one-off costs
        such as allocations and kernel selection, is left out and reported as ``first_ms``)."""
        lat = self.latencies_ms
        warm = lat[1:]
        median = statistics.median(warm) if warm else None
        return {"first_ms": round(lat[0], 2) if lat else None, "warm_calls": len(warm), "warmup_calls": min(len(lat), 1),
                "median_ms": round(median, 2) if median else None,
                "fps": round(1000.0 / median, 2) if median else None}

    def __repr__(self) -> str:
        return (f"Segmenter({self.name}, {len(self.classes)} classes, backend={self.backend}, device={self.device}, "
                f"mode={self.mode}{', size=' + str(self.size) if self.size else ''})")

