"""Drawing helpers: colour label maps, overlays, legends, text on video frames, training curves.

Images are RGB uint8 (H, W, 3) numpy arrays throughout; ``save_png`` converts to OpenCV's BGR order
when writing. Everything is drawn with OpenCV/numpy, except ``plot_run`` which uses matplotlib's Agg
canvas directly (no pyplot, so no global backend is changed).
"""
from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np

from . import runlog
from .checkpoint import atomic_write_bytes
from .data.classes import IGNORE_INDEX
from .errors import LightsegError

# Legend geometry (pixels); draw_legend's panel size follows from these and the text widths.
LEGEND_PAD = 8
LEGEND_ROW = 20
LEGEND_SWATCH = 14
LEGEND_GAP = 6
LEGEND_FONT = cv2.FONT_HERSHEY_SIMPLEX
LEGEND_SCALE = 0.45
LEGEND_BG = (32, 32, 32)
LEGEND_TEXT = (235, 235, 235)


def _palette_array(palette, needed=0) -> np.ndarray:
    pal = np.asarray(palette, dtype=np.int64)
    if pal.ndim != 2 or pal.shape[1] != 3 or pal.size == 0 or pal.min() < 0 or pal.max() > 255:
        raise LightsegError(f"palette must be a list of (r, g, b) triples in 0..255, got shape {pal.shape}")
    if len(pal) < needed:
        raise LightsegError(f"label value {needed - 1} has no colour: the palette has {len(pal)} colours; "
                            f"pass a palette with at least {needed} (e.g. lightseg.viz.palette_for({needed}))")
    return pal.astype(np.uint8)


def _check_label(label) -> np.ndarray:
    label = np.asarray(label)
    if label.ndim != 2 or not np.issubdtype(label.dtype, np.integer):
        raise LightsegError(f"a label map must be a 2-D integer array (H, W), got {label.dtype} of shape {label.shape}")
    return label


def _check_image(image) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise LightsegError(f"an image must be an RGB uint8 array (H, W, 3), got {image.dtype} of shape {image.shape}")
    return image


def colorize(label, palette, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Label map (H, W) -> RGB uint8 (H, W, 3) with ``palette[c]`` per class; ignored pixels black."""
    label = _check_label(label)
    valid = label != ignore_index
    if valid.any():
        lo, hi = int(label[valid].min()), int(label[valid].max())
        if lo < 0:
            raise LightsegError(f"label map has negative value {lo}; class ids start at 0 (ignore is {ignore_index})")
    else:
        hi = -1
    pal = _palette_array(palette, needed=hi + 1)
    out = np.zeros(label.shape + (3,), np.uint8)
    out[valid] = pal[label[valid]]
    return out


def overlay(image, label, palette, alpha: float = 0.5, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Blend the class colours over ``image``: ``(1 - alpha) * image + alpha * colour``, rounded.

    Ignored pixels keep the image unchanged.
    """
    image, label = _check_image(image), _check_label(label)
    if image.shape[:2] != label.shape:
        raise LightsegError(f"image {image.shape[:2]} and label {label.shape} differ in size; resize the label "
                            "(nearest) or the prediction to the image first")
    if not 0.0 <= alpha <= 1.0:
        raise LightsegError(f"overlay alpha={alpha} must be between 0 and 1")
    colours = colorize(label, palette, ignore_index).astype(np.float32)
    blend = (1.0 - alpha) * image.astype(np.float32) + alpha * colours
    out = np.floor(blend + 0.5).clip(0, 255).astype(np.uint8)
    keep = label == ignore_index
    out[keep] = image[keep]
    return out


def _legend_entries(classes, palette, present):
    pal = _palette_array(palette, needed=len(classes))
    idx = range(len(classes)) if present is None else sorted(int(c) for c in present if 0 <= int(c) < len(classes))
    return [(str(classes[i]), tuple(int(v) for v in pal[i])) for i in idx]


def legend_column_width(names) -> int:
    """Width in pixels of one legend column holding ``names``."""
    text = max((cv2.getTextSize(n, LEGEND_FONT, LEGEND_SCALE, 1)[0][0] for n in names), default=0)
    return LEGEND_PAD + LEGEND_SWATCH + LEGEND_GAP + text + LEGEND_PAD


def draw_legend(image, classes, palette, present=None, where: str = "right") -> np.ndarray:
    """Return ``image`` with a legend panel (colour swatch + class name per row) to the right or bottom.

    ``present``: class ids to list (e.g. the classes found in a prediction); all classes when None.
    The right panel is as tall as the image and one column of ``legend_column_width`` pixels per
    ``(H - 2 * LEGEND_PAD) // LEGEND_ROW`` entries; the bottom panel is as wide as the image and
    ``rows * LEGEND_ROW + 2 * LEGEND_PAD`` tall.
    """
    image = _check_image(image)
    if where not in ("right", "bottom"):
        raise LightsegError(f"legend position {where!r} is not one of 'right', 'bottom'")
    entries = _legend_entries(classes, palette, present)
    h, w = image.shape[:2]
    col_w = legend_column_width([n for n, _ in entries])
    if where == "right":
        per_col = max((h - 2 * LEGEND_PAD) // LEGEND_ROW, 1)
        cols = max(-(-len(entries) // per_col), 1)
        panel = np.empty((h, cols * col_w, 3), np.uint8)
    else:
        cols = max(min(w // col_w, len(entries)), 1)
        per_col = max(-(-len(entries) // cols), 1)
        panel = np.empty((per_col * LEGEND_ROW + 2 * LEGEND_PAD, w, 3), np.uint8)
    panel[:] = LEGEND_BG
    for k, (name, colour) in enumerate(entries):
        x0 = (k // per_col) * col_w + LEGEND_PAD
        y0 = LEGEND_PAD + (k % per_col) * LEGEND_ROW + (LEGEND_ROW - LEGEND_SWATCH) // 2
        panel[y0:y0 + LEGEND_SWATCH, x0:x0 + LEGEND_SWATCH] = colour
        baseline = y0 + LEGEND_SWATCH - 2
        cv2.putText(panel, name, (x0 + LEGEND_SWATCH + LEGEND_GAP, baseline), LEGEND_FONT, LEGEND_SCALE,
                    LEGEND_TEXT, 1, cv2.LINE_AA)
    return np.concatenate([image, panel], axis=1 if where == "right" else 0)


TEXT_OUTLINE = 2  # pixels of dark outline around put_text's letters


def put_text(image, text: str, org=(8, 24), scale: float = 0.6, colour=(255, 255, 255)) -> np.ndarray:
    """Return a copy of ``image`` with ``text`` at ``org`` (x, y of the baseline): light text with a
    dark outline ``TEXT_OUTLINE`` pixels wide, readable on any background (used for the FPS label on video).

    The text is drawn once, into an anti-aliased mask, and the outline is that mask dilated: two
    ``cv2.putText`` calls of different thicknesses do not line up on OpenCV 5, whose glyph advance
    grows with the stroke thickness (a 229 px caption becomes 244 px when drawn 2 px thick).
    """
    out = _check_image(image).copy()
    org = (int(org[0]), int(org[1]))
    thick = max(int(round(scale * 2)), 1)
    letters = np.zeros(out.shape[:2], np.uint8)
    cv2.putText(letters, text, org, LEGEND_FONT, scale, 255, thick, cv2.LINE_AA)
    size = 2 * TEXT_OUTLINE + 1
    outline = cv2.dilate(letters, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size)))
    x, y, w, h = cv2.boundingRect(outline)
    if w == 0 or h == 0:  # the text lies outside the image
        return out
    box = (slice(y, y + h), slice(x, x + w))
    dark = outline[box][..., None].astype(np.float32) / 255.0
    light = letters[box][..., None].astype(np.float32) / 255.0
    region = out[box].astype(np.float32) * (1.0 - dark)  # the outline is black
    region = region * (1.0 - light) + np.asarray(colour, np.float32) * light
    out[box] = np.floor(region + 0.5).clip(0, 255).astype(np.uint8)
    return out


def palette_for(num_classes: int) -> tuple:
    """Distinct colours for ``num_classes`` classes (1..255), for datasets without a palette.

    PASCAL VOC's bit-interleaving palette, starting at its entry 1 so that no class is black
    (black marks ignored pixels in ``colorize``).
    """
    if not 1 <= int(num_classes) <= 255:
        raise LightsegError(f"palette_for({num_classes}): the number of classes must be between 1 and 255")
    colours = []
    for i in range(1, int(num_classes) + 1):
        r = g = b = 0
        c = i
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        colours.append((r, g, b))
    return tuple(colours)


def save_png(path, rgb_or_label) -> Path:
    """Write an RGB uint8 image (H, W, 3) or a label map (H, W) as PNG, atomically.

    Label maps are stored as 8-bit (values 0..255) or 16-bit PNG (up to 65535).
    """
    path = Path(path)
    a = np.asarray(rgb_or_label)
    if a.ndim == 3 and a.shape[2] == 3 and a.dtype == np.uint8:
        data = cv2.cvtColor(a, cv2.COLOR_RGB2BGR)
    elif a.ndim == 2 and (np.issubdtype(a.dtype, np.integer) or a.dtype == bool):
        lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise LightsegError(f"cannot save label values {lo}..{hi} to {path}: PNG labels hold 0..65535")
        data = a.astype(np.uint8 if hi <= 255 else np.uint16)
    else:
        raise LightsegError(f"save_png({path}): expected an RGB uint8 (H, W, 3) image or an integer (H, W) label map, "
                            f"got {a.dtype} of shape {a.shape}")
    ok, buf = cv2.imencode(".png", data)
    if not ok:
        raise LightsegError(f"could not encode {path} as PNG")
    return atomic_write_bytes(path, lambda f: f.write(buf.tobytes()))


# ------------------------------------------------------------------ training curves
def read_log(path) -> list:
    """The records of a run's ``log.jsonl`` for plots (:func:`lightseg.runlog.read_log`, lenient: a half-written
    last line, as in a run still going, is skipped)."""
    path = Path(path)
    if not path.is_file():
        raise LightsegError(f"training log {path} not found; pass the run directory that `lightseg train` wrote "
                            "(it holds log.jsonl)")
    return runlog.read_log(path, strict=False)


def _cumulative_time(records: list[dict]) -> list[dict]:
    """Copies of ``records`` whose ``time`` counts on across resumes: a resumed run's clock starts at 0
    again, so where the time falls back, the previous segment's last time is added to what follows."""
    out, offset, last = [], 0.0, None
    for r in records:
        t = r.get("time")
        if isinstance(t, (int, float)):
            if last is not None and t < last:
                offset += last
            last = t
            r = {**r, "time": t + offset}
        out.append(r)
    return out


# A series with at most this many points is drawn with a marker on each: a short run's one or two
# records are then visible as points (a line needs two points, and one alone draws nothing).
MARKER_MAX_POINTS = 50


def run_figure(run_dir):
    """The matplotlib ``Figure`` of :func:`plot_run` (loss, learning rate, val mIoU and pixel accuracy against
    iteration, and time when logged), on an Agg canvas. Every series has a legend entry, and one of at most
    ``MARKER_MAX_POINTS`` points a marker on each point."""
    run_dir = Path(run_dir)
    log = run_dir / "log.jsonl"
    records = _cumulative_time(read_log(log))
    train = [r for r in records if r.get("kind") == "train" and "iter" in r]
    val = [r for r in records if r.get("kind") == "val" and "iter" in r]
    if not train and not val:
        raise LightsegError(f"training log {log} has no train or val records yet; plot again once training has logged")
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise LightsegError("plotting needs matplotlib: pip install 'lightseg[plot]'") from None

    def series(recs, key, x):
        pts = [(r[x], r[key]) for r in recs if r.get(key) is not None and r.get(x) is not None]
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        return ([t / 60.0 for t in xs] if x == "time" else xs), ys

    # panel title -> its series: (records, log key, legend label, line style)
    panels = [("train loss", [(train, "loss", "train loss", "-")]),
              ("learning rate", [(train, "lr", "learning rate", "-")]),
              ("val mIoU", [(val, "miou", "val mIoU", "-"), (val, "pixel_acc", "val pixel acc", "--")])]
    with_time = any("time" in r for r in train + val)
    axes_x = [("iter", "iteration")] + ([("time", "time (min)")] if with_time else [])
    fig = Figure(figsize=(12, 3.6 * len(axes_x)), dpi=100)
    FigureCanvasAgg(fig)
    for row, (xkey, xlabel) in enumerate(axes_x):
        for col, (title, lines) in enumerate(panels):
            ax = fig.add_subplot(len(axes_x), 3, row * 3 + col + 1)
            drawn = []
            for recs, key, label, style in lines:
                xs, ys = series(recs, key, xkey)
                if xs:
                    ax.plot(xs, ys, style, marker="o" if len(xs) <= MARKER_MAX_POINTS else None, markersize=4, label=label)
                    drawn.append(ys)
            if drawn:
                ax.legend(loc="best")
            else:
                ax.text(0.5, 0.5, "no records", ha="center", va="center", transform=ax.transAxes)
            ys = drawn[0] if drawn else []
            if title == "learning rate" and ys and min(ys) > 0 and max(ys) / min(ys) > 100:
                ax.set_yscale("log")
            ax.set_title(title)
            ax.set_xlabel(xlabel)
            ax.grid(True, alpha=0.3)
    fig.suptitle(str(run_dir))
    fig.tight_layout()
    return fig


def plot_run(run_dir, output=None) -> Path:
    """Plot loss, learning rate and val mIoU of a run against iteration (and time, when logged).

    Reads ``run_dir/log.jsonl``; writes ``run_dir/curves.png`` or ``output``; returns the PNG path.
    """
    from .outputs import check_outputs_apart

    check_outputs_apart([("the training log", Path(run_dir) / "log.jsonl")], [("--output", output, None)])
    fig = run_figure(run_dir)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    out = Path(output) if output is not None else Path(run_dir) / "curves.png"
    return atomic_write_bytes(out, lambda f: f.write(buf.getvalue()))
