"""Training throughput on the CPU: lightseg's training step against a plain PyTorch loop.

For each model, its shipped recipe's step (batch, crop, loss, optimiser) is timed in one process, in
alternating rounds, against what mmseg or smp run on a CPU: the same model, batch and loss, NCHW fp32,
torch's default optimiser. Candidate speed-ups are extra variants of lightseg's step, timed in the same
rounds, so every ratio compares runs that saw the same machine.

    python benchmarks/train_throughput.py                                   # the shipped models, 2 threads
    python benchmarks/train_throughput.py --models mininet_211k --variants lightseg plain fused
    python benchmarks/train_throughput.py --layout --models mininet_211k    # 2 x 1-thread runs vs 1 x 2 threads
    python benchmarks/train_throughput.py --loader                          # the data loader alone, real CamVid

Variants: ``lightseg`` (what ``lightseg train`` runs: channels_last, the recipe's optimiser and loss),
``plain`` (NCHW, torch.optim defaults, the loss written out plainly), and candidates on top of lightseg's:
``foreach`` / ``fused`` (Adam's multi-tensor / fused CPU kernels), ``nchw`` (lightseg without channels_last),
``nchw_logits`` (the low-resolution logits made NCHW before they are upsampled and scored), ``compile_loss``
/ ``compile_loss_nchw`` (``torch.compile`` of the loss: upsampling and cross-entropy fused), ``compile_model``,
``bf16`` / ``bf16_nchw`` (forward and loss under CPU bf16 autocast, channels_last / NCHW; fast only on CPUs
with bfloat16 instructions; timed, not trained with: ``lightseg train`` runs float32 on a CPU, as oneDNN's bf16
kernels now and then return non-finite gradients, docs/benchmarks.md).
Random images and labels of the recipe's crop; the model, not the loader, is timed (``--loader`` times that).
Prints images/s and the ratio to the plain loop; ``--json NAME`` saves benchmarks/results/NAME.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from lightseg.config import load_config
from lightseg.engine.optim import build_optimizer
from lightseg.losses import build_criterion
from lightseg.models import create_model

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import conditions, save  # noqa: E402

SHIPPED = ("mininet_211k", "rdsnet", "mininet_95k")
IGNORE = 255
CAMVID_SIZE = (360, 480)  # SegNet's CamVid release, the shipped recipes' data


def plain_loss(outputs, labels, aux_weights, aux_mode):
    """Cross-entropy on the main output plus the weighted auxiliary terms, as a plain loop writes it."""
    if not isinstance(outputs, dict):
        return F.cross_entropy(outputs, labels, ignore_index=IGNORE)
    loss = F.cross_entropy(outputs["out"], labels, ignore_index=IGNORE)
    for w, aux in zip(aux_weights, outputs.get("aux", [])):
        if aux_mode == "upsample":
            aux = F.interpolate(aux, size=labels.shape[-2:], mode="bilinear", align_corners=False)
            target = labels
        else:
            target = F.interpolate(labels[:, None].float(), size=aux.shape[-2:], mode="nearest")[:, 0].long()
        loss = loss + w * F.cross_entropy(aux, target, ignore_index=IGNORE)
    return loss


class NCHWLogits(torch.nn.Module):
    """The model with its low-resolution logits made NCHW before they are upsampled to the crop and scored."""

    def __init__(self, model):
        super().__init__()
        self.inner = model

    def forward(self, x):
        logits, aux = self.inner.forward_features(x)
        logits = F.interpolate(logits.contiguous(), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return {"out": logits, "aux": [a.contiguous() for a in aux]} if aux else logits


class Step:
    """One variant's model, optimiser and loss; ``__call__`` runs one update on the batch."""

    def __init__(self, name: str, cfg: dict, variant: str, num_classes: int):
        t = cfg["train"]
        torch.manual_seed(0)
        self.model = create_model(cfg["model"]["name"], num_classes=num_classes, **(cfg["model"]["kwargs"] or {})).train()
        aux_names = tuple(getattr(self.model, "aux_names", ()))
        aux_weights = t["loss"]["aux_weights"] or list(getattr(self.model, "aux_weights", None) or [])
        opt = t["optimizer"]
        self.channels_last = variant not in ("plain", "nchw", "bf16_nchw") and t["channels_last"] in ("auto", True)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.bf16 = variant.startswith("bf16")
        if variant == "plain":
            cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[opt["name"]]
            kw = dict(lr=opt["lr"], weight_decay=opt["weight_decay"])
            kw.update(momentum=opt["momentum"]) if opt["name"] == "sgd" else kw.update(betas=tuple(opt["betas"]))
            self.optimizer = cls(self.model.parameters(), **kw)
            self.loss = lambda out, y: plain_loss(out, y, aux_weights, t["loss"]["aux_mode"])
        else:
            self.optimizer = build_optimizer(self.model, opt)
            if variant in ("foreach", "fused"):  # the same optimiser with torch's faster kernels
                self.optimizer = type(self.optimizer)(self.optimizer.param_groups, **{variant: True})
            if variant in ("nchw_logits", "compile_loss_nchw"):
                self.model = NCHWLogits(self.model)
            criterion = build_criterion(t["loss"], num_classes, IGNORE, None, aux_names,
                                        getattr(self.model, "aux_weights", None))

            def loss(out, y):
                value = criterion(out, y)
                return value[0] if isinstance(value, tuple) else value

            self.loss = torch.compile(loss) if variant.startswith("compile_loss") else loss
            if variant == "compile_model":
                self.model = torch.compile(self.model)

    def __call__(self, images, labels):
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            loss = self.loss(self.model(images), labels)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())


def batch(cfg: dict, num_classes: int):
    tt = cfg["data"]["train_transforms"]
    h, w = tt["crop"] or tt["resize"] or CAMVID_SIZE  # no crop, no resize: the images' own size
    n = cfg["train"]["batch_size"]
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, h, w, generator=g), torch.randint(0, num_classes, (n, h, w), generator=g)


def time_models(models, variants, rounds, steps, threads):
    torch.set_num_threads(threads)
    records = []
    for name in models:
        cfg = load_config(f"{name}_camvid")
        n_cls = cfg["model"]["num_classes"]
        images, labels = batch(cfg, n_cls)
        steppers = {v: Step(name, cfg, v, n_cls) for v in variants}
        warmup = {}
        for v, s in steppers.items():  # warm-up: oneDNN primitives, allocator, torch.compile's compiling
            t0 = time.perf_counter()
            s(images, labels)
            warmup[v] = time.perf_counter() - t0
        times = {v: [] for v in variants}
        order = list(variants)
        for r in range(rounds):
            # each round starts with a different variant: a fixed order would favour whichever runs first
            for v in order[r % len(order):] + order[:r % len(order)]:
                s = steppers[v]
                t0 = time.perf_counter()
                for _ in range(steps):
                    s(images, labels)
                times[v].append((time.perf_counter() - t0) / steps)
        n = images.shape[0]
        rec = {"model": name, "batch": n, "crop": list(images.shape[-2:]), "threads": threads,
               "optimizer": cfg["train"]["optimizer"]["name"], "rounds": rounds, "steps_per_round": steps,
               "variants": {v: {"s_per_step_median": statistics.median(ts), "images_per_s": n / statistics.median(ts),
                                "s_per_step_all": ts, "first_step_s": warmup[v]} for v, ts in times.items()}}
        if "plain" in times:
            base = statistics.median(times["plain"])
            for v, ts in times.items():  # ratio round by round: each pair saw the same machine
                rec["variants"][v]["x_plain"] = statistics.median(p / t for p, t in zip(times["plain"], ts))
                rec["variants"][v]["x_plain_of_medians"] = base / statistics.median(ts)
        records.append(rec)
        line = ", ".join(f"{v} {r['images_per_s']:.2f} img/s" + (f" ({r['x_plain']:.2f}x plain)" if "x_plain" in r else "")
                         for v, r in rec["variants"].items())
        print(f"{name} batch {n} {rec['crop'][0]}x{rec['crop'][1]}, {threads} threads: {line}", flush=True)
    return records


def layout(models, rounds, steps):
    """Total images/s of one 2-thread process against two 1-thread processes running at once."""
    out = []
    me = [sys.executable, os.path.abspath(__file__), "--variants", "lightseg", "--rounds", str(rounds),
          "--steps", str(steps), "--emit"]
    for name in models:
        def run(threads, copies):
            procs = [subprocess.Popen(me + ["--models", name, "--threads", str(threads)], stdout=subprocess.PIPE,
                                      text=True, env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
                     for _ in range(copies)]
            recs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
            return sum(r["variants"]["lightseg"]["images_per_s"] for r in recs)
        one, two = run(2, 1), run(1, 2)
        rec = {"model": name, "one_2thread_images_per_s": one, "two_1thread_images_per_s_total": two, "x": two / one}
        print(f"{name}: 1 x 2 threads {one:.2f} img/s, 2 x 1 thread {two:.2f} img/s in all ({two / one:.2f}x)", flush=True)
        out.append(rec)
    return out


def loader(models, batches):
    """The training loader alone (real CamVid, the recipe's transforms, no workers): images/s of one core."""
    from lightseg.data import build_dataset

    torch.set_num_threads(1)
    out = []
    for name in models:
        cfg = load_config(f"{name}_camvid")
        ds = build_dataset(cfg["data"], "train", train=True)
        n = cfg["train"]["batch_size"] * batches
        t0 = time.perf_counter()
        for i in range(n):
            ds[i % len(ds)]
        rate = n / (time.perf_counter() - t0)
        print(f"{name}: loader {rate:.1f} images/s on one core (decode, scale, crop, flip, normalise)", flush=True)
        out.append({"model": name, "loader_images_per_s_one_core": rate})
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=list(SHIPPED))
    ap.add_argument("--variants", nargs="+", default=["lightseg", "plain"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layout", action="store_true", help="two 1-thread processes against one 2-thread process")
    ap.add_argument("--loader", action="store_true", help="time the data loader alone on real CamVid")
    ap.add_argument("--loader-batches", type=int, default=4)
    ap.add_argument("--emit", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json", help="save the records to benchmarks/results/NAME")
    args = ap.parse_args(argv)
    if args.layout:
        payload = {"layout": layout(args.models, args.rounds, args.steps)}
    elif args.loader:
        payload = {"loader": loader(args.models, args.loader_batches)}
    else:
        payload = {"models": time_models(args.models, args.variants, args.rounds, args.steps, args.threads)}
    if args.emit:
        print(json.dumps(payload["models"][0]))
    if args.json:
        save(args.json, {"conditions": conditions(), **payload})


if __name__ == "__main__":
    main()
