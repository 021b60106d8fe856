"""Run the papers' CamVid schedules on one GPU for a fixed time, then pack each run for the trip back.

The three paper-protocol runs (MiniNet-211K and -95K, RDS-Net; CamVid train + val, 300 epochs) take days on
a 2-core CPU. On a GPU the CPU loader would be the limit, so they train here with the decoded training set
on the GPU and augmented there (``data.on_device``), bf16 autocast and channels_last, all three at once
(small networks leave most of the GPU idle). Each run continues where ``--runs`` has it (a run folder with a
``last.pt``, e.g. copied from /work/runs), or starts from its recipe. At ``--budget-s`` every run is stopped
with SIGTERM, which saves ``last.pt``; each run folder is then packed as ``OUT/<run>.tar`` (``last.pt``,
``config.yaml``, ``log.jsonl``) beside ``OUT/summary.json`` (iterations done, images/s, seconds).

    python tools/gpu_schedules.py prepare --camvid ../shared/data/camvid --runs /work/runs --into data   # here
    python3 tools/gpu_schedules.py run --data-root data/camvid --runs data/runs --out "$OUT" --budget-s 480  # there
    python tools/gpu_schedules.py unpack FILES_AT --into /work/runs                                   # here again

``prepare`` copies CamVid and the runs into a git-ignored folder that the device call carries, each run
exact (with Adam's moments) where the 64 MiB that travels allows, else as ``tools/land_run.py`` lands it.
``unpack`` extracts each packed run over the run folders, refusing one whose folder here has gone further
and keeping the folder it replaces as ``<run>.before-gpu``.

What changes against the CPU runs' settings: ``data.on_device``, ``train.amp=bf16``, ``train.channels_last``,
``train.deterministic=false`` and ``train.device=cuda``; a resumed run records them (``--force-override``),
and its next CPU resume takes them back with the same flag. Needs only torch, numpy, OpenCV, PyYAML and tqdm,
so it runs from a plain checkout (``PYTHONPATH=.``) with the machine's own PyTorch.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from lightseg.checkpoint import load_checkpoint  # noqa: E402
RUNS = {  # run folder name -> the recipe it starts from
    "mininet_211k_camvid_trainval": "mininet_211k_camvid_trainval",
    "rdsnet_camvid_trainval": "rdsnet_camvid",
    "mininet_95k_camvid_trainval": "mininet_95k_camvid_trainval",
}
GPU_SETTINGS = ("data.on_device=true", "train.amp=bf16", "train.channels_last=true", "train.deterministic=false",
                "data.num_workers=4")
# what the run folder names on the CPU side: RDS-Net's paper-protocol run trains on train + val too
FRESH_SETTINGS = {"rdsnet_camvid_trainval": ("data.train_split=[train, val]",)}
PACKED = ("last.pt", "config.yaml", "log.jsonl")


def last_iteration(run_dir: Path) -> int:
    """The iteration ``run_dir/last.pt`` holds (0 without one)."""
    if not (run_dir / "last.pt").is_file():
        return 0
    return int(load_checkpoint(run_dir / "last.pt")["iteration"])


def command(name: str, run_dir: Path, data_root: str, device: str = "cuda", extra=()) -> list[str]:
    base = [sys.executable, "-m", "lightseg", "train"]
    sets = [a for s in (*GPU_SETTINGS, f"train.device={device}", *extra) for a in ("--set", s)]
    if (run_dir / "last.pt").is_file():
        return [*base, "--resume", str(run_dir), "--force-override", "--data-root", data_root, *sets]
    fresh = [a for s in FRESH_SETTINGS.get(name, ()) for a in ("--set", s)]
    return [*base, RUNS[name], "--data-root", data_root, "--output-dir", str(run_dir), *fresh, *sets]


def run(args) -> int:
    runs, out = Path(args.runs), Path(args.out)
    runs.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", PYTHONUNBUFFERED="1")
    t0 = time.time()
    procs = {}
    for name in args.only:
        run_dir = runs / name
        start = last_iteration(run_dir)
        log = open(out / f"{name}.out", "w")
        procs[name] = (subprocess.Popen(command(name, run_dir, args.data_root, args.device, args.set), cwd=ROOT, env=env, stdout=log,
                                        stderr=subprocess.STDOUT), start, log)
        print(f"{name}: started at iteration {start}", flush=True)
    while time.time() - t0 < args.budget_s and any(p.poll() is None for p, _, _ in procs.values()):
        time.sleep(2)
    for p, _, _ in procs.values():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)  # finishes the iteration, saves last.pt, exits 2
    summary = {"budget_s": args.budget_s, "runs": {}}
    for name, (p, start, log) in procs.items():
        try:
            p.wait(timeout=120)
        except subprocess.TimeoutExpired:
            p.kill()
        log.close()
        run_dir = runs / name
        done = last_iteration(run_dir)
        records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()] \
            if (run_dir / "log.jsonl").is_file() else []
        rates = [r["images_per_s"] for r in records if r.get("kind") == "train" and r.get("iter", 0) > start]
        vals = [r for r in records if r.get("kind") == "val"]
        summary["runs"][name] = {"exit": p.returncode, "iterations_from": start, "iterations_to": done,
                                 "images_per_s_median": sorted(rates)[len(rates) // 2] if rates else None,
                                 "last_val": {"iter": vals[-1]["iter"], "miou": vals[-1]["miou"]} if vals else None}
        with tarfile.open(out / f"{name}.tar", "w") as tar:
            for f in PACKED:
                if (run_dir / f).is_file():
                    tar.add(run_dir / f, arcname=f"{name}/{f}")
        print(f"{name}: exit {p.returncode}, iterations {start} -> {done}", flush=True)
    summary["seconds"] = round(time.time() - t0, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return 0




TRAVEL_LIMIT = 64 * 2 ** 20  # what one device call may carry, the checkout's own files included


def tracked_bytes() -> int:
    names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    return sum((ROOT / n.decode()).stat().st_size for n in names if n and (ROOT / n.decode()).is_file())


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def prepare(args) -> int:
    import shutil

    from land_run import land

    into = Path(args.into)
    if (into / "camvid").exists() or (into / "runs").exists():
        raise SystemExit(f"gpu_schedules: {into} already holds camvid/ or runs/; remove them first")
    shutil.copytree(args.camvid, into / "camvid")
    used = tracked_bytes() + folder_bytes(into / "camvid")
    for name in RUNS:
        src = Path(args.runs) / name
        if not (src / "last.pt").is_file():
            continue
        dest = into / "runs" / name
        exact = sum((src / f).stat().st_size for f in PACKED if (src / f).is_file())
        if used + exact < 0.95 * TRAVEL_LIMIT:
            dest.mkdir(parents=True)
            for f in PACKED:
                shutil.copyfile(src / f, dest / f)
            how = "exact"
        else:
            land(src, into / "runs")
            how = "landed (Adam's moments dropped to fit)"
        used += folder_bytes(dest)
        print(f"{dest}: {how}, iteration {last_iteration(dest)}")
    print(f"{used / 2 ** 20:.1f} MiB travel with the checkout (limit {TRAVEL_LIMIT / 2 ** 20:.0f}); carry {into}")
    return 0


def unpack(args) -> int:
    import shutil

    into = Path(args.into)
    for tar_path in sorted(Path(args.files).glob("*.tar")):
        name = tar_path.stem
        with tarfile.open(tar_path) as tar:
            members = [m for m in tar.getmembers() if m.isfile() and m.name in {f"{name}/{f}" for f in PACKED}]
            staging = into / f".{name}.unpacking"
            shutil.rmtree(staging, ignore_errors=True)
            for m in members:  # only the packed files, by their own names: nothing leads out of the folder
                data = tar.extractfile(m).read()
                (staging / name).mkdir(parents=True, exist_ok=True)
                (staging / name / Path(m.name).name).write_bytes(data)
        got, here = last_iteration(staging / name), last_iteration(into / name)
        if here > got:
            shutil.rmtree(staging)
            print(f"{name}: kept {into / name} (iteration {here}); the GPU's reached only {got}")
            continue
        if (into / name).exists():
            old = into / f"{name}.before-gpu"
            shutil.rmtree(old, ignore_errors=True)
            (into / name).rename(old)
        (staging / name).rename(into / name)
        staging.rmdir()
        print(f"{name}: iteration {here} -> {got} ({into / name})")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="verb", required=True)
    r = sub.add_parser("run", help="on the GPU machine: train every run for --budget-s, then pack them")
    r.add_argument("--data-root", required=True, help="CamVid (SegNet's layout)")
    r.add_argument("--runs", required=True, help="folder of run folders: continued where they have last.pt")
    r.add_argument("--out", required=True, help="where the packed runs and summary.json go")
    r.add_argument("--budget-s", type=float, default=480, help="seconds of training before every run is stopped")
    r.add_argument("--only", nargs="+", choices=list(RUNS), default=list(RUNS))
    r.add_argument("--device", default="cuda", help="cpu: a dry run of this script where there is no GPU")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="one more override for every run")
    p = sub.add_parser("prepare", help="here: copy CamVid and the runs into the folder the device call carries")
    p.add_argument("--camvid", required=True)
    p.add_argument("--runs", required=True, help="the run folders, e.g. /work/runs")
    p.add_argument("--into", required=True, help="a git-ignored folder of the checkout, e.g. data")
    u = sub.add_parser("unpack", help="here: the packed runs that came back, over the run folders")
    u.add_argument("files", help="the folder the device call's files came back to")
    u.add_argument("--into", required=True, help="the run folders, e.g. /work/runs")
    args = ap.parse_args(argv)
    return {"run": run, "prepare": prepare, "unpack": unpack}[args.verb](args)


if __name__ == "__main__":
    sys.exit(main())
