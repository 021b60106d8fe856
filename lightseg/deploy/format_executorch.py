"""ExecuTorch: export (``.pte``, XNNPACK delegate) and the ``executorch`` backend (``pip install 'lightseg[executorch]'``).

The model is prepared as for ONNX (BatchNorm folded, the models' exact inference rewrites, static shape),
captured with ``torch.export`` and lowered with the XNNPACK partitioner: XNNPACK's fp32 kernels run every
convolution, the rest falls back to ExecuTorch's portable operators. A ``.pte`` has no free-form metadata
store, so the lightseg metadata is a sidecar ``<file>.pte.json`` (:mod:`.metadata`): copy both.
Tolerance against PyTorch (fp32 both): as ONNX, max |logit diff| 1e-3 and argmax agreement >= 99.9%.
"""
from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import torch

from ..errors import LightsegError
from .export import PARITY_MAX_ABS, PARITY_MIN_AGREEMENT, _check_size, export_files
from .fuse import prepare_for_inference
from .metadata import missing_extra

FORMAT, EXTRA, SUFFIX = "executorch", "executorch", ".pte"
PRECISIONS = ("f32",)
TOLERANCE = {"f32": (PARITY_MAX_ABS, PARITY_MIN_AGREEMENT)}


def _require():
    try:
        import executorch  # noqa: F401
    except ImportError:
        raise missing_extra("executorch", EXTRA, "the ExecuTorch format") from None


def convert(model, input_size, workdir, name, batch=1):
    """Write ``workdir/name`` (.pte)."""
    _require()
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    h, w = _check_size(input_size)
    net = prepare_for_inference(copy.deepcopy(model).cpu().float().eval(), input_size=(h, w), for_onnx=True,
                                static_shape=True)
    example = torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.export's and torchao's deprecation notices
        program = torch.export.export(net, (example,))
        data = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch().buffer
    out = Path(workdir) / name
    out.write_bytes(data)
    return out


class ExecuTorchModel:
    """An ExecuTorch program's ``forward``: ``(N, 3, H, W)`` float32 numpy in, logits out."""

    def __init__(self, path, precision=None, num_threads=None):
        _require()
        if precision not in (None, "auto", "f32", "fp32"):
            raise LightsegError(f"ExecuTorch runs the .pte's own (fp32) arithmetic; drop --precision {precision}")
        from executorch.runtime import Runtime

        self.precision = "f32"
        self.program = Runtime.get().load_program(Path(path).read_bytes())
        self.method = self.program.load_method("forward")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.method.execute([torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))])[0].numpy().copy()


def export_executorch(model, path, input_size, metadata=None, check=True, verbose=True) -> dict:
    """Export to ``path`` (.pte, sidecar .pte.json) and check it against PyTorch (:func:`.export.export_files`)."""
    if not str(path).endswith(SUFFIX):
        raise LightsegError(f"-o {path}: an ExecuTorch program is a {SUFFIX} file, e.g. model.pte")
    meta = {**metadata, "format": FORMAT, "precision": "f32", "delegate": "xnnpack"} if metadata else None
    return export_files(model, path, input_size, FORMAT, convert, ExecuTorchModel, metadata=meta,
                        tolerance=TOLERANCE["f32"], check=check, verbose=verbose)
