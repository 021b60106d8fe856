"""The ``lightseg export`` verb: load a checkpoint (:mod:`.runtime`), export and check it (:mod:`.export`).

It sits above both so that the deploy package has one direction: export, then runtime, then the
verbs (this module, predict, bench).
"""
from __future__ import annotations

from ..errors import LightsegError
from pathlib import Path

from ..outputs import check_output_file, check_outputs_apart, remove_stale_temp_files
from .export import PARITY_MAX_ABS, PARITY_MIN_AGREEMENT, export_onnx
from .runtime import checkpoint_normalization, load_model


def export_command(args) -> dict:
    """``lightseg export [--model NAME] [--checkpoint CKPT | --weights NAME] [--num-classes N] --size H W [--dynamic] -o model.onnx``."""
    int8_mode = getattr(args, "int8_mode", None)
    if not args.int8 and (args.calib or args.calib_count or int8_mode not in (None, "auto")):
        raise LightsegError("--calib, --calib-count and --int8-mode apply to int8 quantisation; add --int8 or drop them")
    check_output_file(args.output, "-o/--output", example="model.onnx")  # before the export's work
    check_outputs_apart([("--checkpoint", args.checkpoint), ("--calib", args.calib)], [("-o/--output", args.output, None)])
    out = Path(args.output)
    remove_stale_temp_files(out.parent, (out.name, "*.onnx"))  # what an export killed while writing left
    device = getattr(args, "device", "auto")
    weights = getattr(args, "weights", None)
    if weights is not None:
        if args.checkpoint is not None:
            raise LightsegError("pass either --checkpoint or --weights, not both")
        if args.model is None:
            raise LightsegError(f"--weights {weights} needs --model NAME")
        from ..models import create_model

        model = create_model(args.model, weights=weights, num_classes=args.num_classes)
        normalize = model.normalize
    else:
        model, ckpt = load_model(args.model, checkpoint=args.checkpoint, num_classes=args.num_classes)
        normalize = checkpoint_normalization(ckpt)
    name = getattr(model, "lightseg_name", args.model)
    result = export_onnx(model, args.output, input_size=tuple(args.size), dynamic=args.dynamic, int8=args.int8,
                         calibration=args.calib, calibration_count=args.calib_count, normalize=normalize,
                         int8_mode=int8_mode, device=device)
    print(f"wrote {result['path']} ({result['bytes'] / 1e6:.1f} MB, opset {result['opset']}, "
          f"{'dynamic batch/H/W' if args.dynamic else 'static shape'}{', int8 ' + result['int8_mode'] if args.int8 else ''}) "
          f"in {result['export_s']:.1f} s")
    if not result.get("ok", True):
        raise RuntimeError(f"{name}: ONNX Runtime output differs from PyTorch beyond the tolerance "
                           f"(max abs {PARITY_MAX_ABS}, argmax agreement {PARITY_MIN_AGREEMENT}%); see the parity lines above")
    return result
