"""Where ONNX Runtime spends its time: per operator type and the slowest nodes, from ORT's own profiler.

    .venv/bin/python benchmarks/ort_profile.py mininet_211k                 # the export lightseg deploys
    .venv/bin/python benchmarks/ort_profile.py mininet_211k --as-written    # no BN folding, no rewrites
    .venv/bin/python benchmarks/ort_profile.py rdsnet --int8                # the int8 graph

Batch 1, 512x1024 by default, 8 profiled runs after 3 warm-up runs, the session settings lightseg uses.
"""
import argparse
import collections
import json
import os
import tempfile

import numpy as np
import onnxruntime as ort

import lightseg
from lightseg.deploy.export import export_to_bytes
from lightseg.deploy.quantize import calibration_images, quantize_onnx


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--size", nargs=2, type=int, default=[512, 1024])
    p.add_argument("--int8", action="store_true", help="quantise first (2 synthetic calibration scenes)")
    p.add_argument("--as-written", action="store_true", help="export without BN folding and the models' rewrites")
    p.add_argument("--runs", type=int, default=8)
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args()
    size = tuple(args.size)
    data = export_to_bytes(lightseg.create_model(args.model, num_classes=19).eval(), size, fuse=not args.as_written)
    if args.int8:
        data = quantize_onnx(data, calibration_images(None, size, 2))
    warmup = 3
    with tempfile.TemporaryDirectory() as tmp:
        o = ort.SessionOptions()
        o.enable_profiling, o.profile_file_prefix = True, os.path.join(tmp, "ort")
        o.intra_op_num_threads, o.inter_op_num_threads, o.log_severity_level = os.cpu_count() or 1, 1, 3
        session = ort.InferenceSession(data, o, providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).standard_normal((1, 3, *size), dtype=np.float32)
        for _ in range(warmup + args.runs):
            session.run(None, {"images": x})
        events = json.load(open(session.end_profiling()))
    # Count only the kernels of the runs after the warm-up ones.
    run_ends = sorted(e["ts"] + e["dur"] for e in events if e.get("cat") == "Session" and e["name"] == "model_run")
    start = run_ends[warmup - 1]
    by_op, by_node = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] > start:
            by_op[e["args"]["op_name"]] += e["dur"]
            by_node[(e["name"][: -len("_kernel_time")], e["args"]["op_name"])] += e["dur"]
    runs = args.runs
    total = sum(by_op.values())
    print(f"{args.model} {'int8' if args.int8 else 'fp32'} {'as written' if args.as_written else 'prepared'} "
          f"{size[0]}x{size[1]}: {total / runs / 1e3:.1f} ms of kernel time per run")
    for op, us in by_op.most_common():
        print(f"  {op:28s} {us / runs / 1e3:8.2f} ms  {100 * us / total:5.1f}%")
    print(f"slowest {args.top} nodes:")
    for (name, op), us in by_node.most_common(args.top):
        print(f"  {us / runs / 1e3:7.2f} ms  {op:20s} {name}")


if __name__ == "__main__":
    main()
