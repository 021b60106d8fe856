"""How often CPU bf16 autocast gives a non-finite weight gradient in a dilated depthwise conv, per layout.

    python benchmarks/cpu_bf16_grads.py --reps 100 --json cpu_bf16_grads.json

The convs are the shapes lightseg's CamVid models train (batch 8, 360x480 crops): MiniNet's SPC branches
(96 channels at 1/16, 23x30) and RDS-Net's stage-2 convs (128 channels at 1/8, 45x60), 3x3 depthwise at
dilations 1-16. Each repetition draws new weights, input and output gradient, runs forward under
``torch.autocast("cpu", dtype=torch.bfloat16)`` and backward (the input's gradient too, from a bf16 output
gradient, as for an inner layer), and counts a weight gradient with an inf or nan. It is why ``lightseg train`` runs float32 on a CPU (docs/benchmarks.md, "Training throughput"): on a CPU
without bfloat16 instructions torch emulates bf16 and the count says nothing about oneDNN's bf16 kernels.
"""
from __future__ import annotations

import argparse

import torch

from _common import conditions, save

SHAPES = [("mininet SPC", 96, (23, 30), (1, 2, 4, 8)), ("rdsnet stage 2", 128, (45, 60), (2, 8, 16))]


def count(channels: int, hw: tuple, dilation: int, channels_last: bool, reps: int) -> int:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    bad = 0
    for _ in range(reps):
        conv = torch.nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation, groups=channels,
                               bias=False).to(memory_format=fmt)
        # an inner layer, as in training: its input needs a gradient too, and the one it gets is bf16
        x = torch.randn(8, channels, *hw).contiguous(memory_format=fmt).requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = conv(x)
        y.backward(torch.randn_like(y))
        bad += not bool(torch.isfinite(conv.weight.grad).all())
    return bad


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="save the records to benchmarks/results/NAME")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    records = []
    for name, channels, hw, dilations in SHAPES:
        for d in dilations:
            rec = {"conv": name, "channels": channels, "hw": list(hw), "dilation": d, "reps": args.reps}
            for layout, cl in (("nchw", False), ("channels_last", True)):
                rec[f"non_finite_{layout}"] = count(channels, hw, d, cl, args.reps)
            records.append(rec)
            print(f"{name} {channels}ch {hw[0]}x{hw[1]} dilation {d}: non-finite weight gradients in "
                  f"{rec['non_finite_nchw']}/{args.reps} NCHW, {rec['non_finite_channels_last']}/{args.reps} "
                  "channels_last", flush=True)
    if args.json:
        save(args.json, {"conditions": conditions(), "records": records})


if __name__ == "__main__":
    main()
