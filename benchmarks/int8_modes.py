"""int8 weight formats against fp32: which keeps a model closest where the u8 x s8 kernel saturates.

    .venv/bin/python benchmarks/int8_modes.py            # -> benchmarks/results/int8_modes.json

For each model (random weights with non-trivial BatchNorm statistics, as in tests/test_quantize.py), the fp32
ONNX export and its int8 versions in each mode of ``lightseg.deploy.quantize.INT8_MODES``, calibrated on 4
synthetic scenes and compared with fp32 on another: relative logit error and argmax agreement. The 7-bit
(u8s8_reduce_range) and uint8 (u8u8) modes compute the same on every x86 CPU (no int16 pairs can
overflow), so their figures here are those a Zen 3 gets; full-range u8s8 is exact only with VNNI/AMX, and
on this CPU it is marked as such (``exact_here``). Also the int8 latency of each mode on this CPU.
"""
import argparse
import statistics
import sys
import time

from pathlib import Path

import numpy as np

from _common import conditions, save

import lightseg
from lightseg.deploy.export import export_to_bytes, ort_session
from lightseg.deploy.quantize import INT8_MODES, calibration_images, choose_int8_mode, mode_warning, quantize_onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_quantize import scramble  # noqa: E402  (the tests' weights: the figures explain their bounds)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["mininet_211k", "rdsnet", "atonet_r18", "dualaspp_mobilenetv2", "mininet_95k"])
    p.add_argument("--size", nargs=2, type=int, default=[128, 256])
    p.add_argument("--out", default="int8_modes.json")
    args = p.parse_args()
    cond = conditions()
    size = tuple(args.size)
    calib = calibration_images(None, size, count=4)
    x = calibration_images(None, size, count=1, seed=1)[0][None]
    rows = []
    for name in args.models:
        fp32 = export_to_bytes(scramble(lightseg.create_model(name, num_classes=11)), size)
        ref = ort_session(fp32).run(None, {"images": x})[0]
        for mode in INT8_MODES:
            session = ort_session(quantize_onnx(fp32, calib, mode=mode))
            out = session.run(None, {"images": x})[0]
            times = []
            for _ in range(5):
                t0 = time.perf_counter()
                session.run(None, {"images": x})
                times.append((time.perf_counter() - t0) * 1000)
            row = {"model": name, "mode": mode, "rel_error": round(float(np.linalg.norm(out - ref) / np.linalg.norm(ref)), 4),
                   "argmax_agreement": round(float((out.argmax(1) == ref.argmax(1)).mean() * 100), 2),
                   "exact_here": mode_warning(mode) is None, "median_ms_here": round(statistics.median(times), 2)}
            rows.append(row)
            print(row, file=sys.stderr, flush=True)
    print(f"this CPU chooses {choose_int8_mode()}")
    print(f"{'model':22s} " + " ".join(f"{m:>26s}" for m in INT8_MODES))
    for name in args.models:
        cells = [next(r for r in rows if r["model"] == name and r["mode"] == m) for m in INT8_MODES]
        print(f"{name:22s} " + " ".join(f"{c['rel_error']:>8.4f} / {c['argmax_agreement']:5.1f}% / {c['median_ms_here']:5.1f}ms" for c in cells))
    save(args.out, {"conditions": cond, "size": list(size), "chosen_here": choose_int8_mode(), "rows": rows})


if __name__ == "__main__":
    main()
