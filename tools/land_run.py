"""Copy a training run's resumable state into the checkout's ``training/`` folder, small enough to commit.

    python tools/land_run.py /work/runs/mininet_211k_camvid_trainval          # -> training/mininet_211k_camvid_trainval/

The run folder itself (outside the work tree) holds the exact state: ``lightseg train --resume RUN`` continues
it bitwise on the machine that has it. A new machine has only the checkout, so each landing commits:

- ``last.pt`` without the optimiser's per-parameter moments (for Adam two tensors the size of the weights,
  two thirds of the file). Weights, optimiser hyper-parameters and rates, scheduler (poly position, plateau
  scale and counters), sampler position, RNG states and data fingerprint are kept, so ``--resume`` continues at
  the same iteration on the same schedule. What it costs against an exact resume: Adam restarts its moments
  (and its bias correction) at that iteration, which perturbs the next few hundred updates; the run is no
  longer bitwise the uninterrupted one, and the trainer says so on resume.
- ``config.yaml`` and ``log.jsonl`` as they are.

A maintainer's tool (not part of the installed package). Refuses to write over a run folder.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightseg.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402


def strip_optimizer_moments(ckpt: dict) -> dict:
    """The checkpoint with ``optimizer['state']`` emptied (param groups kept) and the fact recorded."""
    out = dict(ckpt)
    opt = dict(ckpt["optimizer"])
    opt["state"] = {}
    out["optimizer"] = opt
    out["optimizer_moments_dropped"] = True
    return out


def land(run_dir: Path, dest_root: Path) -> Path:
    run_dir = Path(run_dir).resolve()
    dest = Path(dest_root).resolve() / run_dir.name
    if dest == run_dir:
        raise SystemExit(f"land_run: {dest} is the run folder itself; land it into the checkout's training/")
    ckpt = load_checkpoint(run_dir / "last.pt")
    dest.mkdir(parents=True, exist_ok=True)
    save_checkpoint(strip_optimizer_moments(ckpt), dest / "last.pt")
    for name in ("config.yaml", "log.jsonl"):
        shutil.copyfile(run_dir / name, dest / name)
    return dest


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--into", type=Path, default=ROOT / "training")
    args = p.parse_args(argv)
    dest = land(args.run_dir, args.into)
    ckpt = load_checkpoint(dest / "last.pt")
    print(f"{dest}: iteration {ckpt['iteration']}, {(dest / 'last.pt').stat().st_size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
