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

# OpenMP's wait policy, chosen before torch loads OpenMP and only when the user has not chosen one.
# libgomp's default busy-waits between parallel regions: fastest on an idle machine (2x PASSIVE for a
# small training batch), but many times slower when another process wants a core, where sleeping at once
# (PASSIVE) wins. So lightseg asks the kernel how many tasks are runnable right now (/proc/loadavg, which
# costs nothing) and sleeps only when something besides this process is (docs/benchmarks.md, "Shared CPUs").


def _others_runnable(path="/proc/loadavg", samples=3, interval_s=0.005):
    """Tasks runnable besides this one (the 4th field of /proc/loadavg counts this reader too): the least
    of a few samples 5 ms apart, so that a task that is runnable for an instant is not taken for a busy
    competitor, which is runnable in every sample. None where the kernel does not say."""
    import time

    least = None
    for i in range(samples):
        if i:
            time.sleep(interval_s)
        try:
            with open(path) as f:
                count = max(int(f.read().split()[3].split("/")[0]) - 1, 0)
        except (OSError, IndexError, ValueError):
            return None
        least = count if least is None else min(least, count)
        if least == 0:  # nothing can be less: an idle machine pays no sleep
            break
    return least


def choose_wait_policy(environ, torch_loaded, others_runnable):
    """The OMP_WAIT_POLICY lightseg sets, or None: the user's choice stands, torch already read the
    environment, or the machine is idle (spinning is then the faster default). ``others_runnable`` is
    called (it samples the kernel) only when the answer depends on it."""
    if torch_loaded or "OMP_WAIT_POLICY" in environ or "GOMP_SPINCOUNT" in environ:
        return None
    others = others_runnable()
    if others is None or others > 0:  # busy, or unknown: the safe side
        return "PASSIVE"
    return None


OMP_DEFAULTED = False
_policy = choose_wait_policy(_os.environ, "torch" in _sys.modules, _others_runnable)
if _policy is not None:
    _os.environ["OMP_WAIT_POLICY"] = _policy
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


def __dir__():
    """The module's names and those imported on first use, so that dir() and editors' completion list
    ``create_model``, ``Segmenter`` and the rest before anything has touched them (importing nothing)."""
    return sorted(set(globals()) | set(_LAZY))


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
