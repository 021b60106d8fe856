"""Copy a training run's resumable state into the checkout's ``training/`` folder, small enough to commit,
and restore it on a machine that lacks the run folder.

    python tools/land_run.py /work/runs/mininet_211k_camvid_trainval          # -> training/mininet_211k_camvid_trainval/
    python tools/land_run.py /work/runs/rdsnet_camvid_trainval --weights lightseg/weights/rdsnet_camvid.pt
    python tools/land_run.py --restore training/rdsnet_camvid_trainval --into /work/runs   # -> /work/runs/rdsnet_camvid_trainval/

The run folder itself (outside the work tree) holds the exact state: ``lightseg train --resume RUN`` continues
it bitwise on the machine that has it. A new machine has only the checkout, so each landing commits:

- the run's ``last.pt`` without the optimiser's per-parameter moments (for Adam two tensors the size of the
  weights, two thirds of the file). Weights, optimiser hyper-parameters and rates, scheduler (poly position,
  plateau scale and counters), sampler position, RNG states and data fingerprint are kept, so ``--resume``
  continues at the same iteration on the same schedule. What it costs against an exact resume: Adam restarts
  its moments (and its bias correction) at that iteration, which perturbs the next few hundred updates; the
  run is no longer bitwise the uninterrupted one, and the trainer says so on resume.
- ``config.yaml`` and ``log.jsonl`` as they are.

**With ``--weights``** (a landing made together with ``tools/ship_weights.py`` from the same ``last.pt``) the
weights are not stored a second time: the shipped file already holds exactly them. The landed folder then has
``state.pt`` (everything but the weights) and names the shipped file by its path, sha256 and git blob id, so the
landing costs about 30 kB (sampler, RNG, schedule, data fingerprint) instead of the weights' size. ``--restore``
joins them back into a ``last.pt``; it takes the shipped file from the checkout, or from git's history
(``git cat-file``) once a later shipping has replaced it, and checks its sha256 either way. The tool refuses to reference a file whose tensors are not the run's.

A maintainer's tool (not part of the installed package). Never writes over the run folder it reads, and
``--restore`` never writes over an existing run folder.
"""
from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightseg.checkpoint import atomic_write_bytes, load_checkpoint, save_checkpoint  # noqa: E402

STATE = "state.pt"  # a landed run whose weights are the shipped file it names
COPIED = ("config.yaml", "log.jsonl")


def strip_optimizer_moments(ckpt: dict) -> dict:
    """The checkpoint with ``optimizer['state']`` emptied (param groups kept) and the fact recorded."""
    out = dict(ckpt)
    opt = dict(ckpt["optimizer"])
    opt["state"] = {}
    out["optimizer"] = opt
    out["optimizer_moments_dropped"] = True
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _git(*args: str, stdin: bytes | None = None) -> bytes:
    return subprocess.run(["git", *args], cwd=ROOT, input=stdin, capture_output=True, check=True).stdout


def weights_reference(ckpt: dict, weights: Path) -> dict:
    """What names ``weights`` (a shipped file) as the run's weights; refuses unless its tensors are exactly
    ``ckpt['model']``."""
    weights = Path(weights).resolve()
    shipped = load_checkpoint(weights)["model"]
    model = ckpt["model"]
    if set(shipped) != set(model) or any(not torch.equal(shipped[k], model[k]) for k in model):
        raise SystemExit(f"land_run: {weights} does not hold this run's weights at iteration {ckpt['iteration']}; "
                         f"ship them from the same last.pt first (tools/ship_weights.py), or land without --weights")
    try:
        rel = weights.relative_to(ROOT)
    except ValueError:
        raise SystemExit(f"land_run: {weights} is outside the checkout {ROOT}; --weights takes a shipped file "
                         f"(lightseg/weights/...), which the checkout's history keeps") from None
    blob = _git("hash-object", "--", str(rel)).decode().strip()
    return {"file": rel.as_posix(), "sha256": sha256(weights), "git_blob": blob}


def land(run_dir: Path, dest_root: Path, weights: Path | None = None) -> Path:
    run_dir = Path(run_dir).resolve()
    dest = Path(dest_root).resolve() / run_dir.name
    if dest == run_dir:
        raise SystemExit(f"land_run: {dest} is the run folder itself; land it into the checkout's training/")
    ckpt = strip_optimizer_moments(load_checkpoint(run_dir / "last.pt"))
    ref = weights_reference(ckpt, weights) if weights is not None else None
    dest.mkdir(parents=True, exist_ok=True)
    if ref is None:
        save_checkpoint(ckpt, dest / "last.pt")
        (dest / STATE).unlink(missing_ok=True)  # the folder holds one form of the landing, the newest
    else:
        save_checkpoint({**ckpt, "model": {}, "model_ref": ref}, dest / STATE)
        (dest / "last.pt").unlink(missing_ok=True)
    for name in COPIED:
        shutil.copyfile(run_dir / name, dest / name)
    return dest


def _referenced_weights(ref: dict, landed: Path) -> bytes:
    """The shipped file's bytes: from the checkout while it is the one named, else from git's history."""
    path = ROOT / ref["file"]
    if path.is_file() and sha256(path) == ref["sha256"]:
        return path.read_bytes()
    try:
        data = _git("cat-file", "blob", ref["git_blob"])
    except (subprocess.CalledProcessError, FileNotFoundError):
        raise SystemExit(f"land_run: {landed} needs {ref['file']} with sha256 {ref['sha256']}; the checkout has another "
                         f"version and git's history (blob {ref['git_blob']}) does not have it here. Restore from a full "
                         f"clone (not --depth 1), or check out the commit that shipped it") from None
    if hashlib.sha256(data).hexdigest() != ref["sha256"]:
        raise SystemExit(f"land_run: blob {ref['git_blob']} does not have the sha256 {landed} names ({ref['sha256']})")
    return data


def restore(landed: Path, into: Path) -> Path:
    """A run folder ``into/<name>`` that ``lightseg train --resume`` continues, from a landing of either form."""
    landed = Path(landed).resolve()
    dest = Path(into).resolve() / landed.name
    if dest.exists():
        raise SystemExit(f"land_run: {dest} already exists; it may hold a run further on than the landing. Move it "
                         f"away first, or resume it as it is")
    dest.parent.mkdir(parents=True, exist_ok=True)
    state_path = landed / STATE
    if state_path.is_file():
        state = load_checkpoint(state_path)
        ref = state.pop("model_ref")
        tmp = dest.parent / f".{landed.name}.weights"
        atomic_write_bytes(tmp, lambda f: f.write(_referenced_weights(ref, state_path)))
        try:
            state["model"] = load_checkpoint(tmp)["model"]
        finally:
            tmp.unlink()
    elif (landed / "last.pt").is_file():
        state = load_checkpoint(landed / "last.pt")
    else:
        raise SystemExit(f"land_run: {landed} holds neither last.pt nor {STATE}; pass a folder under training/")
    staging = dest.parent / f".{landed.name}.restoring"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    state.pop("format_version", None)
    save_checkpoint(state, staging / "last.pt")
    for name in COPIED:
        shutil.copyfile(landed / name, staging / name)
    staging.rename(dest)  # whole or not at all
    return dest


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dir", type=Path, nargs="?", help="the run folder to land (e.g. /work/runs/<run>)")
    p.add_argument("--into", type=Path, help="where to land (default: the checkout's training/) or, with --restore, "
                                             "where to restore (default: /work/runs)")
    p.add_argument("--weights", type=Path, help="the shipped weights file made from the same last.pt: referenced, "
                                                "not stored again")
    p.add_argument("--restore", type=Path, metavar="LANDED", help="a landed folder (training/<run>) to make a run folder of")
    args = p.parse_args(argv)
    if (args.run_dir is None) == (args.restore is None):
        p.error("pass a run folder to land, or --restore LANDED")
    if args.restore is not None:
        dest = restore(args.restore, args.into or Path("/work/runs"))
        print(f"{dest}: iteration {load_checkpoint(dest / 'last.pt')['iteration']}; continue with: "
              f"OMP_WAIT_POLICY=PASSIVE lightseg train --resume {dest}")
        return 0
    dest = land(args.run_dir, args.into or ROOT / "training", args.weights)
    name = STATE if (dest / STATE).is_file() else "last.pt"
    ckpt = load_checkpoint(dest / name)
    print(f"{dest}: iteration {ckpt['iteration']}, {name} {(dest / name).stat().st_size / 1e6:.3f} MB"
          + (f" (weights: {ckpt['model_ref']['file']})" if name == STATE else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
