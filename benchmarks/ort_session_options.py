"""ONNX Runtime session options on this CPU: intra-op threads and spinning, fp32 and int8, at 512x1024.

    .venv/bin/python benchmarks/ort_session_options.py     # -> benchmarks/results/ort_session_options.json

lightseg's sessions use intra-op threads = torch's thread count (one per core) and ORT's default spinning;
this checks that nothing else is faster. Median of 15 runs after 3 warm-up runs, batch 1.
"""
import argparse
import sys
import time

import numpy as np
import onnxruntime as ort
from _common import conditions, save

import lightseg
from lightseg.deploy.export import export_to_bytes
from lightseg.deploy.quantize import calibration_images, quantize_onnx

SETTINGS = [(2, "1"), (2, "0"), (1, "1"), (0, "1")]  # (intra-op threads, allow_spinning); 0 = ORT's default


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["rdsnet", "atonet_r18"])
    p.add_argument("--out", default="ort_session_options.json")
    args = p.parse_args()
    cond = conditions()
    records = []
    x = np.random.default_rng(0).standard_normal((1, 3, 512, 1024), dtype=np.float32)
    for name in args.models:
        fp32 = export_to_bytes(lightseg.create_model(name, num_classes=19).eval(), (512, 1024))
        int8 = quantize_onnx(fp32, calibration_images(None, (512, 1024), 4))
        for kind, data in (("fp32", fp32), ("int8", int8)):
            for threads, spin in SETTINGS:
                o = ort.SessionOptions()
                o.intra_op_num_threads, o.inter_op_num_threads, o.log_severity_level = threads, 1, 3
                o.add_session_config_entry("session.intra_op.allow_spinning", spin)
                s = ort.InferenceSession(data, o, providers=["CPUExecutionProvider"])
                for _ in range(3):
                    s.run(None, {"images": x})
                ts = []
                for _ in range(15):
                    t = time.perf_counter()
                    s.run(None, {"images": x})
                    ts.append((time.perf_counter() - t) * 1000)
                r = {"model": name, "precision": kind, "intra_op_threads": threads, "allow_spinning": spin == "1",
                     "latency_ms_median": round(float(np.median(ts)), 1)}
                print(r, file=sys.stderr, flush=True)
                records.append(r)
    save(args.out, {"conditions": cond, "records": records})


if __name__ == "__main__":
    main()
