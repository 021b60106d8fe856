"""Checkpoints: plain dicts of tensors and Python values, written atomically, loaded weights-only.

Format (``FORMAT_VERSION`` 1)::

    {"format_version": 1, "model": state_dict, "model_name": str, "num_classes": int,
     "classes": [str, ...], "palette": [[r, g, b], ...], "config": dict,
     "optimizer": ..., "scheduler": ..., "scaler": ..., "iteration": int, "epoch": int,
     "rng": {...}, "best_miou": float, ...}

Only ``model`` is required to load weights; training adds the rest. ``weights_only=True`` means a
file holding anything but tensors and plain containers (e.g. a malicious pickle) is refused
without running it.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
import torch.nn as nn

from .errors import CheckpointError

FORMAT_VERSION = 1


def new_file_mode() -> int:
    """The permission bits ``open()`` gives a new file: 0o666 less the process umask.

    Temporary files are created 0o600 (``mkstemp``); renamed into place as they are, outputs in a shared
    folder would be unreadable to the others, whatever their umask says.
    """
    try:  # Linux reports the umask without changing it (os.umask can only be read by setting it)
        with open("/proc/self/status") as f:
            mask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path, write_fn) -> Path:
    """Call ``write_fn(fileobj)`` on a temporary file beside ``path``, fsync, then rename over ``path``.

    A crash at any moment leaves either the old file or the new one, never half a file. The file gets the
    permissions of a newly created one (:func:`new_file_mode`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, new_file_mode())
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        try:  # make the rename itself durable
            dfd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:
            pass
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def save_checkpoint(state: dict, path) -> Path:
    """Atomically save ``state`` (must hold ``model``); adds ``format_version``."""
    if "model" not in state:
        raise ValueError("a checkpoint needs a 'model' state dict")
    state = {"format_version": FORMAT_VERSION, **state}
    return atomic_write_bytes(path, lambda f: torch.save(state, f))


def load_checkpoint(path, map_location="cpu") -> dict:
    """Load a lightseg checkpoint with ``weights_only=True``.

    A plain state dict (e.g. saved with ``torch.save(model.state_dict())``) is accepted and wrapped
    as ``{"model": state_dict}``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} not found; pass the path of a .pt file written by `lightseg train`")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - the unpickler refuses anything but tensors and plain types
        raise CheckpointError(
            f"{path}: refused: it is not a weights-only checkpoint (it would need arbitrary unpickling, "
            f"which can run code) or it is corrupt. Only load checkpoints from sources you trust; "
            f"re-save the weights with torch.save(model.state_dict(), path). Detail: {e.__class__.__name__}: {str(e)[:300]}"
        ) from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict, got {type(obj).__name__}")
    if "model" not in obj:
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            obj = {"model": obj}
        else:
            raise CheckpointError(f"{path}: no 'model' key; keys are {sorted(map(str, obj))[:10]}")
    version = obj.get("format_version", FORMAT_VERSION)
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {version} is newer than this lightseg understands ({FORMAT_VERSION}); upgrade lightseg")
    return obj


def load_model_weights(model: nn.Module, checkpoint, path_for_errors="checkpoint") -> None:
    """Load ``checkpoint['model']`` into ``model`` strictly; mismatches name the keys and shapes."""
    state = checkpoint["model"] if isinstance(checkpoint, dict) and "model" in checkpoint else checkpoint
    # DDP / torch.compile wrappers add prefixes: strip them so checkpoints stay portable.
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shape = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shape:
        parts = [f"{path_for_errors} does not match the model {getattr(model, 'lightseg_name', type(model).__name__)}"]
        if shape:
            parts.append("shape mismatch (different num_classes or architecture?): " + "; ".join(shape[:5]))
        if missing:
            parts.append(f"missing keys: {', '.join(missing[:8])}" + (f" ... ({len(missing)})" if len(missing) > 8 else ""))
        if unexpected:
            parts.append(f"unexpected keys: {', '.join(unexpected[:8])}" + (f" ... ({len(unexpected)})" if len(unexpected) > 8 else ""))
        raise CheckpointError("; ".join(parts) + ". Use the model name and num_classes the checkpoint was trained with.")
    model.load_state_dict(state, strict=True)
