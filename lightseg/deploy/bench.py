"""Speed on this machine: params, MACs, latency (median, p90), FPS, memory, achieved GFLOP/s.

Method: the input is created once, outside the timed region; ``warmup`` untimed calls, then
``runs`` calls each timed with ``time.perf_counter`` (``torch.cuda.synchronize()`` before reading
the clock on CUDA) under ``torch.inference_mode()``. FPS = batch * 1000 / median latency (ms).
MACs are multiply-accumulates of the conv and linear layers (:mod:`lightseg.profile`); FLOPs = 2 x MACs.
When ``warmup``/``runs`` are not given they are chosen from a time budget: warm-up calls until two
consecutive ones agree within 10% (the first includes one-off work such as ``torch.compile``), then as
many timed runs as fit ``budget_s`` (3..100).
"""
from __future__ import annotations

import json
import platform
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn as nn

from ..errors import LightsegError
from .runtime import BACKENDS, ONNX_BACKENDS, Runtime, resolve_device, resolve_dtype

PAPER_HARDWARE_NOTE = "paper FPS were measured on the papers' own hardware (GPU), not comparable with this machine"
# --all-models must finish in < 10 minutes on a 2-core CPU: a time budget per (model, backend).
ZOO_BUDGET_S = 6.0
# int8 timing: the quantisation ranges do not change which kernels run, so two synthetic calibration scenes
# suffice (calibration runs the model at full size; 8 scenes took 3 of the zoo table's 8 minutes).
BENCH_CALIBRATION_COUNT = 2


# ---------------------------------------------------------------------- timing
def time_callable(fn, warmup=None, runs=None, sync=None, budget_s=5.0, min_runs=3, max_runs=100):
    """Latencies in ms of ``runs`` timed calls of ``fn()`` after ``warmup`` untimed ones.

    ``None`` counts are chosen from ``budget_s``: warm-up until two consecutive calls agree within 10%,
    then as many runs as fit the budget (``min_runs``..``max_runs``). Returns ``(latencies_ms, warmup_used)``.
    """
    sync = sync or (lambda: None)

    def one():
        t0 = time.perf_counter()
        fn()
        sync()
        return (time.perf_counter() - t0) * 1000.0

    if warmup is None:
        # Warm up until two consecutive calls agree within 10% (first-call allocations, kernel selection and
        # compilation are over), with at least 2 and at most 10 calls or 30% of the budget.
        warm = [one(), one()]
        while (len(warm) < 10 and abs(warm[-1] - warm[-2]) > 0.1 * min(warm[-2:])
               and sum(warm) < 0.3 * budget_s * 1000):
            warm.append(one())
    else:
        warm = [one() for _ in range(warmup)]
    if runs is None:
        if not warm:
            warm.append(one())
        est = min(warm[-2:])
        runs = int(min(max_runs, max(min_runs, budget_s * 1000 / max(est, 1e-3))))
    warmup_used = len(warm)
    return [one() for _ in range(runs)], warmup_used


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


# ---------------------------------------------------------------------- peak GFLOP/s
def measure_peak(device="cpu", budget_s=2.0) -> dict:
    """This machine's fp32 GFLOP/s for a 2048^3 matmul and a 3x3 conv 64->64 in channels_last.

    The conv figure is the reference for "share of peak": it is what a conv net could reach.
    """
    device = resolve_device(device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
    n = 2048
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    # The 25th-percentile latency: near the best the machine does, but not a single lucky (or mis-timed) run.
    with torch.inference_mode():
        lat, _ = time_callable(lambda: torch.mm(a, b), budget_s=budget_s, sync=sync, min_runs=8)
        matmul = 2 * n**3 / (float(np.percentile(lat, 25)) / 1000) / 1e9
        h, w = 256, 512
        conv = nn.Conv2d(64, 64, 3, padding=1, bias=False).to(device).to(memory_format=torch.channels_last)
        x = torch.randn(1, 64, h, w, device=device).contiguous(memory_format=torch.channels_last)
        lat, _ = time_callable(lambda: conv(x), budget_s=budget_s, sync=sync, min_runs=8)
        conv_gflops = 2 * h * w * 64 * 64 * 9 / (float(np.percentile(lat, 25)) / 1000) / 1e9
    return {"matmul_gflops": round(matmul, 1), "conv3x3_gflops": round(conv_gflops, 1),
            "threads": torch.get_num_threads(), "device": str(device),
            "method": "fp32 2048^3 matmul and 3x3 conv 64->64 at 256x512 NHWC; 25th-percentile latency"}


# ---------------------------------------------------------------------- one record
def _sig(v, digits=4):
    return float(f"{v:.{digits}g}")


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {"cpu": cpu, "torch_threads": torch.get_num_threads(), "torch": torch.__version__}
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:  # pragma: no cover
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def benchmark(model, size=None, batch=1, device="cpu", backend="eager", warmup=None, runs=None,
              dtype="float32", num_classes=19, budget_s=5.0, peak=None) -> dict:
    """Benchmark one model with one backend; returns a flat record (see module docstring).

    ``model``: a registered name or an ``nn.Module``. ``size``: (H, W); default the paper's size.
    ``peak``: a :func:`measure_peak` dict, to report the share of this machine's conv peak.
    """
    from ..models import create_model, model_info
    from ..profile import count_macs, count_params

    if backend not in BACKENDS:
        raise LightsegError(f"backend {backend!r} is unknown; use one of {', '.join(BACKENDS)}")
    dev = resolve_device(device)
    resolve_dtype(dtype)
    if isinstance(model, str):
        name = model
        info = model_info(name)
        size = tuple(size) if size else tuple(info.paper_size)
        net = create_model(name, num_classes=num_classes)
    else:
        net = model
        name = getattr(model, "lightseg_name", type(model).__name__)
        if size is None:
            raise LightsegError("benchmark(nn.Module) needs size=(H, W)")
        size = tuple(size)
    if batch < 1:
        raise LightsegError(f"batch must be >= 1, got {batch}")
    net.eval()
    params = count_params(net)
    macs = count_macs(net, size, batch=batch, device="meta")

    x = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(0)).to(dev)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else None
    t0 = time.perf_counter()
    runtime = Runtime(net, backend=backend, device=dev, input_size=size, dtype=dtype,
                      calibration_count=BENCH_CALIBRATION_COUNT)
    runtime.prepare(tuple(x.shape))
    setup_s = time.perf_counter() - t0
    with PeakMemory(dev) as mem:
        lat, warmup_used = time_callable(lambda: runtime(x), warmup=warmup, runs=runs, sync=sync, budget_s=budget_s)
    median = statistics.median(lat)
    record = {
        "model": name, "backend": backend, "size": list(size), "batch": batch, "device": str(dev), "dtype": str(dtype),
        "params": params, "macs": macs, "flops": 2 * macs,
        "latency_ms_median": round(median, 3), "latency_ms_p90": round(float(np.percentile(lat, 90)), 3),
        "latency_ms_min": round(min(lat), 3), "fps": round(batch * 1000.0 / median, 2),
        "warmup": warmup_used, "runs": len(lat), "setup_s": round(setup_s, 2),
        "peak_mem_mb": round(mem.mb, 1) if mem.mb is not None else None,
        "achieved_gflops": _sig(2 * macs / (median / 1000.0) / 1e9),
        "threads": torch.get_num_threads(),
    }
    if backend == "onnxruntime_int8":
        record["calibration"] = f"{BENCH_CALIBRATION_COUNT} synthetic scenes"
        record["int8_mode"] = runtime.int8_mode
    if peak:
        record["peak_conv3x3_gflops"] = peak["conv3x3_gflops"]
        record["peak_matmul_gflops"] = peak["matmul_gflops"]
        record["share_of_conv_peak"] = _sig(record["achieved_gflops"] / peak["conv3x3_gflops"])
    if isinstance(model, str):
        info = model_info(name)
        record["paper_size"] = list(info.paper_size)
        record["paper_fps"] = info.paper_fps
        record["paper_hardware"] = info.paper_hardware
    return record


# ---------------------------------------------------------------------- table
def _fmt(v, spec, dash="-"):
    return dash if v is None else format(v, spec)


def format_table(records, zoo=False) -> str:
    head = (f"{'model':30s} {'backend':16s} {'input':>9s} {'params(M)':>9s} {'GMACs':>7s} {'median ms':>9s} "
            f"{'p90 ms':>8s} {'FPS':>7s} {'GFLOP/s':>8s} {'%peak':>6s} {'mem MB':>7s} {'speed-up':>8s}")
    if zoo:
        head += f" {'paper FPS':>9s}  paper hardware"
    lines = [head, "-" * len(head)]
    for r in records:
        share = r.get("share_of_conv_peak")
        line = (f"{r['model'][:30]:30s} {r['backend']:16s} {r['size'][0]:>4d}x{r['size'][1]:<4d} {r['params'] / 1e6:9.3f} "
                f"{r['macs'] / 1e9:7.2f} {r['latency_ms_median']:9.1f} {r['latency_ms_p90']:8.1f} {r['fps']:7.2f} "
                f"{r['achieved_gflops']:8.1f} {_fmt(None if share is None else 100 * share, '6.1f'):>6s} "
                f"{_fmt(r.get('peak_mem_mb'), '7.0f'):>7s} {_fmt(r.get('speedup_vs_eager_nchw'), '7.2f') + ('x' if r.get('speedup_vs_eager_nchw') else ''):>8s}")
        if zoo:
            line += f" {_fmt(r.get('paper_fps'), '9.1f'):>9s}  {r.get('paper_hardware') or '-'}"
        lines.append(line)
    lines.append("MACs = multiply-accumulates (conv + linear), FLOPs = 2 x MACs; GFLOP/s = FLOPs / median latency; "
                 "%peak = share of this machine's 3x3-conv peak (--peak); speed-up vs eager_nchw.")
    if any(r["backend"] == "onnxruntime_int8" for r in records):
        lines.append(f"onnxruntime_int8: int8 static quantisation calibrated on {BENCH_CALIBRATION_COUNT} synthetic scenes (GFLOP/s counts its int8 "
                     "MACs like fp32 ones); a different numerical model: check its accuracy with lightseg eval --backend onnxruntime_int8.")
    if zoo:
        lines.append("paper FPS: " + PAPER_HARDWARE_NOTE + "; each model runs at its paper's input size.")
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
    if not names and not args.peak:
        raise LightsegError("nothing to benchmark: give --model NAME (repeatable), --all-models or --peak")
    if args.batch < 1:
        raise LightsegError(f"--batch must be >= 1, got {args.batch}")
    device = resolve_device(args.device)  # auto: CUDA, then MPS, then the CPU
    if args.backend == "all":
        backends = list(BACKENDS) if not args.all_models else ["eager_nchw", "onnxruntime", "onnxruntime_int8"]
        if device.type != "cpu":
            backends.remove("onnxruntime_int8")  # a CPU path (VNNI); Runtime refuses it on CUDA
    else:
        backends = [args.backend]
    if args.dtype != "float32" and any(b in ONNX_BACKENDS for b in backends):
        if args.backend == "all":
            backends = [b for b in backends if b not in ONNX_BACKENDS]
        else:
            raise LightsegError(f"the {args.backend} backend runs float32 only; drop --dtype or use --backend eager")

    peak = None
    if args.peak:
        _log("measuring this machine's peak GFLOP/s (matmul, 3x3 conv channels_last) ...")
        peak = measure_peak(device)
        _log(f"peak: matmul {peak['matmul_gflops']} GFLOP/s, conv3x3 {peak['conv3x3_gflops']} GFLOP/s "
             f"({peak['threads']} threads)")
    budget = ZOO_BUDGET_S if args.all_models else 5.0
    records = []
    for name in names:
        size = tuple(args.size) if args.size else tuple(model_info(name).paper_size)
        for backend in backends:
            _log(f"bench {name} {backend} {args.batch}x3x{size[0]}x{size[1]} ...")
            r = benchmark(name, size=size, batch=args.batch, device=device, backend=backend,
                          warmup=args.warmup, runs=args.runs, dtype=args.dtype, budget_s=budget, peak=peak)
            records.append(r)
        base = next((r for r in records if r["model"] == name and r["backend"] == "eager_nchw"), None)
        if base:
            for r in records:
                if r["model"] == name:
                    r["speedup_vs_eager_nchw"] = _sig(base["latency_ms_median"] / r["latency_ms_median"], 3)
    if args.json:
        print(json.dumps(records if names else [{"peak": peak}], indent=2))
        return records
    if peak and not names:
        print(json.dumps(peak))
        return records
    print(format_table(records, zoo=args.all_models))
    info = machine_info()
    print(f"machine: {info['cpu']}, {info['torch_threads']} torch threads, torch {info['torch']}, "
          f"onnxruntime {info.get('onnxruntime', '-')}; warm-up/runs: "
          + ("as given" if args.warmup is not None and args.runs is not None else f"adaptive, ~{budget:.0f} s of timed runs per row (3..100 runs)"))
    return records
