"""Every registered model at its paper's input size: eager PyTorch (NCHW) vs ONNX Runtime fp32 and int8, batch 1, CPU.

    .venv/bin/python benchmarks/bench_zoo.py            # -> benchmarks/results/zoo.json

Same as ``lightseg bench --all-models --backend all --json``; warm-up and run counts are chosen
from a time budget per model and backend (``--budget`` seconds, default 6), so that the whole zoo
finishes in under 10 minutes on a 2-core CPU.
"""
import argparse
import sys

from _common import conditions, save

from lightseg import list_models, model_info
from lightseg.deploy.bench import benchmark, format_table


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=6.0, help="seconds of timed runs per model and backend")
    p.add_argument("--models", nargs="+", default=None)
    p.add_argument("--out", default="zoo.json")
    args = p.parse_args()
    cond = conditions()
    records = []
    for name in args.models or list_models():
        size = model_info(name).paper_size
        rows = []
        for backend in ("eager_nchw", "onnxruntime", "onnxruntime_int8"):
            print(f"{name} {backend} {size[0]}x{size[1]} ...", file=sys.stderr, flush=True)
            rows.append(benchmark(name, size=size, backend=backend, budget_s=args.budget))
        for r in rows:
            r["speedup_vs_eager_nchw"] = round(rows[0]["latency_ms_median"] / r["latency_ms_median"], 2)
        records += rows
    print(format_table(records, zoo=True))
    save(args.out, {"conditions": cond, "budget_s": args.budget, "records": records})


if __name__ == "__main__":
    main()
