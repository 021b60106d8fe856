"""`make demo` (= `python -m lightseg.demo`): the whole job end to end on an embedded default.

1. data: the built-in synthetic street scenes (CamVid's 11 classes, written in CamVid's layout),
   or real CamVid with ``--data PATH``;
2. train ``mininet_95k`` for a few minutes on the CPU (the recipe ``configs/mininet_95k_synthetic.yaml``);
3. evaluate on the held-out split (metrics JSON);
4. benchmark it (eager PyTorch and ONNX Runtime);
5. predict on held-out images (label, colour and overlay PNGs with a legend);
6. plot the training curves; print where everything is.

Everything goes under ``runs/demo/`` (``--out``). The demo owns that folder: a second run replaces
the previous demo's training run.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "mininet_95k_synthetic.yaml"


def _step(msg: str) -> None:
    print(f"\n== {msg}", file=sys.stderr, flush=True)


def _write_json(path: Path, obj) -> None:
    from .checkpoint import atomic_write_bytes

    atomic_write_bytes(path, lambda f: f.write(json.dumps(obj, indent=2).encode()))


def run_demo(out="runs/demo", data=None, iters=None, size=(120, 160), n_train=300, n_val=60, n_predict=6) -> dict:
    from .config import load_config
    from .data import build_dataset
    from .data.synthetic import generate_synthetic
    from .deploy.bench import benchmark
    from .deploy.predict import predict
    from .engine.evaluate import evaluate
    from .engine.train import fit
    from .checkpoint import load_checkpoint, load_model_weights
    from .models import create_model
    from .viz import plot_run

    t0 = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    synthetic = data is None
    if synthetic:
        _step(f"1/6 synthetic street scenes: {n_train} train + {n_val} val at {size[0]}x{size[1]} -> {out / 'data'}")
        data_root = generate_synthetic(out / "data", n_train=n_train, n_val=n_val, size=size, seed=0)
    else:
        data_root = Path(data)
        _step(f"1/6 real data: {data_root} (CamVid layout)")

    run_dir = out / "mininet_95k"
    overrides = [f"data.root={data_root}", f"output_dir={run_dir}"]
    if iters is not None:
        overrides.append(f"train.iters={int(iters)}")
    cfg = load_config(RECIPE, overrides)
    if run_dir.exists():  # the demo's own previous run: replaced, as the module docstring says
        shutil.rmtree(run_dir)
    _step(f"2/6 training mininet_95k for {cfg['train']['iters']} iterations (recipe {RECIPE.relative_to(ROOT)})")
    fit(cfg)

    _step("3/6 evaluating the best checkpoint on the held-out split")
    ckpt_path = run_dir / "best.pt" if (run_dir / "best.pt").exists() else run_dir / "last.pt"
    ckpt = load_checkpoint(ckpt_path)
    model = create_model("mininet_95k", num_classes=ckpt["num_classes"])
    load_model_weights(model, ckpt, ckpt_path)
    val = build_dataset(cfg["data"], "val", train=False)
    report = evaluate(model.eval(), val, progress=False)
    metrics = {"dataset": "synthetic" if synthetic else str(data_root), "checkpoint": str(ckpt_path),
               "miou": report["miou"], "pixel_acc": report["pixel_acc"], "iou": report["iou"]}
    _write_json(out / "metrics.json", metrics)

    _step("4/6 benchmarking (batch 1, eager PyTorch vs ONNX Runtime)")
    hw = tuple(int(v) for v in val.load_image(0).shape[:2])
    bench = [benchmark(model, size=hw, backend=b, budget_s=3.0) for b in ("eager", "onnxruntime")]
    _write_json(out / "bench.json", bench)

    _step(f"5/6 predicting {n_predict} held-out images")
    pred_in = out / "predict_input"
    if pred_in.exists():
        shutil.rmtree(pred_in)
    pred_in.mkdir()
    for img_path, _ in val.files[:n_predict]:
        shutil.copy(img_path, pred_in / Path(img_path).name)
    pred = predict("mininet_95k", ckpt_path, pred_in, output_dir=out / "predictions")

    _step("6/6 training curves")
    curves = plot_run(run_dir, output=out / "curves.png")

    elapsed = time.time() - t0
    summary = {"miou": report["miou"], "pixel_acc": report["pixel_acc"], "elapsed_s": round(elapsed, 1),
               "metrics": str(out / "metrics.json"), "bench": str(out / "bench.json"),
               "predictions": str(out / "predictions"), "curves": str(curves), "run_dir": str(run_dir)}
    print("\nlightseg demo finished in %.1f min" % (elapsed / 60))
    print(f"  val mIoU        {report['miou'] * 100:.1f}%   pixel accuracy {report['pixel_acc'] * 100:.1f}%"
          f"   ({'synthetic streets' if synthetic else data_root})")
    for rec in bench:
        print(f"  speed           {rec['backend']:12s} {rec['latency_ms_median']:.1f} ms/image at {hw[0]}x{hw[1]} "
              f"({rec['fps']:.1f} FPS)")
    print(f"  metrics         {out / 'metrics.json'}")
    print(f"  benchmark       {out / 'bench.json'}")
    print(f"  overlays        {out / 'predictions'}/*_overlay.png ({pred['images']} images)")
    print(f"  curves          {curves}")
    print(f"  checkpoint      {ckpt_path}")
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m lightseg.demo", description=__doc__.split("\n")[0])
    p.add_argument("--data", default=None, help="real CamVid root (SegNet layout) instead of the synthetic scenes")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--iters", type=int, default=None, help="training iterations (default: the recipe's)")
    args = p.parse_args(argv)
    from .errors import LightsegError

    try:
        run_demo(out=args.out, data=args.data, iters=args.iters)
    except LightsegError as e:
        print(f"lightseg demo: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
