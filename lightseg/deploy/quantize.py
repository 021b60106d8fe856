"""int8 deployment: ONNX Runtime static quantisation, calibrated on images.

The fp32 ONNX model (BN folded, models' rewrites applied: :func:`lightseg.deploy.export.export_to_bytes`)
is quantised with ``onnxruntime.quantization.quantize_static``: QDQ format, weights int8 per output channel
(symmetric), activations uint8 per tensor with min/max ranges observed on calibration images. On CPUs
with AVX-512 VNNI (the 2-core EPYC here) ONNX Runtime then runs the convolutions as ``QLinearConv`` in
NHWC, 4 multiply-accumulates per byte lane instead of one fp32 FMA.

This is a different numerical model from the fp32 one, so it is its own backend (``onnxruntime_int8``),
never a silent replacement: its accuracy change must be measured on the user's data
(``lightseg eval --backend onnxruntime_int8 --calib DIR``; docs/results.md has CamVid figures).

Everything is quantised except ``Resize``: the models end with a bilinear upsampling of the logits to
the input size; quantised, ORT runs it as a uint8 NCHW resize plus a full-resolution quantise and
dequantise (rdsnet at 512x1024: 12 ms against 7 ms for the float resize), and float keeps the output a
score map (the int8 result is dequantised at the classifier's own resolution).
"""
from __future__ import annotations

import contextlib
import logging
import tempfile
from pathlib import Path

import numpy as np

from ..errors import LightsegError

DEFAULT_CALIBRATION_COUNT = 8


def _normalization(normalize):
    from ..data.base import NORMALIZATIONS

    if isinstance(normalize, str):
        if normalize not in NORMALIZATIONS:
            raise LightsegError(f"normalisation {normalize!r} is unknown; use one of {', '.join(NORMALIZATIONS)}")
        normalize = NORMALIZATIONS[normalize]
    mean, std = normalize
    return np.asarray(mean, np.float32).reshape(3, 1, 1), np.asarray(std, np.float32).reshape(3, 1, 1)


def _to_input(rgb: np.ndarray, size, mean, std) -> np.ndarray:
    import cv2

    h, w = size
    if rgb.shape[:2] != (h, w):
        rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LINEAR)
    x = rgb.astype(np.float32).transpose(2, 0, 1)
    return (x - mean) / std


def calibration_images(source=None, size=(512, 1024), count=DEFAULT_CALIBRATION_COUNT, normalize="imagenet",
                       seed=0) -> list:
    """``count`` normalised images (3, H, W) float32 to calibrate int8 ranges on.

    ``source``: a folder of images (searched recursively, ``count`` taken evenly spread over the sorted
    list), or ``None`` for the project's synthetic street scenes (deterministic; good enough for timing,
    while calibrating on the deployment's own images is what accuracy needs).
    """
    import cv2

    from ..data.base import IMAGE_EXTENSIONS

    count = int(count)
    if count < 1:
        raise LightsegError(f"calibration count must be >= 1, got {count}")
    h, w = (int(v) for v in size)
    mean, std = _normalization(normalize)
    if source is None:
        from ..data.synthetic import render_scene, scene_seed

        return [_to_input(render_scene(np.random.default_rng(scene_seed(seed, "calibration", i)), (h, w))[0],
                          (h, w), mean, std) for i in range(count)]
    root = Path(source)
    if not root.is_dir():
        raise LightsegError(f"calibration folder {str(root)!r} does not exist; give --calib a folder of images "
                            "like those the model will see (e.g. the training images)")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise LightsegError(f"calibration folder {str(root)!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    picks = [files[i] for i in np.linspace(0, len(files) - 1, min(count, len(files))).round().astype(int)]
    out = []
    for path in picks:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise LightsegError(f"calibration image {path} cannot be read; remove it or fix the file")
        out.append(_to_input(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), (h, w), mean, std))
    return out


class _Reader:
    """``CalibrationDataReader`` over a list of (3, H, W) arrays, grouped into the model's batch size."""

    def __init__(self, input_name, images, batch):
        self.input_name = input_name
        n = max(1, len(images) // batch) * batch
        pool = [images[i % len(images)] for i in range(n)]
        self.batches = [np.stack(pool[i:i + batch]) for i in range(0, n, batch)]

    def get_next(self):
        if not self.batches:
            return None
        return {self.input_name: self.batches.pop(0)}

    def rewind(self):  # pragma: no cover - part of ORT's reader protocol, unused by quantize_static
        pass


def quantize_onnx(model_bytes: bytes, calibration, batch: int = 1) -> bytes:
    """Quantise an fp32 ONNX model (bytes) to int8 QDQ, ranges from ``calibration`` (list of (3, H, W))."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not calibration:
        raise LightsegError("int8 quantisation needs at least one calibration image")
    input_name = onnx.load_model_from_string(model_bytes).graph.input[0].name
    op_types = sorted((set(QDQRegistry) | set(QLinearOpsRegistry)) - {"Resize"})
    root = logging.getLogger()
    level = root.level
    # ORT's quantiser logs on the root logger (e.g. that a BatchNormalization left over has no per-channel axis).
    root.setLevel(logging.ERROR)
    with contextlib.ExitStack() as stack:
        stack.callback(root.setLevel, level)
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="lightseg_int8_"))
        fp32, pre, int8 = (Path(tmp) / n for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        fp32.write_bytes(model_bytes)
        # Shape inference and constant folding first, as ORT's quantisation guide asks.
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre), str(int8), _Reader(input_name, list(calibration), batch),
            quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=op_types,
        )
        return int8.read_bytes()
