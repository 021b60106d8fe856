"""Shared by the benchmark scripts: run the CLI's bench over models/backends and save JSON results."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from lightseg.checkpoint import atomic_write_bytes
from lightseg.deploy.bench import machine_info

RESULTS = Path(__file__).resolve().parent / "results"


def conditions() -> dict:
    """The machine and how busy it was (other processes share the CPU: the load average says how much)."""
    info = machine_info()
    info["cores"] = os.cpu_count()
    info["loadavg_1_5_15"] = list(os.getloadavg())
    info["date"] = time.strftime("%Y-%m-%d %H:%M:%S")
    # libgomp's default busy-waiting makes eager PyTorch many times slower when other processes share
    # the cores (measured: mininet_211k 4.6 s -> 0.18 s with OMP_WAIT_POLICY=PASSIVE at load 4 on 2 cores).
    info["env"] = {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT")}
    info["command"] = " ".join([Path(sys.executable).name, *sys.argv])
    return info


def save(name: str, payload: dict) -> Path:
    payload = {**payload, "conditions_after": {"loadavg_1_5_15": list(os.getloadavg())}}
    data = json.dumps(payload, indent=2).encode()
    path = atomic_write_bytes(RESULTS / name, lambda f: f.write(data))
    print(f"wrote {path}", file=sys.stderr)
    return path
