"""Parameter and MAC counting.

MACs (multiply-accumulates) are counted the way common counters (thop, ptflops, fvcore) count
them: convolutions, linear layers and matrix products only; BatchNorm, activations, pooling and
interpolation are not counted. We use PyTorch's own ``FlopCounterMode``, which reports FLOPs
= 2 x MACs for those operators, and halve it.

On the meta device (shapes only) the counts take one forward pass without arithmetic. There the
element-wise modules (BatchNorm, activations, dropout) run as identities: they change no shape and no
MAC count, and PyTorch's meta kernels for them are slow Python decompositions (PReLU alone made a MiniNet
count take 2.5 s instead of 0.1 s).
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

# Modules whose output has their input's shape and which hold no MACs.
_ELEMENTWISE = (nn.modules.batchnorm._BatchNorm, nn.PReLU, nn.ReLU, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid,
                nn.SiLU, nn.Sigmoid, nn.LeakyReLU, nn.GELU, nn.modules.dropout._DropoutNd, nn.Identity)


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _identity(x, *args, **kwargs):
    return x


@torch.no_grad()
def _profile_forward(model: nn.Module, input_size, batch: int = 1, device="cpu") -> tuple[int, set[int]]:
    """One eval-mode forward: (MACs, positions in ``model.modules()`` of the modules that ran)."""
    meta = str(device) == "meta"
    if meta and any(p.device.type != "meta" for p in model.parameters()):
        model = copy.deepcopy(model).to("meta")
    shortcut = [m for m in model.modules() if meta and isinstance(m, _ELEMENTWISE) and "forward" not in vars(m)]
    for m in shortcut:
        m.forward = _identity  # instance attribute: hooks still run through Module.__call__
    used: set[int] = set()
    hooks = [m.register_forward_hook(lambda mod, i, o: used.add(id(mod))) for m in model.modules()]
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            model(torch.zeros(batch, 3, *input_size, device=device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
        for m in shortcut:
            del m.forward
    # positions in ``modules()`` order, valid for the original when the count ran on a copy
    positions = {i for i, m in enumerate(model.modules()) if id(m) in used}
    return counter.get_total_flops() // 2, positions


def _params_of(model: nn.Module, used_positions: set[int]) -> int:
    seen: set[int] = set()
    total = 0
    for i, m in enumerate(model.modules()):
        if i in used_positions:
            for p in m.parameters(recurse=False):
                if id(p) not in seen:
                    seen.add(id(p))
                    total += p.numel()
    return total


def count_macs(model: nn.Module, input_size=(512, 1024), batch: int = 1, device="cpu") -> int:
    """MACs of one eval-mode forward pass at ``input_size`` (H, W), batch ``batch``.
    ``device="meta"``: shapes only, no arithmetic (fast even for ATONet at 1024x2048)."""
    return _profile_forward(model, input_size, batch, device)[0]


def count_inference_params(model: nn.Module, input_size=(256, 256)) -> int:
    """Parameters of the modules that run in an eval-mode forward pass (train-only auxiliary heads
    excluded): what a deployed network carries. Shapes only, on the meta device."""
    return profile(model, input_size)["params_inference"]


def profile(model: nn.Module, input_size=(512, 1024)) -> dict:
    """Params (all, and those of the modules an eval-mode forward runs) and MACs at ``input_size``, from
    one forward pass on the meta device."""
    macs, used = _profile_forward(model, input_size, device="meta")
    return {"params": count_params(model), "params_inference": _params_of(model, used), "macs": macs}
