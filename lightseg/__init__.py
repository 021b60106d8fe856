"""lightseg: lightweight real-time semantic segmentation (MiniNet, ATONet, Dual ASPP, ShuffleNetV2+DPC, RDS-Net).

    import lightseg
    seg = lightseg.Segmenter.from_checkpoint("runs/mininet_211k_camvid/best.pt")
    label = seg(rgb)                       # (H, W) class ids of an RGB uint8 image
    model = lightseg.create_model("mininet_211k", num_classes=11)

The names below are imported on first use, so that ``lightseg --help`` and ``--version`` start at once
(PyTorch alone takes a second to import).
"""
import os as _os
import sys as _sys

# OpenMP threads that busy-wait between parallel regions (libgomp's default) make eager PyTorch many times
# slower when another process takes a core; sleeping at once costs a quiet machine little (docs/benchmarks.md,
# "Shared CPUs"). It only works before torch loads OpenMP, and only when the user has not chosen.
OMP_DEFAULTED = False
if "torch" not in _sys.modules and "OMP_WAIT_POLICY" not in _os.environ and "GOMP_SPINCOUNT" not in _os.environ:
    _os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    OMP_DEFAULTED = True

from .errors import LightsegError  # noqa: E402

__version__ = "0.1.0"

_LAZY = {
    "create_model": ".models", "list_models": ".models", "model_info": ".models", "register_model": ".models",
    "Segmenter": ".deploy.segmenter",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lightseg' has no attribute {name!r}")


def export_onnx(model, path, input_size=(512, 1024), dynamic=False, **kwargs):
    """Export ``model`` to ONNX at ``path`` and check parity with PyTorch (see lightseg.deploy.export)."""
    from .deploy.export import export_onnx as _export

    return _export(model, path, input_size=input_size, dynamic=dynamic, **kwargs)


def load_checkpoint(path, **kwargs):
    """Load a lightseg checkpoint safely (``weights_only=True``); see lightseg.checkpoint."""
    from .checkpoint import load_checkpoint as _load

    return _load(path, **kwargs)


__all__ = ["Segmenter", "create_model", "list_models", "model_info", "register_model", "export_onnx",
           "load_checkpoint", "LightsegError", "__version__"]
