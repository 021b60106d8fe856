"""Segment an image, a folder of images or a video with a trained checkpoint.

Everything the model needs besides pixels comes from the checkpoint: ``model_name``,
``num_classes``, ``classes``, ``palette`` and the normalisation (``config.data.normalize``).
Per image: ``<stem>_label.png`` (class indices), ``<stem>_color.png`` (palette colours) and
``<stem>_overlay.png`` (colours blended over the image, legend of the classes present). Per video:
``<stem>_overlay.mp4`` (mp4v), each frame blended, with a legend and the measured model FPS drawn on it.
Existing files in the output folder are kept; only these names are (re)written.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..errors import CheckpointError, LightsegError
from .runtime import Runtime, load_model

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
OVERLAY_ALPHA = 0.5


def _image_extensions():
    from ..data.base import IMAGE_EXTENSIONS

    return IMAGE_EXTENSIONS


def _normalization(ckpt):
    from ..data.base import NORMALIZATIONS

    config = (ckpt or {}).get("config") or {}
    name = (config.get("data") or {}).get("normalize", "imagenet")
    if name not in NORMALIZATIONS:
        raise CheckpointError(f"checkpoint config data.normalize = {name!r} is unknown; known: {', '.join(NORMALIZATIONS)}")
    mean, std = NORMALIZATIONS[name]
    return name, torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)


class Segmenter:
    """Image (RGB uint8) -> label map (H, W) at the image's size, through a :class:`Runtime`."""

    def __init__(self, runtime, mean, std, size=None):
        self.runtime, self.mean, self.std = runtime, mean, std
        self.size = tuple(size) if size else None
        self.latencies_ms: list[float] = []

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        src = rgb
        if self.size and (h, w) != self.size:
            src = cv2.resize(rgb, (self.size[1], self.size[0]), interpolation=cv2.INTER_LINEAR)
        x = torch.from_numpy(np.ascontiguousarray(src)).permute(2, 0, 1)[None].float()
        x = (x - self.mean) / self.std
        self.runtime.prepare(tuple(x.shape))  # one-off work (the ONNX export) stays out of the timing
        t0 = time.perf_counter()
        logits = self.runtime(x)
        self.latencies_ms.append((time.perf_counter() - t0) * 1000.0)
        if tuple(logits.shape[-2:]) != (h, w):
            # Resize the scores, not the labels: smoother class boundaries at the image's resolution.
            logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        label = logits[0].argmax(0).numpy()
        return label.astype(np.uint8 if logits.shape[1] <= 256 else np.uint16)


def _classify_input(path: Path):
    if not path.exists():
        raise LightsegError(f"input {str(path)!r} not found; pass an image, a folder of images or a video file")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in _image_extensions())
        if not files:
            raise LightsegError(f"folder {path} holds no images ({', '.join(_image_extensions())}); "
                                "pass a folder of images, an image or a video file")
        return "images", files
    ext = path.suffix.lower()
    if ext in _image_extensions():
        return "images", [path]
    if ext in VIDEO_EXTENSIONS:
        return "video", [path]
    raise LightsegError(f"{path}: not an image or a video (extension {ext or 'none'!r}); "
                        f"supported images: {' '.join(_image_extensions())}; videos: {' '.join(VIDEO_EXTENSIONS)}")


def _output_stems(files):
    """``<stem>`` per file; files sharing a stem (a.png, a.jpg) keep their extension to stay apart."""
    stems = [f.stem for f in files]
    dup = {s for s in stems if stems.count(s) > 1}
    return [f"{f.stem}_{f.suffix.lstrip('.').lower()}" if f.stem in dup else f.stem for f in files]


def _progress(total, desc):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img" if desc == "images" else "frame", file=sys.stderr,
                disable=total is not None and total <= 1 and desc == "images")


def _predict_images(segmenter, files, out_dir, classes, palette):
    from ..data.base import read_image
    from ..viz import colorize, draw_legend, overlay, save_png

    written = []
    with _progress(len(files), "images") as bar:
        for f, stem in zip(files, _output_stems(files)):
            rgb = read_image(f)  # DataError naming the file if it is corrupt or truncated
            label = segmenter(rgb)
            present = np.unique(label)
            blended = draw_legend(overlay(rgb, label, palette, OVERLAY_ALPHA), classes, palette, present=present)
            for suffix, arr in (("label", label), ("color", colorize(label, palette)), ("overlay", blended)):
                written.append(str(save_png(out_dir / f"{stem}_{suffix}.png", arr)))
            bar.update(1)
    return written


def _predict_video(segmenter, path, out_dir, classes, palette, backend):
    from ..viz import draw_legend, overlay, put_text

    cap = cv2.VideoCapture(str(path))
    ok, frame = cap.read() if cap.isOpened() else (False, None)
    if not ok:
        cap.release()
        raise LightsegError(f"{path}: cannot read video frames (corrupt, empty, or a codec OpenCV lacks); "
                            "re-encode it, e.g. ffmpeg -i in -c:v mpeg4 out.mp4")
    fps_in = cap.get(cv2.CAP_PROP_FPS) or 0.0
    fps_in = fps_in if 0 < fps_in < 1000 else 25.0
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    out_path = out_dir / f"{path.stem}_overlay.mp4"
    # Write beside the target and rename at the end: an interrupted run leaves no half video under the final name.
    fd, tmp = tempfile.mkstemp(prefix=f".{out_path.stem}.", suffix=".mp4", dir=out_dir)
    os.close(fd)
    writer = None
    frames, ema_ms = 0, None
    try:
        with _progress(total, "frames") as bar:
            while ok:
                rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                label = segmenter(rgb)
                ms = segmenter.latencies_ms[-1]
                ema_ms = ms if ema_ms is None else 0.9 * ema_ms + 0.1 * ms
                annotated = draw_legend(overlay(rgb, label, palette, OVERLAY_ALPHA), classes, palette)
                annotated = put_text(annotated, f"{1000.0 / ema_ms:.1f} FPS ({backend})")
                if writer is None:
                    h, w = annotated.shape[:2]
                    writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*"mp4v"), fps_in, (w, h))
                    if not writer.isOpened():
                        raise LightsegError(f"cannot open a video writer for {out_path} (mp4v); check the folder is writable")
                writer.write(cv2.cvtColor(annotated, cv2.COLOR_RGB2BGR))
                frames += 1
                bar.update(1)
                ok, frame = cap.read()
    except BaseException:
        if writer is not None:
            writer.release()
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        cap.release()
    writer.release()
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, out_path)
    return [str(out_path)], frames


def predict(model_name, checkpoint, input_path, output_dir="predictions", backend="eager", size=None, device="cpu",
            calibration=None, calibration_count=None) -> dict:
    """Segment ``input_path`` (image, folder of images, or video) and write the results to ``output_dir``.

    ``size``: (H, W) to resize inputs to before the model (predictions come back at the input's size).
    Returns a summary: counts, files written, mean model latency and FPS.
    """
    from ..viz import palette_for

    input_path = Path(input_path)
    kind, files = _classify_input(input_path)
    if size is not None:
        size = tuple(int(v) for v in size)
        if len(size) != 2 or min(size) < 64:
            raise LightsegError(f"--size {size}: give H W, each at least 64")
    model, ckpt = load_model(model_name, checkpoint=checkpoint, device=device)
    num_classes = int(getattr(model, "num_classes", 0) or ckpt.get("num_classes") or 0)
    classes = list(ckpt.get("classes") or [f"class {i}" for i in range(num_classes)])
    palette = [tuple(int(v) for v in c) for c in (ckpt.get("palette") or palette_for(min(max(num_classes, 1), 255)))]
    if num_classes and (len(classes) != num_classes or len(palette) < num_classes):
        raise CheckpointError(f"{checkpoint}: {len(classes)} class names and {len(palette)} palette colours "
                              f"for a {num_classes}-class model; the checkpoint's metadata is inconsistent")
    norm_name, mean, std = _normalization(ckpt)
    if backend != "onnxruntime_int8" and (calibration or calibration_count):
        raise LightsegError("--calib and --calib-count calibrate int8 quantisation; use --backend onnxruntime_int8 or drop them")
    runtime = Runtime(model, backend=backend, device=device, input_size=size, calibration=calibration,
                      calibration_count=calibration_count, normalize=norm_name)
    segmenter = Segmenter(runtime, mean, std, size=size)

    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if kind == "images":
        written = _predict_images(segmenter, files, out_dir, classes, palette)
        frames = 0
    else:
        written, frames = _predict_video(segmenter, files[0], out_dir, classes, palette, backend)
    lat = segmenter.latencies_ms
    # The first call of a backend pays one-off costs (ONNX export, allocations): leave it out of the mean.
    steady = lat[1:] if len(lat) > 1 else lat
    mean_ms = float(np.mean(steady)) if steady else None
    return {
        "model": model_name, "checkpoint": str(checkpoint), "backend": backend, "input": str(input_path), "kind": kind,
        "images": len(files) if kind == "images" else 0, "frames": frames, "output_dir": str(out_dir),
        "files": written, "normalize": norm_name, "size": list(size) if size else None,
        "mean_latency_ms": round(mean_ms, 2) if mean_ms else None, "fps": round(1000.0 / mean_ms, 2) if mean_ms else None,
    }


def predict_command(args) -> dict:
    summary = predict(args.model, args.checkpoint, args.input, output_dir=args.output, backend=args.backend,
                      size=tuple(args.size) if args.size else None, calibration=args.calib, calibration_count=args.calib_count)
    what = f"{summary['images']} image(s)" if summary["kind"] == "images" else f"{summary['frames']} video frame(s)"
    speed = f", model {summary['mean_latency_ms']:.1f} ms/frame ({summary['fps']:.1f} FPS)" if summary["mean_latency_ms"] else ""
    print(f"segmented {what} with {summary['model']} ({summary['backend']}){speed}; "
          f"wrote {len(summary['files'])} file(s) to {summary['output_dir']}")
    return summary
