"""int8 deployment: ONNX Runtime static quantisation, calibrated on images.

The fp32 ONNX model (BN folded, models' rewrites applied: :func:`lightseg.deploy.export.export_to_bytes`)
is quantised with ``onnxruntime.quantization.quantize_static``: QDQ format, weights per output channel,
activations uint8 per tensor with min/max ranges observed on calibration images. On CPUs with AVX-512 VNNI
ONNX Runtime then runs the convolutions as ``QLinearConv`` in NHWC, 4 multiply-accumulates per byte lane
instead of one fp32 FMA.

The weight format depends on the CPU that will run the model (:func:`choose_int8_mode`), because ONNX
Runtime's u8 x s8 kernel is exact only where an int8 dot product accumulates in int32 (VNNI, AVX-VNNI, AMX,
ARM). On x86 without them it uses ``vpmaddubsw``, which adds each pair of u8 x s8 products in int16 and
saturates (2 x 255 x 127 = 64770 > 32767): on a Zen 3 that made a test model's int8 error 0.21 against
0.04 with 7-bit weights. The mode is written into the model's metadata
(``lightseg.int8_mode``), and a model made for another CPU kind is flagged when loaded (:func:`mode_warning`).

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
from ..hardware import CpuInfo, cpu_info

DEFAULT_CALIBRATION_COUNT = 8
# Activations are uint8 in every mode (ORT's kernels want u8 activations); the weights differ.
INT8_MODES = {
    "u8s8": "int8 weights, symmetric, full 8-bit range",
    "u8s8_reduce_range": "int8 weights, symmetric, 7-bit range (-64..64): pairs of products fit int16",
    "u8u8": "uint8 weights, asymmetric (ORT's other kernel family; no int16 pairs)",
}
METADATA_KEYS = ("lightseg.int8_mode", "lightseg.int8_reason", "lightseg.int8_chosen_on")


def choose_int8_mode(cpu: CpuInfo | None = None) -> tuple:
    """``(mode, reason)``: the :data:`INT8_MODES` entry that keeps int8 close to fp32 on ``cpu`` (default: this one).

    Mirrors the kernel choice of ONNX Runtime's MLAS (``mlas/lib/platform.cpp``): AMX, else the AVX-512 core
    kernels (VNNI or not), else the AVX2 ones (AVX-VNNI or not). Without an int32-accumulating dot product the
    u8 x s8 kernel saturates pairs of products in int16, so the weights get 7 bits: that keeps the fast kernel,
    and on a Zen 3 it was closer to fp32 than U8U8 (0.043 against 0.063 relative error), which also
    runs a slower widening kernel there. ARM's kernels accumulate in int32 (``sdot``/``udot``) or in int16
    pairs of s8 x s8 products, which cannot overflow with symmetric weights (2 x 128 x 127 < 32768).
    """
    cpu = cpu or cpu_info()
    flags = cpu.flags
    if cpu.is_x86:
        if {"amx_tile", "amx_int8"} <= flags:
            return "u8s8", "AMX int8 tiles accumulate u8 x s8 products in int32"
        if "avx512bw" in flags:
            vnni = "avx512_vnni" if "avx512_vnni" in flags else None
        else:
            vnni = "avx_vnni" if "avx_vnni" in flags and "avx2" in flags else None
        if vnni:
            return "u8s8", f"{vnni}: vpdpbusd accumulates u8 x s8 products in int32"
        return ("u8s8_reduce_range", "x86 without VNNI/AMX: ONNX Runtime's u8 x s8 kernel (vpmaddubsw) saturates pairs "
                "of products in int16, so weights use 7 bits (U8U8 measured less accurate, and slower)")
    if cpu.is_arm:
        if "asimddp" in flags:
            return "u8s8", "ARM dot product (sdot/udot) accumulates in int32"
        return "u8s8", "ARM NEON: pairs of s8 x s8 products fit int16 with symmetric weights"
    return "u8s8", f"{cpu.arch}: ONNX Runtime's default u8 x s8"


def resolve_int8_mode(mode=None, cpu: CpuInfo | None = None) -> tuple:
    """``(mode, reason)`` for a requested ``mode`` (``None``/``"auto"``: :func:`choose_int8_mode`)."""
    if mode in (None, "auto"):
        return choose_int8_mode(cpu)
    if mode not in INT8_MODES:
        raise LightsegError(f"int8 mode {mode!r} is unknown; use auto or one of {', '.join(INT8_MODES)}")
    return mode, "requested"


def mode_warning(mode, cpu: CpuInfo | None = None):
    """A sentence when an int8 model quantised as ``mode`` loses accuracy on ``cpu`` (saturation), else None."""
    if mode != "u8s8":
        return None  # 7-bit and uint8 weights are exact on every kernel
    chosen, reason = choose_int8_mode(cpu)
    if chosen == "u8s8":
        return None
    cpu = cpu or cpu_info()
    return (f"this int8 model has full-range int8 weights (u8s8), but on this CPU ({cpu.model}) {reason}; "
            f"its accuracy will be lower than measured on a VNNI CPU: export it again here, or with --int8-mode {chosen}")


def model_int8_mode(metadata: dict):
    """The int8 mode recorded in an ONNX model's metadata (``session.get_modelmeta().custom_metadata_map``)."""
    return (metadata or {}).get("lightseg.int8_mode")


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


def quantize_onnx(model_bytes: bytes, calibration, batch: int = 1, mode=None) -> bytes:
    """Quantise an fp32 ONNX model (bytes) to int8 QDQ, ranges from ``calibration`` (list of (3, H, W)).

    ``mode``: one of :data:`INT8_MODES`, or ``None``/``"auto"`` for the one this CPU needs (:func:`choose_int8_mode`);
    give the deployment CPU's mode when it is not this one. It is recorded in the model's metadata.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry
    from onnxruntime.quantization.shape_inference import quant_pre_process

    mode, reason = resolve_int8_mode(mode)
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
            weight_type=QuantType.QUInt8 if mode == "u8u8" else QuantType.QInt8, reduce_range=mode == "u8s8_reduce_range",
            calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=op_types,
        )
        model = onnx.load_model(str(int8))
    props = {p.key: p.value for p in model.metadata_props}
    props.update(zip(METADATA_KEYS, (mode, reason, cpu_info().describe())))
    onnx.helper.set_model_props(model, props)
    return model.SerializeToString()
