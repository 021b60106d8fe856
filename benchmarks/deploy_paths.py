"""lightseg's deployment paths against what a user runs without lightseg, at 512x1024 on this CPU: one
``lightseg bench --model M --size 512 1024 --backend all --json`` per model, each in a process of its own, then
one table with each model's fastest accurate lightseg path against the faster peer (plain ONNX Runtime, or
OpenVINO at its default precision on the plain export).

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/deploy_paths.py   # -> results/deploy_paths.json, a markdown table
    .venv/bin/python benchmarks/deploy_paths.py --render benchmarks/results/deploy_paths.json   # the docs' tables

"Accurate": for a model with shipped CamVid weights, the path's CamVid val mIoU is within
``deploy_accuracy.MAX_LOSS`` points of eager fp32 PyTorch in ``results/deploy_accuracy.json``
(benchmarks/deploy_accuracy.py, the weights' own eval); for the others (no trained weights in lightseg), bench's
own check, argmax agreement >= 99% with fp32 PyTorch on the random benchmark input, which is weaker: a random
network's argmax is nearly constant, so int8 on those models is reported but not counted as accurate.
Speed does not depend on the weights, so the timings use random ones (19 classes, as the Cityscapes models).
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

from _common import RESULTS, conditions, save

MODELS = ["mininet_211k", "rdsnet", "atonet_r18", "dualaspp_mobilenetv2", "shufflenetv2_dpc"]
PEERS = ("peer_ort", "peer_openvino")
FP32_PATHS = ("eager_nchw", "eager", "compile", "onnxruntime", "executorch")  # fp32 arithmetic, as PyTorch
SHIPPED = {"mininet_211k": "mininet_211k_camvid", "rdsnet": "rdsnet_camvid"}
TARGET = 1.2


def accuracy_verdicts(path=RESULTS / "deploy_accuracy.json"):
    """{(recipe's model, backend): True/False}: within the mIoU loss allowed on CamVid val, at the backend's
    default precision (OpenVINO's follows the CPU, so its row is the precision the bench ran)."""
    if not path.exists():
        return {}, None
    data = json.loads(path.read_text())
    out = {}
    for r in data["records"]:
        if "miou_change_vs_eager" in r:
            out[(r["recipe"], r["backend"], r["precision"])] = not r["loses_more_than_max"]
    return out, data["max_loss_points"]


def accurate(record, verdicts):
    recipe = SHIPPED.get(record["model"])
    if recipe and verdicts:
        backend = record["backend"]
        precision = record.get("precision") if backend in ("openvino", "ncnn") else None
        if backend == "ncnn":
            precision = precision or "f32"
        key = (recipe, backend, precision)
        if key in verdicts:
            return verdicts[key], "CamVid val mIoU"
    if record["backend"] in FP32_PATHS:
        return record["argmax_agreement"] >= 99.0, "fp32 arithmetic, argmax agreement"
    if record["backend"] == "onnxruntime_int8" or record.get("precision") in ("bf16", "fp16"):
        return False, "reduced precision, accuracy unverified without trained weights"
    return record["argmax_agreement"] >= 99.0, "argmax agreement"


def render(records, summary) -> str:
    """Per model: each path's median ms and its paired ratio to the faster peer, the end-to-end ms of the
    fastest accurate path; then the verdict table."""
    backends = list(dict.fromkeys(r["backend"] for r in records))
    out = ["| model | " + " | ".join(backends) + " |", "|---|" + "---|" * len(backends)]
    for name in dict.fromkeys(r["model"] for r in records):
        cells = []
        for b in backends:
            r = next((r for r in records if r["model"] == name and r["backend"] == b), None)
            cells.append("-" if r is None else f"{r['latency_ms_median']:.1f} ({r['vs_best_peer']:.2f}x)"
                         + ("" if r["accurate"] or b in PEERS else " ¹"))
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    out += ["", "| model | lightseg's fastest accurate path | ms | end to end ms | faster peer | ms | end to end ms | ratio (paired) | >= 1.2x |",
            "|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        peer = next(r for r in records if r["model"] == s["model"] and r["backend"] == s["peer"])
        out.append(f"| {s['model']} | {s['best']}{' ' + s['best_precision'] if s['best_precision'] else ''} | {s['best_ms']:.1f} | "
                   f"{s['e2e_ms']:.1f} | {s['peer']}{' ' + s['peer_precision'] if s['peer_precision'] else ''} | {s['peer_ms']:.1f} | "
                   f"{peer.get('e2e_ms_median', 0):.1f} | {s['vs_best_peer']:.2f}x | {'yes' if s['target_met'] else '**no**'} |")
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--render", default=None, metavar="JSON", help="print the docs' tables of a results file and stop")
    p.add_argument("--models", nargs="+", default=MODELS)
    p.add_argument("--size", nargs=2, default=["512", "1024"], metavar=("H", "W"))
    p.add_argument("--out", default="deploy_paths.json")
    args = p.parse_args()
    if args.render:
        data = json.loads(Path(args.render).read_text())
        print(render(data["records"], data["summary"]))
        return
    cond = conditions()
    lightseg = str(Path(sys.executable).with_name("lightseg"))
    records = []
    for name in args.models:
        print(f"bench {name} ...", file=sys.stderr, flush=True)
        done = subprocess.run([lightseg, "bench", "--model", name, "--size", *args.size, "--backend", "all", "--json"],
                              stdout=subprocess.PIPE, text=True)
        if done.returncode != 0:
            sys.exit(f"lightseg bench --model {name} failed with exit code {done.returncode}")
        records += [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    verdicts, max_loss = accuracy_verdicts()
    summary = []
    for name in args.models:
        rs = [r for r in records if r["model"] == name]
        for r in rs:
            r["accurate"], r["accurate_by"] = accurate(r, verdicts)
        ours = [r for r in rs if r["backend"] not in PEERS and r["accurate"]]
        peer = min((r for r in rs if r["backend"] in PEERS), key=lambda r: r["latency_ms_median"])
        best = min(ours, key=lambda r: r["latency_ms_median"])
        summary.append({"model": name, "best": best["backend"], "best_precision": best.get("precision"),
                        "best_ms": best["latency_ms_median"], "best_by": best["accurate_by"],
                        "peer": peer["backend"], "peer_precision": peer.get("precision"), "peer_ms": peer["latency_ms_median"],
                        "vs_best_peer": best["vs_best_peer"], "target_met": best["vs_best_peer"] >= TARGET,
                        "e2e_ms": best.get("e2e_ms_median")})
    print(render(records, summary))
    save(args.out, {"conditions": cond, "max_loss_points": max_loss, "records": records, "summary": summary})


if __name__ == "__main__":
    main()
