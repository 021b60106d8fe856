"""The output contract every lightseg model follows (the one place it is written down).

* ``eval()`` mode: ``model(x)`` with ``x`` of shape (N, 3, H, W), H, W >= 64 (any value, not only
  multiples of 32) returns logits of shape (N, num_classes, H, W) at the input resolution.
* ``train()`` mode: a model with auxiliary / deep-supervision heads returns
  ``{"out": logits (N, C, H, W), "aux": [aux_logits, ...]}``. Each aux tensor is at the resolution
  its loss is meant to be computed at (e.g. ATONet: the head's own stride, compared with
  nearest-downsampled labels; MiniNet: its side outputs). ``model.aux_names`` names them, in order.
  A model without auxiliary heads returns the plain logits tensor in both modes.
* Anything other than a float tensor of shape (N, 3, H>=64, W>=64) raises ``ValueError``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

MIN_SIZE = 64


def check_input(x) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"expected a torch.Tensor of shape (N, 3, H, W), got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"expected a 4-D input (N, 3, H, W), got shape {tuple(x.shape)}; add a batch dimension with x[None]")
    if x.shape[1] != 3:
        raise ValueError(f"expected 3 input channels (RGB), got {x.shape[1]} in shape {tuple(x.shape)}")
    if x.shape[2] < MIN_SIZE or x.shape[3] < MIN_SIZE:
        raise ValueError(f"input is {x.shape[2]}x{x.shape[3]}; lightseg models need H and W of at least {MIN_SIZE}")
    if not x.is_floating_point():
        raise ValueError(f"expected a floating-point input, got dtype {x.dtype}; convert with x.float() and normalise")


def resize_to(x: torch.Tensor, size, mode: str = "bilinear") -> torch.Tensor:
    """Resize feature map ``x`` to spatial ``size`` (H, W). Decoders align maps by size, never by assuming
    exact halving, so 360x480 (CamVid) works as well as multiples of 32."""
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        # Keep sizes symbolic: int() would freeze them into a traced graph (breaks dynamic ONNX H/W).
        size = tuple(size)
        if mode == "nearest":
            return F.interpolate(x, size=size, mode="nearest")
        return F.interpolate(x, size=size, mode=mode, align_corners=False)
    size = tuple(int(s) for s in size)
    if tuple(x.shape[-2:]) == size:
        return x
    if x.is_meta:
        # Shapes only (MAC counting): PyTorch's meta interpolation is a slow Python decomposition.
        return x.new_empty((*x.shape[:-2], *size))
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    return F.interpolate(x, size=size, mode=mode, align_corners=False)


class SegmentationModel(nn.Module):
    """Base class: validates input, upsamples logits to input size, packs aux outputs in train mode.

    Subclasses implement ``forward_features(x) -> (logits_lowres, [aux, ...])`` and set
    ``num_classes`` and ``aux_names``.
    """

    num_classes: int
    aux_names: tuple[str, ...] = ()

    def forward_features(self, x: torch.Tensor):  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor):
        check_input(x)
        logits, aux = self.forward_features(x)
        logits = resize_to(logits, x.shape[-2:])
        if self.training and aux:
            return {"out": logits, "aux": list(aux)}
        return logits
