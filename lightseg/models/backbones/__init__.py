"""ImageNet backbones written in this project with torchvision's parameter names.

Every backbone:
* ``forward(x) -> list[Tensor]``: the outputs of its stages, shallow to deep;
* ``channels``: list of the stages' channel counts; ``reductions``: their strides w.r.t. the input
  (after dilation replaced strides, e.g. output_stride=16 gives [..., 16, 16]);
* ``output_stride`` (8/16/32) in the constructor: DeepLab-style, the last strides become dilations;
* ``pretrained_ignore``: key prefixes of the torchvision checkpoint that the backbone does not use
  (the classifier, layers the paper drops); every other key must match exactly;
* ``torchvision_name``: the torchvision model whose published ImageNet checkpoint loads into it
  (``IMAGENET_CHECKPOINTS``), or None when this configuration has none (then ``pretrained_hint`` says why).

``pretrained_backbone="imagenet"`` resolves that checkpoint through torch's own hub cache
(``torch.hub.load_state_dict_from_url``, ``$TORCH_HOME/hub/checkpoints``): a file torchvision already
cached is used as is, with no download.
"""
from __future__ import annotations

import hashlib
import re
import urllib.error
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


# torchvision's published ImageNet checkpoints (the IMAGENET1K_V1 weights, what ``pretrained=True``
# loads). The hex part of each file name is the start of the file's sha256 (torch hub's convention).
IMAGENET_CHECKPOINTS = {
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "mobilenet_v2": "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth",
    "mobilenet_v3_large": "https://download.pytorch.org/models/mobilenet_v3_large-8738ca79.pth",
    "mobilenet_v3_small": "https://download.pytorch.org/models/mobilenet_v3_small-047dcff4.pth",
    "shufflenet_v2_x1_0": "https://download.pytorch.org/models/shufflenetv2_x1-5666bf0f80.pth",
}
IMAGENET = "imagenet"
_HASH_IN_NAME = re.compile(r"-([a-f0-9]+)\.")


def imagenet_cache_path(url: str) -> Path:
    """Where torch's hub cache keeps ``url``'s file: ``torch.hub.get_dir()/checkpoints/<file name>``
    (``$TORCH_HOME/hub/checkpoints``, by default ``~/.cache/torch/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def _check_cached_hash(path: Path) -> None:
    """torch hub checks the sha256 prefix in the file name only when it downloads; a cached file (copied by
    hand, or cut short) is checked here so that a damaged file is named instead of half-loaded."""
    match = _HASH_IN_NAME.search(path.name)
    if not match:
        return
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if not digest.hexdigest().startswith(match.group(1)):
        raise CheckpointError(f"{path}: its sha256 {digest.hexdigest()[:16]}... does not start with {match.group(1)} as its "
                              f"name says: the file is damaged or not the published one. Delete it and run again "
                              f"(or put the file from its URL there).")


def imagenet_state_dict(backbone: nn.Module) -> tuple[dict, str]:
    """torchvision's ImageNet state dict for ``backbone`` and where it came from, through torch's hub cache."""
    name = getattr(backbone, "torchvision_name", None)
    if name not in IMAGENET_CHECKPOINTS:
        hint = getattr(backbone, "pretrained_hint", "")
        raise CheckpointError(f"torchvision publishes no ImageNet checkpoint for this {type(backbone).__name__} configuration"
                              + (f"; {hint}" if hint else "") + "; set pretrained_backbone to null or to a file's path")
    url = IMAGENET_CHECKPOINTS[name]
    path = imagenet_cache_path(url)
    if path.is_file():
        _check_cached_hash(path)
    try:
        state = torch.hub.load_state_dict_from_url(url, map_location="cpu", check_hash=True, weights_only=True)
    except (urllib.error.URLError, OSError) as e:  # offline, or the cache folder is not writable
        raise CheckpointError(
            f"ImageNet weights for {name}: {path.name} is not in torch's hub cache and could not be downloaded "
            f"({e.__class__.__name__}: {e}). Download {url} and put it at {path} (torch's hub cache, "
            f"$TORCH_HOME/hub/checkpoints), or set pretrained_backbone to the file's path, or to null to train "
            f"from random weights") from e
    except RuntimeError as e:  # a download whose hash does not match, or a file that is not a weights-only pickle
        raise CheckpointError(f"ImageNet weights for {name} from {url}: {e}. Delete {path} and run again") from e
    return state, str(path)


def load_pretrained_backbone(backbone: nn.Module, source) -> None:
    """Load a torchvision ImageNet checkpoint into ``backbone``: ``"imagenet"`` (resolved through torch's hub
    cache, see :func:`imagenet_state_dict`) or the path of a file (e.g. ``resnet18-f37072fd.pth``).

    Strict: every backbone parameter/buffer must be in the file with the same shape, and every file
    key must be used except those under ``backbone.pretrained_ignore``. Loaded with
    ``weights_only=True`` so that the file cannot run code.
    """
    if str(source) == IMAGENET:
        state, path = imagenet_state_dict(backbone)
    else:
        path = Path(source)
        if not path.is_file():
            raise CheckpointError(f"pretrained backbone file {str(path)!r} not found; pass the path of a torchvision "
                                  f"ImageNet checkpoint, or 'imagenet' to take torchvision's from torch's hub cache")
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
