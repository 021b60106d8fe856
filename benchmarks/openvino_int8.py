"""Is OpenVINO a faster int8 runtime than ONNX Runtime for lightseg's int8 models? Both run the same file: lightseg's
int8 ONNX (QDQ, calibrated on the synthetic scenes, :func:`lightseg.deploy.quantize.quantize_onnx`), which
OpenVINO reads as FakeQuantize and runs with its own int8 kernels. Beside them: the OpenVINO peer (the plain
export at OpenVINO's default precision) and lightseg's fp32 export in OpenVINO, at 512x1024, 2 threads, random
weights, timed in interleaved rounds.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/openvino_int8.py --models shufflenetv2_dpc dualaspp_mobilenetv2
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _common import conditions, save

from lightseg.deploy.export import export_to_bytes, ort_session
from lightseg.deploy.format_openvino import _openvino, core
from lightseg.deploy.quantize import calibration_images, quantize_onnx
from lightseg.models import create_model


def openvino_call(data: bytes, x, work, hint=None):
    ov = _openvino()
    path = Path(work) / f"m{len(list(Path(work).iterdir()))}.onnx"
    path.write_bytes(data)
    config = {"INFERENCE_NUM_THREADS": torch.get_num_threads(), "PERFORMANCE_HINT": "LATENCY"}
    if hint:
        config["INFERENCE_PRECISION_HINT"] = hint
    compiled = core().compile_model(ov.convert_model(str(path)), "CPU", config)
    request = compiled.create_infer_request()
    return lambda: request.infer({0: x})[compiled.output(0)].copy()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["shufflenetv2_dpc", "dualaspp_mobilenetv2"])
    p.add_argument("--size", nargs=2, type=int, default=[512, 1024])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--out", default="openvino_int8.json")
    args = p.parse_args()
    cond = conditions()
    ov = _openvino()
    size = tuple(args.size)
    rows = []
    for name in args.models:
        net = create_model(name, num_classes=19).eval()
        x = np.random.default_rng(0).standard_normal((1, 3, *size)).astype(np.float32)
        int8 = quantize_onnx(export_to_bytes(net, size), calibration_images(None, size, count=2))
        session = ort_session(int8, "cpu", spinning=False)
        with tempfile.TemporaryDirectory(prefix="lightseg-ov-int8-") as work:
            calls = {
                "peer_openvino (plain export, OpenVINO's default precision)": openvino_call(export_to_bytes(net, size, fuse=False), x, work),
                "openvino f32 (lightseg's export)": openvino_call(export_to_bytes(net, size), x, work, ov.Type.f32),
                "onnxruntime_int8 (lightseg's int8 ONNX)": lambda: session.run(None, {session.get_inputs()[0].name: x})[0],
                "openvino on lightseg's int8 ONNX": openvino_call(int8, x, work),
            }
            with torch.inference_mode():
                ref = net(torch.from_numpy(x))
            ref = (ref["out"] if isinstance(ref, dict) else ref).argmax(1)
            for call in calls.values():
                call(), call()
            lat = {k: [] for k in calls}
            for i in range(args.rounds):
                for k in (list(calls) if i % 2 == 0 else list(calls)[::-1]):
                    t0 = time.perf_counter()
                    calls[k]()
                    lat[k].append((time.perf_counter() - t0) * 1000.0)
            peer = next(iter(calls))
            for k, call in calls.items():
                agree = float((torch.from_numpy(np.asarray(call())).argmax(1) == ref).float().mean() * 100)
                rows.append({"model": name, "path": k, "latency_ms_median": round(statistics.median(lat[k]), 2),
                             "vs_peer_openvino": round(statistics.median(a / b for a, b in zip(lat[peer], lat[k])), 3),
                             "argmax_agreement": round(agree, 2)})
                print(f"{name:22s} {k:58s} {rows[-1]['latency_ms_median']:8.1f} ms  x peer {rows[-1]['vs_peer_openvino']:5.2f}"
                      f"  agree {agree:6.2f}", file=sys.stderr, flush=True)
    save(args.out, {"conditions": cond, "size": list(size), "rounds": args.rounds, "records": rows})


if __name__ == "__main__":
    main()
