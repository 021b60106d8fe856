"""What each deployment path costs in accuracy: CamVid val mIoU of the shipped weights through every backend and
precision, each row one ``lightseg eval`` command run as a user runs it (a process of its own).

    .venv/bin/python benchmarks/deploy_accuracy.py --data-root ../shared/data/camvid   # -> results/deploy_accuracy.json
    .venv/bin/python benchmarks/deploy_accuracy.py --render benchmarks/results/deploy_accuracy.json  # the docs' table

Each row is ``lightseg eval RECIPE --weights camvid --backend B [--precision P] --data-root DIR --device cpu``;
``onnxruntime_int8`` adds ``--calib DIR/train`` (calibrated on training images, never on val). The change
against eager fp32 PyTorch is in mIoU points; a path that loses more than :data:`MAX_LOSS` points is marked
(``lightseg bench``/``--backend auto`` judge paths on random weights by argmax agreement; this is the same
question on real data). Rows whose backend's extra is not installed are reported as skipped.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import RESULTS, conditions, save

MAX_LOSS = 0.5  # mIoU points
WEIGHTS = (("mininet_211k_camvid", "camvid"), ("rdsnet_camvid", "camvid"), ("mininet_95k_camvid", "camvid"))
PATHS = (("eager", None), ("onnxruntime", None), ("onnxruntime_int8", None), ("openvino", "f32"), ("openvino", "bf16"),
         ("openvino", "fp16"), ("executorch", None), ("ncnn", "f32"), ("ncnn", "fp16"))


def eval_row(recipe, weights, backend, precision, data_root, work):
    cmd = [str(Path(sys.executable).with_name("lightseg")), "eval", recipe, "--weights", weights, "--backend", backend,
           "--data-root", data_root, "--device", "cpu", "--json", "--output", str(Path(work) / f"{recipe}_{backend}_{precision}.json")]
    if precision:
        cmd += ["--precision", precision]
    if backend == "onnxruntime_int8":
        cmd += ["--calib", str(Path(data_root) / "train")]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    row = {"recipe": recipe, "weights": weights, "backend": backend, "precision": precision,
           "command": " ".join(["lightseg", *cmd[1:-2]]), "wall_s": round(time.perf_counter() - t0, 1)}
    if done.returncode != 0:
        row["error"] = (done.stderr.strip().splitlines() or ["exit %d" % done.returncode])[-1]
        return row
    report = json.loads(done.stdout)
    row.update(split=report["split"], num_images=report["num_images"], miou=report["miou"],
               pixel_accuracy=report["pixel_acc"], resolved=report.get("backend"))
    return row


def markdown(rows) -> str:
    """One row per path, one column per shipped weight: mIoU (change against eager fp32), marked where it loses
    more than MAX_LOSS points."""
    recipes = list(dict.fromkeys(r["recipe"] for r in rows))
    paths = list(dict.fromkeys((r["backend"], r["precision"]) for r in rows))
    out = ["| backend | precision | " + " | ".join(f"`{r}` val mIoU (change)" for r in recipes) + " |",
           "|---|---|" + "---|" * len(recipes)]
    for backend, precision in paths:
        cells = []
        for recipe in recipes:
            r = next((x for x in rows if x["recipe"] == recipe and (x["backend"], x["precision"]) == (backend, precision)), None)
            if r is None or "miou" not in r:
                cells.append("-" if r is None else f"failed: {r['error']}")
                continue
            mark = " **loses more than %g**" % MAX_LOSS if r.get("loses_more_than_max") else ""
            cells.append(f"{100 * r['miou']:.2f} ({r.get('miou_change_vs_eager', 0):+.2f}){mark}")
        out.append(f"| {backend} | {precision or '-'} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--render", default=None, metavar="JSON", help="print the markdown table of a results file and stop")
    p.add_argument("--data-root", default=None, help="the CamVid folder (train, val and their annot folders)")
    p.add_argument("--recipes", nargs="+", default=[r for r, _ in WEIGHTS])
    p.add_argument("--out", default="deploy_accuracy.json")
    p.add_argument("--update", action="store_true",
                   help="keep the other recipes' rows of --out and replace only those of --recipes (after new weights)")
    args = p.parse_args()
    if args.render:
        print(markdown(json.loads(Path(args.render).read_text())["records"]))
        return
    if not args.data_root:
        p.error("--data-root is needed to run the evals (or --render a results file)")
    cond = conditions()
    rows = []
    with tempfile.TemporaryDirectory(prefix="lightseg-deploy-accuracy-") as work:
        for recipe, weights in WEIGHTS:
            if recipe not in args.recipes:
                continue
            for backend, precision in PATHS:
                print(f"{recipe} {backend} {precision or ''} ...", file=sys.stderr, flush=True)
                row = eval_row(recipe, weights, backend, precision, args.data_root, work)
                rows.append(row)
                print(f"  {row.get('miou', row.get('error'))} ({row['wall_s']} s)", file=sys.stderr, flush=True)
    if args.update and (RESULTS / args.out).exists():
        kept = [r for r in json.loads((RESULTS / args.out).read_text())["records"] if r["recipe"] not in args.recipes]
        rows = kept + rows
    for r in rows:
        base = next((b for b in rows if b["recipe"] == r["recipe"] and b["backend"] == "eager" and "miou" in b), None)
        if base and "miou" in r:
            r["miou_change_vs_eager"] = round(100 * (r["miou"] - base["miou"]), 2)
            r["loses_more_than_max"] = r["miou_change_vs_eager"] < -MAX_LOSS
    save(args.out, {"conditions": cond, "max_loss_points": MAX_LOSS, "records": rows,
                    "threads": os.environ.get("OMP_NUM_THREADS")})
    print(markdown(rows))


if __name__ == "__main__":
    main()
