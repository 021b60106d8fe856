"""Blocks shared by several papers: conv-BN-activation, depthwise-separable conv, ASPP, channel shuffle."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn as nn

from .base import resize_to


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round channels to a multiple of ``divisor`` (MobileNet convention), never below 90% of ``v``."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> activation. ``act=None`` leaves the activation out.

    ``padding`` defaults to 'same' for odd kernels at any dilation. Submodule names ``0, 1, 2`` match
    torchvision's ``Conv2dNormActivation``, so its checkpoints load.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        dilation: int = 1,
        groups: int = 1,
        act: Callable[..., nn.Module] | None = nn.ReLU,
        bias: bool = False,
        norm: bool = True,
    ):
        if padding is None:
            padding = (kernel_size - 1) // 2 * dilation
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation=dilation, groups=groups, bias=bias)
        ]
        if norm:
            layers.append(nn.BatchNorm2d(out_channels))
        if act is not None:
            layers.append(act(inplace=True) if act in (nn.ReLU, nn.ReLU6, nn.Hardswish) else act())
        super().__init__(*layers)
        self.out_channels = out_channels


class DepthwiseSeparableConv(nn.Sequential):
    """Depthwise k x k conv -> BN -> act, then pointwise 1x1 conv -> BN -> act.

    ``depthwise_act`` controls the activation after the depthwise conv (DeepLab's separable conv
    has one; MobileNet's linear bottleneck has none).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        act: Callable[..., nn.Module] | None = nn.ReLU,
        depthwise_act: Callable[..., nn.Module] | None = nn.ReLU,
    ):
        super().__init__(
            ConvBNAct(in_channels, in_channels, kernel_size, stride, dilation=dilation, groups=in_channels, act=depthwise_act),
            ConvBNAct(in_channels, out_channels, 1, act=act),
        )
        self.out_channels = out_channels


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's channel shuffle: (N, g*c, H, W) -> transpose groups -> (N, c*g, H, W)."""
    n, c, h, w = x.shape
    if c % groups:
        raise ValueError(f"channel_shuffle: {c} channels not divisible by {groups} groups")
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def bn_scale_shift(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm as a per-channel affine map ``y = scale * x + shift`` (float64, for folding)."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"{bn}: BatchNorm without running statistics uses batch statistics and cannot be folded")
    scale = torch.rsqrt(bn.running_var.double() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = -bn.running_mean.double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    return scale, shift


class ConvPoolMerge(nn.Module):
    """Inference form of a downsampling unit "conv branch beside a max-pool branch, merged (concatenated or
    added), BatchNorm, activation" (ENet's initial block, MiniNet's SPP downsampling). The BN is folded into
    the conv branch's last convolution and into a per-channel 1x1 convolution on the pool branch: the same
    output without a float BN between convolutions, which would keep ONNX Runtime's int8 graph out of NHWC.
    """

    @torch.no_grad()
    def __init__(self, conv: nn.Module, pool: nn.Module, bn: nn.BatchNorm2d, act: nn.Module, concat: bool = True):
        super().__init__()
        last = conv[-1] if isinstance(conv, nn.Sequential) else conv
        if not isinstance(last, nn.Conv2d):
            raise TypeError(f"ConvPoolMerge: the conv branch must end in a Conv2d, got {type(last).__name__}")
        dtype = last.weight.dtype
        scale, shift = (t.to(dtype) for t in bn_scale_shift(bn))
        k = last.out_channels
        pool_scale, pool_shift = (scale[k:], shift[k:]) if concat else (scale, torch.zeros_like(shift))
        folded = nn.Conv2d(last.in_channels, k, last.kernel_size, last.stride, last.padding, last.dilation, last.groups,
                           bias=True).to(last.weight.device)
        folded.weight.copy_(last.weight * scale[:k].view(-1, 1, 1, 1))
        folded.bias.copy_(shift[:k] + (last.bias * scale[:k] if last.bias is not None else 0))
        self.conv = nn.Sequential(*list(conv)[:-1], folded) if isinstance(conv, nn.Sequential) else folded
        c = pool_scale.numel()
        self.pool_affine = nn.Conv2d(c, c, 1, groups=c, bias=True).to(last.weight.device)
        self.pool_affine.weight.copy_(pool_scale.view(-1, 1, 1, 1))
        self.pool_affine.bias.copy_(pool_shift)
        self.pool, self.act, self.concat = pool, act, concat

    def forward(self, x):
        a, b = self.conv(x), self.pool_affine(self.pool(x))
        return self.act(torch.cat([a, b], dim=1) if self.concat else a + b)


class ChannelShuffle(nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x):
        return channel_shuffle(x, self.groups)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


class ImagePooling(nn.Module):
    """Global average pool -> 1x1 conv-BN-act -> upsample back (ASPP's image-level branch)."""

    def __init__(self, in_channels: int, out_channels: int, act=nn.ReLU, norm: bool = True):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv = ConvBNAct(in_channels, out_channels, 1, act=act, norm=norm)

    def forward(self, x):
        return resize_to(self.conv(self.pool(x)), x.shape[-2:])


class ASPP(nn.Module):
    """Atrous Spatial Pyramid Pooling (DeepLabV3): a 1x1 branch, one 3x3 branch per rate, optional
    image pooling, concatenated and projected by a 1x1 conv.

    ``separable``: 3x3 branches as depthwise-separable convs (MobileNet-style DeepLab).
    ``project_dropout``: dropout after the projection (DeepLabV3 uses 0.5 in torchvision; 0.1 common).
    ``project``: False returns the concatenation (out_channels * n_branches channels).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        rates: Sequence[int] = (6, 12, 18),
        branch_channels: int | None = None,
        image_pooling: bool = True,
        separable: bool = False,
        project: bool = True,
        project_dropout: float = 0.0,
        act=nn.ReLU,
    ):
        super().__init__()
        bc = branch_channels or out_channels
        branches: list[nn.Module] = [ConvBNAct(in_channels, bc, 1, act=act)]
        for r in rates:
            if separable:
                branches.append(DepthwiseSeparableConv(in_channels, bc, 3, dilation=r, act=act, depthwise_act=act))
            else:
                branches.append(ConvBNAct(in_channels, bc, 3, dilation=r, act=act))
        if image_pooling:
            branches.append(ImagePooling(in_channels, bc, act=act))
        self.branches = nn.ModuleList(branches)
        cat = bc * len(branches)
        if project:
            proj: list[nn.Module] = [ConvBNAct(cat, out_channels, 1, act=act)]
            if project_dropout:
                proj.append(nn.Dropout(project_dropout))
            self.project = nn.Sequential(*proj)
            self.out_channels = out_channels
        else:
            self.project = nn.Identity()
            self.out_channels = cat

    def forward(self, x):
        return self.project(torch.cat([b(x) for b in self.branches], dim=1))
