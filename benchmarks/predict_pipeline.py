"""Is `lightseg predict` real time end to end? On a clip of CamVid val frames (360x480, made
here with OpenCV in a temporary folder, never committed) it measures

* the model alone: the Segmenter on the decoded frames, nothing else running (warm median ms/frame),
  with predict's settings (ONNX Runtime's idle threads sleep) and with ONNX Runtime's default (they spin);
* `lightseg predict` on the clip: its pipelined run (reader, model and writer threads), which prints
  its own warm model median and its end-to-end frames/s;

and writes benchmarks/results/predict_pipeline.json. The target: end to end >= 80% of model alone.
The weights are random (speed does not depend on them).

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/predict_pipeline.py [--data ../shared/data/camvid] [--backend onnxruntime]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import torch

from _common import conditions, save  # noqa: E402 (run from the checkout root or benchmarks/)

import lightseg
from lightseg.checkpoint import save_checkpoint
from lightseg.data.classes import CAMVID_CLASSES, CAMVID_PALETTE
from lightseg.deploy.predict import predict


def make_clip(data: Path, path: Path, frames: int) -> list:
    names = [line.split()[0] for line in (data / "val.txt").read_text().splitlines() if line.strip()]
    images = [cv2.imread(str(data / n), cv2.IMREAD_COLOR) for n in names[:frames]]
    images = (images * (frames // len(images) + 1))[:frames]
    h, w = images[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (w, h))
    for img in images:
        writer.write(img)
    writer.release()
    return [cv2.cvtColor(img, cv2.COLOR_BGR2RGB) for img in images]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/camvid", help="CamVid root (SegNet layout)")
    ap.add_argument("--model", default="mininet_211k", help="model name")
    ap.add_argument("--backend", action="append", default=None, help="eager, onnxruntime, onnxruntime_int8 (repeatable)")
    ap.add_argument("--frames", type=int, default=100, help="clip length")
    args = ap.parse_args()
    backends = args.backend or ["onnxruntime", "eager"]
    tmp = Path(tempfile.mkdtemp(prefix="lightseg_clip_"))
    frames = make_clip(Path(args.data), tmp / "clip.mp4", args.frames)
    torch.manual_seed(0)
    net = lightseg.create_model(args.model, num_classes=11)
    ckpt = save_checkpoint({"model": net.state_dict(), "model_name": args.model, "num_classes": 11,
                            "classes": list(CAMVID_CLASSES), "palette": [list(c) for c in CAMVID_PALETTE]}, tmp / "model.pt")
    rows = []
    for backend in backends:
        def model_alone(**kw):
            seg = lightseg.Segmenter.from_checkpoint(ckpt, backend=backend, device="cpu", **kw)
            for rgb in frames:
                seg(rgb)
            return seg

        # predict's own settings (ONNX Runtime's idle threads sleep), and ONNX Runtime's default (they spin)
        seg = model_alone(ort_spinning=False)
        alone = seg.timing()
        spinning = model_alone().timing() if backend != "eager" else None
        t0 = time.perf_counter()
        summary = predict(None, ckpt, str(tmp / "clip.mp4"), output_dir=tmp / f"out_{backend}", backend=backend, device="cpu")
        wall = time.perf_counter() - t0
        row = {"backend": backend, "frames": summary["frames"],
               "model_alone_ms_median": alone["median_ms"], "model_alone_fps": alone["fps"],
               "predict_model_ms_median": summary["latency_ms_median"], "predict_model_fps": summary["fps"],
               "model_alone_ort_spinning_ms_median": spinning["median_ms"] if spinning else None,
               "end_to_end_fps": summary["end_to_end_fps"], "wall_s_including_setup": round(wall, 2),
               "end_to_end_vs_model_alone": round(summary["end_to_end_fps"] / alone["fps"], 3),
               "end_to_end_vs_predict_model": round(summary["end_to_end_fps"] / summary["fps"], 3),
               "model_alone_ms_p10_p90": [round(v, 2) for v in statistics.quantiles(seg.latencies_ms[1:], n=10)[::8]]}
        rows.append(row)
        spin = f", {spinning['median_ms']:.1f} ms spinning" if spinning else ""
        print(f"{backend:18s} model alone {alone['median_ms']:6.1f} ms ({alone['fps']:5.1f} FPS{spin}); predict: model "
              f"{summary['latency_ms_median']:6.1f} ms ({summary['fps']:5.1f} FPS), end to end {summary['end_to_end_fps']:5.1f} "
              f"frames/s = {100 * row['end_to_end_vs_model_alone']:.0f}% of model alone, "
              f"{100 * row['end_to_end_vs_predict_model']:.0f}% of predict's model rate")
    save("predict_pipeline.json", {"conditions": conditions(), "model": args.model, "clip": f"{args.frames} CamVid val frames, "
                                   f"{frames[0].shape[0]}x{frames[0].shape[1]}, mp4v", "rows": rows})


if __name__ == "__main__":
    main()
