"""OpenVINO: export (``.xml`` + ``.bin``) and the ``openvino`` backend (``pip install 'lightseg[openvino]'``).

The export goes through lightseg's ONNX export (BatchNorm folded, the models' exact inference rewrites,
static shape), converted with ``openvino.convert_model`` and saved with fp32 weights
(``compress_to_fp16=False``: OpenVINO's default halves the weights, a second source of error that the
CPU gains nothing from). The lightseg metadata is in the model's ``rt_info`` (:mod:`.metadata`).

The precision is a property of the compiled model, not of the file: ``INFERENCE_PRECISION_HINT``. By default
it follows the CPU (:func:`default_precision`): ``bf16`` where the CPU has bfloat16 arithmetic (AVX512_BF16
or AMX, read from /proc/cpuinfo by :mod:`lightseg.hardware`), ``f32`` elsewhere, OpenVINO's own choice on such
CPUs. ``--precision f32|bf16|fp16`` chooses (a CPU without the instructions runs the f32 kernels).
Tolerances against PyTorch fp32 (:data:`TOLERANCE`): f32 as ONNX (max |logit diff| 1e-3, argmax agreement
>= 99.9%); bf16 (8 mantissa bits) and fp16 are reported against 0.1 of the largest logit and 99% agreement.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import torch

from ..errors import LightsegError
from .export import PARITY_MAX_ABS, PARITY_MIN_AGREEMENT, export_files, export_to_bytes
from .metadata import OPENVINO_KEY, missing_extra

FORMAT, EXTRA, SUFFIX = "openvino", "openvino", ".xml"
PRECISIONS = ("f32", "bf16", "fp16")
_OV_TYPES = {"f32": "f32", "bf16": "bf16", "fp16": "f16"}
# (max |logit diff|, min argmax agreement %); a float below 1 in the first place of a reduced precision is a
# share of the largest reference logit (the error of 8 or 11 mantissa bits grows with the logits).
TOLERANCE = {"f32": (PARITY_MAX_ABS, PARITY_MIN_AGREEMENT), "bf16": (0.1, 99.0), "fp16": (0.1, 99.0)}


def _openvino():
    try:
        import openvino
    except ImportError:
        raise missing_extra("openvino", EXTRA, "the OpenVINO format") from None
    return openvino


@functools.lru_cache(maxsize=None)
def core():
    """The one ``openvino.Core`` of this process: every OpenVINO model lightseg compiles goes through it.

    Why one: each Core makes its own CPU plugin, and each CPU plugin, when made, installs a fresh signal
    stack (``sigaltstack``) on the calling thread, remembering the one before it; when it is released it
    unmaps its stack and puts back the remembered one only if its own is still current. Two plugins released
    in the order they were made (bench's ``openvino`` and ``peer_openvino`` rows, two runtimes garbage-collected)
    leave the thread's signal stack on the first plugin's unmapped memory, and the next signal handled there
    (SIGCHLD from a DataLoader worker, Ctrl-C) is a SIGSEGV from the kernel. One Core means one plugin,
    released only at exit."""
    return _openvino().Core()


def default_precision(cpu=None) -> str:
    """``bf16`` on a CPU with bfloat16 arithmetic (AVX512_BF16, AMX), else ``f32``."""
    from ..hardware import cpu_has_bf16

    return "bf16" if cpu_has_bf16(cpu) else "f32"


def resolve_precision(precision) -> str:
    if precision in (None, "auto"):
        return default_precision()
    precision = {"fp32": "f32", "float32": "f32", "f16": "fp16", "bfloat16": "bf16"}.get(precision, precision)
    if precision not in PRECISIONS:
        raise LightsegError(f"OpenVINO precision {precision!r} is unknown; use one of {', '.join(PRECISIONS)}")
    return precision


def convert(model, input_size, workdir, name, metadata=None, batch=1):
    """Write ``workdir/name`` (.xml) and its .bin; ``metadata`` into the rt_info."""
    ov = _openvino()
    workdir = Path(workdir)
    onnx_path = workdir / "model.onnx"
    onnx_path.write_bytes(export_to_bytes(model, input_size, batch=batch))
    ov_model = ov.convert_model(str(onnx_path))
    onnx_path.unlink()
    if metadata is not None:
        ov_model.set_rt_info(json.dumps(metadata, sort_keys=True), [OPENVINO_KEY])
    out = workdir / name
    ov.save_model(ov_model, str(out), compress_to_fp16=False)
    return out


class OpenVINOModel:
    """A compiled OpenVINO model on the CPU: ``(N, 3, H, W)`` float32 numpy in, logits out.
    ``precision``: the INFERENCE_PRECISION_HINT (:func:`resolve_precision`); ``num_threads``: default torch's."""

    def __init__(self, path, precision=None, num_threads=None):
        self.precision = resolve_precision(precision)
        config = {"INFERENCE_PRECISION_HINT": _OV_TYPES[self.precision], "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_NUM_THREADS": int(num_threads or torch.get_num_threads())}
        self.compiled = core().compile_model(core().read_model(str(path)), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.input_shape = tuple(int(d) for d in self.compiled.input(0).get_shape())

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})
        return self.request.get_output_tensor(0).data.copy()


def tolerance(precision, logit_scale=None):
    max_abs, agree = TOLERANCE[precision]
    return (max_abs * logit_scale if precision != "f32" and logit_scale else max_abs), agree


def export_openvino(model, path, input_size, metadata=None, check=True, verbose=True) -> dict:
    """Export to ``path`` (.xml, with its .bin) and check it at f32 against PyTorch (:func:`.export.export_files`)."""
    if not str(path).endswith(SUFFIX):
        raise LightsegError(f"-o {path}: an OpenVINO model is an {SUFFIX} file (its weights go beside it as .bin), e.g. model.xml")
    meta = {**metadata, "format": FORMAT, "precision": "f32"} if metadata else None
    return export_files(model, path, input_size, FORMAT, lambda m, s, d, n: convert(m, s, d, n, meta),
                        lambda p: OpenVINOModel(p, precision="f32"), companions=(".bin",), metadata=meta,
                        tolerance=TOLERANCE["f32"], check=check, verbose=verbose, sidecar=False)
