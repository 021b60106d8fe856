"""Every model through every export format, as a user runs it: one ``lightseg export --model M --format F --size H W
-o FILE`` per model and format, in a process of its own. Each export runs its parity check against PyTorch (it
exits non-zero when the check fails), so a row that says ``ok`` is a file that loads in its runtime and agrees
with the model within the format's tolerance.

    .venv/bin/python benchmarks/export_formats.py   # -> results/export_formats.json

Random weights (an export does not depend on them) warn "random weights", which is expected here.
"""
import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import conditions, save

FORMATS = {"onnx": "model.onnx", "openvino": "model.xml", "executorch": "model.pte", "ncnn": "model.ncnn.param"}


def main():
    from lightseg.models import list_models

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--formats", nargs="+", default=list(FORMATS), choices=list(FORMATS))
    p.add_argument("--size", nargs=2, default=["256", "512"], metavar=("H", "W"))
    p.add_argument("--out", default="export_formats.json")
    args = p.parse_args()
    cond = conditions()
    lightseg = str(Path(sys.executable).with_name("lightseg"))
    rows = []
    with tempfile.TemporaryDirectory(prefix="lightseg-export-formats-") as work:
        for name in list_models():
            for fmt in args.formats:
                out = Path(work) / f"{name}_{fmt}" / FORMATS[fmt]
                out.parent.mkdir()
                t0 = time.perf_counter()
                done = subprocess.run([lightseg, "export", "--model", name, "--format", fmt, "--size", *args.size,
                                       "-o", str(out)], capture_output=True, text=True)
                text = done.stdout + done.stderr
                parity = [line.strip() for line in text.splitlines() if re.search(r"parity|max abs|argmax", line)]
                rows.append({"model": name, "format": fmt, "size": [int(v) for v in args.size], "exit_code": done.returncode,
                             "ok": done.returncode == 0, "seconds": round(time.perf_counter() - t0, 1),
                             "bytes": sum(f.stat().st_size for f in out.parent.iterdir()), "parity": parity[-3:],
                             "error": None if done.returncode == 0 else (text.strip().splitlines() or ["?"])[-1]})
                print(f"{name:32s} {fmt:10s} {'ok' if rows[-1]['ok'] else 'FAILED'} {rows[-1]['seconds']:6.1f} s  "
                      f"{(parity or [''])[-1][:90]}", file=sys.stderr, flush=True)
    print(f"{sum(r['ok'] for r in rows)} of {len(rows)} exports passed their parity check", file=sys.stderr)
    save(args.out, {"conditions": cond, "records": rows})
    sys.exit(0 if all(r["ok"] for r in rows) else 1)


if __name__ == "__main__":
    main()
