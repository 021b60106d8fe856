"""Does the data loader keep up with training? Measures, on real CamVid, (a) the images/s the
training DataLoader delivers with a recipe's augmentation and (b) the images/s of mininet_211k training
steps (batch 8, forward + backward + Adam, channels_last as the trainer uses), and writes both to
benchmarks/results/loader.json. The loader must sustain at least twice the training step rate.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/bench_loader.py [--data ../shared/data/camvid]   (from the checkout root)
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from _common import conditions, save  # noqa: E402 (run from the checkout root or benchmarks/)

from lightseg import create_model
from lightseg.config import load_config
from lightseg.data import build_dataset, worker_init_fn


def loader_rate(data_cfg, batch_size=8, num_workers=2, max_batches=40) -> float:
    ds = build_dataset(data_cfg, "train", train=True)
    torch.manual_seed(0)
    dl = DataLoader(ds, batch_size=batch_size, num_workers=num_workers, shuffle=True, drop_last=True,
                    worker_init_fn=worker_init_fn, persistent_workers=False)
    it = iter(dl)
    next(it)  # worker start-up is not part of the steady rate
    t, n = time.perf_counter(), 0
    for i, (x, _) in enumerate(it):
        n += x.shape[0]
        if i + 1 >= max_batches:
            break
    return n / (time.perf_counter() - t)


def train_step_rate(num_classes=11, batch_size=8, size=(360, 480), steps=6) -> float:
    model = create_model("mininet_211k", num_classes=num_classes).train().to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    x = torch.randn(batch_size, 3, *size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, num_classes, (batch_size, *size))

    def step():
        out = model(x)
        loss = F.cross_entropy(out["out"], y) + sum(
            0.4 * F.cross_entropy(F.interpolate(a, size=size, mode="bilinear"), y) for a in out["aux"])
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()  # warm-up
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch_size / (time.perf_counter() - t)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", default="../shared/data/camvid")
    args = p.parse_args()
    records = []
    for recipe in ("configs/mininet_211k_camvid.yaml", "configs/rdsnet_camvid.yaml"):
        cfg = load_config(recipe, [f"data.root={args.data}"])
        rate = loader_rate(cfg["data"], num_workers=2)
        records.append({"recipe": recipe, "train_transforms": cfg["data"]["train_transforms"],
                        "loader_images_per_s": round(rate, 1), "num_workers": 2, "batch_size": 8})
        print(f"{recipe}: loader {rate:.1f} images/s (2 workers, batch 8)")
    step = train_step_rate()
    print(f"mininet_211k training: {step:.1f} images/s (batch 8, 360x480)")
    for r in records:
        r["loader_over_training"] = round(r["loader_images_per_s"] / step, 1)
    save("loader.json", {"conditions": conditions(), "train_images_per_s_mininet_211k_bs8": round(step, 2),
                         "loaders": records})


if __name__ == "__main__":
    main()
