"""``lightseg predict``: segment images, a folder, a glob, a video, a camera or a stream.

A thin caller of :class:`.segmenter.Segmenter`: the model, class names, palette and normalisation come
from the checkpoint (``--checkpoint``) or from weights shipped with lightseg (``--weights``).

Per image: ``<stem>_label.png`` (class indices), ``<stem>_color.png`` (palette colours) and
``<stem>_overlay.png`` (colours blended over the image, legend of the classes present). Per video,
camera or stream: ``<name>_overlay.mp4`` (mp4v), each frame blended, with a legend and the measured
frame rate drawn on it; ``--show`` also shows it in a window. Existing files in the output folder are
kept; only these names are (re)written, and a video appears under its name only once complete. Images
that share a stem (a.png, a.PNG) keep their extension in it (:func:`_output_stems`); images under the
models' minimum size are skipped with a warning, and one too large for the free memory is refused, both
before any work (:func:`_check_images`).

Real time means end to end, so the stages run in their own threads, joined by small bounded queues:
a reader (decode), the model, and the writer (overlay, legend, encode, display) in the main thread.
One thread per stage and first-in first-out queues keep the frames in order. Printed: the model's warm
median time per frame (the first call, which pays one-off costs, is left out) and the end-to-end
frames/s (from the first written frame to the last).
"""
from __future__ import annotations

import glob as globlib
import os
import queue
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from ..bounds import WHOLE_BYTES_PER_PIXEL, SLIDE_BYTES_PER_PIXEL, available_memory, estimate_memory  # noqa: F401
from ..errors import LightsegError
from ..outputs import (check_output_dir, check_outputs_apart, create_temp, publish, refuse_links_in,
                       remove_stale_temp_files)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
OVERLAY_ALPHA = 0.5
MAX_DECLARED_FRAMES = 10 ** 8  # over a year at 30 frames/s: a container declaring more is lying
# What predict writes per image: <stem>_label.png (class ids, what lightseg score reads) and two pictures.
LABEL_SUFFIX, PICTURE_SUFFIXES = "_label", ("_color", "_overlay")
OUTPUT_NAMES = (f"*{LABEL_SUFFIX}.png", *(f"*{s}.png" for s in PICTURE_SUFFIXES), "*_overlay.mp4")
QUEUE_SIZE = 4  # frames in flight between two stages: enough to absorb jitter, little memory
WINDOW_NAME = "lightseg"
# Camera indices lightseg passes to OpenCV: V4L2 numbers /dev/video0..63, others count from 0 too; a larger
# number is a typo (or an OpenCV backend code) and is refused rather than handed to OpenCV.
MAX_CAMERA_INDEX = 255
_DONE = object()


def _image_extensions():
    from ..data.base import IMAGE_EXTENSIONS

    return IMAGE_EXTENSIONS


# ---------------------------------------------------------------------- inputs
class Source:
    """What ``--input`` named: ``kind`` is images, video, camera or stream; ``files`` (images), ``target``
    (what OpenCV opens: a path, a camera index or a URL) and ``name`` (the output's stem)."""

    def __init__(self, kind, files=(), target=None, name=None):
        self.kind, self.files, self.target, self.name = kind, list(files), target, name


def _images_in(files, what) -> Source:
    files = sorted(p for p in files if p.is_file() and p.suffix.lower() in _image_extensions())
    if not files:
        raise LightsegError(f"{what} holds no images ({', '.join(_image_extensions())}); "
                            "pass a folder of images, an image, a glob, a video file, a camera index or a stream URL")
    return Source("images", files=files)


def classify_input(spec) -> Source:
    """Turn ``--input`` into a :class:`Source` (errors name the input and what is accepted)."""
    text = str(spec)
    digits = text[1:] if text[:1] in "+-" else text
    if digits.isdigit() or (digits.isdecimal() and digits):  # a camera index, or a file or folder named like one
        if Path(text).exists():  # an existing path wins: --input 0 beside a folder 0 reads the folder
            print(f"lightseg predict: --input {text}: reading the {'folder' if Path(text).is_dir() else 'file'} {text} "
                  f"(a number is a camera index only when no such path exists)", file=sys.stderr)
        elif not (text.isascii() and text.isdigit()):
            raise LightsegError(f"--input {text!r}: a camera index is written with the digits 0-9 and is 0 or more "
                                f"(0..{MAX_CAMERA_INDEX}), e.g. --input 0; no file or folder of that name exists either")
        elif int(text) > MAX_CAMERA_INDEX:
            raise LightsegError(f"--input {text}: camera index out of range; cameras are numbered 0..{MAX_CAMERA_INDEX} "
                                f"(0 is the first), and no file or folder of that name exists")
        else:
            return Source("camera", target=int(text), name=f"camera{text}")
    if "://" in text:
        scheme, rest = text.split("://", 1)
        if scheme == "file" and not Path(rest).exists():
            raise LightsegError(f"input {text!r}: {rest} not found")
        return Source("stream", target=text, name=Path(rest.split("?")[0]).stem or "stream")
    path = Path(text)
    if not path.exists():
        if any(c in text for c in "*?["):
            return _images_in([Path(p) for p in globlib.glob(text, recursive=True)], f"glob {text!r}")
        raise LightsegError(f"input {text!r} not found; pass an image, a folder of images, a glob, a video file, "
                            "a camera index (0) or a stream URL (rtsp://, http://, file://)")
    if path.is_dir():
        return _images_in(list(path.iterdir()), f"folder {path}")
    ext = path.suffix.lower()
    if ext in _image_extensions():
        return Source("images", files=[path])
    if ext in VIDEO_EXTENSIONS:
        return Source("video", target=str(path), name=path.stem)
    raise LightsegError(f"{path}: not an image or a video (extension {ext or 'none'!r}); "
                        f"supported images: {' '.join(_image_extensions())}; videos: {' '.join(VIDEO_EXTENSIONS)}")


def _quiet_opencv():
    """OpenCV logs its own warnings when a camera or stream cannot be opened; we raise a clearer error."""
    try:
        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
        return lambda: cv2.utils.logging.setLogLevel(level)
    except AttributeError:  # pragma: no cover - an OpenCV without the logging module
        return lambda: None


def open_capture(source: Source, check_frame=None):
    """A ``cv2.VideoCapture`` that has delivered its first frame: ``(capture, first_bgr_frame)``.
    ``check_frame(h, w)``: called with the frame size the container declares, before any frame is decoded."""
    restore = _quiet_opencv()
    try:
        cap = cv2.VideoCapture(source.target)
        if cap.isOpened() and check_frame is not None:
            h, w = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0), int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0)
            if h > 0 and w > 0:
                try:
                    check_frame(h, w)
                except BaseException:
                    cap.release()
                    raise
        ok, frame = cap.read() if cap.isOpened() else (False, None)
    finally:
        restore()
    if ok:
        return cap, frame
    cap.release()
    if source.kind == "camera":
        raise LightsegError(f"cannot open camera {source.target}: no camera with that index on this machine "
                            f"(or it is in use). Pass another index, or an image, folder, glob, video file or stream URL")
    if source.kind == "stream":
        raise LightsegError(f"cannot read the stream {source.target!r}: the address does not answer or OpenCV's FFmpeg "
                            "cannot decode it; check the URL (e.g. open it with ffplay)")
    raise LightsegError(f"{source.target}: cannot read video frames (corrupt, empty, or a codec OpenCV lacks); "
                        "re-encode it, e.g. ffmpeg -i in -c:v mpeg4 out.mp4")


# ---------------------------------------------------------------------- the pipeline
class _Failure:
    def __init__(self, error):
        self.error = error


def _put(q, item, stop):
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _get(q, stop):
    """The next item, or ``_DONE`` once the pipeline is stopping."""
    while not stop.is_set():
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            continue
    return _DONE


def _stage(fn, stop, out_q):
    """Run ``fn`` in a thread; an exception ends the pipeline and reaches the main thread."""

    def target():
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - handed to the main thread, which raises it
            _put(out_q, _Failure(e), stop)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t


def run_pipeline(frames, segmenter, consume, batch_size=1, queue_size=QUEUE_SIZE):
    """Read ``frames`` (an iterator of ``(key, rgb)``) and prepare them (:meth:`Segmenter.prepare`) in one
    thread, run the model (:meth:`Segmenter.scores`, up to ``batch_size`` same-size frames per call) in
    another, and in this thread take the labels (:meth:`Segmenter.labels`) and call
    ``consume(key, rgb, label)``, in input order. The model thread does nothing but the model: pre- and
    post-processing overlap it. Returns the number of frames consumed."""
    stop = threading.Event()
    to_model: queue.Queue = queue.Queue(queue_size)
    to_writer: queue.Queue = queue.Queue(queue_size)

    def read():
        for key, rgb in frames:
            if not _put(to_model, (key, rgb, segmenter.prepare([rgb])), stop):
                return
        _put(to_model, _DONE, stop)

    def model():
        pending = None
        while not stop.is_set():
            batch, finished = ([pending] if pending else []), False
            pending = None
            while len(batch) < batch_size:
                item = _get(to_model, stop)
                if item is _DONE or isinstance(item, _Failure):
                    finished = item
                    break
                if batch and item[1].shape != batch[0][1].shape:
                    pending = item  # starts the next batch
                    break
                batch.append(item)
            if batch:
                x = batch[0][2] if len(batch) == 1 else torch.cat([b[2] for b in batch])
                scores = segmenter.scores(x, batch[0][1].shape[:2])
                for i, (key, rgb, _) in enumerate(batch):
                    if not _put(to_writer, (key, rgb, scores[i:i + 1]), stop):
                        return
            if finished:
                _put(to_writer, finished, stop)
                return

    threads = [_stage(read, stop, to_model), _stage(model, stop, to_writer)]
    count = 0
    try:
        while True:
            item = to_writer.get()
            if item is _DONE:
                break
            if isinstance(item, _Failure):
                raise item.error
            key, rgb, scores = item
            try:
                label = segmenter.labels(scores)[0]
            except LightsegError as e:  # NaN scores: name the image or frame they came from
                raise type(e)(f"{f'frame {key}' if isinstance(key, int) else key}: {e}") from None
            consume(key, rgb, label)
            count += 1
    finally:
        stop.set()
        for q in (to_model, to_writer):  # unblock a stage waiting on a full queue
            while not q.empty():
                q.get_nowait()
        for t in threads:
            t.join(timeout=5)
    return count


class _Rate:
    """End-to-end frames/s from the first written frame on (the first frame pays the warm-up)."""

    def __init__(self):
        self.t_first = self.t_last = None
        self.frames = 0
        self.ema_interval = None

    def tick(self):
        now = time.perf_counter()
        if self.t_last is not None:
            dt = now - self.t_last
            self.ema_interval = dt if self.ema_interval is None else 0.9 * self.ema_interval + 0.1 * dt
        if self.t_first is None:
            self.t_first = now
        self.t_last = now
        self.frames += 1

    @property
    def fps(self):
        if self.frames < 2 or self.t_last <= self.t_first:
            return None
        return (self.frames - 1) / (self.t_last - self.t_first)

    @property
    def live_fps(self):
        return 1.0 / self.ema_interval if self.ema_interval else None


def _progress(total, unit):
    from tqdm import tqdm

    return tqdm(total=total, desc=unit + "s", unit=unit, file=sys.stderr, disable=total is not None and total <= 1)


# ---------------------------------------------------------------------- images
def _output_stems(files):
    """``<stem>`` per file, unique: files sharing a stem (a.png, a.PNG, a.jpg, or one name in two folders of a
    glob) keep their extension as written (a_png, a_PNG, a_jpg), then a number while still taken. Names are
    compared ignoring case, so they stay apart on case-insensitive file systems (macOS, Windows) too."""
    from collections import Counter

    shared = Counter(f.stem.lower() for f in files)
    stems = [f.stem if shared[f.stem.lower()] == 1 else None for f in files]
    taken = {s.lower() for s in stems if s is not None}
    for i, f in enumerate(files):
        if stems[i] is None:
            base = name = f"{f.stem}_{f.suffix.lstrip('.')}"
            n = 2
            while name.lower() in taken:
                name, n = f"{base}_{n}", n + 1
            stems[i] = name
            taken.add(name.lower())
    return stems


def _check_images(files, segmenter):
    """Before any work, from the file headers: images under the models' minimum size are left out with a
    warning naming them (one small image does not stop a folder); one too large for this machine's memory
    stops the run, naming it and what to do. Returns (images to segment, images skipped)."""
    import warnings

    from ..data.base import image_size
    from ..models.base import MIN_SIZE

    kept, small = [], []
    for f in files:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Pillow's DecompressionBombWarning: the size is what we check
                h, w = image_size(f)
        except Exception:  # noqa: BLE001 - unreadable headers are reported by the reader, which names the file
            kept.append(f)
            continue
        if segmenter.size is None and min(h, w) < MIN_SIZE:
            small.append(f)
            print(f"warning: {f}: {h}x{w} is under the models' minimum input of {MIN_SIZE}x{MIN_SIZE}; skipped "
                  f"(pass --size H W to resize every image to the model instead)", file=sys.stderr)
            continue
        _check_memory(f, h, w, segmenter)
        kept.append(f)
    if not kept:
        raise LightsegError(f"no image to segment: {', '.join(map(str, small))} "
                            f"{'is' if len(small) == 1 else 'are'} under {MIN_SIZE}x{MIN_SIZE}; pass --size H W to resize "
                            "them to the model")
    return kept, small


def _check_memory(path, h, w, segmenter):
    available = available_memory()
    if available is None:
        return
    need = estimate_memory(h, w, segmenter.num_classes, segmenter.mode, segmenter.crop, segmenter.size)
    if need <= available:
        return
    gb = 1024 ** 3
    smaller = "--size H W to segment it at a lower resolution, or cut it into tiles first"
    hint = f"pass {smaller}"
    if segmenter.mode == "whole":
        slide = estimate_memory(h, w, segmenter.num_classes, "slide", (1024, 1024))
        hint = (f"pass --mode slide --crop 1024 1024 (sliding windows: about {slide / gb:.1f} GB), or {smaller}"
                if slide <= available else f"--mode slide would still need about {slide / gb:.1f} GB; {hint}")
    raise LightsegError(f"{path}: {h}x{w} ({h * w / 1e6:.0f} Mpx) would need about {need / gb:.1f} GB of memory to "
                        f"segment ({segmenter.mode} mode), and {available / gb:.1f} GB is available; {hint}")


def _predict_images(segmenter, files, out_dir, batch_size, rate):
    from ..data.base import read_image
    from ..viz import colorize, save_png

    stems = dict(zip(files, _output_stems(files)))
    renamed = [f"{f.name} -> {stem}_*.png" for f, stem in stems.items() if stem != f.stem]
    if renamed:
        print(f"note: {len(renamed)} images share a name with another image, so their outputs keep the extension: "
              f"{', '.join(renamed)}", file=sys.stderr)
    written, last = [], {}

    def frames():
        for f in files:
            yield f, read_image(f, orientation=True)  # DataError naming the file if it is corrupt or truncated

    with _progress(len(files), "image") as bar:
        def consume(f, rgb, label):
            stem = stems[f]
            color, overlay = PICTURE_SUFFIXES
            for suffix, arr in ((LABEL_SUFFIX, label), (color, colorize(label, segmenter.palette)),
                                (overlay, segmenter.overlay(rgb, label, OVERLAY_ALPHA))):
                written.append(str(save_png(out_dir / f"{stem}{suffix}.png", arr)))
            last["rgb"] = rgb
            rate.tick()
            bar.update(1)

        run_pipeline(frames(), segmenter, consume, batch_size=batch_size)
    return written, last.get("rgb")


# ---------------------------------------------------------------------- video, camera, stream
# The two OpenCV wheels install the same `cv2` package: installing opencv-python beside the headless build
# leaves whichever was installed last (often still the headless one), so the headless one goes first.
SHOW_NEEDS_GUI = ("--show needs an OpenCV build with a GUI, and this one has none (opencv-python-headless, which lightseg "
                  "installs); replace it: pip uninstall opencv-python-headless && pip install opencv-python; or drop --show "
                  "and open the overlay video written to --output")


class _Display:
    """``--show``: the annotated frames in a window (q or Esc stops). Needs an OpenCV with a GUI."""

    def __init__(self):
        try:
            cv2.namedWindow(WINDOW_NAME, cv2.WINDOW_AUTOSIZE)
        except cv2.error:
            raise LightsegError(SHOW_NEEDS_GUI) from None
        self.closed = False

    def show(self, bgr) -> bool:
        """Show a frame; False when the user asked to stop."""
        cv2.imshow(WINDOW_NAME, bgr)
        return (cv2.waitKey(1) & 0xFF) not in (ord("q"), 27)

    def close(self):
        if not self.closed:
            self.closed = True
            try:
                cv2.destroyWindow(WINDOW_NAME)
            except cv2.error:
                pass


class _StopStream(Exception):
    """The user closed the window (q/Esc): end the stream cleanly."""


def _predict_stream(segmenter, source, out_dir, batch_size, rate, show=False, max_frames=None):
    from ..viz import draw_legend, put_text

    # the frame size the container declares, against the memory, before the first frame is decoded
    cap, first = open_capture(source, lambda h, w: _check_memory(f"{source.target} (frames)", h, w, segmenter))
    fps_in = cap.get(cv2.CAP_PROP_FPS) or 0.0
    fps_in = fps_in if 0 < fps_in < 1000 else 25.0
    declared = max(0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)) if source.kind == "video" else 0  # -1: unknown
    declared = declared if declared <= MAX_DECLARED_FRAMES else 0  # a nonsense count is treated as unknown
    total = declared
    total = min(total, max_frames) if total and max_frames else (total or max_frames or None)
    display = _Display() if show else None
    out_path = out_dir / f"{source.name}_overlay.mp4"
    # Write beside the target and rename at the end: an interrupted run leaves no half video under the final name.
    # (created O_EXCL | O_NOFOLLOW; OpenCV picks the container from the name's extension)
    fd, tmp = create_temp(out_path, ext=".mp4")
    os.close(fd)
    tmp = str(tmp)
    state = {"writer": None, "legend": None}

    def frames():
        frame, index = first, 0
        while frame is not None and (max_frames is None or index < max_frames):
            yield index, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            index += 1
            ok, frame = cap.read()
            frame = frame if ok else None

    def consume(index, rgb, label):
        # np.take and addWeighted: a quarter of the CPU of fancy indexing and float blending, per frame
        colours = np.take(segmenter.colors, label, axis=0)
        blended = cv2.addWeighted(rgb, 1.0 - OVERLAY_ALPHA, colours, OVERLAY_ALPHA, 0.0)
        if state["legend"] is None:  # every class, so the panel is the same on every frame: draw it once
            panel = draw_legend(blended, segmenter.classes, segmenter.palette)
            state["legend"] = panel[:, blended.shape[1]:]
        rate.tick()
        model_fps = segmenter.timing()["fps"]
        live = rate.live_fps
        text = (f"{live:.1f} FPS" if live else "-- FPS") + (f" (model {model_fps:.1f}, {segmenter.backend})" if model_fps else "")
        annotated = put_text(np.concatenate([blended, state["legend"]], axis=1), text)
        bgr = cv2.cvtColor(annotated, cv2.COLOR_RGB2BGR)
        if state["writer"] is None:
            h, w = bgr.shape[:2]
            state["writer"] = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*"mp4v"), fps_in, (w, h))
            if not state["writer"].isOpened():
                raise LightsegError(f"cannot open a video writer for {out_path} (mp4v); check the folder is writable")
        state["writer"].write(bgr)
        bar.update(1)
        if display is not None and not display.show(bgr):
            raise _StopStream

    frames_done, stopped = 0, False
    try:
        with _progress(total, "frame") as bar:
            try:
                frames_done = run_pipeline(frames(), segmenter, consume, batch_size=batch_size)
            except (_StopStream, KeyboardInterrupt) as e:
                # A camera or stream has no end: q/Esc or Ctrl-C ends it and the video is kept.
                if isinstance(e, KeyboardInterrupt) and source.kind == "video":
                    raise
                frames_done, stopped = rate.frames, True
    except BaseException:
        if state["writer"] is not None:
            state["writer"].release()
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        cap.release()
        if display is not None:
            display.close()
    state["writer"].release()
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    publish(tmp, out_path)
    expected = min(declared, max_frames) if max_frames else declared
    if source.kind == "video" and not stopped and frames_done < expected:
        # OpenCV ends a truncated file (an interrupted copy or recording) quietly, as if it were complete.
        print(f"warning: {source.target}: read {frames_done} of the {declared} frames its container declares; the file is "
              f"probably truncated (an incomplete copy or recording). {out_path} holds the {frames_done} frames read",
              file=sys.stderr)
    return [str(out_path)], frames_done, declared or None


# ---------------------------------------------------------------------- entry points
def build_segmenter(model_name=None, checkpoint=None, weights=None, **kwargs):
    """The Segmenter that ``--model``/``--checkpoint``/``--weights`` describe."""
    from .segmenter import Segmenter

    if checkpoint is not None and weights is not None:
        raise LightsegError("pass either --checkpoint (your own trained model) or --weights (weights shipped with "
                            "lightseg), not both")
    if weights is not None:
        if model_name is None:
            raise LightsegError(f"--weights {weights} needs --model NAME: `lightseg models` lists the models with weights")
        return Segmenter.from_pretrained(model_name, weights=weights, **kwargs)
    if checkpoint is None:
        from ..weights import list_weights

        have = sorted({f"--model {r['model']} --weights {r['weights']}" for r in list_weights()})
        hint = f"; shipped weights: {', '.join(have)}" if have else ""
        raise LightsegError(f"no trained model: pass --checkpoint CKPT (a .pt written by lightseg train){hint}")
    from .metadata import format_of

    if format_of(checkpoint) is not None:  # a file written by lightseg export: its metadata names everything
        if model_name is not None:
            raise LightsegError(f"{checkpoint} names its model in its metadata; drop --model")
        return Segmenter.from_exported(checkpoint, **kwargs)
    return Segmenter.from_checkpoint(checkpoint, model=model_name, **kwargs)


def predict(model_name=None, checkpoint=None, input_path=None, output_dir="predictions", backend="eager", size=None,
            device="auto", calibration=None, calibration_count=None, weights=None, batch=1, mode="whole", crop=None,
            stride=None, show=False, max_frames=None, int8_mode=None, precision=None) -> dict:
    """Segment ``input_path`` (see :func:`classify_input`) and write the results to ``output_dir``.

    ``size``: (H, W) to resize inputs to before the model (predictions come back at the input's size);
    ``batch``: images per model call (same-size images); ``max_frames``: stop a video/camera/stream after
    that many frames. Returns a summary: counts, files written, model time and end-to-end rate.
    """
    if input_path is None:
        raise LightsegError("no input: pass --input IMAGE|FOLDER|GLOB|VIDEO|CAMERA_INDEX|URL")
    if int(batch) < 1:
        raise LightsegError(f"--batch {batch}: give a positive number of images per model call")
    if mode != "slide":
        given = [flag for flag, value in (("--crop", crop), ("--stride", stride)) if value is not None]
        if given:
            raise LightsegError(f"{' and '.join(given)} set{'s' if len(given) == 1 else ''} the sliding window, which only "
                                f"--mode slide uses; add --mode slide (or drop {' and '.join(given)})")
    out_dir = check_output_dir(output_dir, "--output")
    source = classify_input(input_path)
    given = Path(str(input_path))
    inputs = [("--input", given)] if given.exists() else [("--input", f) for f in source.files]
    check_outputs_apart([*inputs, ("--checkpoint", checkpoint), ("--calib", calibration)],
                        [("--output", out_dir, OUTPUT_NAMES)])
    remove_stale_temp_files(out_dir, OUTPUT_NAMES)  # what a predict killed while writing left here
    refuse_links_in(out_dir, OUTPUT_NAMES)
    if show and source.kind == "images":
        raise LightsegError("--show displays video, camera or stream frames; for images open the *_overlay.png files")
    if max_frames is not None and source.kind == "images":
        raise LightsegError(f"--max-frames {max_frames} stops a video, camera or stream, and {input_path} is images; "
                            "drop --max-frames (every image is segmented), or pass a glob or folder holding fewer images")
    segmenter = build_segmenter(model_name, checkpoint, weights, backend=backend, device=device, size=size,
                                mode=mode, crop=crop, stride=stride, calibration=calibration,
                                calibration_count=calibration_count, int8_mode=int8_mode, precision=precision,
                                # sleeping ONNX Runtime threads leave the cores to the reader and writer: 2.5x
                                # the end-to-end frames/s of spinning ones on the shared 2-core machine
                                ort_spinning=False)
    skipped, declared = [], None
    if source.kind == "images":
        source.files, skipped = _check_images(source.files, segmenter)
    out_dir.mkdir(parents=True, exist_ok=True)
    rate = _Rate()
    if source.kind == "images":
        written, last = _predict_images(segmenter, source.files, out_dir, int(batch), rate)
        frames = 0
        if len(segmenter.latencies_ms) == 1 and last is not None:
            segmenter.predict_batch([last])  # one image: time a second, warm call (the first paid the warm-up)
    else:
        written, frames, declared = _predict_stream(segmenter, source, out_dir, int(batch), rate, show=show,
                                                    max_frames=max_frames)
    timing = segmenter.timing()
    return {
        "model": segmenter.name, "checkpoint": str(checkpoint) if checkpoint else None, "weights": weights,
        "backend": segmenter.backend, "device": str(segmenter.device), "input": str(input_path), "kind": source.kind,
        "images": len(source.files), "skipped": [str(f) for f in skipped], "frames": frames,
        "frames_declared": declared, "output_dir": str(out_dir), "files": list(dict.fromkeys(written)),
        "normalize": segmenter.normalize, "size": list(size) if size else None, "mode": segmenter.mode, "batch": int(batch),
        "first_call_ms": timing["first_ms"], "warm_calls": timing["warm_calls"],
        "latency_ms_median": timing["median_ms"], "fps": timing["fps"],
        "end_to_end_fps": round(rate.fps, 2) if rate.fps else None,
    }


def describe(summary) -> str:
    """The line ``lightseg predict`` prints."""
    unit = "image" if summary["kind"] == "images" else "frame"
    what = f"{summary['images']} image(s)" if summary["kind"] == "images" else f"{summary['frames']} {summary['kind']} frame(s)"
    if summary.get("skipped"):
        what += f" (skipped {len(summary['skipped'])} too small, named above)"
    line = f"segmented {what} with {summary['model']} ({summary['backend']}, {summary['device']})"
    if summary["fps"]:
        line += (f"; model {summary['latency_ms_median']:.1f} ms/{unit} ({summary['fps']:.1f} {unit}s/s), median of "
                 f"{summary['warm_calls']} warm call(s) (the first call, {summary['first_call_ms']:.0f} ms, is warm-up, left out)")
    if summary["end_to_end_fps"]:
        line += f"; end to end {summary['end_to_end_fps']:.1f} {unit}s/s"
    return line + f"; wrote {len(summary['files'])} file(s) to {summary['output_dir']}"


def predict_command(args) -> dict:
    summary = predict(args.model, args.checkpoint, args.input, output_dir=args.output, backend=args.backend,
                      size=tuple(args.size) if args.size else None, device=args.device, calibration=args.calib,
                      calibration_count=args.calib_count, weights=args.weights, batch=args.batch, mode=args.mode,
                      crop=args.crop, stride=args.stride, show=args.show, max_frames=args.max_frames,
                      int8_mode=args.int8_mode, precision=getattr(args, "precision", None))
    print(describe(summary))
    return summary
