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

import io
import zipfile
from pathlib import Path

import torch
import torch.nn as nn

from .errors import CheckpointError
# The atomic, link-refusing writers live in outputs.py; imported here, where most callers look for them.
from .outputs import atomic_write_bytes, new_file_mode, remove_stale_temp_files  # noqa: F401
from .outputs import WRITE_ERRNOS, write_error
from . import schema
from .schema import MAPPING, Rule, first_violation, integer, list_of, number, string

FORMAT_VERSION = 1
# Models take RGB input (lightseg.data.read_image): recorded in checkpoints so that a reader can check it.
CHANNEL_ORDER = "RGB"


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


# torch.save stores each tensor as one uncompressed zip entry: a checkpoint of lightseg's models holds a
# few hundred. Bounds read from the zip's directory before torch.load inflates anything.
MAX_CHECKPOINT_ENTRIES = 100_000
MAX_INFLATION = 4  # declared uncompressed bytes per byte of file (torch stores: 1)


def _zip_out_of_bounds(path: Path) -> str | None:
    """Why the zip directory of ``path`` declares more than a checkpoint can be (None: within bounds)."""
    from .bounds import available_memory

    try:
        with zipfile.ZipFile(path) as z:
            entries = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        return f"is not a readable zip archive ({e}); copy it again, or use another checkpoint"
    if len(entries) > MAX_CHECKPOINT_ENTRIES:
        return (f"holds {len(entries)} zip entries, over the {MAX_CHECKPOINT_ENTRIES} a checkpoint can need; "
                "refused before loading (it is not a torch.save file of a model)")
    declared = sum(e.file_size for e in entries)
    size = path.stat().st_size
    available = available_memory()
    if declared > MAX_INFLATION * size + 2 ** 20 or (available is not None and declared > available):
        limit = f"{available / 1024 ** 3:.1f} GB available" if available is not None else "no memory figure"
        return (f"declares {declared / 1024 ** 3:.2f} GB of uncompressed data in a {size / 1024 ** 2:.1f} MB file "
                f"(at most {MAX_INFLATION}x the file, {limit}); refused before loading: a zip bomb, not a checkpoint")
    return None


def _not_a_checkpoint(path: Path) -> str | None:
    """Why ``path`` cannot be a torch checkpoint, judged from its bytes (None: it may be one)."""
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(b"PK\x03\x04"):  # torch.save's zip format
        if not zipfile.is_zipfile(path):
            return ("is truncated (the zip archive written by torch.save has no end record: an incomplete copy "
                    "or download); copy it again, or use another checkpoint")
        return _zip_out_of_bounds(path)
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
    "data_fingerprint_kind": string(null=True),
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
            f"re-save the weights with torch.save(model.state_dict(), path). Detail: {e.__class__.__name__}: "
            f"{' '.join(str(e).split())[:300]}"
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


def load_matching_weights(model: nn.Module, checkpoint, source="checkpoint") -> dict:
    """Fine-tuning's load: copy into ``model`` every tensor of ``checkpoint['model']`` (or a plain state dict)
    whose name and shape match; the model's other tensors keep their values (its fresh initialisation).

    Returns ``{"loaded": [names], "reinitialized": [names], "unused": [source names]}``. Refuses (naming
    ``source``) a source of which no weight matches: another architecture, not a starting point.
    """
    state = checkpoint["model"] if isinstance(checkpoint, dict) and "model" in checkpoint else checkpoint
    state = strip_wrapper_prefixes(state)
    own = model.state_dict()
    loaded = [k for k, v in own.items() if k in state and tuple(state[k].shape) == tuple(v.shape)]
    if not [k for k in loaded if not k.endswith("num_batches_tracked")]:
        name = getattr(model, "lightseg_name", type(model).__name__)
        raise CheckpointError(f"{source}: none of its {len(state)} tensors matches {name} by name and shape (it holds "
                              f"{', '.join(list(state)[:3]) or 'nothing'} ...): it is another model's. Pass weights of "
                              f"{name}: a shipped name (lightseg models lists them) or a checkpoint trained with it")
    model.load_state_dict({k: state[k] for k in loaded}, strict=False)
    taken = set(loaded)
    return {"loaded": loaded, "reinitialized": [k for k in own if k not in taken],
            "unused": [k for k in state if k not in taken]}


def _by_module(names) -> str:
    """'classifier (weight, bias); aux.0 (weight)': tensor names grouped by the module that holds them."""
    groups: dict = {}
    for name in names:
        module, _, leaf = name.rpartition(".")
        groups.setdefault(module or "(top)", []).append(leaf)
    return "; ".join(f"{m} ({', '.join(leaves)})" for m, leaves in groups.items())


def format_init_report(head: str, report: dict) -> str:
    """The lines ``lightseg train --init-from`` prints: what was loaded, re-initialised and left unused."""
    n_model = len(report["loaded"]) + len(report["reinitialized"])
    lines = [f"{head}: loaded {len(report['loaded'])} of the model's {n_model} tensors (name and shape match)"]
    if report["reinitialized"]:
        lines.append(f"  re-initialised {len(report['reinitialized'])} (not in the source, or another shape): "
                     f"{_by_module(report['reinitialized'])}")
    if report["unused"]:
        lines.append(f"  unused from the source {len(report['unused'])}: {_by_module(report['unused'])}")
    return "\n".join(lines)
