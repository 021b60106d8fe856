"""One inference interface over several backends: ``Runtime(model, backend)(images) -> logits``.

Backends (all return float32 logits (N, C, H, W) as a torch tensor):

* ``eager_nchw``: the model as written, eval mode, ``torch.inference_mode()``; the baseline.
* ``eager``: BatchNorm folded into the convolutions (:mod:`.fuse`) and channels_last (NHWC)
  memory layout, which lets oneDNN pick its blocked convolution kernels without reordering each
  layer's input (on a 2-core EPYC: ~1.3x for a MobileNetV3 LR-ASPP net at 512x1024, folding ~1.4x more).
* ``compile``: the ``eager`` model through ``torch.compile`` (Inductor; the first call compiles).
* ``onnxruntime``: exported to ONNX (static shape; one export per input shape, cached), run with
  ``ORT_ENABLE_ALL`` graph optimisation and one intra-op thread per core; CUDAExecutionProvider
  for ``device="cuda"``. A path to an ``.onnx`` file is run as is.
* ``onnxruntime_int8``: the same ONNX model quantised to int8 (:mod:`.quantize`: static, calibrated on
  ``calibration`` images, a folder, or the synthetic scenes when none is given). A different numerical
  model: measure its accuracy (``lightseg eval --backend onnxruntime_int8``) before deploying it. Its weight
  format (``int8_mode``) suits this CPU unless another is asked for (:func:`.quantize.choose_int8_mode`).
* ``openvino``, ``executorch``, ``ncnn``: the model exported to that format (one export per input shape, cached;
  :mod:`.format_openvino`, :mod:`.format_executorch`, :mod:`.format_ncnn`), run by its runtime on the CPU. Each is
  an optional extra (``pip install 'lightseg[openvino]'``), imported only when used. ``precision``: OpenVINO's
  inference precision (default: bf16 on CPUs with bfloat16 arithmetic, else f32), ncnn's f32 or fp16.

A path to an exported file (``.onnx``, ``.xml``, ``.pte``, ``.ncnn.param``) is run as it is by its format's
backend (``backend=None`` picks it from the name).
"""
from __future__ import annotations

import contextlib
import copy
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..devices import resolve_device
from ..errors import CheckpointError, LightsegError
from .export import export_to_bytes, onnx_device, ort_session
from .metadata import format_of

EXPORTED_BACKENDS = ("openvino", "executorch", "ncnn")
BACKENDS = ("eager_nchw", "eager", "compile", "onnxruntime", "onnxruntime_int8", *EXPORTED_BACKENDS)
ONNX_BACKENDS = ("onnxruntime", "onnxruntime_int8")
FILE_BACKENDS = {"onnx": "onnxruntime", "openvino": "openvino", "executorch": "executorch", "ncnn": "ncnn"}


def format_module(backend):
    """The module that exports and runs ``backend``'s format (:mod:`.format_openvino`, ...)."""
    import importlib

    return importlib.import_module(f".format_{backend}", __package__)


def file_backend(path, backend=None) -> str:
    """The backend that runs the exported file ``path``: its format's (``backend`` None, ``"eager"`` or
    ``"auto"``: that one); another backend is refused, naming the one to use."""
    fmt = format_of(path)
    own = FILE_BACKENDS[fmt]
    if backend in (None, "eager", "auto", own):
        return own
    raise LightsegError(f"{path} is a {fmt} model, which runs with --backend {own}, not {backend!r}"
                        + ("; for int8, export it with lightseg export --int8" if backend == "onnxruntime_int8" else ""))


def load_exported(backend, path, precision=None, num_threads=None):
    """The runner of an exported file: float32 NCHW numpy in, logits numpy out."""
    mod = format_module(backend)
    runner = {"openvino": "OpenVINOModel", "executorch": "ExecuTorchModel", "ncnn": "NcnnModel"}[backend]
    return getattr(mod, runner)(path, precision=precision, num_threads=num_threads)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise LightsegError(f"dtype {dtype!r} is not supported; use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


class Runtime:
    """Callable inference wrapper. ``Runtime(model, "onnxruntime")(x)`` -> logits tensor (float32).

    ``model``: an ``nn.Module`` or the path of an ``.onnx`` file (``onnxruntime`` backend only).
    ``input_size``: (H, W) the runtime will mostly see; used for the ONNX export and fusion probe.
    ``channels_last``: ``None`` = on for the ``eager``/``compile`` backends (see module docstring).
    ``calibration``, ``calibration_count``, ``normalize``, ``int8_mode``: int8 only; the calibration images (a
    folder, or ``None`` for synthetic scenes), how many, the normalisation the model was trained with, and the
    weight format (``None``: the one this CPU needs). ``self.int8_mode`` is the mode used (for an ``.onnx`` file:
    the one recorded in it, if any). ``ort_spinning``: ONNX backends, see :func:`.export.ort_session`.
    ``precision``: openvino (f32, bf16, fp16; default this CPU's) and ncnn (f32, fp16); ``self.precision`` is
    the one used.
    """

    def __init__(self, model, backend="eager", device="cpu", input_size=None, dtype="float32",
                 channels_last=None, num_threads=None, max_sessions=4, calibration=None,
                 calibration_count=None, normalize="imagenet", int8_mode=None, ort_spinning=None, precision=None):
        if backend is None and isinstance(model, (str, Path)):
            backend = FILE_BACKENDS.get(format_of(model), "onnxruntime")
        if backend not in BACKENDS:
            raise LightsegError(f"backend {backend!r} is unknown; use one of {', '.join(BACKENDS)}")
        self.backend = backend
        if backend in ONNX_BACKENDS:
            self.device = onnx_device(device, int8=backend == "onnxruntime_int8")
        elif backend in EXPORTED_BACKENDS:
            if str(device) not in ("auto", "cpu"):
                raise LightsegError(f"the {backend} backend runs on the CPU here; use --device cpu (or auto)")
            self.device = torch.device("cpu")
        else:
            self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        self.input_size = tuple(input_size) if input_size else None
        self.num_threads = num_threads
        self.ort_spinning = ort_spinning
        self._sessions: OrderedDict = OrderedDict()
        self._max_sessions = max_sessions
        self.onnx_path = None
        self.file_input_size = None  # (H, W) of a static exported file: the only size it takes
        self.calibration, self.normalize = calibration, normalize
        self.calibration_count = calibration_count
        self.int8_mode = None
        if backend == "onnxruntime_int8":
            from .quantize import resolve_int8_mode

            self.int8_mode = resolve_int8_mode(int8_mode)[0]
        elif int8_mode not in (None, "auto"):
            raise LightsegError(f"an int8 mode ({int8_mode!r}) applies to backend onnxruntime_int8, not {backend!r}")

        self.precision = None
        if backend == "executorch" and precision not in (None, "auto", "f32", "fp32"):
            raise LightsegError(f"ExecuTorch runs the .pte's own fp32 arithmetic; drop --precision {precision}")
        if backend in EXPORTED_BACKENDS:
            self.precision = format_module(backend).resolve_precision(precision) if backend != "executorch" else "f32"
        elif precision not in (None, "auto"):
            raise LightsegError(f"a precision ({precision!r}) applies to the openvino and ncnn backends, not {backend!r}; "
                                "eager backends take --dtype")
        if isinstance(model, (str, Path)) and backend in EXPORTED_BACKENDS:
            path = Path(model)
            fmt = format_of(path)
            if FILE_BACKENDS.get(fmt) != backend:
                raise LightsegError(f"{path}: a {fmt or 'file of unknown'} format file does not run with backend {backend!r}"
                                    + (f"; use --backend {FILE_BACKENDS[fmt]}" if fmt else ""))
            if not path.is_file():
                raise LightsegError(f"{backend} model {str(path)!r} not found")
            self.onnx_path, self.model = path, None
            meta = _file_metadata(path)
            if backend == "ncnn" and precision in (None, "auto") and meta:  # an fp16 export runs as it was checked
                self.precision = format_module(backend).resolve_precision(meta.get("precision"))
            self._sessions[None] = load_exported(backend, path, self.precision, num_threads)
            self.file_input_size = _static_input_size(meta)
            return
        if isinstance(model, (str, Path)):
            path = Path(model)
            if backend != "onnxruntime":
                raise LightsegError(f"{path}: an ONNX file runs as it is with backend 'onnxruntime', not {backend!r} "
                                    "(to quantise it, export it again with lightseg export --int8)")
            if not path.is_file():
                raise LightsegError(f"ONNX file {str(path)!r} not found")
            self.onnx_path = path
            self.model = None
        elif isinstance(model, nn.Module):
            self.model = model
        else:
            raise TypeError(f"Runtime expects an nn.Module or an .onnx path, got {type(model).__name__}")

        if backend in (*ONNX_BACKENDS, *EXPORTED_BACKENDS):
            if self.dtype != torch.float32:
                raise LightsegError(f"the {backend} backend runs float32 only (input and output); drop --dtype "
                                    + ("(--precision sets its arithmetic)" if backend in ("openvino", "ncnn") else "or use an eager backend"))
            if self.onnx_path is not None:
                from .quantize import mode_warning, model_int8_mode

                session = ort_session(self.onnx_path, device=self.device, num_threads=num_threads, spinning=ort_spinning)
                self._sessions[None] = session
                self.file_input_size = _static_input_size(_file_metadata(self.onnx_path))
                self.int8_mode = model_int8_mode(session.get_modelmeta().custom_metadata_map)
                warning = mode_warning(self.int8_mode) if self.device.type == "cpu" else None
                if warning:
                    warnings.warn(f"{self.onnx_path}: {warning}", stacklevel=2)
            return

        self.channels_last = backend != "eager_nchw" if channels_last is None else bool(channels_last)
        net = copy.deepcopy(model).eval()
        if backend != "eager_nchw":
            from .fuse import prepare_for_inference

            net = prepare_for_inference(net)
        net = net.to(device=self.device, dtype=self.dtype)
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
        for p in net.parameters():
            p.requires_grad_(False)
        self.net = net
        self._fn = torch.compile(net) if backend == "compile" else net

    # ------------------------------------------------------------------ calls
    def _exported_runner(self, shape):
        """Export the model to this backend's format at ``shape`` in a temporary folder and load it."""
        import tempfile

        batch = 1 if self.backend == "ncnn" else shape[0]  # an ncnn Mat holds one image: its runner loops
        mod = format_module(self.backend)
        with tempfile.TemporaryDirectory(prefix="lightseg-") as work, torch.inference_mode(False):
            path = mod.convert(self.model, shape[2:], work, "model" + mod.SUFFIX, batch=batch,
                               **({"precision": self.precision} if self.backend == "ncnn" else {}))
            return load_exported(self.backend, path, self.precision, self.num_threads)

    def _session_for(self, shape):
        if None in self._sessions:
            return self._sessions[None]
        key = tuple(shape) if self.backend != "ncnn" else (1, *shape[1:])
        if key not in self._sessions and self.backend in EXPORTED_BACKENDS:
            self._sessions[key] = self._exported_runner(shape)
            if len(self._sessions) > self._max_sessions:
                self._sessions.popitem(last=False)
        elif key not in self._sessions:
            # Static shapes: every resize and pooling size is a constant ORT can plan around, and models
            # that compute sizes in Python (adaptive pooling by aspect ratio) stay exact.
            # The export traces the model: it needs autograd-visible tensors even when called under inference_mode.
            with torch.inference_mode(False):
                data = export_to_bytes(self.model, shape[2:], batch=shape[0])
            if self.backend == "onnxruntime_int8":
                from .quantize import DEFAULT_CALIBRATION_COUNT, calibration_images, quantize_onnx

                images = calibration_images(self.calibration, shape[2:], self.calibration_count or DEFAULT_CALIBRATION_COUNT,
                                            normalize=self.normalize)
                data = quantize_onnx(data, images, batch=shape[0], mode=self.int8_mode)
            self._sessions[key] = ort_session(data, device=self.device, num_threads=self.num_threads,
                                              spinning=self.ort_spinning)
            if len(self._sessions) > self._max_sessions:
                self._sessions.popitem(last=False)
        self._sessions.move_to_end(key)
        return self._sessions[key]

    def prepare(self, shape):
        """Build what a first call with input ``shape`` (N, 3, H, W) would build (the export)."""
        if self.backend in (*ONNX_BACKENDS, *EXPORTED_BACKENDS):
            self._session_for(shape)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            raise ValueError(f"Runtime expects an (N, 3, H, W) tensor, got {getattr(images, 'shape', type(images))}")
        if self.file_input_size is not None:
            if tuple(images.shape[2:]) != self.file_input_size:
                h, w = self.file_input_size
                raise LightsegError(
                    f"{self.onnx_path} was exported for {h}x{w} input and is given {images.shape[2]}x{images.shape[3]}: "
                    f"export it again with --size {images.shape[2]} {images.shape[3]} (or --dynamic, ONNX), or run it "
                    f"on {h}x{w} windows (--mode slide --crop {h} {w})")
            if images.shape[0] > 1:  # a static export takes one image per call
                return torch.cat([self(images[i:i + 1]) for i in range(images.shape[0])])
        if self.backend in (*ONNX_BACKENDS, *EXPORTED_BACKENDS):
            session = self._session_for(images.shape)
            x = np.ascontiguousarray(images.detach().float().cpu().numpy())
            if self.backend in ONNX_BACKENDS:
                return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x})[0])
            return torch.from_numpy(session(x))
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        with torch.inference_mode():
            x = images.to(device=self.device, dtype=self.dtype).contiguous(memory_format=fmt)
            out = self._fn(x)
            if isinstance(out, dict):
                out = out["out"]
            return out.float().contiguous()


def _file_metadata(path):
    """The lightseg metadata of an exported file, or None for a file without it (run as it is)."""
    from .metadata import MetadataError, read_metadata

    try:
        return read_metadata(path)
    except MetadataError:
        return None


def _static_input_size(meta):
    """(H, W) of an export with a static shape; None for a dynamic ONNX export or a file without metadata."""
    if not meta or meta.get("dynamic"):
        return None
    return tuple(int(v) for v in meta["input_size"])


# ---------------------------------------------------------------------- checkpoints
def _infer_num_classes(name, state, kwargs):
    """num_classes of a bare state dict: the dimension that changes between 1- and 2-class builds."""
    from ..models import create_model

    with contextlib.suppress(Exception):
        one = create_model(name, num_classes=1, **kwargs).state_dict()
        two = create_model(name, num_classes=2, **kwargs).state_dict()
        for k, t1 in one.items():
            t2 = two[k]
            if t1.shape != t2.shape and k in state:
                dim = next(i for i, (a, b) in enumerate(zip(t1.shape, t2.shape)) if a != b)
                return int(state[k].shape[dim])
    return None


def load_model(model_name=None, checkpoint=None, num_classes=None, device="cpu"):
    """Build ``model_name`` and load ``checkpoint`` (a lightseg .pt) into it.

    Returns ``(model, ckpt_dict_or_None)``. A lightseg checkpoint names its model, so ``model_name``
    may be ``None``; given, it must match. The checkpoint's ``num_classes`` is used (``num_classes``
    given and different is an error), and its recipe's ``model.kwargs`` are passed to the builder.
    """
    from ..checkpoint import load_checkpoint, load_model_weights
    from ..models import create_model, model_info

    if model_name is not None:
        model_info(model_name)  # unknown names fail here, with suggestions
    if checkpoint is None:
        if model_name is None:
            raise LightsegError("no model: pass --model NAME (and --checkpoint CKPT or --weights NAME)")
        model = create_model(model_name, num_classes=num_classes or 19)
        return model.to(device).eval(), None
    ckpt = load_checkpoint(checkpoint)
    saved_name = ckpt.get("model_name")
    if model_name is None:
        if not saved_name:
            raise CheckpointError(f"{checkpoint} is a bare state dict that does not name its model; pass --model NAME")
        model_info(saved_name)
        model_name = saved_name
    if saved_name and saved_name != model_name:
        raise CheckpointError(f"{checkpoint} holds a {saved_name!r} model but --model is {model_name!r}; "
                              f"pass --model {saved_name} (or leave --model out: the checkpoint names it)")
    config = ckpt.get("config") or {}
    kwargs = dict(((config.get("model") or {}).get("kwargs")) or {})
    saved_classes = ckpt.get("num_classes")
    if saved_classes is None and ckpt.get("classes"):
        saved_classes = len(ckpt["classes"])
    if saved_classes is None:
        saved_classes = _infer_num_classes(model_name, ckpt["model"], kwargs)
    if num_classes is not None and saved_classes is not None and int(num_classes) != int(saved_classes):
        raise CheckpointError(f"{checkpoint} was trained with num_classes={saved_classes}, but --num-classes is {num_classes}; drop --num-classes")
    n = int(saved_classes if saved_classes is not None else (num_classes or 19))
    model = create_model(model_name, num_classes=n, **kwargs)
    load_model_weights(model, ckpt, path_for_errors=str(checkpoint))
    return model.to(device).eval(), ckpt


def checkpoint_normalization(ckpt) -> str:
    """The normalisation a checkpoint's model was trained with (its ``normalize``, else ``config.data.normalize``)."""
    from ..checkpoint import trained_input
    from ..data.base import NORMALIZATIONS

    name = trained_input(ckpt or {})["normalize"] or "imagenet"
    if name not in NORMALIZATIONS:
        raise CheckpointError(f"checkpoint config data.normalize = {name!r} is unknown; known: {', '.join(NORMALIZATIONS)}")
    return name
