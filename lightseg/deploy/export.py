"""ONNX export with a parity check against PyTorch.

``export_onnx`` puts the model in eval mode, folds BatchNorm into the convolutions and applies the
models' exact inference rewrites (:mod:`lightseg.deploy.fuse`), exports with the TorchScript-based exporter (``dynamo=False``: the most
reliable one for these conv nets, and the dynamo exporter needs ``onnxscript``), writes the file
atomically, then runs it under ONNX Runtime and compares with the unfused PyTorch model.
"""
from __future__ import annotations

import copy
import io
import os
import time
import warnings

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..bounds import MAX_SIDE, check_fits, estimate_memory
from ..errors import LightsegError
from .fuse import prepare_for_inference

# Parity thresholds of the fp32 exports: logits within 1e-3, argmax equal on >= 99.9% of pixels.
PARITY_MAX_ABS = 1e-3
PARITY_MIN_AGREEMENT = 99.9
INPUT_NAME, OUTPUT_NAME = "images", "logits"


def _check_size(input_size, batch=1):
    """(H, W) of an export's input size: at least 64, at most ``MAX_SIDE``, and an example input (the trace and
    the parity check run the model on one) that fits in the memory available."""
    try:
        h, w = (int(v) for v in input_size)
    except (TypeError, ValueError):
        raise LightsegError(f"input size must be two integers H W, got {input_size!r}") from None
    if h < 64 or w < 64:
        raise LightsegError(f"input size {h}x{w} is too small: lightseg models need H and W of at least 64")
    if max(h, w) > MAX_SIDE:
        raise LightsegError(f"input size {h}x{w} is too large: at most {MAX_SIDE} a side")
    check_fits(f"exporting at input size {h}x{w} (batch {batch})", batch * estimate_memory(h, w, None), "lower --size")
    return h, w


def export_to_bytes(model: nn.Module, input_size, dynamic=False, opset=17, batch=1, fuse=True) -> bytes:
    """Trace ``model`` (a CPU copy, eval mode, BN folded when ``fuse``) to an ONNX model in memory."""
    h, w = _check_size(input_size, batch)
    model = copy.deepcopy(model).cpu().float().eval()
    if fuse:
        model = prepare_for_inference(model, input_size=(h, w), for_onnx=True, static_shape=not dynamic)
    example = torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(0))
    dynamic_axes = None
    if dynamic:
        axes = {0: "batch", 2: "height", 3: "width"}
        dynamic_axes = {INPUT_NAME: axes, OUTPUT_NAME: axes}
    buf = io.BytesIO()
    # base.resize_to keeps sizes symbolic while tracing, so dynamic H/W exports resize correctly.
    with warnings.catch_warnings():
        # The tracer warns about every shape-to-int conversion and about being the legacy exporter.
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                model, (example,), buf, dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME], dynamic_axes=dynamic_axes, do_constant_folding=True,
            )
        except Exception as e:
            name = getattr(model, "lightseg_name", type(model).__name__)
            raise RuntimeError(f"ONNX export of {name} at {h}x{w} (opset {opset}) failed: {e.__class__.__name__}: {e}") from e
    return buf.getvalue()


def onnx_device(device="auto", int8=False) -> torch.device:
    """Where ONNX Runtime runs: ``auto`` is CUDA when torch sees a GPU and this onnxruntime has the CUDA
    provider (onnxruntime-gpu), else the CPU; int8 is a CPU path (VNNI kernels)."""
    from ..devices import resolve_device

    if str(device) == "auto":
        if int8 or not torch.cuda.is_available():
            return torch.device("cpu")
        import onnxruntime as ort

        return torch.device("cuda" if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu")
    dev = resolve_device(device)
    if int8 and dev.type != "cpu":
        raise LightsegError("int8 (onnxruntime_int8) is a CPU deployment path (int8 VNNI kernels); on CUDA use "
                            "--backend onnxruntime or an eager backend with --dtype float16")
    if dev.type == "mps":
        raise LightsegError("ONNX Runtime has no MPS provider here; use --device cpu (or an eager backend on mps)")
    return dev


def ort_session(model_bytes_or_path, device="cpu", num_threads=None, spinning=None):
    """An ONNX Runtime session with full graph optimisation; intra-op threads = ``num_threads`` or
    PyTorch's thread count (one per core unless the user lowered it), so both backends get the same cores.
    ``spinning=False``: idle intra-op threads sleep instead of spinning (ONNX Runtime's default), which
    leaves the cores to other work, such as the reader and writer threads of lightseg predict."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = num_threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    if spinning is not None:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    providers = ["CPUExecutionProvider"]
    if str(device).startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise LightsegError("device=cuda but this onnxruntime has no CUDAExecutionProvider; install onnxruntime-gpu or use --device cpu")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    src = model_bytes_or_path if isinstance(model_bytes_or_path, bytes) else str(model_bytes_or_path)
    return ort.InferenceSession(src, sess_options=opts, providers=providers)


def compare(model: nn.Module, run, input_size, batch=1, seed=0, x=None, max_abs=PARITY_MAX_ABS,
            min_agreement=PARITY_MIN_AGREEMENT) -> dict:
    """Compare ``run`` (float32 NCHW numpy in, logits numpy out: any exported format) with the (unfused,
    eval-mode) PyTorch ``model`` on one random input (or ``x``); ``ok`` when the largest logit difference is
    within ``max_abs`` and the argmax agrees on at least ``min_agreement`` % of the pixels."""
    h, w = input_size
    if x is None:
        x = torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            ref = model(x.to(next(model.parameters()).device)).float().cpu().numpy()
    finally:
        model.train(was_training)
    out = np.asarray(run(np.ascontiguousarray(x.numpy())))
    if out.shape != ref.shape:
        return {"size": [h, w], "batch": batch, "shape_ok": False, "onnx_shape": list(out.shape),
                "torch_shape": list(ref.shape), "max_abs_diff": float("inf"), "argmax_agreement": 0.0, "ok": False}
    diff = float(np.abs(out - ref).max())
    agree = float((out.argmax(1) == ref.argmax(1)).mean() * 100.0)
    ok = diff <= max_abs and agree >= min_agreement
    return {"size": [h, w], "batch": batch, "shape_ok": True, "max_abs_diff": diff, "argmax_agreement": agree,
            "max_abs_allowed": max_abs, "min_agreement": min_agreement, "logit_abs_max": float(np.abs(ref).max()), "ok": ok}


def parity(model: nn.Module, session, input_size, batch=1, seed=0, x=None) -> dict:
    """:func:`compare` for an ONNX Runtime ``session``, at the ONNX tolerance."""
    return compare(model, lambda a: session.run(None, {session.get_inputs()[0].name: a})[0], input_size, batch, seed, x)


def print_checks(checks, what="parity") -> None:
    """The parity lines export prints: size, max |logit diff|, argmax agreement, OK or FAILED."""
    for c in checks:
        shape = "" if c["shape_ok"] else f" SHAPE MISMATCH exported {c['onnx_shape']} vs torch {c['torch_shape']}"
        print(f"{what} {c['batch']}x3x{c['size'][0]}x{c['size'][1]}: max |logit diff| {c['max_abs_diff']:.2e}, "
              f"argmax agreement {c['argmax_agreement']:.3f}%{shape} -> {'OK' if c['ok'] else 'FAILED'}")


def export_onnx(model: nn.Module, path, input_size=(512, 1024), dynamic=False, opset=17, check=True, verbose=True,
                int8=False, calibration=None, calibration_count=None, normalize="imagenet", int8_mode=None,
                device="cpu", metadata=None) -> dict:
    """Export ``model`` to ``path`` (atomic write) and check ONNX Runtime against PyTorch.

    Returns ``{"path", "input_size", "dynamic", "opset", "bytes", "export_s", "checks": [...],
    "max_abs_diff", "argmax_agreement", "ok"}``; one check at ``input_size``, and for a dynamic
    export a second one at another size and batch 2 (the point of dynamic axes).

    ``int8``: quantise (:mod:`.quantize`) with ranges from ``calibration`` (a folder of images, or
    ``None`` for synthetic scenes; ``normalize`` as in training). The int8 model cannot meet the fp32
    tolerance: its check compares with PyTorch on a calibration image and is reported, not enforced
    (``ok`` is true when shapes match); measure accuracy with ``lightseg eval --backend onnxruntime_int8``.
    ``int8_mode``: the weight format (:data:`.quantize.INT8_MODES`); ``None`` = the one this CPU needs, so give
    the deployment CPU's when it differs (``result["int8_mode"]``, also in the file's metadata).
    ``device``: where the parity check runs, PyTorch and ONNX Runtime alike (:func:`onnx_device`).
    ``metadata``: a :func:`.metadata.build_metadata` dict, stored in the file's ``metadata_props`` (with the
    precision and int8 mode filled in), so lightseg runs the file with no other argument.
    """
    from ..checkpoint import atomic_write_bytes

    h, w = _check_size(input_size)
    device = onnx_device(device, int8=int8)
    reference = model if device.type == "cpu" else copy.deepcopy(model).to(device)
    t0 = time.perf_counter()
    data = export_to_bytes(model, (h, w), dynamic=dynamic, opset=opset)
    images = mode = None
    if int8:
        from .quantize import DEFAULT_CALIBRATION_COUNT, calibration_images, quantize_onnx, resolve_int8_mode

        mode, reason = resolve_int8_mode(int8_mode)
        images = calibration_images(calibration, (h, w), calibration_count or DEFAULT_CALIBRATION_COUNT, normalize=normalize)
        data = quantize_onnx(data, images, mode=mode)
        if verbose:
            print(f"int8 mode {mode} ({reason})")
    elif int8_mode not in (None, "auto"):
        raise LightsegError(f"an int8 mode ({int8_mode!r}) applies to int8 export; add --int8 or drop --int8-mode")
    if metadata is not None:
        from .metadata import onnx_with_metadata

        data = onnx_with_metadata(data, {**metadata, "format": "onnx", "precision": "int8" if int8 else "f32",
                                         "int8_mode": mode, "dynamic": bool(dynamic)})
    path = atomic_write_bytes(path, lambda f: f.write(data))
    result = {"path": str(path), "input_size": [h, w], "dynamic": bool(dynamic), "opset": opset, "int8": bool(int8),
              "int8_mode": mode, "bytes": len(data), "export_s": time.perf_counter() - t0, "checks": []}
    if check and int8:
        c = parity(reference, ort_session(data, device=device), (h, w), x=torch.from_numpy(images[0][None]))
        c["ok"] = c["shape_ok"]
        result.update(checks=[c], max_abs_diff=c["max_abs_diff"], argmax_agreement=c["argmax_agreement"], ok=c["ok"])
        if verbose:
            print(f"int8 vs PyTorch fp32 on a calibration image: max |logit diff| {c['max_abs_diff']:.2e}, argmax agreement "
                  f"{c['argmax_agreement']:.2f}% (quantised: reported, not held to the fp32 tolerance; "
                  "measure accuracy with lightseg eval --backend onnxruntime_int8)")
    elif check:
        session = ort_session(data, device=device)
        result["checks"].append(parity(reference, session, (h, w)))
        if dynamic:
            # A size that is not a multiple of 32 and a different aspect ratio, batch 2.
            h2, w2 = max(64, (h * 3) // 4 + 5), max(64, (w * 3) // 4 - 7)
            result["checks"].append(parity(reference, session, (h2, w2), batch=2))
        result["max_abs_diff"] = max(c["max_abs_diff"] for c in result["checks"])
        result["argmax_agreement"] = min(c["argmax_agreement"] for c in result["checks"])
        result["ok"] = all(c["ok"] for c in result["checks"])
        if verbose:
            print_checks(result["checks"])
    return result


# ---------------------------------------------------------------------- the other formats
def place_files(moves) -> None:
    """Rename each ``(temporary, final)`` pair into place, companions first and the main file (the first pair)
    last, so that a reader never finds the main file beside a stale companion; files get the permissions of a
    newly created one (the temporary folder made them private)."""
    from ..checkpoint import new_file_mode

    for src, dst in reversed(list(moves)):
        os.chmod(src, new_file_mode())
        os.replace(src, dst)


def export_files(model: nn.Module, path, input_size, fmt: str, convert, load, companions=(), metadata=None,
                 tolerance=(PARITY_MAX_ABS, PARITY_MIN_AGREEMENT), check=True, verbose=True, sidecar=True) -> dict:
    """Export ``model`` to ``path`` in a format other than ONNX and check it against PyTorch.

    ``convert(model, (h, w), workdir, name)`` writes the format's files into ``workdir`` (a temporary folder
    beside ``path``), the main one called ``name``, and returns its path; ``companions``: the suffixes of the
    files written beside it (``.bin`` for an OpenVINO ``.xml``). ``metadata`` goes into a sidecar
    ``<path>.json`` when ``sidecar`` (formats that cannot hold it). Everything lands under its final name only
    once complete (:func:`place_files`); on failure the folder is removed and nothing already there changes.
    Then ``load(path)`` (numpy NCHW float32 in, logits out) is compared with the unfused model at
    ``tolerance`` = (max abs logit difference, min argmax agreement %).
    """
    import shutil
    import tempfile
    from pathlib import Path

    from .metadata import sidecar_path, write_sidecar

    h, w = _check_size(input_size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        with torch.inference_mode(False):
            main = Path(convert(model, (h, w), work, path.name))
        moves = [(main, path)]
        for suffix in companions:
            stem = path.name[: -len(path.suffix)] if path.suffix else path.name
            moves.append((main.with_name(main.name[: -len(main.suffix)] + suffix), path.with_name(stem + suffix)))
        if sidecar and metadata is not None:
            moves.append((write_sidecar(main, metadata), sidecar_path(path)))
        place_files(moves)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    size = sum(dst.stat().st_size for _, dst in moves)
    result = {"path": str(path), "files": [str(dst) for _, dst in moves], "format": fmt, "input_size": [h, w],
              "bytes": size, "export_s": time.perf_counter() - t0, "checks": []}
    if check:
        c = compare(model, load(path), (h, w), max_abs=tolerance[0], min_agreement=tolerance[1])
        result.update(checks=[c], max_abs_diff=c["max_abs_diff"], argmax_agreement=c["argmax_agreement"], ok=c["ok"])
        if verbose:
            print_checks([c], f"{fmt} parity (tolerance: max |diff| {tolerance[0]:g}, agreement >= {tolerance[1]:g}%)")
    return result

