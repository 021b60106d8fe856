"""Inference-time graph simplification: fold BatchNorm into the convolution that feeds it.

In eval mode BatchNorm is a per-channel affine map ``y = (x - mean) / sqrt(var + eps) * gamma + beta``.
When ``x`` is the output of a convolution, the map can be absorbed into the convolution's weights
and bias (``W' = W * s``, ``b' = (b - mean) * s + beta`` with ``s = gamma / sqrt(var + eps)``), which
removes one full read and write of the feature map per BN layer.

Which convolution feeds which BatchNorm is found by running the model once with forward hooks,
not from module names: it works for ``ConvBNAct`` (conv/bn in one Sequential), torchvision-style
``conv1``/``bn1`` attribute pairs and any other wiring. A pair is folded only when the conv and the
BN each run exactly once and the BN's input is the conv's output tensor. The folded model is then
checked against the original on the probe input; if they disagree (e.g. a model also reads the
pre-BN tensor elsewhere), folding is abandoned and an unfused copy is returned with a warning.
"""
from __future__ import annotations

import copy
import warnings

import torch
import torch.nn as nn

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d)
_BNS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@torch.no_grad()
def fold_bn_into_conv(conv: nn.Module, bn: nn.Module) -> None:
    """Fold eval-mode ``bn`` into ``conv`` in place (computed in float64, stored in the conv's dtype)."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"{bn}: BatchNorm without running statistics uses batch statistics and cannot be folded")
    var = bn.running_var.double()
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = -bn.running_mean.double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.double()

    weight = conv.weight
    w = weight.double()
    if isinstance(conv, nn.ConvTranspose2d):
        # weight is (in, out/groups, kH, kW): the output channel is dim 1.
        if conv.groups != 1:
            raise ValueError("folding BN into a grouped ConvTranspose2d is not supported")
        w = w * scale.view(1, -1, *([1] * (w.dim() - 2)))
    else:
        w = w * scale.view(-1, *([1] * (w.dim() - 1)))
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    new_bias = bias * scale + shift

    conv.weight = nn.Parameter(w.to(weight.dtype), requires_grad=weight.requires_grad)
    conv.bias = nn.Parameter(new_bias.to(weight.dtype), requires_grad=weight.requires_grad)


def find_conv_bn_pairs(model: nn.Module, example: torch.Tensor):
    """Names of (conv, bn) pairs where the BN consumes the conv's output, found by one forward pass.

    Returns ``(pairs, output)``; the model's output on ``example`` serves as the reference for checking.
    """
    names = {m: n for n, m in model.named_modules(remove_duplicate=False)}
    conv_calls: dict[nn.Module, int] = {}
    bn_calls: dict[nn.Module, int] = {}
    # id(tensor) -> (conv, tensor kept alive so ids are not reused, its version counter)
    produced_by: dict[int, tuple[nn.Module, torch.Tensor, int]] = {}
    fed_by: dict[nn.Module, nn.Module | None] = {}

    def conv_hook(mod, inputs, output):
        conv_calls[mod] = conv_calls.get(mod, 0) + 1
        if isinstance(output, torch.Tensor):
            produced_by[id(output)] = (mod, output, output._version)

    def bn_pre_hook(mod, inputs):
        bn_calls[mod] = bn_calls.get(mod, 0) + 1
        src = produced_by.get(id(inputs[0]))
        # The version check rejects conv -> in-place op (e.g. ReLU(inplace)) -> BN on the same tensor.
        ok = src is not None and src[1] is inputs[0] and src[2] == inputs[0]._version
        fed_by[mod] = src[0] if ok else None

    handles = []
    for m in model.modules():
        if isinstance(m, _CONVS):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, _BNS):
            handles.append(m.register_forward_pre_hook(bn_pre_hook))
    try:
        with torch.no_grad():
            output = model(example)
    finally:
        for h in handles:
            h.remove()

    pairs = []
    for bn, conv in fed_by.items():
        if conv is None or bn_calls[bn] != 1 or conv_calls[conv] != 1:
            continue
        if not bn.track_running_stats or bn.running_mean is None:
            continue
        if isinstance(conv, nn.ConvTranspose2d) and conv.groups != 1:
            continue
        pairs.append((names[conv], names[bn]))
    return pairs, output


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def _max_output_diff(a, b) -> float:
    if isinstance(a, dict):
        a = a["out"]
    if isinstance(b, dict):
        b = b["out"]
    return (a.float() - b.float()).abs().max().item()


def fuse_conv_bn(model: nn.Module, example: torch.Tensor | None = None, input_size=(64, 64),
                 inplace: bool = False, verify: bool = True) -> nn.Module:
    """Return an eval-mode copy of ``model`` with every foldable BatchNorm folded into its conv.

    ``example``: a probe input (default: a random (1, 3, *input_size) tensor). Folded BNs become
    ``nn.Identity`` so that module names (and the rest of the model) are unchanged. ``verify``
    compares the folded model with the original on the probe (relative error <= 1e-4).
    """
    fused = model if inplace else copy.deepcopy(model)
    fused.eval()
    p = next(fused.parameters(), None)
    if example is None:
        gen = torch.Generator().manual_seed(0)
        example = torch.randn(1, 3, *input_size, generator=gen)
    if p is not None:
        example = example.to(device=p.device, dtype=p.dtype)
    pairs, reference = find_conv_bn_pairs(fused, example)
    fused.fused_bn_pairs = len(pairs)
    if not pairs:
        return fused
    for conv_name, bn_name in pairs:
        fold_bn_into_conv(fused.get_submodule(conv_name), fused.get_submodule(bn_name))
        _set_submodule(fused, bn_name, nn.Identity())
    if verify:
        with torch.no_grad():
            out = fused(example)
        ref = reference["out"] if isinstance(reference, dict) else reference
        scale = ref.float().abs().max().item() + 1.0
        diff = _max_output_diff(out, reference)
        if not diff <= 1e-4 * scale:
            warnings.warn(
                f"BatchNorm folding changed the output of {type(model).__name__} (max abs diff {diff:.3g}); "
                "a pre-BN tensor is probably used elsewhere. Using the unfused model.",
                RuntimeWarning,
                stacklevel=2,
            )
            fused = copy.deepcopy(model).eval()
            fused.fused_bn_pairs = 0
    return fused


def count_batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, _BNS) for m in model.modules())
