"""The four target models at 512x1024 with every backend (eager NCHW, eager optimised, compile,
ONNX Runtime fp32 and int8), batch 1, CPU, plus this machine's measured peak GFLOP/s.

    .venv/bin/python benchmarks/bench_backends.py       # -> benchmarks/results/backends.json

Same as ``lightseg bench --model M ... --size 512 1024 --backend all --peak --json``.
Targets: ONNX Runtime >= 2.5x eager NCHW for each model; atonet_r18 >= 40% of the conv peak.
"""
import argparse
import sys

from _common import conditions, save

from lightseg.deploy.bench import benchmark, format_table, measure_peak
from lightseg.deploy.runtime import BACKENDS

TARGETS = ["mininet_211k", "dualaspp_mobilenetv2", "atonet_r18", "rdsnet"]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=TARGETS)
    p.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    p.add_argument("--size", nargs=2, type=int, default=[512, 1024])
    p.add_argument("--budget", type=float, default=8.0, help="seconds of timed runs per model and backend")
    p.add_argument("--out", default="backends.json")
    args = p.parse_args()
    cond = conditions()
    peak = measure_peak()
    print(f"peak: {peak}", file=sys.stderr)
    records = []
    for name in args.models:
        for backend in args.backends:
            print(f"{name} {backend} ...", file=sys.stderr, flush=True)
            records.append(benchmark(name, size=tuple(args.size), backend=backend, budget_s=args.budget, peak=peak))
        base = next((r for r in records if r["model"] == name and r["backend"] == "eager_nchw"), None)
        for r in records:
            if base and r["model"] == name:
                r["speedup_vs_eager_nchw"] = round(base["latency_ms_median"] / r["latency_ms_median"], 2)
    print(format_table(records))
    save(args.out, {"conditions": cond, "peak": peak, "budget_s": args.budget, "records": records})


if __name__ == "__main__":
    main()
