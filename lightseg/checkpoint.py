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

import contextlib
import io
import os
import tempfile
import zipfile
from pathlib import Path

import torch
import torch.nn as nn

from .errors import CheckpointError
from .outputs import WRITE_ERRNOS, write_error
from . import schema
from .schema import MAPPING, Rule, first_violation, integer, list_of, number, string

FORMAT_VERSION = 1
# Models take RGB input (lightseg.data.read_image): recorded in checkpoints so that a reader can check it.
CHANNEL_ORDER = "RGB"


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

    A crash at any moment leaves either the old file or the new one, never half a file (a kill -9
    can leave the temporary ``.<name>.*.tmp``: see :func:`remove_stale_temp_files`). A full disk or a
    read-only folder raises ``OutputError`` naming the path; the old file stays as it was. The file gets
    the permissions of a newly created one (:func:`new_file_mode`).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise write_error(e, path) from e
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
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError) and e.errno in WRITE_ERRNOS:
            kept = f"{path.name} was not changed" if path.exists() else ""
            raise write_error(e, path, kept) from e
        raise
    return path


def remove_stale_temp_files(folder, names) -> list[Path]:
    """Delete the ``.<name>.*.tmp`` files that a process killed during :func:`atomic_write_bytes` left in
    ``folder`` for each of ``names``. Only call it while no other process writes those names there."""
    removed = []
    folder = Path(folder)
    if folder.is_dir():
        for name in names:
            for tmp in folder.glob(f".{name}.*.tmp"):
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
                    removed.append(tmp)
    return removed


def non_finite_tensor(tensors) -> str | None:
    """The name of the first floating-point tensor of a ``{name: tensor}`` dict (nested dicts/lists
    searched too) holding NaN or infinity, or None."""
    stack = [("", tensors)]
    while stack:
        prefix, obj = stack.pop()
        if isinstance(obj, torch.Tensor):
            if obj.is_floating_point() and not bool(torch.isfinite(obj).all()):
                return prefix or "tensor"
        elif isinstance(obj, dict):
            stack.extend((f"{prefix}.{k}" if prefix else str(k), v) for k, v in reversed(list(obj.items())))
        elif isinstance(obj, (list, tuple)):
            stack.extend((f"{prefix}[{i}]", v) for i, v in reversed(list(enumerate(obj))))
    return None


def save_checkpoint(state: dict, path) -> Path:
    """Atomically save ``state`` (must hold ``model``); adds ``format_version``.

    Refuses a model with NaN/inf weights (a diverged run): such a file must never replace a good one.
    The file is serialised in memory first, so that a full disk is reported as such (torch's own
    writer turns it into an obscure 'unexpected pos' error).
    """
    if "model" not in state:
        raise ValueError("a checkpoint needs a 'model' state dict")
    bad = non_finite_tensor(state["model"])
    if bad is not None:
        raise CheckpointError(f"not saving {path}: weight {bad!r} holds NaN or infinite values (the training diverged)")
    state = {"format_version": FORMAT_VERSION, **state}
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getbuffer()
    return atomic_write_bytes(path, lambda f: f.write(data))


def _not_a_checkpoint(path: Path) -> str | None:
    """Why ``path`` cannot be a torch checkpoint, judged from its bytes (None: it may be one)."""
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(b"PK\x03\x04"):  # torch.save's zip format
        if not zipfile.is_zipfile(path):
            return ("is truncated (the zip archive written by torch.save has no end record: an incomplete copy "
                    "or download); copy it again, or use another checkpoint")
        return None
    if head[:1] == b"\x80":  # the legacy (pickle) format
        return None
    # ONNX: a protobuf ModelProto, field 1 (ir_version) first, then the producer ("pytorch", ...)
    if path.suffix.lower() == ".onnx" or (head[:1] == b"\x08" and b"\x12" in head[:4]):
        # An .onnx file holds no class names, palette or normalisation, so lightseg runs the .pt it came from.
        return ("is an ONNX model, not a PyTorch checkpoint; pass the .pt it was exported from, and add "
                "--backend onnxruntime to run that through ONNX Runtime")
    if not head:
        return "is empty; pass a .pt file written by lightseg train or torch.save"
    return (f"is not a PyTorch checkpoint (it starts with bytes {head[:4]!r}, not a torch.save archive); "
            "pass a .pt file written by lightseg train or torch.save")


# What lightseg reads from a checkpoint besides the weights, with the type and range each must have (null:
# absent). ``config`` is the run's recipe: its keys are checked against the recipe schema too.
METADATA: dict[str, Rule] = {
    "format_version": integer(0),
    "model_name": string(null=True),
    "num_classes": integer(1, null=True),
    "classes": schema.CLASS_NAMES,
    "palette": schema.PALETTE,
    "config": MAPPING,
    "iteration": integer(0, null=True),
    "epoch": integer(0, null=True),
    "max_iters": integer(0, null=True),
    "optimizer_steps": integer(0, null=True),
    "train_samples": integer(0, null=True),
    "best_miou": number(-1, 1, null=True),
    "val_pending": Rule("true or false", lambda v: v is None or isinstance(v, bool)),
    "optimizer_name": string(null=True),
    # what the weights expect of their input, so that eval and predict feed them the same
    "normalize": schema.NORMALIZE,
    "ignore_index": schema.IGNORE_INDEX,
    "channel_order": schema.CHANNEL_ORDER,
    # what a resume compares: intra-op threads (float sums depend on them) and the training files
    "num_threads": integer(1, null=True),
    "data_fingerprint": string(null=True),
    "data_samples": list_of(lambda h: isinstance(h, str), "a list of sample fingerprints (strings)", null=True, empty=True),
}
# Tensor dtypes a state dict of these models holds (weights, BatchNorm counters, masks).
_WEIGHT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int64, torch.int32, torch.int16,
                  torch.int8, torch.uint8, torch.bool)


def _bad(path: Path, what: str) -> CheckpointError:
    return CheckpointError(f"{path}: {what}; the file was not written by lightseg train: fix or drop that key")


def _check_metadata(obj: dict, path: Path) -> None:
    """Every value lightseg reads from a checkpoint has the type, range and (tensors) dtype, layout and device it
    expects (:data:`METADATA`): a malformed file is refused naming the key, not a traceback later."""
    state = obj["model"]
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointError(f"{path}: 'model' is a {type(state).__name__} of other things, not a state dict "
                              f"(parameter names -> tensors); re-save it with torch.save(model.state_dict(), path)")
    for key, t in state.items():
        if t.layout != torch.strided or t.is_quantized or t.device.type == "meta" or t.dtype not in _WEIGHT_DTYPES:
            raise CheckpointError(f"{path}: weight {key!r} is a {t.dtype} tensor with layout {t.layout} on device "
                                  f"{t.device.type}; lightseg loads dense real-valued tensors with their data: re-save the "
                                  f"model's own state_dict() (dense, on the CPU)")
    bad = first_violation(obj, METADATA)
    if bad is not None:
        key, value, expected = bad
        raise _bad(path, f"metadata {key!r} is {repr(value)[:80]} ({type(value).__name__}), expected {expected}")
    n, classes, palette = obj.get("num_classes"), obj.get("classes"), obj.get("palette")
    if n is not None and classes and len(classes) != n:
        raise _bad(path, f"metadata 'classes' names {len(classes)} classes but 'num_classes' is {n}")
    if classes and palette and len(palette) != len(classes):
        raise _bad(path, f"metadata 'palette' has {len(palette)} colours for {len(classes)} classes")
    config = obj.get("config")
    if config:
        from .config import SCHEMA  # the recipe's rules (lightseg.config imports this module)

        for dotted, rule in SCHEMA.items():
            value, found = config, True
            for part in dotted.split("."):
                if not isinstance(value, dict) or part not in value:
                    found = False
                    break
                value = value[part]
            if found and not rule.ok(value):
                raise _bad(path, f"metadata 'config' has {dotted} = {repr(value)[:80]} ({type(value).__name__}), "
                                 f"expected {rule.expected}")


def load_checkpoint(path, map_location="cpu") -> dict:
    """Load a lightseg checkpoint with ``weights_only=True``.

    A plain state dict (e.g. saved with ``torch.save(model.state_dict())``) is accepted and wrapped
    as ``{"model": state_dict}``; the ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) prefixes
    are stripped. Refused with a ``CheckpointError`` naming the file: anything that needs arbitrary
    unpickling, a file that is not a torch checkpoint (ONNX, truncated, other), malformed metadata
    and weights holding NaN/inf.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} not found; pass the path of a .pt file written by `lightseg train`")
    why = _not_a_checkpoint(path)
    if why:
        raise CheckpointError(f"{path} {why}")
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
    _check_metadata(obj, path)
    version = obj.get("format_version", FORMAT_VERSION)
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {version} is newer than this lightseg understands ({FORMAT_VERSION}); upgrade lightseg")
    obj["model"] = strip_wrapper_prefixes(obj["model"])
    bad = non_finite_tensor(obj["model"])
    if bad is not None:
        raise CheckpointError(f"{path}: weight {bad!r} holds NaN or infinite values: the training that wrote it diverged. "
                              f"Use an earlier checkpoint (best.pt, or a last.pt saved before it diverged) or train again "
                              f"with a lower train.optimizer.lr")
    return obj


# What the weights expect of their input, as recorded (key -> the setting's name in messages).
TRAINED_INPUT = {"normalize": "data.normalize", "classes": "classes", "ignore_index": "ignore index",
                 "channel_order": "input channel order"}


def trained_input(meta: dict) -> dict:
    """What the weights of a checkpoint or weights-manifest record were trained with (see ``TRAINED_INPUT``);
    None where it was not recorded (an older checkpoint, a bare state dict)."""
    config = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    return {"normalize": meta.get("normalize") or data.get("normalize"),
            "classes": list(meta["classes"]) if meta.get("classes") else None,
            "ignore_index": meta.get("ignore_index"), "channel_order": meta.get("channel_order")}


def check_trained_input(trained: dict, used: dict, source) -> None:
    """Refuse to run weights on input prepared otherwise than they were trained on (another normalisation, other
    classes, ignore index or channel order): the scores would be wrong with no other sign. Names both values."""
    diffs = []
    for key, name in TRAINED_INPUT.items():
        was, now = trained.get(key), used.get(key)
        if was is None or now is None or was == now:
            continue
        if key == "classes":
            i = next((i for i, (a, b) in enumerate(zip(was, now)) if a != b), min(len(was), len(now)))
            diffs.append(f"classes: trained with {len(was)} ({', '.join(was[:3])}...), this dataset has {len(now)} "
                         f"(class {i}: {was[i] if i < len(was) else 'none'!r} vs {now[i] if i < len(now) else 'none'!r})")
        else:
            diffs.append(f"{name}: trained with {was!r}, this run uses {now!r}")
    if diffs:
        fix = f" (--set data.normalize={trained['normalize']})" if trained.get("normalize") != used.get("normalize") else ""
        raise CheckpointError(f"{source} was trained on other input than this run would give it: {'; '.join(diffs)}. "
                              f"Use the recipe and dataset it was trained with{fix}")


def strip_wrapper_prefixes(state: dict) -> dict:
    """Drop the ``module.`` (DDP) / ``_orig_mod.`` (torch.compile) prefix that wrappers add to every key."""
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def load_model_weights(model: nn.Module, checkpoint, path_for_errors="checkpoint") -> None:
    """Load ``checkpoint['model']`` into ``model`` strictly; mismatches name the keys and shapes."""
    state = checkpoint["model"] if isinstance(checkpoint, dict) and "model" in checkpoint else checkpoint
    state = strip_wrapper_prefixes(state)  # DDP / torch.compile wrappers: checkpoints stay portable
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
