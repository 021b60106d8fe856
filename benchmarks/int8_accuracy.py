"""What the deployment paths cost in accuracy: val mIoU of trained checkpoints through eager PyTorch,
ONNX Runtime fp32 and ONNX Runtime int8 (calibrated on training images).

    .venv/bin/python benchmarks/int8_accuracy.py runs/camvid_mininet_211k_90min runs/camvid_rdsnet_90min \\
        --calib ../shared/data/camvid/train --data-root ../shared/data/camvid   # -> results/int8_accuracy.json

The speed of the same backends is in docs/benchmarks.md (``lightseg bench --backend all``).

Each run directory holds ``config.yaml`` and ``best.pt`` (``lightseg train`` writes both); each row is
``lightseg eval RUN/config.yaml --checkpoint RUN/best.pt --backend B [--calib DIR]``.
"""
import argparse
import sys
import tempfile
from pathlib import Path

from _common import conditions, save

from lightseg.engine.evaluate import evaluate_command

BACKENDS = ("eager", "onnxruntime", "onnxruntime_int8")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run directories (config.yaml + best.pt)")
    p.add_argument("--calib", required=True, help="folder of training images for the int8 calibration")
    p.add_argument("--calib-count", type=int, default=None)
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", default="int8_accuracy.json")
    args = p.parse_args()
    cond = conditions()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in map(Path, args.runs):
            for backend in BACKENDS:
                print(f"{run.name} {backend} ...", file=sys.stderr, flush=True)
                int8 = backend == "onnxruntime_int8"
                report = evaluate_command(run / "config.yaml", run / "best.pt", data_root=args.data_root, backend=backend,
                                          calibration=args.calib if int8 else None,
                                          calibration_count=args.calib_count if int8 else None,
                                          output=Path(tmp) / f"{run.name}_{backend}.json")
                rows.append({"run": str(run), "model": report["model"], "dataset": report["dataset"],
                             "split": report["split"], "num_images": report["num_images"], "backend": backend,
                             "calibration": report.get("calibration"), "miou": report["miou"],
                             "pixel_accuracy": report["pixel_acc"]})
    for r in rows:
        base = next(b for b in rows if b["run"] == r["run"] and b["backend"] == "eager")
        r["miou_change_vs_eager"] = round(r["miou"] - base["miou"], 4)
        print(f"{r['model']:24s} {r['backend']:17s} mIoU {100 * r['miou']:6.2f}  ({100 * r['miou_change_vs_eager']:+.2f})")
    save(args.out, {"conditions": cond, "records": rows})


if __name__ == "__main__":
    main()
