"""Put a trained run's weights into the package: ``lightseg/weights/<model>_<name>.pt`` + its manifest record.

    python tools/ship_weights.py RUN_DIR/last.pt --name camvid --recipe mininet_211k_camvid \
        --data-root ../shared/data/camvid --commit b56a595... --command "lightseg train ..." [--command ...]

1. The checkpoint is read weights-only; only the network's state dict, its classes and palette are
   kept (no optimiser state: the shipped file is a few hundred kB, not MBs).
2. The record is written with the file's sha256, the training command(s), splits, iterations and commit.
3. Its ``val_miou`` is then measured the way a user reproduces it, by running
   ``lightseg eval RECIPE --weights NAME --json`` on the shipped file, and stored with that command.

A maintainer's tool (not part of the installed package): it writes into the checkout's lightseg/weights.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightseg import weights as registry  # noqa: E402
from lightseg.checkpoint import atomic_write_bytes, load_checkpoint, save_checkpoint  # noqa: E402
from lightseg.config import load_config, resolve_recipe  # noqa: E402
from lightseg.engine.train import iteration_budget  # noqa: E402


def _write_manifest(records: list[dict]) -> None:
    path = registry.WEIGHTS_DIR / registry.MANIFEST
    text = json.dumps({"format": 1, "weights": records}, indent=2) + "\n"
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def progress(ckpt: dict, cfg: dict) -> dict:
    """How far the run got, in the trainer's terms (:func:`lightseg.engine.train.iteration_budget`, single
    process), and for a plateau schedule its reductions and whether it has converged (a converged run is
    complete short of its planned epochs); and whether the val split was held out of training."""
    t = cfg["train"]
    splits = cfg["data"].get("train_split", "train")
    splits = [splits] if isinstance(splits, str) else list(splits)
    val = cfg["data"].get("val_split", "val")
    out = {"val_held_out": val not in splits}
    n = ckpt.get("train_samples")
    if n:
        per_epoch, planned = iteration_budget(int(n), int(t["batch_size"]), t)
        out.update(train_samples=int(n), iterations_planned=planned,
                   epochs_done=round(int(ckpt["iteration"]) / per_epoch, 1), epochs_planned=round(planned / per_epoch, 1))
    sched = ckpt.get("scheduler") or {}
    if "plateau_reductions" in sched:  # a plateau schedule: how often it lowered the rate, and whether it has ended
        out.update(plateau_reductions=int(sched["plateau_reductions"]), schedule_converged=bool(sched.get("converged")))
    return out


def ship(ckpt_path: Path, name: str, recipe: str, data_root: str, commit: str, commands: list[str],
         notes: str = "") -> dict:
    ckpt = load_checkpoint(ckpt_path)
    model = ckpt["model_name"]
    cfg = ckpt.get("config") or load_config(resolve_recipe(recipe), [])
    out = registry.WEIGHTS_DIR / f"{model}_{name}.pt"
    save_checkpoint({"model": ckpt["model"], "model_name": model, "num_classes": ckpt["num_classes"],
                     "classes": ckpt["classes"], "palette": ckpt["palette"]}, out)
    record = registry.manifest_record(
        out, model, name, dataset=cfg["data"]["name"], num_classes=int(ckpt["num_classes"]),
        classes=list(ckpt["classes"]), palette=[list(c) for c in ckpt["palette"]],
        normalize=cfg["data"].get("normalize", "imagenet"), model_kwargs=dict(cfg["model"].get("kwargs") or {}),
        train_splits=cfg["data"].get("train_split", "train"), command=commands,
        iterations=int(ckpt["iteration"]), commit=commit, val_miou=None, notes=notes, **progress(ckpt, cfg))
    records = [r for r in registry.list_weights() if not (r["model"] == model and r["weights"] == name)]
    _write_manifest(records + [record])

    eval_cmd = ["lightseg", "eval", recipe, "--weights", name, "--device", "cpu", "--json",
                "--set", f"data.root={data_root}", "--set", "output_dir=runs/ship_weights"]
    run = subprocess.run([sys.executable, "-m", *eval_cmd], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    if run.returncode != 0:
        raise SystemExit(f"lightseg eval failed:\n{run.stderr}")
    report = json.loads(run.stdout)
    record["val_miou"] = round(float(report["miou"]), 4)
    record["val_miou_label"] = "val (held out)" if record["val_held_out"] else "val (trained on)"
    record["val_pixel_acc"] = round(float(report["pixel_acc"]), 4)
    record["eval_command"] = " ".join(eval_cmd[:7]) + f" --set data.root={data_root}"
    _write_manifest(records + [record])
    return record


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", type=Path, help="the run's checkpoint (e.g. RUN_DIR/last.pt)")
    p.add_argument("--name", required=True, help="the weights' name (e.g. camvid)")
    p.add_argument("--recipe", required=True, help="the recipe lightseg eval measures it with")
    p.add_argument("--data-root", required=True, help="the dataset root for the val mIoU")
    p.add_argument("--commit", required=True, help="the lightseg commit the run was trained at")
    p.add_argument("--command", action="append", required=True, help="the training command (repeat for resumes)")
    p.add_argument("--notes", default="")
    args = p.parse_args(argv)
    record = ship(args.checkpoint, args.name, args.recipe, args.data_root, args.commit, args.command, args.notes)
    print(json.dumps({k: record[k] for k in ("model", "weights", "file", "sha256", "iterations", "val_miou")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
