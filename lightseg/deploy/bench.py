"""Speed on this machine: params, MACs, latency (median, p90), FPS, memory, achieved GFLOP/s, roofline.

Method: the input is created once, outside the timed region. Each backend is built and warmed up in turn
(``warmup`` untimed calls), then all of a model's backends are timed together in rounds, one call of each per
round, the order reversed every other round: on a shared machine the load drifts, and interleaving spreads it
over every backend alike, so their ratios hold (the ratio to ``peer_ort`` is the median of the
per-round ratios). Each call is timed with ``time.perf_counter`` (``torch.cuda.synchronize()`` before reading
the clock on CUDA) under ``torch.inference_mode()``. FPS = batch * 1000 / median latency (ms).
MACs are multiply-accumulates of the conv and linear layers (:mod:`lightseg.profile`); FLOPs = 2 x MACs.
When ``warmup``/``runs`` are not given they are chosen from a time budget: warm-up calls until two
consecutive ones agree within 10% (the first includes one-off work such as ``torch.compile``), then as
many rounds as fit ``budget_s`` per backend (3..100).

The peers are what a user runs without lightseg: ``peer_ort`` (called ``onnxruntime_plain`` before; the name
still works) is the model as written through plain ``torch.onnx.export`` into an ONNX Runtime session with
default options, ``peer_openvino`` the same export through ``openvino.convert_model`` compiled with OpenVINO's
defaults (its own precision choice), both with the same thread count.
``openvino``, ``executorch`` and ``ncnn`` are lightseg's exports run by those runtimes (:mod:`.runtime`);
``openvino`` at its default precision (bf16 only on CPUs with AVX512_BF16 or AMX, f32 elsewhere). A backend
whose optional runtime is not installed is left out of ``--backend all`` with one line naming its pip extra.
Every row carries its argmax agreement with fp32 PyTorch (``eager_nchw``) on the benchmark's random input; the
fastest row whose agreement is at least :data:`AGREEMENT_MIN` % is marked (``fastest: true``).
``vs_best_peer`` is the paired ratio to the faster peer (by median) of those timed: how much faster than what a
user gets without lightseg.
End to end (``e2e_ms_median``, batch 1): what one camera frame costs a user around the model, timed in the same
interleaved way after the model alone: an HD frame (:data:`E2E_SOURCE`, 720x1280) as a JPEG is decoded, turned
to RGB, resized to the model's input and normalised (:func:`.segmenter.prepare_images`, what ``Segmenter`` runs),
run, and its scores resized back to the frame's size and argmaxed (:func:`lightseg.inference.predict_scores`
and ``argmax_classes``, what ``Segmenter`` and ``lightseg eval`` run).
The roofline (``--roofline``, :mod:`.roofline`) bounds each model's latency on this machine from its FLOPs and
the minimum bytes its exported graph moves; efficiency = bound / measured latency.
"""
from __future__ import annotations

import copy
import json
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn as nn

from ..errors import LightsegError
from .auto import AGREEMENT_MIN, NEEDS, argmax_agreement, missing_extra_line  # noqa: F401
from .runtime import BACKENDS, ONNX_BACKENDS, Runtime, resolve_device, resolve_dtype
from .timing import time_callable, time_interleaved

PAPER_HARDWARE_NOTE = "paper FPS were measured on the papers' own hardware (GPU), not comparable with this machine"
# --all-models must finish in < 10 minutes on a 2-core CPU: a time budget per (model, backend).
ZOO_BUDGET_S = 6.0
# int8 timing: the quantisation ranges do not change which kernels run, so two synthetic calibration scenes
# suffice (calibration runs the model at full size; 8 scenes took 3 of the zoo table's 8 minutes).
BENCH_CALIBRATION_COUNT = 2
PLAIN = "peer_ort"
PEER_OPENVINO = "peer_openvino"
PEERS = (PLAIN, PEER_OPENVINO)
ALIASES = {"onnxruntime_plain": PLAIN}  # the name of peer_ort in earlier lightseg versions
BENCH_BACKENDS = (*BACKENDS, *PEERS)
FP32_ONNX = ("onnxruntime", PLAIN)
CPU_ONLY = ("onnxruntime_int8", "openvino", "executorch", "ncnn", *PEERS)
E2E_SOURCE = (720, 1280)  # an HD camera frame, (H, W)


# ---------------------------------------------------------------------- memory
def _proc_status_kb(field):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class PeakMemory:
    """Peak memory of a block, in MB. CUDA: max allocated by torch. CPU: peak RSS minus RSS at entry
    (Linux: the peak is reset through /proc/self/clear_refs; elsewhere ru_maxrss, which cannot reset)."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.mb = None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return self
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # "5" resets the peak RSS (VmHWM) to the current RSS
            self.source = "proc"
        except OSError:
            self.source = "rusage"
        self.base = _proc_status_kb("VmRSS") if self.source == "proc" else self._maxrss_kb()
        return self

    @staticmethod
    def _maxrss_kb():
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mb = (torch.cuda.max_memory_allocated(self.device) - self.base) / 2**20
        else:
            peak = _proc_status_kb("VmHWM") if self.source == "proc" else self._maxrss_kb()
            self.mb = max(0, (peak or 0) - (self.base or 0)) / 1024.0
        return False


# ---------------------------------------------------------------------- ceiling
def measure_peak(device="cpu", budget_s=0.6) -> dict:
    """This machine's fp32 compute ceiling (``fp32_gflops``) and memory bandwidth (``copy_gb_s``).

    CPU: the fastest of oneDNN and MLAS kernels (:func:`.roofline.measure_ceiling`). CUDA: a 2048^3 matmul,
    a 3x3 conv and a device copy through PyTorch.
    """
    device = resolve_device(device)
    if device.type == "cpu":
        from .roofline import measure_ceiling

        return {**measure_ceiling(budget_s=budget_s), "device": "cpu"}
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
    n, (h, w) = 2048, (256, 512)
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    conv = nn.Conv2d(64, 64, 3, padding=1, bias=False).to(device).to(memory_format=torch.channels_last)
    x = torch.randn(1, 64, h, w, device=device).contiguous(memory_format=torch.channels_last)
    src = torch.ones(2**26, device=device)
    dst = torch.empty_like(src)
    with torch.inference_mode():
        best = {name: min(time_callable(fn, budget_s=budget_s, sync=sync, min_runs=8)[0])
                for name, fn in [("mm", lambda: torch.mm(a, b)), ("conv", lambda: conv(x)), ("copy", lambda: dst.copy_(src))]}
    kernels = {f"torch mm {n}^3": 2 * n**3 / best["mm"] / 1e6, f"torch 3x3 conv 64->64 at {h}x{w}": 2 * h * w * 64 * 64 * 9 / best["conv"] / 1e6}
    top = max(kernels, key=kernels.get)
    return {"fp32_gflops": round(kernels[top], 1), "best_kernel": top, "copy_gb_s": round(2 * src.numel() * 4 / best["copy"] / 1e6, 1),
            "kernels": {k: round(v, 1) for k, v in kernels.items()}, "threads": torch.get_num_threads(), "device": str(device),
            "method": "fastest run of each kernel"}


# ---------------------------------------------------------------------- one record
def _sig(v, digits=4):
    return float(f"{v:.{digits}g}")


def machine_info() -> dict:
    """What the figures were measured on: CPU model and ISA features, threads, library versions, load."""
    import numpy

    from ..hardware import cpu_info

    info = {**cpu_info().as_dict(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "onnxruntime_threads": torch.get_num_threads(),  # lightseg's ORT sessions use the same count
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "omp_wait_policy_set_by_lightseg": _omp_defaulted(),
            "python": platform.python_version(),
            "torch": torch.__version__, "numpy": numpy.__version__}
    from importlib import metadata

    for lib in ("onnxruntime", "onnx", "openvino", "executorch", "ncnn"):
        try:
            info[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:  # the extra is not installed
            info[lib] = None
    if hasattr(os, "getloadavg"):
        info["loadavg_1m"] = round(os.getloadavg()[0], 2)
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _omp_defaulted() -> bool:
    import lightseg

    return lightseg.OMP_DEFAULTED


def format_machine(info) -> str:
    return (f"machine: {info['cpu']} ({info['arch']}: {' '.join(info['isa']) or 'no AVX2/AVX-512/VNNI/AMX/dotprod'}), "
            f"{info['cores']} cores, {info['torch_threads']} torch / {info['onnxruntime_threads']} onnxruntime threads, "
            f"OMP_WAIT_POLICY={info['omp_wait_policy'] or 'unset'}; python {info['python']}, torch {info['torch']}, "
            f"onnxruntime {info['onnxruntime']}, onnx {info['onnx']}, "
            + "".join(f"{k} {info[k]}, " for k in ("openvino", "executorch", "ncnn") if info.get(k))
            + f"numpy {info['numpy']}; "
            f"load average {info.get('loadavg_1m', '-')}")


class PlainOnnxRuntime:
    """What a user runs without lightseg: ``torch.onnx.export`` of the model as written (no BN folding, no
    rewrites), an ONNX Runtime session with default options and ``num_threads`` intra-op threads."""

    def __init__(self, model, num_threads=None, spinning=None):
        self.model, self.num_threads, self.session = model, num_threads or torch.get_num_threads(), None
        self.spinning = spinning

    def prepare(self, shape):
        import onnxruntime as ort

        from .export import export_to_bytes

        with torch.inference_mode(False):
            data = export_to_bytes(self.model, shape[2:], batch=shape[0], fuse=False)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.num_threads
        if self.spinning is not None:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spinning else "0")
        self.session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])

    def __call__(self, images):
        out = self.session.run(None, {self.session.get_inputs()[0].name: images.detach().cpu().numpy()})[0]
        return torch.from_numpy(out)


class PeerOpenVINO:
    """What a user runs with OpenVINO alone: ``torch.onnx.export`` of the model as written, converted in memory
    by ``openvino.convert_model`` and compiled for the CPU with OpenVINO's defaults (its own precision choice and
    performance hint) and ``num_threads`` inference threads."""

    def __init__(self, model, num_threads=None):
        self.model, self.num_threads, self.request = model, num_threads or torch.get_num_threads(), None

    def prepare(self, shape):
        import tempfile
        from pathlib import Path

        from .export import export_to_bytes
        from .format_openvino import _openvino, core

        ov = _openvino()
        with torch.inference_mode(False):
            data = export_to_bytes(self.model, shape[2:], batch=shape[0], fuse=False)
        with tempfile.TemporaryDirectory(prefix="lightseg-") as work:
            onnx_path = Path(work) / "model.onnx"
            onnx_path.write_bytes(data)
            compiled = core().compile_model(ov.convert_model(str(onnx_path)), "CPU",
                                            {"INFERENCE_NUM_THREADS": int(self.num_threads)})
        hint = compiled.get_property("INFERENCE_PRECISION_HINT")  # an ov.Type: "bf16", "f32", "f16"
        self.precision = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
        self.request = compiled.create_infer_request()

    def __call__(self, images):
        self.request.infer({0: np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32)})
        return torch.from_numpy(self.request.get_output_tensor(0).data.copy())


def end_to_end_call(runner, size, device, source=E2E_SOURCE, normalize="imagenet"):
    """A call that runs one frame through everything a user pays for (module docstring): JPEG decode, RGB,
    resize and normalise, ``runner``, scores back at ``source`` size, argmax. Returns the label map."""
    import cv2

    from ..data.synthetic import render_scene
    from ..inference import argmax_classes, predict_scores
    from .segmenter import prepare_images

    rgb, _ = render_scene(np.random.default_rng(0), source)
    _, jpeg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])

    def call():
        image = cv2.cvtColor(cv2.imdecode(jpeg, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        x = prepare_images([image], size, normalize).to(device)
        with torch.inference_mode():
            return argmax_classes(predict_scores(runner, x, tuple(source)))

    return call


def _int8_agreement(net, runner, size, batch):
    """int8 against the fp32 model on a synthetic scene not used for calibration (relative logit error,
    argmax agreement %): a check for a broken int8 path (saturation), not a measure of accuracy."""
    import numpy as np

    from .quantize import calibration_images

    x = torch.from_numpy(np.stack(calibration_images(None, size, count=batch, seed=1)))
    with torch.inference_mode():
        ref = net(x)
    out = runner(x)
    rel = float(torch.linalg.norm(out - ref) / torch.linalg.norm(ref))
    agree = float((out.argmax(1) == ref.argmax(1)).float().mean() * 100)
    return round(rel, 4), round(agree, 2)


def benchmark_backends(model, backends, size=None, batch=1, device="cpu", warmup=None, runs=None, dtype="float32",
                       num_classes=19, budget_s=5.0, peak=None, roofline=False, log=None) -> list:
    """Benchmark one model with several backends, timed together (see module docstring); one record each.

    ``model``: a registered name or an ``nn.Module``. ``size``: (H, W); default the paper's size.
    ``peak``: a :func:`measure_peak` dict, for the share of this machine's ceiling, and with ``roofline`` the
    bounds and efficiency (:mod:`.roofline`). ``log(message)``: told what is being built, warmed up or timed
    (building an ONNX or int8 backend takes seconds to minutes).
    """
    log = log or (lambda message: None)
    from ..models import create_model, model_info
    from ..profile import count_macs, count_params

    for backend in backends:
        if ALIASES.get(backend, backend) not in BENCH_BACKENDS:
            raise LightsegError(f"backend {backend!r} is unknown; use one of {', '.join(BENCH_BACKENDS)}")
    dev = resolve_device(device)
    resolve_dtype(dtype)
    if isinstance(model, str):
        name = model
        size = tuple(size) if size else tuple(model_info(name).paper_size)
        net = create_model(name, num_classes=num_classes)
    else:
        net = model
        name = getattr(model, "lightseg_name", type(model).__name__)
        if size is None:
            raise LightsegError("benchmark(nn.Module) needs size=(H, W)")
        size = tuple(size)
    if batch < 1:
        raise LightsegError(f"batch must be >= 1, got {batch}")
    backends = [ALIASES.get(b, b) for b in backends]
    for backend in backends:
        if backend in CPU_ONLY and dev.type != "cpu":
            raise LightsegError(f"{backend} runs on the CPU; drop it for --device {dev.type}")
        line = missing_extra_line(backend)
        if line:
            raise LightsegError(line)
    net.eval()
    params = count_params(net)
    macs = count_macs(net, size, batch=batch, device="meta")

    x = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(0)).to(dev)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else None
    runners, setup, mem, warm, est = {}, {}, {}, {}, {}
    # Timed in alternating rounds, the backends share the cores: an ONNX Runtime session's idle threads spin
    # after each call and slow whatever runs next (dualaspp_mobilenetv2: 52-69 ms per session with spinning,
    # 36 ms each without). So with more than one backend every ONNX Runtime session, plain included, sleeps.
    ort_spinning = False if len(backends) > 1 else None
    for i, backend in enumerate(backends, 1):
        log(f"  {name}: [{i}/{len(backends)}] building and warming up {backend} ...")
        t0 = time.perf_counter()
        if backend == PLAIN:
            runner = PlainOnnxRuntime(net, spinning=ort_spinning)
        elif backend == PEER_OPENVINO:
            runner = PeerOpenVINO(net)
        else:
            runner = Runtime(net, backend=backend, device=dev, input_size=size, dtype=dtype,
                             calibration_count=BENCH_CALIBRATION_COUNT, ort_spinning=ort_spinning)
        runner.prepare(tuple(x.shape))
        setup[backend] = time.perf_counter() - t0
        with PeakMemory(dev) as peak_mem:
            first, warm[backend] = time_callable(lambda r=runner: r(x), warmup=warmup, runs=1, sync=sync, budget_s=budget_s)
        runners[backend], mem[backend], est[backend] = runner, peak_mem.mb, first[0]
        log(f"  {name}: {backend} ready in {time.perf_counter() - t0:.1f} s (first timed call {first[0]:.1f} ms)")
    log(f"  {name}: timing {', '.join(backends)} " + (f"in alternating rounds ({runs} each) ..." if runs else
                                                       f"in alternating rounds (about {budget_s:.0f} s each) ..."))
    lat = time_interleaved({b: (lambda r=r: r(x)) for b, r in runners.items()}, est, runs=runs, sync=sync, budget_s=budget_s)
    e2e = {}
    if batch == 1:
        log(f"  {name}: timing end to end (a {E2E_SOURCE[0]}x{E2E_SOURCE[1]} JPEG frame in, its label map out) ...")
        calls = {b: end_to_end_call(r, size, dev) for b, r in runners.items()}
        first = {b: time_callable(c, warmup=1, runs=1, sync=sync)[0][0] for b, c in calls.items()}
        e2e = time_interleaved(calls, first, runs=runs, sync=sync, budget_s=budget_s / 2)
    timed_peers = [p for p in PEERS if p in lat]
    best_peer = min(timed_peers, key=lambda p: statistics.median(lat[p])) if timed_peers else None
    with torch.inference_mode():  # fp32 PyTorch on the CPU, the model as written: what every path is compared with
        reference = copy.deepcopy(net).float().cpu()(x.float().cpu())
        reference = (reference["out"] if isinstance(reference, dict) else reference).float()
    agreement = {b: argmax_agreement(reference, r(x).float().cpu()) for b, r in runners.items()}

    machine = machine_info()
    bounds = None
    if roofline and peak:
        from .export import export_to_bytes
        from .roofline import graph_traffic, roofline as bound

        traffic = graph_traffic(export_to_bytes(net, size, batch=batch))
        bounds = {"min_bytes": traffic["bytes"], "weight_bytes": traffic["weight_bytes"], **bound(2 * macs, traffic["bytes"], peak)}
    records = []
    for backend in backends:
        median = statistics.median(lat[backend])
        record = {
            "model": name, "backend": backend, "size": list(size), "batch": batch, "device": str(dev), "dtype": str(dtype),
            "params": params, "macs": macs, "flops": 2 * macs,
            "latency_ms_median": round(median, 3), "latency_ms_p90": round(float(np.percentile(lat[backend], 90)), 3),
            "latency_ms_min": round(min(lat[backend]), 3), "fps": round(batch * 1000.0 / median, 2),
            "warmup": warm[backend], "runs": len(lat[backend]), "setup_s": round(setup[backend], 2),
            "peak_mem_mb": round(mem[backend], 1) if mem[backend] is not None else None,
            "achieved_gflops": _sig(2 * macs / (median / 1000.0) / 1e9),
            "threads": torch.get_num_threads(), "machine": machine,
            "ort_spinning": ort_spinning if "onnxruntime" in backend or backend == PLAIN else None,
            "argmax_agreement": agreement[backend], "agreement_min": AGREEMENT_MIN,
        }
        if getattr(runners[backend], "precision", None):
            record["precision"] = runners[backend].precision
        if PLAIN in lat:
            # paired: the same rounds, so the load each saw was alike
            record["vs_plain"] = _sig(statistics.median(p / b for p, b in zip(lat[PLAIN], lat[backend])), 3)
        if best_peer:
            record["best_peer"] = best_peer
            record["vs_best_peer"] = _sig(statistics.median(p / b for p, b in zip(lat[best_peer], lat[backend])), 3)
        if e2e:
            record["e2e_source"] = list(E2E_SOURCE)
            record["e2e_ms_median"] = round(statistics.median(e2e[backend]), 3)
            record["e2e_fps"] = round(1000.0 / record["e2e_ms_median"], 2)
        if backend == "onnxruntime_int8":
            record["calibration"] = f"{BENCH_CALIBRATION_COUNT} synthetic scenes"
            record["int8_mode"] = runners[backend].int8_mode
            record["int8_rel_error"], record["int8_argmax_agreement"] = _int8_agreement(net, runners[backend], size, batch)
        if peak:
            record["peak_fp32_gflops"] = peak["fp32_gflops"]
            record["ceiling"] = {k: peak.get(k) for k in ("fp32_gflops", "best_kernel", "copy_gb_s")}
            record["share_of_peak"] = _sig(record["achieved_gflops"] / peak["fp32_gflops"])
        if bounds:
            record.update(bounds, roofline_efficiency=_sig(bounds["bound_ms"] / median, 3))
        if isinstance(model, str):
            info = model_info(name)
            record["paper_size"] = list(info.paper_size)
            record["paper_fps"] = info.paper_fps
            record["paper_hardware"] = info.paper_hardware
        records.append(record)
    mark_fastest(records)
    return records


def mark_fastest(records) -> dict | None:
    """Mark (``fastest: true``) the quickest of one model's records whose argmax agreement with fp32 PyTorch is
    at least :data:`AGREEMENT_MIN` %; the others get ``fastest: false``. Returns the marked record, or None."""
    ok = [r for r in records if r.get("argmax_agreement", 0.0) >= AGREEMENT_MIN]
    best = min(ok, key=lambda r: r["latency_ms_median"]) if ok else None
    for r in records:
        r["fastest"] = r is best
    return best


def benchmark(model, size=None, batch=1, device="cpu", backend="eager", warmup=None, runs=None,
              dtype="float32", num_classes=19, budget_s=5.0, peak=None) -> dict:
    """Benchmark one model with one backend; returns a flat record (see :func:`benchmark_backends`)."""
    return benchmark_backends(model, [backend], size=size, batch=batch, device=device, warmup=warmup, runs=runs,
                              dtype=dtype, num_classes=num_classes, budget_s=budget_s, peak=peak)[0]


def best_paths(records) -> dict:
    """lightseg's fastest fp32 backend and fastest backend overall (int8 included) for one model's records,
    with their paired ratio to ``peer_ort`` and roofline efficiency."""
    ours = [r for r in records if r["backend"] not in PEERS]
    out = {}
    for key, pool in (("best_fp32", [r for r in ours if r["backend"] != "onnxruntime_int8"]), ("best", ours)):
        if pool:
            r = min(pool, key=lambda r: r["latency_ms_median"])
            out[key] = {"backend": r["backend"], "latency_ms_median": r["latency_ms_median"], "vs_plain": r.get("vs_plain"),
                        "vs_best_peer": r.get("vs_best_peer"), "best_peer": r.get("best_peer"),
                        "roofline_efficiency": r.get("roofline_efficiency")}
    return out


# ---------------------------------------------------------------------- table
def _fmt(v, spec, dash="-"):
    return dash if v is None else format(v, spec)


def format_table(records, zoo=False) -> str:
    plain = any("vs_plain" in r for r in records)
    roof = any("roofline_efficiency" in r for r in records)
    marked = any(r.get("fastest") for r in records) and len(records) > 1
    peer = any("vs_best_peer" in r for r in records) and any(r["backend"] == PEER_OPENVINO for r in records)
    e2e = any("e2e_ms_median" in r for r in records)
    head = (f"{'model':30s} {'backend':17s} {'input':>9s} {'params(M)':>9s} {'GMACs':>7s} {'median ms':>9s} "
            f"{'p90 ms':>8s} {'FPS':>7s} {'GFLOP/s':>8s} {'%peak':>6s} {'mem MB':>7s} {'speed-up':>8s}")
    head += f" {'x plain':>7s}" if plain else ""
    head += f" {'%roof':>6s}" if roof else ""
    head += f" {'x peer':>7s}" if peer else ""
    head += f" {'e2e ms':>8s}" if e2e else ""
    head += f" {'agree%':>7s}" if marked else ""
    if zoo:
        head += f" {'paper FPS':>9s}  paper hardware"
    lines = [head, "-" * len(head)]
    for r in records:
        share, eff = r.get("share_of_peak"), r.get("roofline_efficiency")
        backend = r["backend"] + (" *" if marked and r.get("fastest") else "")
        line = (f"{r['model'][:30]:30s} {backend:17s} {r['size'][0]:>4d}x{r['size'][1]:<4d} {r['params'] / 1e6:9.3f} "
                f"{r['macs'] / 1e9:7.2f} {r['latency_ms_median']:9.1f} {r['latency_ms_p90']:8.1f} {r['fps']:7.2f} "
                f"{r['achieved_gflops']:8.1f} {_fmt(None if share is None else 100 * share, '6.1f'):>6s} "
                f"{_fmt(r.get('peak_mem_mb'), '7.0f'):>7s} {_fmt(r.get('speedup_vs_eager_nchw'), '7.2f') + ('x' if r.get('speedup_vs_eager_nchw') else ''):>8s}")
        line += f" {_fmt(r.get('vs_plain'), '6.2f') + ('x' if r.get('vs_plain') else ''):>7s}" if plain else ""
        line += f" {_fmt(None if eff is None else 100 * eff, '6.1f'):>6s}" if roof else ""
        line += f" {_fmt(r.get('vs_best_peer'), '6.2f') + ('x' if r.get('vs_best_peer') else ''):>7s}" if peer else ""
        line += f" {_fmt(r.get('e2e_ms_median'), '8.1f'):>8s}" if e2e else ""
        line += f" {_fmt(r.get('argmax_agreement'), '7.2f'):>7s}" if marked else ""
        if zoo:
            line += f" {_fmt(r.get('paper_fps'), '9.1f'):>9s}  {r.get('paper_hardware') or '-'}"
        lines.append(line)
    lines.append("MACs = multiply-accumulates (conv + linear), FLOPs = 2 x MACs; GFLOP/s = FLOPs / median latency; "
                 "%peak = share of this machine's fp32 ceiling (--peak); speed-up vs eager_nchw"
                 + ("; x plain = paired ratio to peer_ort (plain torch.onnx.export + default ONNX Runtime)" if plain else "")
                 + ("; %roof = roofline bound / median latency" if roof else "")
                 + ("; x peer = paired ratio to the faster of peer_ort and peer_openvino (OpenVINO's defaults on the "
                    "plain export)" if peer else "")
                 + (f"; e2e ms = one {E2E_SOURCE[0]}x{E2E_SOURCE[1]} JPEG frame to its label map: decode, resize and "
                    "normalise, the model, scores back to the frame's size, argmax" if e2e else "") + ".")
    if marked:
        lines.append(f"* fastest path whose argmax agrees with fp32 PyTorch (eager_nchw) on >= {AGREEMENT_MIN:g}% of the "
                     f"pixels of the benchmark's random input (agree%); a path below that is never marked.")
    int8 = [r for r in records if r["backend"] == "onnxruntime_int8"]
    if int8:
        lines.append(f"onnxruntime_int8: int8 static quantisation, mode {', '.join(sorted({str(r.get('int8_mode')) for r in int8}))}, "
                     f"calibrated on {BENCH_CALIBRATION_COUNT} synthetic scenes (GFLOP/s counts its int8 MACs like fp32 ones); "
                     "a different numerical model: check its accuracy with lightseg eval --backend onnxruntime_int8.")
    if zoo:
        lines.append("paper FPS: " + PAPER_HARDWARE_NOTE + "; each model runs at its paper's input size.")
    return "\n".join(lines)


def format_roofline(records, peak) -> str:
    """Per model: FLOPs, minimum bytes, the two bounds, lightseg's best paths, their efficiency and ratio to plain."""
    head = (f"{'model':22s} {'GFLOP':>7s} {'min MB':>8s} {'compute ms':>10s} {'memory ms':>9s} {'bound':>7s} "
            f"{'best fp32 (ms, %roof, x plain)':>42s} {'best incl. int8 (ms, %roof, x plain)':>44s} {'int8 mode, rel err, argmax %':>30s}")
    lines = [f"roofline: fp32 ceiling {peak['fp32_gflops']} GFLOP/s ({peak['best_kernel']}), copy bandwidth {peak['copy_gb_s']} GB/s",
             head, "-" * len(head)]
    for name in dict.fromkeys(r["model"] for r in records):
        rs = [r for r in records if r["model"] == name]
        r0 = next((r for r in rs if "bound_ms" in r), None)
        if r0 is None:
            continue
        best = best_paths(rs)

        def cell(b):
            if not b:
                return "-"
            return (f"{b['backend']} {b['latency_ms_median']:.1f}, {_fmt(None if b['roofline_efficiency'] is None else 100 * b['roofline_efficiency'], '.0f')}%, "
                    f"{_fmt(b['vs_plain'], '.2f')}x")

        q = next((r for r in rs if r["backend"] == "onnxruntime_int8"), None)
        q_cell = f"{q['int8_mode']}, {q['int8_rel_error']:.3f}, {q['int8_argmax_agreement']:.1f}" if q else "-"
        lines.append(f"{name[:22]:22s} {r0['flops'] / 1e9:7.2f} {r0['min_bytes'] / 1e6:8.1f} {r0['bound_compute_ms']:10.1f} "
                     f"{r0['bound_memory_ms']:9.1f} {r0['bound_ms']:7.1f} {cell(best.get('best_fp32')):>42s} {cell(best.get('best')):>44s} {q_cell:>30s}")
    lines.append("bounds: FLOPs / fp32 ceiling and minimum bytes (weights once, each layer's inputs and outputs once) / copy "
                 "bandwidth; %roof = bound / measured median (above 100%: activations served from cache, or int8 past "
                 "the fp32 ceiling). int8 rel err / argmax %: against fp32 on a synthetic scene, random weights (a check "
                 "for a broken int8 path; accuracy is lightseg eval --backend onnxruntime_int8 on real data).")
    return "\n".join(lines)


def _log(msg):
    print(msg, file=sys.stderr, flush=True)


def bench_command(args) -> list:
    """``lightseg bench``: see ``lightseg bench --help``."""
    from ..models import list_models, model_info

    names = list(args.model or [])
    if args.all_models:
        names += [n for n in list_models() if n not in names]
    for n in names:
        model_info(n)  # unknown names fail before anything runs
    roofline = getattr(args, "roofline", False)
    if not names and not args.peak:
        raise LightsegError("nothing to benchmark: give --model NAME (repeatable), --all-models or --peak")
    if args.batch < 1:
        raise LightsegError(f"--batch must be >= 1, got {args.batch}")
    device = resolve_device(args.device)  # auto: CUDA, then MPS, then the CPU
    if args.backend == "all":
        backends = [*BACKENDS, *PEERS] if not args.all_models else ["eager_nchw", "onnxruntime", "onnxruntime_int8"]
        if device.type != "cpu":
            backends = [b for b in backends if b not in CPU_ONLY]  # CPU paths
        for b in list(backends):
            line = missing_extra_line(b)
            if line:  # what is not installed is left out, with the one line that installs it
                _log(f"skipped {line}")
                backends.remove(b)
    else:
        backends = [ALIASES.get(args.backend, args.backend)]
        line = missing_extra_line(backends[0])
        if line:
            raise LightsegError(line)
    if args.dtype != "float32" and any(b in (*ONNX_BACKENDS, *CPU_ONLY) for b in backends):
        if args.backend == "all":
            backends = [b for b in backends if b not in (*ONNX_BACKENDS, *CPU_ONLY)]
        else:
            raise LightsegError(f"the {args.backend} backend runs float32 only; drop --dtype or use --backend eager")

    from ..bounds import check_fits
    from ..bounds import estimate_memory

    for name in names:  # what cannot fit is refused with the estimate before anything runs
        h, w = tuple(args.size) if args.size else tuple(model_info(name).paper_size)
        check_fits(f"bench {name} at --batch {args.batch} --size {h} {w}",
                   args.batch * estimate_memory(h, w, getattr(model_info(name), "num_classes", None)),
                   "lower --batch or --size")
    machine = machine_info()
    if args.json:
        _log(format_machine(machine))  # stdout holds the JSON records only; every record carries the machine too
    peak = None
    if args.peak or roofline:
        _log("measuring this machine's fp32 ceiling (oneDNN / MLAS convs, GEMM) and copy bandwidth ...")
        peak = measure_peak(device)
        _log(f"ceiling: {peak['fp32_gflops']} GFLOP/s ({peak['best_kernel']}), copy {peak['copy_gb_s']} GB/s "
             f"({peak['threads']} threads)")
    budget = ZOO_BUDGET_S if args.all_models else 5.0
    records = []
    for k, name in enumerate(names, 1):
        size = tuple(args.size) if args.size else tuple(model_info(name).paper_size)
        _log(f"bench [{k}/{len(names)}] {name} {args.batch}x3x{size[0]}x{size[1]}: {', '.join(backends)} ...")
        rs = benchmark_backends(name, backends, size=size, batch=args.batch, device=device, warmup=args.warmup,
                                runs=args.runs, dtype=args.dtype, budget_s=budget, peak=peak, roofline=roofline, log=_log)
        base = next((r for r in rs if r["backend"] == "eager_nchw"), None)
        summary = best_paths(rs)
        for r in rs:
            if base:
                r["speedup_vs_eager_nchw"] = _sig(base["latency_ms_median"] / r["latency_ms_median"], 3)
            if PLAIN in backends and len(backends) > 1:
                r["model_summary"] = summary
        records += rs
        if args.json:
            # JSON Lines: each model's records as soon as it is done, one per line, so a long run can be
            # followed (and what finished is kept) without waiting for the whole zoo
            for r in rs:
                print(json.dumps(r), flush=True)
        else:
            _log(f"  {name}: " + ", ".join(f"{r['backend']} {r['latency_ms_median']:.1f} ms" for r in rs))
    if args.json:
        if not names:
            print(json.dumps({"peak": peak, "machine": machine}), flush=True)
        return records
    print(format_machine(machine))
    if peak and not names:
        print(json.dumps(peak))
        return records
    print(format_table(records, zoo=args.all_models))
    if roofline:
        print(format_roofline(records, peak))
    print("warm-up/runs: " + ("as given" if args.warmup is not None and args.runs is not None
                              else f"adaptive, ~{budget:.0f} s of timed rounds per backend (3..100 rounds), backends interleaved"))
    return records
