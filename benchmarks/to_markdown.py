"""Render a benchmark JSON (``lightseg bench --json`` output, or a results file with ``records``) as the
markdown table used in docs/benchmarks.md.

    .venv/bin/python benchmarks/to_markdown.py benchmarks/results/backends_int8_cli.json [--zoo]
"""
import argparse
import json


def rows(records, zoo=False):
    head = ["model", "backend", "input", "params (M)", "GMACs", "median ms", "p90 ms", "FPS", "GFLOP/s",
            "% peak", "speed-up vs eager NCHW"]
    if zoo:
        head.append("paper FPS (paper's GPU)")
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        share = r.get("share_of_peak", r.get("share_of_conv_peak"))  # older files: share of the 3x3-conv peak
        speed = r.get("speedup_vs_eager_nchw")
        cells = [r["model"], r["backend"], f"{r['size'][0]}x{r['size'][1]}", f"{r['params'] / 1e6:.3f}",
                 f"{r['macs'] / 1e9:.2f}", f"{r['latency_ms_median']:.1f}", f"{r['latency_ms_p90']:.1f}",
                 f"{r['fps']:.2f}", f"{r['achieved_gflops']:.1f}", "-" if share is None else f"{100 * share:.0f}%",
                 "-" if speed is None else f"{speed:.2f}x"]
        if zoo:
            fps = r.get("paper_fps")
            cells.append(f"{'-' if fps is None else f'{fps:g}'} ({r.get('paper_hardware') or 'not stated'})")
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("json")
    p.add_argument("--zoo", action="store_true", help="add the paper FPS column")
    args = p.parse_args()
    data = json.load(open(args.json))
    print(rows(data["records"] if isinstance(data, dict) else data, zoo=args.zoo))


if __name__ == "__main__":
    main()
