"""The ``lightseg export`` verb: load a checkpoint (:mod:`.runtime`), export and check it (:mod:`.export` for
ONNX, :mod:`.format_openvino`, :mod:`.format_executorch`, :mod:`.format_ncnn`).

It sits above them so that the deploy package has one direction: export, then runtime, then the
verbs (this module, predict, bench).
"""
from __future__ import annotations

import sys
from pathlib import Path

from ..errors import LightsegError
from ..outputs import check_output_file, check_outputs_apart, remove_stale_temp_files
from .export import PARITY_MAX_ABS, PARITY_MIN_AGREEMENT, export_onnx
from .metadata import EXAMPLE_NAMES, build_metadata, exported_files, format_of
from .runtime import checkpoint_normalization, format_module, load_model

EXPORT_FORMATS = ("onnx", "openvino", "executorch", "ncnn")
RANDOM_WEIGHTS_WARNING = ("warning: random weights: pass --checkpoint or --weights (this export holds an untrained "
                          "model, whose labels mean nothing)")


def export_model(model, output, fmt, input_size, metadata, precision=None, **onnx_options) -> dict:
    """Export ``model`` to ``output`` in ``fmt`` with ``metadata`` and its parity check (the verb's Python API)."""
    if fmt == "onnx":
        if precision not in (None, "auto", "f32", "fp32"):
            raise LightsegError(f"--precision {precision} does not apply to ONNX (fp32, or --int8)")
        return export_onnx(model, output, input_size=input_size, metadata=metadata, **onnx_options)
    mod = format_module(fmt)
    if fmt == "ncnn":
        return mod.export_ncnn(model, output, input_size, metadata=metadata, precision=precision)
    if precision not in (None, "auto", "f32", "fp32"):
        raise LightsegError(f"--precision {precision} does not apply to the {fmt} export: its file is fp32"
                            + ("; the precision is chosen when it runs (--precision of predict, eval and bench)"
                               if fmt == "openvino" else ""))
    return getattr(mod, f"export_{fmt}")(model, output, input_size, metadata=metadata)


def export_command(args) -> dict:
    """``lightseg export [--model NAME] [--checkpoint CKPT | --weights NAME] --size H W [--format F] -o FILE``."""
    int8_mode = getattr(args, "int8_mode", None)
    fmt = getattr(args, "format", None) or format_of(args.output) or "onnx"
    if format_of(args.output) not in (None, fmt):
        raise LightsegError(f"-o {args.output} names a {format_of(args.output)} file but --format is {fmt}; "
                            f"name it like {EXAMPLE_NAMES[fmt]}")
    if not args.int8 and (args.calib or args.calib_count or int8_mode not in (None, "auto")):
        raise LightsegError("--calib, --calib-count and --int8-mode apply to int8 quantisation; add --int8 or drop them")
    if args.int8 and fmt != "onnx":
        raise LightsegError(f"--int8 is the ONNX Runtime int8 export; the {fmt} export is fp32 (drop --int8, or --format onnx)")
    if fmt != "onnx" and args.dynamic:
        raise LightsegError(f"--dynamic applies to ONNX; the {fmt} export has a static shape (one --size)")
    files = exported_files(args.output, fmt)
    for f in files:  # before the export's work: the model file and what goes beside it (.bin, .json)
        check_output_file(f, "-o/--output", example=EXAMPLE_NAMES[fmt])
    check_outputs_apart([("--checkpoint", args.checkpoint), ("--calib", args.calib)],
                        [("-o/--output", str(f), None) for f in files])
    out = Path(args.output)
    remove_stale_temp_files(out.parent, tuple(f.name for f in files) + ("*.onnx",))  # what an export killed while writing left
    device = getattr(args, "device", "auto")
    weights = getattr(args, "weights", None)
    ckpt = None
    if weights is not None:
        if args.checkpoint is not None:
            raise LightsegError("pass either --checkpoint or --weights, not both")
        if args.model is None:
            raise LightsegError(f"--weights {weights} needs --model NAME")
        from ..models import create_model

        model = create_model(args.model, weights=weights, num_classes=args.num_classes)
        normalize, source = model.normalize, f"weights:{weights}"
    else:
        model, ckpt = load_model(args.model, checkpoint=args.checkpoint, num_classes=args.num_classes)
        normalize, source = checkpoint_normalization(ckpt), args.checkpoint
    if source is None:
        print(RANDOM_WEIGHTS_WARNING, file=sys.stderr)
    name = getattr(model, "lightseg_name", args.model)
    size = tuple(args.size)
    metadata = build_metadata(model, size, fmt, classes=(ckpt or {}).get("classes"), palette=(ckpt or {}).get("palette"),
                              normalize=normalize, source=source)
    if fmt == "onnx":
        result = export_model(model, args.output, fmt, size, metadata, getattr(args, "precision", None),
                              dynamic=args.dynamic, int8=args.int8, calibration=args.calib,
                              calibration_count=args.calib_count, normalize=normalize, int8_mode=int8_mode, device=device)
        detail = (f"opset {result['opset']}, {'dynamic batch/H/W' if args.dynamic else 'static shape'}"
                  f"{', int8 ' + result['int8_mode'] if args.int8 else ''}")
    else:
        if str(device) not in ("auto", "cpu"):
            raise LightsegError(f"the {fmt} export checks its file on the CPU; drop --device {device}")
        result = export_model(model, args.output, fmt, size, metadata, getattr(args, "precision", None))
        detail = f"{fmt}, static shape, " + ", ".join(Path(f).name for f in result["files"])
    print(f"wrote {result['path']} ({result['bytes'] / 1e6:.1f} MB, {detail}) in {result['export_s']:.1f} s")
    if not result.get("ok", True):
        c = result["checks"][0]
        raise RuntimeError(f"{name}: the {fmt} model's output differs from PyTorch beyond the tolerance "
                           f"(max abs {c.get('max_abs_allowed', PARITY_MAX_ABS):g}, argmax agreement "
                           f"{c.get('min_agreement', PARITY_MIN_AGREEMENT):g}%); see the parity lines above")
    return result
