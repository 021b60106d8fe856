"""Trained weights that ship inside the package: ``lightseg.create_model(name, weights="camvid")``.

The folder holds the weight files and ``manifest.json``, one record per file::

    {"model": "mininet_211k", "weights": "camvid", "file": "mininet_211k_camvid.pt", "sha256": "...",
     "dataset": "camvid", "num_classes": 11, "classes": [...], "palette": [[r, g, b], ...],
     "normalize": "imagenet", "model_kwargs": {}, "train_splits": ["train", "val"],
     "command": "lightseg train ...", "iterations": 13800, "commit": "...", "val_miou": 0.564,
     "eval_command": "lightseg eval ...", "notes": "..."}

Adding weights is dropping the file here and appending its record (``manifest_record`` fills the
file's name and hash). A file is loaded only when its sha256 matches the record, and with
``weights_only=True``: a modified or truncated file is refused before it is unpickled.
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

from ..errors import CheckpointError, LightsegError
from .. import schema
from ..schema import MAPPING, Rule, first_violation, integer, number, string

# Where the files and manifest.json live; tests point it at a temporary folder.
WEIGHTS_DIR = Path(__file__).resolve().parent
MANIFEST = "manifest.json"
REQUIRED_KEYS = ("model", "weights", "file", "sha256", "dataset", "num_classes", "classes", "palette")


def _plain_name(v) -> bool:
    return isinstance(v, str) and bool(v) and "/" not in v and "\\" not in v and v not in (".", "..")


def _sha256(v) -> bool:
    return isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)


# The type and range of every field lightseg reads from a record (the optional ones when present).
RECORD: dict[str, Rule] = {
    "model": string(),
    "weights": string(),
    "file": Rule("a file name in the weights folder (no path)", _plain_name),
    "sha256": Rule("64 lowercase hex digits", _sha256),
    "dataset": string(),
    "num_classes": integer(1),
    "classes": schema.CLASS_NAMES,
    "palette": schema.PALETTE,
    "normalize": schema.NORMALIZE,
    "ignore_index": schema.IGNORE_INDEX,
    "channel_order": schema.CHANNEL_ORDER,
    "model_kwargs": MAPPING,
    "iterations": integer(0, null=True),
    "val_miou": number(0, 1, null=True),
}


def _manifest_path() -> Path:
    return Path(WEIGHTS_DIR) / MANIFEST


def list_weights() -> list[dict]:
    """Every manifest record (an empty list when no weights are installed)."""
    path = _manifest_path()
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise LightsegError(f"{path}: the weights manifest is unreadable ({e}); reinstall lightseg") from e
    records = data.get("weights", []) if isinstance(data, dict) else None
    if not isinstance(records, list):
        raise LightsegError(f"{path}: expected {{\"weights\": [records]}}; reinstall lightseg")
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            raise LightsegError(f"{path}: record {i} is {type(r).__name__}, not a mapping of fields; reinstall lightseg")
        missing = [k for k in REQUIRED_KEYS if k not in r]
        if missing:
            raise LightsegError(f"{path}: record {i} ({r.get('model')!r}) lacks {', '.join(missing)}")
        bad = first_violation(r, RECORD)
        if bad is not None:
            key, value, expected = bad
            raise LightsegError(f"{path}: record {i} ({r.get('model')!r}) has {key} = {repr(value)[:80]}, expected "
                                f"{expected}; reinstall lightseg")
        if len(r["classes"]) != r["num_classes"] or len(r["palette"]) != r["num_classes"]:
            raise LightsegError(f"{path}: record {i} ({r['model']!r}) has {len(r['classes'])} classes and "
                                f"{len(r['palette'])} colours for num_classes {r['num_classes']}; reinstall lightseg")
    return records


def weights_for(model: str) -> list[dict]:
    """The records of ``model`` (possibly none)."""
    return [r for r in list_weights() if r["model"] == model]


def _available() -> str:
    records = list_weights()
    if not records:
        return "no model has trained weights in this installation yet"
    return "models with weights: " + ", ".join(f"{r['model']} (weights={r['weights']!r})" for r in records)


def find_weights(model: str, weights: str) -> dict:
    """The manifest record of ``model`` trained as ``weights`` (e.g. ``"camvid"``), or a clear error."""
    records = list_weights()
    for r in records:
        if r["model"] == model and r["weights"] == weights:
            return r
    own = [r["weights"] for r in records if r["model"] == model]
    if own:
        raise LightsegError(f"{model} has no weights named {weights!r}; it has: {', '.join(map(repr, own))}")
    raise LightsegError(f"{model} has no trained weights named {weights!r}; {_available()}. "
                        f"Train it yourself (lightseg train configs/{model}_{weights}.yaml) and pass --checkpoint")


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_weights(record: dict) -> dict:
    """The checkpoint dict of a manifest ``record`` ({"model": state_dict, ...}), hash-checked, weights-only."""
    import torch

    path = Path(WEIGHTS_DIR) / record["file"]
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: the weight file of {record['model']} ({record['weights']}) is missing; "
                              "reinstall lightseg") from None
    digest = sha256_of(data)
    if digest != record["sha256"]:
        raise CheckpointError(f"{path}: refused: its sha256 is {digest}, the manifest says {record['sha256']}; the file "
                              "was modified or truncated. Reinstall lightseg (pip install --force-reinstall lightseg)")
    # Hash and unpickle the same bytes: nothing can swap the file in between.
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - the weights-only unpickler refuses anything but tensors
        raise CheckpointError(f"{path}: refused: not a weights-only file ({e.__class__.__name__}: {str(e)[:200]})") from e
    if isinstance(obj, dict) and "model" not in obj:
        obj = {"model": obj}
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict, got {type(obj).__name__}")
    from ..checkpoint import _check_metadata

    _check_metadata(obj, path)
    return obj


def resolve_init_source(spec: str, model: str) -> tuple[dict, str, str]:
    """``model.init_from`` / ``--init-from``: a shipped weights name of ``model`` (``camvid``) or the path of a
    lightseg checkpoint or plain state dict. -> (checkpoint dict, the file, its sha256); loaded weights-only."""
    from ..checkpoint import load_checkpoint

    path = Path(spec).expanduser()
    # A bare word is a shipped name even when the current folder holds a folder of that name (a dataset)
    looks_like_file = path.suffix.lower() in (".pt", ".pth", ".ckpt", ".bin") or "/" in spec or path.is_file()
    if not looks_like_file:
        try:
            record = find_weights(model, spec)
        except LightsegError as e:
            raise CheckpointError(f"--init-from {spec!r}: no such file, and {e}") from None
        return load_weights(record), str(Path(WEIGHTS_DIR) / record["file"]), record["sha256"]
    if path.is_dir():
        raise CheckpointError(f"--init-from {spec}: is a folder; pass the .pt file in it (e.g. {path / 'best.pt'})")
    try:
        digest = sha256_of(path.read_bytes())
    except OSError as e:
        raise CheckpointError(f"--init-from {spec}: cannot be read ({e.strerror}); pass a .pt file written by "
                              f"lightseg train or torch.save, or a shipped weights name of {model}") from None
    return load_checkpoint(path), str(path), digest


def manifest_record(path, model: str, weights: str, **fields) -> dict:
    """A manifest record for the weight file ``path`` (its name and sha256 filled in)."""
    path = Path(path)
    return {"model": model, "weights": weights, "file": path.name, "sha256": sha256_of(path.read_bytes()), **fields}
