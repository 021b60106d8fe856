"""Render a benchmark JSON (``lightseg bench --json`` output, or a results file with ``records``) as the
markdown table used in docs/benchmarks.md.

    .venv/bin/python benchmarks/to_markdown.py benchmarks/results/backends_int8_cli.json [--zoo]
    .venv/bin/python benchmarks/to_markdown.py benchmarks/results/roofline_headline.json --roofline   # per model
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


def roofline_rows(records):
    """Per model: bounds, lightseg's best fp32 path and best path (int8 included) against plain ONNX Runtime."""
    head = ["model", "GFLOP", "min MB", "compute bound ms", "memory bound ms", "plain ms",
            "best fp32: backend, ms, x plain, % roofline", "best incl. int8: backend, ms, x plain, % roofline",
            "int8 mode, rel. error, argmax %", "load"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cell(b):
        return f"{b['backend']}, {b['latency_ms_median']:.1f}, {b['vs_plain']:.2f}x, {100 * b['roofline_efficiency']:.0f}%"

    for name in dict.fromkeys(r["model"] for r in records):
        rs = [r for r in records if r["model"] == name]
        r0, summary = rs[0], rs[0]["model_summary"]
        plain = next(r for r in rs if r["backend"] in ("peer_ort", "onnxruntime_plain"))
        q = next((r for r in rs if r["backend"] == "onnxruntime_int8"), None)
        out.append("| " + " | ".join([
            name, f"{r0['flops'] / 1e9:.2f}", f"{r0['min_bytes'] / 1e6:.0f}", f"{r0['bound_compute_ms']:.1f}",
            f"{r0['bound_memory_ms']:.1f}", f"{plain['latency_ms_median']:.1f}", cell(summary["best_fp32"]), cell(summary["best"]),
            f"{q['int8_mode']}, {q['int8_rel_error']:.3f}, {q['int8_argmax_agreement']:.1f}" if q else "-",
            f"{r0['machine']['loadavg_1m']}"]) + " |")
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("json")
    p.add_argument("--zoo", action="store_true", help="add the paper FPS column")
    p.add_argument("--roofline", action="store_true", help="the per-model roofline / plain-baseline summary instead")
    args = p.parse_args()
    text = open(args.json).read()
    try:
        data = json.loads(text)
    except ValueError:  # JSON Lines, as lightseg bench --json streams them: one record per line
        data = [json.loads(line) for line in text.splitlines() if line.strip()]
    records = data["records"] if isinstance(data, dict) and "records" in data else data if isinstance(data, list) else [data]
    print(roofline_rows(records) if args.roofline else rows(records, zoo=args.zoo))


if __name__ == "__main__":
    main()
