"""What an exported model needs besides its graph, stored with it, so that it runs with no other argument.

:func:`build_metadata` makes one dict for every format: the model's name, number of classes, class names, palette,
normalisation (its name and the per-channel mean and std, on 0..255 pixel values), the input size (H, W) it was
exported at, the channel order of the input ("RGB") and its layout ("NCHW"), the lightseg version, the sha256 of the
weights (:func:`state_dict_sha256`: of the tensors themselves, so it is the same whether they came from a
checkpoint, shipped weights or memory), where the weights came from, the format and its numeric precision.

Where it is stored, per format (:func:`onnx_with_metadata`, :func:`write_sidecar`, :func:`read_metadata`):

* ONNX (``.onnx``): a ``metadata_props`` entry ``lightseg.metadata`` holding the JSON.
* OpenVINO (``.xml``): the model's ``rt_info`` entry ``lightseg_metadata`` holding the JSON (in the .xml itself).
* ExecuTorch (``.pte``) and ncnn (``.ncnn.param``): a sidecar file, the model's path plus ``.json``
  (``model.pte.json``, ``model.ncnn.param.json``); keep it beside the model when copying it.

A file without it (a plain ``torch.onnx.export``, another tool's conversion) is refused by
:func:`read_metadata` with a message naming what is missing and the command that writes a file that has it.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from ..errors import LightsegError

ONNX_KEY = "lightseg.metadata"
OPENVINO_KEY = "lightseg_metadata"
SIDECAR_SUFFIX = ".json"
CHANNEL_ORDER = "RGB"
LAYOUT = "NCHW"
REQUIRED = ("model", "num_classes", "classes", "palette", "normalize", "mean", "std", "input_size",
            "channel_order", "lightseg_version", "weights_sha256", "format")
# Formats by how their file name ends (the longest match first: model.ncnn.param is ncnn, not "param").
FORMATS = {".ncnn.param": "ncnn", ".onnx": "onnx", ".xml": "openvino", ".pte": "executorch"}
EXAMPLE_NAMES = {"onnx": "model.onnx", "openvino": "model.xml", "executorch": "model.pte", "ncnn": "model.ncnn.param"}


class MetadataError(LightsegError):
    """An exported model without the lightseg metadata it needs to run on its own, or with malformed metadata."""


def format_of(path) -> str | None:
    """The export format a file name says (``onnx``, ``openvino``, ``executorch``, ``ncnn``), or None."""
    name = Path(path).name.lower()
    return next((fmt for end, fmt in FORMATS.items() if name.endswith(end)), None)


def sidecar_path(path) -> Path:
    """Where the JSON of a format without its own metadata store lives: the model's path plus ``.json``."""
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def exported_files(path, fmt) -> list[Path]:
    """Every file an export of ``fmt`` to ``path`` writes: the model file first, then its weights
    (OpenVINO's ``.bin``, ncnn's ``.ncnn.bin``) and the sidecar JSON of the formats that need one."""
    path = Path(path)
    files = [path]
    if fmt in ("openvino", "ncnn"):
        stem = path.name[: -len(path.suffix)] if path.suffix else path.name
        files.append(path.with_name(stem + ".bin"))
    if fmt in ("executorch", "ncnn"):
        files.append(sidecar_path(path))
    return files


def state_dict_sha256(model) -> str:
    """sha256 over the model's state dict: each tensor's name, dtype, shape and bytes, in key order."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def build_metadata(model, input_size, fmt, classes=None, palette=None, normalize=None, source=None,
                   precision="f32", **extra) -> dict:
    """The metadata dict of ``model`` exported as ``fmt`` at ``input_size`` (H, W).

    ``classes``/``palette``/``normalize`` default to the model's attributes (shipped weights set them), then to
    "class i", :func:`lightseg.viz.palette_for` and imagenet. ``source``: where the weights came from (a
    checkpoint path, ``weights:camvid``, or None for random weights). ``extra``: format-specific keys
    (``int8_mode``, ...), kept as given.
    """
    from .. import __version__
    from ..data.base import NORMALIZATIONS
    from ..viz import palette_for

    n = int(getattr(model, "num_classes", 0) or 0) or len(classes or ()) or 19
    classes = list(classes or getattr(model, "classes", None) or [f"class {i}" for i in range(n)])
    palette = palette or getattr(model, "palette", None) or palette_for(min(n, 255))
    normalize = normalize or getattr(model, "normalize", None) or "imagenet"
    if normalize not in NORMALIZATIONS:
        raise MetadataError(f"normalize {normalize!r} is unknown; use one of {', '.join(NORMALIZATIONS)}")
    mean, std = NORMALIZATIONS[normalize]
    meta = {
        "model": getattr(model, "lightseg_name", type(model).__name__), "num_classes": n, "classes": classes,
        "palette": [[int(v) for v in c] for c in palette][:max(n, 1)], "normalize": normalize,
        "mean": [round(float(v), 4) for v in mean], "std": [round(float(v), 4) for v in std],
        "input_size": [int(v) for v in input_size], "channel_order": CHANNEL_ORDER, "layout": LAYOUT,
        "lightseg_version": __version__, "weights_sha256": state_dict_sha256(model),
        "weights_source": str(source) if source else "random", "format": fmt, "precision": precision,
    }
    meta.update(extra)
    return meta


def _example(fmt) -> str:
    return EXAMPLE_NAMES.get(fmt, "model.onnx")


def how_to_export(fmt) -> str:
    return f"lightseg export --checkpoint best.pt --size H W --format {fmt or 'onnx'} -o {_example(fmt)}"


def check_metadata(meta, path, fmt=None) -> dict:
    """``meta`` if it holds every :data:`REQUIRED` key with a sensible value; else a :class:`MetadataError`."""
    if not isinstance(meta, dict):
        raise MetadataError(f"{path}: its lightseg metadata is a {type(meta).__name__}, not a JSON object; "
                            f"re-export it: {how_to_export(fmt)}")
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise MetadataError(f"{path}: its lightseg metadata lacks {', '.join(missing)} (written by an older lightseg?); "
                            f"re-export it: {how_to_export(fmt)}")
    n = meta["num_classes"]
    if not isinstance(n, int) or n < 1 or len(meta["classes"]) != n or len(meta["palette"]) < n:
        raise MetadataError(f"{path}: its lightseg metadata is inconsistent ({len(meta['classes'])} class names, "
                            f"{len(meta['palette'])} colours, num_classes {n!r}); re-export it: {how_to_export(fmt)}")
    if meta["channel_order"] != CHANNEL_ORDER:
        raise MetadataError(f"{path}: channel order {meta['channel_order']!r}; lightseg feeds {CHANNEL_ORDER}")
    return meta


def write_sidecar(path, meta) -> Path:
    """Write ``meta`` as the sidecar JSON of the exported file at ``path`` (atomically); returns its path."""
    from ..checkpoint import atomic_write_bytes

    text = json.dumps(meta, indent=2, sort_keys=True).encode()
    return atomic_write_bytes(sidecar_path(path), lambda f: f.write(text))


def _set_onnx_props(proto, props: dict) -> None:
    for key, value in props.items():
        for p in proto.metadata_props:
            if p.key == key:
                p.value = value
                break
        else:
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value


def onnx_with_metadata(data: bytes, meta: dict) -> bytes:
    """ONNX model bytes with ``meta`` added to their ``metadata_props`` (the other entries kept)."""
    import onnx

    proto = onnx.load_from_string(data)
    _set_onnx_props(proto, {ONNX_KEY: json.dumps(meta, sort_keys=True)})
    return proto.SerializeToString()


def missing_extra(package: str, extra: str, what: str) -> LightsegError:
    """The one-line error of an optional runtime that is not installed."""
    return LightsegError(f"{what} needs the {package} package, which is not installed: pip install 'lightseg[{extra}]'")


def openvino_rt_metadata(path) -> str | None:
    """The lightseg JSON in an OpenVINO model's rt_info, or None."""
    try:
        import openvino as ov
    except ImportError:
        raise missing_extra("openvino", "openvino", "an OpenVINO model") from None
    model = ov.Core().read_model(str(path))
    return model.get_rt_info([OPENVINO_KEY]).astype(str) if model.has_rt_info([OPENVINO_KEY]) else None


def _raw_metadata(path: Path, fmt: str):
    """The JSON text stored with ``path``, or None when there is none."""
    if fmt == "onnx":
        import onnx

        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as e:  # noqa: BLE001 - protobuf's errors differ between versions
            raise MetadataError(f"{path} is not a readable ONNX model ({e.__class__.__name__}: {str(e)[:200]})") from e
        return next((p.value for p in proto.metadata_props if p.key == ONNX_KEY), None)
    if fmt == "openvino":
        text = openvino_rt_metadata(path)
        if text is not None:
            return text
    side = sidecar_path(path)
    return side.read_text() if side.is_file() else None


def read_metadata(path) -> dict:
    """The lightseg metadata of an exported model of any format (module docstring), checked.

    Refused with a :class:`MetadataError` naming what is missing and how to re-export: a file of unknown
    format, a missing file, a file without lightseg metadata (a plain ``torch.onnx.export``) or with
    malformed metadata.
    """
    path = Path(path)
    fmt = format_of(path)
    if fmt is None:
        raise MetadataError(f"{path}: not an exported model lightseg knows by its name (.onnx, .xml for OpenVINO, .pte for "
                            f"ExecuTorch, .ncnn.param for ncnn)")
    if not path.is_file():
        raise MetadataError(f"{fmt} model {str(path)!r} not found")
    text = _raw_metadata(path, fmt)
    where = {"onnx": f"metadata_props entry {ONNX_KEY!r}", "openvino": f"rt_info entry {OPENVINO_KEY!r} (or {sidecar_path(path).name})"}
    if text is None:
        raise MetadataError(f"{path} has no lightseg metadata (no {where.get(fmt, sidecar_path(path).name)}): lightseg does not "
                            f"know its model, classes, palette or normalisation. Re-export it with lightseg: {how_to_export(fmt)}"
                            + (f", or put the {sidecar_path(path).name} written with it back beside it" if fmt not in where else ""))
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as e:
        raise MetadataError(f"{path}: its lightseg metadata is not valid JSON ({e}); re-export it: {how_to_export(fmt)}") from None
    return check_metadata(meta, path, fmt)
