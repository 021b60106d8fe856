"""``--backend auto`` (predict, eval, :class:`.segmenter.Segmenter`): the fastest path that agrees with PyTorch,
measured once per model and input size on this CPU and remembered.

:func:`choose_backend` builds each installed candidate (:data:`AUTO_CANDIDATES`: eager, onnxruntime, openvino at
its default precision, ncnn, executorch; int8 is left out, as its accuracy is a question for ``lightseg eval``,
not for a random input), runs it once on a random input and keeps those whose argmax agrees with fp32 PyTorch (the
model as written) on at least :data:`AGREEMENT_MIN` % of the pixels; the kept ones are timed together in a few
interleaved rounds (:func:`.timing.time_interleaved`, about :data:`AUTO_BUDGET_S` s each) and the one with the
lowest median wins. A path that fails to build or to agree is never chosen (eager, the reference, always agrees).

The choice is cached in ``$XDG_CACHE_HOME/lightseg/backend-auto.json`` (default ``~/.cache/lightseg``, the folder
of the models-table cache; ``LIGHTSEG_CACHE=0`` turns it off), keyed by the model's name and weights (their
sha256), the input shape, the thread count, the CPU (model and instruction-set flags) and the versions of
lightseg, torch and the runtimes: the same model at the same size on the same machine is measured once. The file
is written atomically and never through a symbolic link (a link there is left alone and nothing is cached).
"""
from __future__ import annotations

import json
import os
import sys
import time

import torch

from ..errors import LightsegError
from .metadata import state_dict_sha256
from .runtime import Runtime
from .timing import time_interleaved

AUTO_CANDIDATES = ("eager", "onnxruntime", "openvino", "ncnn", "executorch")
AUTO_BUDGET_S = 0.5
CACHE_NAME = "backend-auto.json"
CACHE_VERSION = 1

# (packages, pip extra) of the backends that need an optional runtime
NEEDS = {"onnxruntime": (("onnx", "onnxruntime"), "deploy"), "onnxruntime_int8": (("onnx", "onnxruntime"), "deploy"),
         "peer_ort": (("onnx", "onnxruntime"), "deploy"), "openvino": (("onnx", "openvino"), "openvino"),
         "peer_openvino": (("onnx", "openvino"), "openvino"), "executorch": (("executorch",), "executorch"),
         "ncnn": (("pnnx", "ncnn"), "ncnn")}


def missing_extra_line(backend) -> str | None:
    """The one line saying which pip extra ``backend`` needs, when a package of it is not installed; else None."""
    import importlib.util

    packages, extra = NEEDS.get(backend, ((), None))
    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    if not missing:
        return None
    return (f"{backend}: needs {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not installed: "
            f"pip install 'lightseg[{extra}]'")


# The fastest path is marked among those whose argmax agrees with fp32 PyTorch on >= this % of the pixels of the
# benchmark's random input: a broken or too coarse path (int8 saturating, fp16 overflowing) is never "fastest".
AGREEMENT_MIN = 99.0


def argmax_agreement(reference, out) -> float:
    """% of pixels where the argmax over classes of ``out`` equals that of ``reference`` (N, C, H, W)."""
    return round(float((out.argmax(1) == reference.argmax(1)).float().mean() * 100), 3)


def auto_input_size(model, size=None) -> tuple:
    """The (H, W) to measure at: ``size``, else the model's paper size, else 512x1024."""
    if size:
        return tuple(int(v) for v in size)
    from ..models import model_info

    try:
        return tuple(model_info(getattr(model, "lightseg_name", "")).paper_size)
    except LightsegError:
        return (512, 1024)


def cache_path():
    """The file the choices are kept in, or None when caching is off (``LIGHTSEG_CACHE=0``)."""
    from ..zoo import cache_dir

    if os.environ.get("LIGHTSEG_CACHE", "1") == "0":
        return None
    return cache_dir() / CACHE_NAME


def _versions() -> dict:
    from importlib import metadata

    out = {}
    for lib in ("lightseg", "torch", "onnxruntime", "openvino", "executorch", "ncnn"):
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            out[lib] = None
    return out


def auto_key(model, shape, num_threads=None) -> str:
    """What a measurement depends on: the model (name and weights), the input shape, the threads and the machine."""
    from ..hardware import cpu_info

    cpu = cpu_info()
    return json.dumps([CACHE_VERSION, getattr(model, "lightseg_name", type(model).__name__), state_dict_sha256(model),
                       list(shape), int(num_threads or torch.get_num_threads()), cpu.model, cpu.arch, sorted(cpu.flags),
                       _versions()], sort_keys=True)


def _read_cache(path) -> dict:
    if path is None or os.path.islink(path) or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # a damaged cache is measured again and replaced
    return data if isinstance(data, dict) else {}


def _write_cache(path, key, entry) -> None:
    from ..outputs import atomic_write_bytes

    if path is None or os.path.islink(path):
        return
    data = _read_cache(path)
    data[key] = entry
    try:
        atomic_write_bytes(path, lambda f: f.write(json.dumps(data, indent=1, sort_keys=True).encode()))
    except (OSError, LightsegError):
        pass  # a read-only home: no cache, the same choice


def measure_backends(model, shape, candidates=AUTO_CANDIDATES, num_threads=None, budget_s=None) -> dict:
    """Build, check and time ``candidates`` on ``model`` at input ``shape`` (N, 3, H, W) on the CPU (module
    docstring). Returns ``{"backend", "latency_ms": {b: median}, "agreement": {b: %}, "skipped": {b: why}}``."""
    import statistics

    model = model.eval()
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        reference = model(x)
        reference = (reference["out"] if isinstance(reference, dict) else reference).float()
    runners, agreement, skipped, first_ms = {}, {}, {}, {}
    for backend in candidates:
        why = missing_extra_line(backend)
        if why is None:
            try:
                runner = Runtime(model, backend=backend, device="cpu", input_size=shape[2:], num_threads=num_threads)
                runner.prepare(tuple(shape))
                t0 = time.perf_counter()
                out = runner(x)
                first_ms[backend] = (time.perf_counter() - t0) * 1000.0
                agreement[backend] = argmax_agreement(reference, out.float())
                if agreement[backend] >= AGREEMENT_MIN:
                    runners[backend] = runner
                else:
                    why = f"argmax agreement {agreement[backend]:.2f}% < {AGREEMENT_MIN:g}%"
            except Exception as e:  # noqa: BLE001 - a path that cannot run this model is simply not a candidate
                why = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        if why:
            skipped[backend] = why
    if not runners:
        raise LightsegError(f"--backend auto: no path runs this model and agrees with PyTorch ({skipped}); use --backend eager")
    lat = time_interleaved({b: (lambda r=r: r(x)) for b, r in runners.items()}, {b: first_ms[b] for b in runners},
                           budget_s=budget_s or AUTO_BUDGET_S, min_runs=3, max_runs=20)
    latency = {b: round(statistics.median(v), 3) for b, v in lat.items()}
    return {"backend": min(latency, key=latency.get), "latency_ms": latency, "agreement": agreement, "skipped": skipped}


def choose_backend(model, input_size, batch=1, device="auto", num_threads=None, candidates=None, log=None) -> dict:
    """The ``--backend auto`` choice for ``model`` at ``input_size`` (H, W): a cached measurement or a new one
    (:func:`measure_backends`) of ``candidates`` (default :data:`AUTO_CANDIDATES`). Returns its dict, with
    ``cached`` True when nothing was measured. Off the CPU
    (``device`` cuda or mps) it is ``eager``, the only path there."""
    from .runtime import resolve_device

    if resolve_device(device).type != "cpu":
        return {"backend": "eager", "cached": False, "reason": "the only backend off the CPU"}
    candidates = tuple(candidates or AUTO_CANDIDATES)
    shape = (int(batch), 3, *(int(v) for v in input_size))
    path = cache_path()
    key = auto_key(model, shape, num_threads)
    hit = _read_cache(path).get(key)
    if isinstance(hit, dict) and hit.get("backend") in candidates:
        return {**hit, "cached": True}
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    log(f"--backend auto: measuring {', '.join(candidates)} at {shape[2]}x{shape[3]} on this CPU (once; cached in "
        f"{path or 'nothing: LIGHTSEG_CACHE=0'}) ...")
    result = measure_backends(model, shape, candidates, num_threads)
    log(f"--backend auto: {result['backend']} (" + ", ".join(f"{b} {ms:.1f} ms" for b, ms in result["latency_ms"].items())
        + "".join(f"; {b} left out: {why}" for b, why in result["skipped"].items()) + ")")
    _write_cache(path, key, result)
    return {**result, "cached": False}
