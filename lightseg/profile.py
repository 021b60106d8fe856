"""Parameter and MAC counting.

MACs (multiply-accumulates) are counted the way common counters (thop, ptflops, fvcore) count
them: convolutions, linear layers and matrix products only; BatchNorm, activations, pooling and
interpolation are not counted. We use PyTorch's own ``FlopCounterMode``, which reports FLOPs
= 2 x MACs for those operators, and halve it.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@torch.no_grad()
def count_macs(model: nn.Module, input_size=(512, 1024), batch: int = 1, device="cpu") -> int:
    """MACs of one eval-mode forward pass at ``input_size`` (H, W), batch ``batch``."""
    if str(device) == "meta":
        # Shapes only, no arithmetic: fast even for ATONet at 1024x2048.
        model = copy.deepcopy(model).to("meta")
    was_training = model.training
    model.eval()
    x = torch.zeros(batch, 3, *input_size, device=device)
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


@torch.no_grad()
def count_inference_params(model: nn.Module, input_size=(256, 256)) -> int:
    """Parameters of the modules that run in an eval-mode forward pass (train-only auxiliary heads
    excluded): what a deployed network carries. Shapes only, on the meta device."""
    model = copy.deepcopy(model).to("meta").eval()
    used: set[int] = set()
    hooks = [m.register_forward_hook(lambda mod, i, o: used.add(id(mod))) for m in model.modules()]
    try:
        model(torch.zeros(1, 3, *input_size, device="meta"))
    finally:
        for h in hooks:
            h.remove()
    seen: set[int] = set()
    total = 0
    for m in model.modules():
        if id(m) in used:
            for p in m.parameters(recurse=False):
                if id(p) not in seen:
                    seen.add(id(p))
                    total += p.numel()
    return total
