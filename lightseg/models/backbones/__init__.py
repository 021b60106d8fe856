"""ImageNet backbones written in this project with torchvision's parameter names.

Every backbone:
* ``forward(x) -> list[Tensor]``: the outputs of its stages, shallow to deep;
* ``channels``: list of the stages' channel counts; ``reductions``: their strides w.r.t. the input
  (after dilation replaced strides, e.g. output_stride=16 gives [..., 16, 16]);
* ``output_stride`` (8/16/32) in the constructor: DeepLab-style, the last strides become dilations;
* ``pretrained_ignore``: key prefixes of the torchvision checkpoint that the backbone does not use
  (the classifier, layers the paper drops); every other key must match exactly.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from ...errors import CheckpointError


def stage_outputs(features: nn.Sequential, stage_ends, x: torch.Tensor) -> list[torch.Tensor]:
    """Run ``features`` layer by layer; collect the outputs of the layers whose index is in ``stage_ends``."""
    outs = []
    for i, layer in enumerate(features):
        x = layer(x)
        if i in stage_ends:
            outs.append(x)
    return outs


def _short(keys, n=8):
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f" ... ({len(keys)} in all)" if len(keys) > n else "")


def load_pretrained_backbone(backbone: nn.Module, path) -> None:
    """Load a torchvision ImageNet checkpoint (e.g. ``resnet18-f37072fd.pth``) into ``backbone``.

    Strict: every backbone parameter/buffer must be in the file with the same shape, and every file
    key must be used except those under ``backbone.pretrained_ignore``. Loaded with
    ``weights_only=True`` so that the file cannot run code.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"pretrained backbone file {str(path)!r} not found; pass the path of a torchvision ImageNet checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is the file's fault
        raise CheckpointError(f"{path}: cannot be loaded as a weights-only checkpoint ({e.__class__.__name__}: {e})") from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict of tensors, got {type(state).__name__}")
    ignore = tuple(getattr(backbone, "pretrained_ignore", ()))
    file_keys = {k for k in state if not k.startswith(ignore)}
    own = backbone.state_dict()
    missing = set(own) - file_keys
    unexpected = file_keys - set(own)
    if missing or unexpected:
        msg = [f"{path}: keys do not match {type(backbone).__name__} (torchvision names expected)"]
        if missing:
            msg.append(f"missing from the file: {_short(missing)}")
        if unexpected:
            msg.append(f"not in the backbone: {_short(unexpected)}")
        raise CheckpointError("; ".join(msg) + ". Is this the checkpoint of the right architecture?")
    bad = [f"{k} file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in own if tuple(state[k].shape) != tuple(own[k].shape)]
    if bad:
        hint = getattr(backbone, "pretrained_hint", "")
        raise CheckpointError(f"{path}: shape mismatch for {len(bad)} keys: " + "; ".join(bad[:5]) + (f". {hint}" if hint else ""))
    backbone.load_state_dict({k: state[k] for k in own}, strict=True)
