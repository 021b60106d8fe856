"""RDS-Net (Doan, Nguyen, Tran, Nguyen, Le, "Real-time Image Semantic Segmentation Networks with Residual
Depth-wise Separable Blocks"; ../shared/papers/rdsnet.txt): residual depth-wise separable blocks on an
ENet-style encoder, a 3x3 conv to classes at 1/8, and a bilinear "decoder" back to the input size.

Table I (output sizes for a 1024x512 input):

=====================  ===========  ========  ========
layer                  output ch    dilation  dropout
=====================  ===========  ========  ========
downsample block       32  (1/2)    -         -
downsample block       64  (1/4)    -         -
3 x RDS block          64  (1/4)    -         0.5  (the third row's cell is lost in the text; 0.5 as the two above)
downsample block       128 (1/8)    -         -
5 x RDS block          128 (1/8)    1,2,4,8,16  0.3
3x3 convolution        C   (1/8)    -         -
bilinear interpolation C   (1)
=====================  ===========  ========  ========

docs/models.md gives the reasoning behind the choices the text leaves open (the block's inner activation).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from .base import SegmentationModel
from .blocks import ConvPoolMerge, channel_shuffle
from .registry import register_model

__all__ = ["ENetDownsample", "RDSBlock", "RDSNet", "rdsnet"]


class ENetDownsample(nn.Module):
    """ENet's initial block used for every downsampling: a 3x3 stride-2 conv giving ``out - in``
    channels beside a 2x2 max-pool of the input (``in`` channels), concatenated, BN, ReLU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        if out_channels <= in_channels:
            raise ValueError(f"ENetDownsample: out_channels ({out_channels}) must exceed in_channels ({in_channels})")
        self.conv = nn.Conv2d(in_channels, out_channels - in_channels, 3, 2, 1, bias=False)
        # ceil_mode: the stride-2 conv gives ceil(H/2) rows, so the pool must too on odd sizes.
        self.pool = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)
        self.out_channels = out_channels

    def forward(self, x):
        return self.act(self.bn(torch.cat([self.conv(x), self.pool(x)], dim=1)))

    def reparameterize(self) -> nn.Module:
        """Inference form (same output, :class:`ConvPoolMerge`): no float BN left between int8 convolutions,
        so ONNX Runtime keeps the quantised graph in NHWC (rdsnet int8 at 512x1024, 2-core EPYC: 41 -> 26 ms)."""
        return ConvPoolMerge(self.conv, self.pool, self.bn, self.act, concat=True)


class RDSBlock(nn.Module):
    """Residual depth-wise separable block, Sec. III.C / Fig. 2(c): y = ReLU(x + M(x)) with

        M = 3x3 depthwise conv (dilated) -> BN -> ReLU -> 3x3 standard conv -> BN -> channel shuffle (4 groups)
            -> spatial dropout

    "each layer is followed by batch normalisation" (as in a depth-wise separable block), the pointwise conv
    is replaced by a 3x3 conv, and the shuffle comes after it. M is "stacked non-linear layers" (Sec. III.A,
    Eq. (1)), so a ReLU follows the first BN; the last BN feeds the addition directly, as in the ResNet block
    the paper builds on, and a ReLU follows the sum. ``inner_activation=False`` gives the linear branch
    (no ReLU inside M). The dilation is on the depthwise conv (it sets the receptive field cheaply).
    """

    def __init__(self, channels: int, dilation: int = 1, shuffle_groups: int = 4, dropout: float = 0.0,
                 inner_activation: bool = True):
        super().__init__()
        if channels % shuffle_groups:
            raise ValueError(f"RDSBlock: {channels} channels not divisible by {shuffle_groups} shuffle groups")
        self.depthwise = nn.Conv2d(channels, channels, 3, 1, dilation, dilation=dilation, groups=channels, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.act1 = nn.ReLU(inplace=True) if inner_activation else nn.Identity()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shuffle_groups = shuffle_groups
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        y = self.act1(self.bn1(self.depthwise(x)))
        y = self.bn2(self.conv(y))
        if self.shuffle_groups > 1:
            y = channel_shuffle(y, self.shuffle_groups)
        return self.act(x + self.dropout(y))

    @torch.no_grad()
    def reparameterize(self) -> nn.Module:
        """Inference form (same output): the channel shuffle folded into the conv's output-channel order
        (a permutation of its filters and of bn2), so no transpose is left in the graph."""
        if self.shuffle_groups > 1:
            c, g = self.conv.out_channels, self.shuffle_groups
            # channel_shuffle's output channel j is input channel perm[j]
            perm = torch.arange(c).view(g, c // g).t().reshape(-1).to(self.conv.weight.device)
            params = [self.conv.weight, self.conv.bias]
            if isinstance(self.bn2, nn.BatchNorm2d):
                params += [self.bn2.weight, self.bn2.bias, self.bn2.running_mean, self.bn2.running_var]
            for t in params:
                if t is not None:
                    t.copy_(t[perm])
            self.shuffle_groups = 1
        return self


class RDSNet(SegmentationModel):
    """Table I. ``dropout_early``: spatial dropout in the three 64-channel blocks (0.5); ``dropout``: in the five
    128-channel blocks (0.3); ``dilations``: of the five 128-channel blocks; ``inner_activation``: a ReLU inside
    each block's residual branch (see :class:`RDSBlock`)."""

    def __init__(
        self,
        num_classes: int = 19,
        dilations: Sequence[int] = (1, 2, 4, 8, 16),
        dropout: float = 0.3,
        dropout_early: float = 0.5,
        inner_activation: bool = True,
    ):
        super().__init__()
        for name, p in (("dropout", dropout), ("dropout_early", dropout_early)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"RDSNet: {name} must be in [0, 1), got {p}")
        self.num_classes = num_classes
        self.aux_names = ()
        self.down1 = ENetDownsample(3, 32)
        self.down2 = ENetDownsample(32, 64)
        self.stage1 = nn.Sequential(*[RDSBlock(64, 1, dropout=dropout_early, inner_activation=inner_activation)
                                      for _ in range(3)])
        self.down3 = ENetDownsample(64, 128)
        self.stage2 = nn.Sequential(*[RDSBlock(128, d, dropout=dropout, inner_activation=inner_activation)
                                      for d in dilations])
        # 3x3 conv to classes at 1/8 (with bias: logits, no BN after); the base class upsamples x8 bilinearly.
        self.classifier = nn.Conv2d(128, num_classes, 3, 1, 1)

    def forward_features(self, x):
        x = self.stage1(self.down2(self.down1(x)))
        x = self.stage2(self.down3(x))
        return self.classifier(x), []


@register_model(
    "rdsnet",
    paper="RDS-Net (Doan et al.)",
    paper_size=(360, 640),
    paper_params=None,
    paper_macs=None,
    paper_fps=77.0,  # Table V, 640x360
    paper_hardware="GTX 1050",
    extra={"paper_note": "the paper gives no params or FLOPs"},
)
def rdsnet(num_classes: int = 19, **kwargs) -> RDSNet:
    return RDSNet(num_classes, **kwargs)
