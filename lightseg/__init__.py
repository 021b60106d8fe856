"""lightseg: lightweight real-time semantic segmentation (MiniNet, ATONet, Dual ASPP, ShuffleNetV2+DPC, RDS-Net)."""
from .errors import LightsegError
from .models import create_model, list_models, model_info, register_model

__version__ = "0.1.0"


def export_onnx(model, path, input_size=(512, 1024), dynamic=False, **kwargs):
    """Export ``model`` to ONNX at ``path`` and check parity with PyTorch (see lightseg.deploy.export)."""
    from .deploy.export import export_onnx as _export

    return _export(model, path, input_size=input_size, dynamic=dynamic, **kwargs)


def load_checkpoint(path, **kwargs):
    """Load a lightseg checkpoint safely (``weights_only=True``); see lightseg.checkpoint."""
    from .checkpoint import load_checkpoint as _load

    return _load(path, **kwargs)


__all__ = ["create_model", "list_models", "model_info", "register_model", "export_onnx", "load_checkpoint", "LightsegError"]
