"""Which device runs inference: ``auto`` picks CUDA, then Apple's MPS, then the CPU."""
from __future__ import annotations

import torch

from .errors import LightsegError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(device="auto") -> torch.device:
    """``auto`` -> cuda if available, else mps if available, else cpu; a named device must exist here."""
    if isinstance(device, torch.device):
        name = str(device)
    else:
        name = str(device or "auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise LightsegError(f"device {name!r} is unknown; use one of {', '.join(DEVICE_CHOICES)} (or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise LightsegError(f"device {name!r} requested but CUDA is not available here; use --device cpu (or auto)")
    if dev.type == "mps" and not mps_available():
        raise LightsegError(f"device {name!r} requested but Apple's MPS is not available here; use --device cpu (or auto)")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise LightsegError(f"device {name!r} is not supported; use one of {', '.join(DEVICE_CHOICES)}")
    return dev
