"""Inference-time graph simplification: fold BatchNorm into the convolution that feeds it, then apply
the exact rewrites the models define (``reparameterize``) and, for ONNX, PReLU as convolutions.

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
from torch.nn.utils.fusion import fuse_conv_bn_weights

from ..errors import LightsegError

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d)
_BNS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@torch.no_grad()
def fold_bn_into_conv(conv: nn.Module, bn: nn.Module) -> None:
    """Fold eval-mode ``bn`` into ``conv`` in place: ``torch.nn.utils.fusion.fuse_conv_bn_weights``, given
    float64 copies (so the fold adds no float32 rounding of its own), stored back in the conv's dtype."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"{bn}: BatchNorm without running statistics uses batch statistics and cannot be folded")
    transpose = isinstance(conv, nn.ConvTranspose2d)
    if transpose and conv.groups != 1:
        # weight (in, out/groups, kH, kW): a per-output-channel scale does not line up with its dim 1
        raise ValueError("folding BN into a grouped ConvTranspose2d is not supported")

    def f64(t):
        return None if t is None else t.detach().double()

    weight, bias = fuse_conv_bn_weights(f64(conv.weight), f64(conv.bias), f64(bn.running_mean), f64(bn.running_var),
                                        bn.eps, f64(bn.weight), f64(bn.bias), transpose=transpose)
    dtype, grad = conv.weight.dtype, conv.weight.requires_grad
    conv.weight = nn.Parameter(weight.detach().to(dtype), requires_grad=grad)
    conv.bias = nn.Parameter(bias.detach().to(dtype), requires_grad=grad)


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


# ---------------------------------------------------------------------- reparameterisation
class PReLUAsConv(nn.Module):
    """``PReLU(x) = a * x + (1 - a) * relu(x)`` written as two per-channel 1x1 (depthwise) convolutions.

    Exact for any slope ``a``. ONNX Runtime's CPU provider runs ``PRelu`` in plain NCHW with a generic
    broadcasting kernel, so its blocked-layout (NCHWc) graph reorders the tensor out and back around every
    PReLU; depthwise convolutions stay in the blocked layout (mininet_211k at 512x1024 on the 2-core EPYC:
    ORT 62 -> 32 ms). Used for ONNX export only; eager PyTorch keeps ``nn.PReLU``.
    """

    def __init__(self, prelu: nn.PReLU, channels: int):
        super().__init__()
        a = prelu.weight.detach().reshape(-1)
        if a.numel() == 1:
            a = a.expand(channels)
        if a.numel() != channels:
            raise ValueError(f"PReLU with {a.numel()} slopes applied to {channels} channels")
        self.linear = nn.Conv2d(channels, channels, 1, groups=channels, bias=False)
        self.rectified = nn.Conv2d(channels, channels, 1, groups=channels, bias=False)
        with torch.no_grad():
            self.linear.weight.copy_(a.reshape(channels, 1, 1, 1))
            self.rectified.weight.copy_((1 - a).reshape(channels, 1, 1, 1))

    def forward(self, x):
        return self.linear(x) + self.rectified(torch.relu(x))


def _probe_inputs(model: nn.Module, example: torch.Tensor, types) -> dict:
    """The input shapes each module of ``types`` sees in one forward pass: ``{module: {shape, ...}}``."""
    seen: dict[nn.Module, set] = {}

    def hook(mod, inputs):
        seen.setdefault(mod, set()).add(tuple(inputs[0].shape))

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, types)]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return seen


def _pool_output_is_exact(pool: nn.MaxPool2d, shape) -> bool:
    """True when floor and ceil mode give the same output for an input of ``shape`` (no partial window)."""
    k, s, p, d = (v if isinstance(v, tuple) else (v, v) for v in (pool.kernel_size, pool.stride or pool.kernel_size,
                                                                   pool.padding, pool.dilation))
    return all((shape[2 + i] + 2 * p[i] - d[i] * (k[i] - 1) - 1) % s[i] == 0 for i in range(2))


def reparameterize_model(model: nn.Module, example: torch.Tensor | None = None, input_size=(64, 64),
                         prelu_as_conv: bool = False, static_shape: bool = False) -> nn.Module:
    """Apply the exact inference-time rewrites the model's own modules define, in place.

    Any submodule with a ``reparameterize()`` method (timm's convention) is replaced by what it returns
    (RDS-Net folds its channel shuffle into the preceding convolution; ENet/MiniNet downsampling fold
    their BatchNorm across the concatenation). ``prelu_as_conv``: swap every ``nn.PReLU`` on 4-D maps for
    :class:`PReLUAsConv` (for ONNX export). ``static_shape``: the model will only see ``example``'s
    size, so ``ceil_mode`` is dropped from max-pools where it changes nothing at that size (ONNX Runtime
    has NHWC int8 max-pool kernels for floor mode only). Call after :func:`fuse_conv_bn`.
    """
    for name, mod in list(model.named_modules()):
        if name and callable(getattr(mod, "reparameterize", None)):
            new = mod.reparameterize()
            if new is not mod:
                _set_submodule(model, name, new)
    if not (prelu_as_conv or static_shape):
        return model
    if example is None:
        example = torch.randn(1, 3, *input_size, generator=torch.Generator().manual_seed(0))
    p = next(model.parameters(), None)
    if p is not None:
        example = example.to(device=p.device, dtype=p.dtype)
    seen = _probe_inputs(model, example, (nn.PReLU, nn.MaxPool2d))
    names = {m: n for n, m in model.named_modules()}
    for mod, shapes in seen.items():
        if isinstance(mod, nn.PReLU) and prelu_as_conv:
            channels = {s[1] if len(s) == 4 else -1 for s in shapes}
            if len(channels) == 1 and -1 not in channels:
                c = channels.pop()
                _set_submodule(model, names[mod], PReLUAsConv(mod, c).to(mod.weight.device, mod.weight.dtype))
        elif isinstance(mod, nn.MaxPool2d) and static_shape and mod.ceil_mode:
            if all(len(s) == 4 and _pool_output_is_exact(mod, s) for s in shapes):
                mod.ceil_mode = False
    return model


def prepare_for_inference(model: nn.Module, input_size=(64, 64), for_onnx: bool = False,
                          static_shape: bool = False) -> nn.Module:
    """An eval-mode copy of ``model`` with BatchNorm folded and the modules' exact rewrites applied
    (:func:`reparameterize_model`; PReLU as convolutions when ``for_onnx``; ``static_shape``: it will only
    run at ``input_size``), checked against the original on a probe input of ``input_size``: a rewrite
    that changes the output raises instead of shipping a wrong model."""
    original = model.eval()
    gen = torch.Generator().manual_seed(0)
    example = torch.randn(1, 3, *input_size, generator=gen)
    p = next(original.parameters(), None)
    if p is not None:
        example = example.to(device=p.device, dtype=p.dtype)
    with torch.no_grad():
        ref = original(example)
    ref = ref["out"] if isinstance(ref, dict) else ref
    if not bool(torch.isfinite(ref.float()).all()):  # a broken model, not a broken rewrite: say so
        raise LightsegError(f"{type(model).__name__}'s output is NaN or infinite on a random input, so its labels "
                            "would be meaningless: its weights are not finite (a diverged training?); check them with "
                            "torch.isfinite(p).all() for p in model.parameters(), or load another checkpoint")
    prepared = fuse_conv_bn(original, example=example)
    reparameterize_model(prepared, example=example, prelu_as_conv=for_onnx, static_shape=static_shape)
    with torch.no_grad():
        out = prepared(example)
    diff = _max_output_diff(out, ref)
    if not diff <= 1e-4 * (ref.float().abs().max().item() + 1.0):
        raise RuntimeError(f"inference rewrites changed the output of {type(model).__name__} "
                           f"(max abs diff {diff:.3g}); report this as a bug, or export with fuse=False")
    return prepared
