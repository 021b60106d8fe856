"""ncnn via pnnx: export (``.ncnn.param`` + ``.ncnn.bin``) and the ``ncnn`` backend (``pip install 'lightseg[ncnn]'``).

The model is prepared as for ONNX (BatchNorm folded, the models' exact inference rewrites, static shape) and
converted by ``pnnx.export`` (TorchScript trace -> pnnx graph -> ncnn). The lightseg metadata is a sidecar
``<file>.ncnn.param.json`` (:mod:`.metadata`): copy it with the .param and .bin.

Why ncnn's output can differ from PyTorch by ~0.1 in the logits: fp16, twice over, both on by default.
``pnnx.export(..., fp16=True)`` (its default) stores the weights in the .bin as float16, and ncnn's
``Option.use_fp16_storage`` / ``use_fp16_packed`` / ``use_fp16_arithmetic`` (all default True) keep the
activations in float16 where the CPU can (F16C on x86, ARMv8.2 fp16 arithmetic on ARM). The graph rewrites
pnnx makes (fusing convolutions with their activations, folding constants, removing no-op reshapes) are exact:
with fp32 weights and the fp16 options off the logits agree with PyTorch to ~1e-6 (shufflenetv2_basic and
rdsnet at 128x128, Intel Xeon with AVX-512). fp16 storage gave 1e-5..4e-4 there at random weights; the error
grows with the logits' magnitude and the depth, so trained models at full size see ~1e-1.

So lightseg exports and runs ncnn in ``f32`` by default (fp32 weights, fp16 options off; tolerance as ONNX:
max |logit diff| 1e-3, argmax agreement >= 99.9%); ``--precision fp16`` stores fp16 weights and runs with
ncnn's fp16 options (half the file, faster on ARM), checked against 2% of the largest logit and 99% agreement.
"""
from __future__ import annotations

import contextlib
import copy
import warnings
from pathlib import Path

import numpy as np
import torch

from ..errors import LightsegError
from .export import PARITY_MAX_ABS, PARITY_MIN_AGREEMENT, _check_size, export_files
from .fuse import prepare_for_inference
from .metadata import missing_extra

FORMAT, EXTRA, SUFFIX = "ncnn", "ncnn", ".ncnn.param"
PRECISIONS = ("f32", "fp16")
# fp16: the first number is a share of the largest reference logit (see module docstring)
TOLERANCE = {"f32": (PARITY_MAX_ABS, PARITY_MIN_AGREEMENT), "fp16": (0.02, 99.0)}
_FP16_OPTIONS = ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic")


def resolve_precision(precision) -> str:
    precision = {None: "f32", "auto": "f32", "fp32": "f32", "float32": "f32", "f16": "fp16"}.get(precision, precision)
    if precision not in PRECISIONS:
        raise LightsegError(f"ncnn precision {precision!r} is not supported; use one of {', '.join(PRECISIONS)}")
    return precision


def convert(model, input_size, workdir, name, precision="f32", batch=1):
    """Write ``workdir/name`` (.ncnn.param) and its .ncnn.bin (fp16 weights when ``precision`` is fp16)."""
    try:
        import pnnx
    except ImportError:
        raise missing_extra("pnnx", EXTRA, "the ncnn export") from None
    if batch != 1:
        raise LightsegError("ncnn runs one image per call (its Mat has no batch axis); use --batch 1")
    h, w = _check_size(input_size)
    net = prepare_for_inference(copy.deepcopy(model).cpu().float().eval(), input_size=(h, w), for_onnx=True,
                                static_shape=True)
    example = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    workdir = Path(workdir)
    stem = name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name
    # pnnx prints every pass (from C++: the file descriptors, not sys.stdout) and writes a TorchScript file, a
    # pnnx graph and two Python scripts beside the ncnn files (all left in workdir, a temporary folder)
    with warnings.catch_warnings(), _captured_output() as log:
        warnings.simplefilter("ignore")
        try:
            pnnx.export(net, str(workdir / f"{stem}.pt"), (example,), fp16=resolve_precision(precision) == "fp16",
                        ncnnparam=str(workdir / f"{stem}.ncnn.param"), ncnnbin=str(workdir / f"{stem}.ncnn.bin"))
        except Exception as e:
            raise RuntimeError(f"pnnx export of {getattr(model, 'lightseg_name', type(model).__name__)} failed: {e}") from e
    out = workdir / f"{stem}.ncnn.param"
    if not out.is_file():
        raise RuntimeError(f"pnnx wrote no {out.name}; its log ends: {log.tail()}")
    return out


class _Log:
    def __init__(self, path):
        self.path = path

    def tail(self, n=600) -> str:
        return Path(self.path).read_text(errors="replace")[-n:] if Path(self.path).is_file() else ""


@contextlib.contextmanager
def _captured_output():
    """Send what the process writes to stdout and stderr (file descriptors 1 and 2) to a temporary file."""
    import os
    import sys
    import tempfile

    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.NamedTemporaryFile(prefix="lightseg-pnnx-", suffix=".log") as f:
        try:
            os.dup2(f.fileno(), 1)
            os.dup2(f.fileno(), 2)
            yield _Log(f.name)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


class NcnnModel:
    """An ncnn network on the CPU: ``(1, 3, H, W)`` float32 numpy in, logits out (``precision`` f32: fp16
    options off; fp16: ncnn's defaults). The .bin is the .param's name with .bin."""

    def __init__(self, path, precision=None, num_threads=None):
        try:
            import ncnn
        except ImportError:
            raise missing_extra("ncnn", EXTRA, "the ncnn backend") from None
        self.precision = resolve_precision(precision)
        path = Path(path)
        self.net = ncnn.Net()
        for option in _FP16_OPTIONS:
            setattr(self.net.opt, option, self.precision == "fp16")
        self.net.opt.num_threads = int(num_threads or torch.get_num_threads())
        bin_path = path.with_name(path.name[: -len(".param")] + ".bin")
        if not bin_path.is_file():
            raise LightsegError(f"{path}: its weights {bin_path.name} are not beside it; copy the .ncnn.bin with the .ncnn.param")
        if self.net.load_param(str(path)) != 0 or self.net.load_model(str(bin_path)) != 0:
            raise LightsegError(f"{path}: ncnn cannot load it (or {bin_path.name}); export it again")
        self._mat = ncnn.Mat
        self.input_name, self.output_name = self.net.input_names()[0], self.net.output_names()[0]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        outs = []
        for image in np.asarray(x, dtype=np.float32):
            ex = self.net.create_extractor()
            ex.input(self.input_name, self._mat(np.ascontiguousarray(image)))
            ret, out = ex.extract(self.output_name)
            if ret != 0:
                raise RuntimeError(f"ncnn extract failed ({ret})")
            outs.append(np.array(out))
        return np.stack(outs)


def export_ncnn(model, path, input_size, metadata=None, precision="f32", check=True, verbose=True) -> dict:
    """Export to ``path`` (.ncnn.param, with .ncnn.bin and the sidecar .ncnn.param.json) and check it against
    PyTorch at the precision's tolerance (module docstring)."""
    if not str(path).endswith(SUFFIX):
        raise LightsegError(f"-o {path}: an ncnn model is a {SUFFIX} file (its weights go beside it as .ncnn.bin), e.g. model.ncnn.param")
    precision = resolve_precision(precision)
    max_abs, agree = TOLERANCE[precision]
    if precision == "fp16":
        max_abs = max_abs * _logit_scale(model, _check_size(input_size))  # a share of the largest logit
    meta = {**metadata, "format": FORMAT, "precision": precision} if metadata else None
    return export_files(model, path, input_size, FORMAT, lambda m, s, d, n: convert(m, s, d, n, precision),
                        lambda p: NcnnModel(p, precision=precision), companions=(".bin",), metadata=meta,
                        tolerance=(max_abs, agree), check=check, verbose=verbose)


def _logit_scale(model, size) -> float:
    """The largest |logit| of PyTorch on the input the parity check uses (seed 0)."""
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        return float(model.eval()(x).abs().max())
