"""MiniNet (Liu, Lu, Li, Zhang, Wu, Cheng): SPP downsampling + SPC blocks + a 3-stage decoder with
deep supervision, trained from scratch. Two configurations (95K and 211K parameters).

The paper's text was not available to us; the structure follows the project's issue 2 spec and every
choice the paper would fix is written down in ``docs/models.md``. In short:

* encoder: 4 stages at 1/2, 1/4, 1/8, 1/16 of the input, channels C and block counts P per config;
  each stage starts with an SPP downsampling module (max-pool branch + strided conv branch,
  concatenated, BN-PReLU); stage 1 has residual 3x3 conv blocks, stages 2-4 have SPC blocks
  (r dilated depthwise branches) with a short residual per block and a long residual per stage;
* decoder (Eq. (3) reading): F4 = PReLU(BN(W E4)), F_i = PReLU(BN(DW(Up(W_d F_{i+1}))) + BN(W_e E_i))
  for i = 3, 2, 1, upsampling by size (``resize_to``) so that odd map sizes work;
* classifier: 3x3 conv on F1 (1/2), upsampled to the input; deep-supervision 1x1 heads on F2, F3, F4,
  computed in train mode only (they are training-time losses, dropped at inference as usual).

All convolutions are bias-free except the class projections; every activation is a per-channel PReLU.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from .base import SegmentationModel, resize_to
from .blocks import ConvPoolMerge
from .registry import register_model

__all__ = ["SPPDownsample", "ResidualBlock", "SPCBlock", "MiniNet", "mininet_95k", "mininet_211k"]


class SPPDownsample(nn.Module):
    """Stride-2 downsampling: a 2x2 max-pool branch beside a strided 3x3 conv branch.

    ``out > in`` (every stage but config #1's stage 4): ENet-style, the conv branch gives
    ``out - in`` channels and is concatenated with the pooled input. ``out == in`` (config #1 stage
    4, 64 -> 64): concatenation would double the channels, so the conv branch gives ``out`` channels
    and the pooled input is added to it. Then BN -> PReLU either way.

    ``separable``: the conv branch is a depthwise 3x3 (stride 2) followed by a pointwise 1x1, as in
    stages 2-4; stage 1 (3 input channels) uses a standard 3x3 conv.
    """

    def __init__(self, in_channels: int, out_channels: int, separable: bool = True):
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(f"SPPDownsample: out_channels {out_channels} < in_channels {in_channels}")
        self.concat = out_channels > in_channels
        conv_out = out_channels - in_channels if self.concat else out_channels
        if separable:
            self.conv = nn.Sequential(
                nn.Conv2d(in_channels, in_channels, 3, 2, 1, groups=in_channels, bias=False),
                nn.Conv2d(in_channels, conv_out, 1, bias=False),
            )
        else:
            self.conv = nn.Conv2d(in_channels, conv_out, 3, 2, 1, bias=False)
        # ceil_mode: a 3x3/stride-2/pad-1 conv gives ceil(H/2), so must the pool on odd sizes.
        self.pool = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.PReLU(out_channels)
        self.out_channels = out_channels

    def forward(self, x):
        conv, pool = self.conv(x), self.pool(x)
        y = torch.cat([conv, pool], dim=1) if self.concat else conv + pool
        return self.act(self.bn(y))

    def reparameterize(self) -> nn.Module:
        """Inference form (same output): BN folded into both branches (:class:`ConvPoolMerge`)."""
        return ConvPoolMerge(self.conv, self.pool, self.bn, self.act, concat=self.concat)


class ResidualBlock(nn.Module):
    """Stage-1 block: 3x3 conv-BN-PReLU -> 3x3 conv-BN, + input, PReLU (ResNet basic block)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.act1 = nn.PReLU(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.act2 = nn.PReLU(channels)

    def forward(self, x):
        y = self.act1(self.bn1(self.conv1(x)))
        return self.act2(x + self.bn2(self.conv2(y)))


class SPCBlock(nn.Module):
    """Spatial pyramid convolution block.

    1x1 conv-BN-PReLU mixes channels, then ``len(dilations)`` parallel 3x3 depthwise convs (one per
    dilation rate, each with its own BN) see the map at several receptive fields; their sum is added
    to the block input (short residual) and passed through PReLU.
    """

    def __init__(self, channels: int, dilations: Sequence[int]):
        super().__init__()
        self.dilations = tuple(int(d) for d in dilations)
        self.pointwise = nn.Sequential(
            nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels), nn.PReLU(channels)
        )
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(channels, channels, 3, 1, padding=d, dilation=d, groups=channels, bias=False),
                nn.BatchNorm2d(channels),
            )
            for d in self.dilations
        )
        self.act = nn.PReLU(channels)

    def forward(self, x):
        y = self.pointwise(x)
        y = sum(branch(y) for branch in self.branches)
        return self.act(x + y)


class Stage(nn.Module):
    """SPP downsampling, then ``num_blocks`` blocks with a long residual around them."""

    def __init__(self, down: nn.Module, blocks: Sequence[nn.Module]):
        super().__init__()
        self.down = down
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x):
        x = self.down(x)
        return x + self.blocks(x)  # long residual


class DecoderStep(nn.Module):
    """One step of the decoder, Eq. (3): F_i = PReLU(BN(DW(Up(W_d F_{i+1}))) + BN(W_e E_i)).

    Deep path: 1x1 conv C_{i+1} -> C_i, bilinear upsampling to E_i's size, then two parallel 3x3
    depthwise convs (dilation 1 and 2) summed and batch-normalised. Encoder path: 1x1 conv + BN.
    The 1x1 conv runs *before* the upsampling: a bias-free 1x1 conv (per-pixel channel mix) and
    bilinear interpolation (per-channel spatial mix) commute exactly, so this is the same function
    at 1/4 of the MACs.
    """

    def __init__(self, in_channels: int, out_channels: int, dilations: Sequence[int] = (1, 2)):
        super().__init__()
        self.reduce = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.depthwise = nn.ModuleList(
            nn.Conv2d(out_channels, out_channels, 3, 1, padding=d, dilation=d, groups=out_channels, bias=False)
            for d in dilations
        )
        self.bn_deep = nn.BatchNorm2d(out_channels)
        self.skip = nn.Conv2d(out_channels, out_channels, 1, bias=False)
        self.bn_skip = nn.BatchNorm2d(out_channels)
        self.act = nn.PReLU(out_channels)

    def forward(self, deep, skip):
        y = resize_to(self.reduce(deep), skip.shape[-2:])
        y = self.bn_deep(sum(conv(y) for conv in self.depthwise))
        return self.act(y + self.bn_skip(self.skip(skip)))


class MiniNet(SegmentationModel):
    """MiniNet encoder-decoder.

    ``channels``: C1..C4, ``blocks``: P1..P4 (config #1: (16, 32, 64, 64), (2, 2, 3, 4);
    config #2: (16, 32, 64, 96), (2, 2, 3, 10)). ``spc_branches``: r for stages 2-4 (3, 4, 4);
    branch ``k`` (0-based) has dilation 2k + 1, i.e. 1, 3, ..., 2r - 1.
    ``deep_supervision``: 1x1 class heads on F2, F3, F4 (train mode only).
    """

    def __init__(
        self,
        num_classes: int = 19,
        channels: Sequence[int] = (16, 32, 64, 64),
        blocks: Sequence[int] = (2, 2, 3, 4),
        spc_branches: Sequence[int] = (3, 4, 4),
        deep_supervision: bool = True,
    ):
        super().__init__()
        if len(channels) != 4 or len(blocks) != 4 or len(spc_branches) != 3:
            raise ValueError(
                f"MiniNet needs 4 channels, 4 block counts and 3 SPC branch counts, got {channels}, {blocks}, {spc_branches}"
            )
        self.num_classes = num_classes
        self.channels = tuple(channels)
        c1, c2, c3, c4 = self.channels
        self.stage1 = Stage(SPPDownsample(3, c1, separable=False), [ResidualBlock(c1) for _ in range(blocks[0])])
        stages = []
        for cin, cout, n, r in zip((c1, c2, c3), (c2, c3, c4), blocks[1:], spc_branches):
            dilations = [2 * k + 1 for k in range(r)]
            stages.append(Stage(SPPDownsample(cin, cout), [SPCBlock(cout, dilations) for _ in range(n)]))
        self.stage2, self.stage3, self.stage4 = stages

        # F4: the deepest encoder map through 1x1 conv-BN-PReLU (the decoder's first output).
        self.top = nn.Sequential(nn.Conv2d(c4, c4, 1, bias=False), nn.BatchNorm2d(c4), nn.PReLU(c4))
        self.up3 = DecoderStep(c4, c3)
        self.up2 = DecoderStep(c3, c2)
        self.up1 = DecoderStep(c2, c1)
        # 3x3 classifier at 1/2 (bias: it produces logits, no BN after it).
        self.classifier = nn.Conv2d(c1, num_classes, 3, 1, 1)
        if deep_supervision:
            self.aux_heads = nn.ModuleList(nn.Conv2d(c, num_classes, 1) for c in (c2, c3, c4))
            self.aux_names = ("f2", "f3", "f4")
        else:
            self.aux_heads = None
            self.aux_names = ()

    def forward_features(self, x):
        e1 = self.stage1(x)
        e2 = self.stage2(e1)
        e3 = self.stage3(e2)
        f4 = self.top(self.stage4(e3))
        f3 = self.up3(f4, e3)
        f2 = self.up2(f3, e2)
        f1 = self.up1(f2, e1)
        logits = self.classifier(f1)
        aux = []
        if self.training and self.aux_heads is not None:
            # Side outputs at their own stride (1/4, 1/8, 1/16); the loss compares them with
            # nearest-downsampled labels.
            aux = [head(f) for head, f in zip(self.aux_heads, (f2, f3, f4))]
        return logits, aux


_PAPER = "MiniNet (Liu et al.)"


@register_model(
    "mininet_95k",
    paper=_PAPER,
    paper_size=(512, 1024),
    paper_params=95e3,
    paper_macs=2.1e9,
    paper_fps=None,
    paper_hardware=None,
)
def mininet_95k(num_classes: int = 19, **kwargs) -> MiniNet:
    """Config #1: C = (16, 32, 64, 64), P = (2, 2, 3, 4)."""
    return MiniNet(num_classes, channels=(16, 32, 64, 64), blocks=(2, 2, 3, 4), **kwargs)


@register_model(
    "mininet_211k",
    paper=_PAPER,
    paper_size=(512, 1024),
    paper_params=211e3,
    paper_macs=2.4e9,
    paper_fps=94.3,
    paper_hardware=None,
)
def mininet_211k(num_classes: int = 19, **kwargs) -> MiniNet:
    """Config #2: C = (16, 32, 64, 96), P = (2, 2, 3, 10)."""
    return MiniNet(num_classes, channels=(16, 32, 64, 96), blocks=(2, 2, 3, 10), **kwargs)
