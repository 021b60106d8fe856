"""ShuffleNet V2 + DeepLab heads (Türkmen & Heikkilä, "An efficient solution for semantic segmentation:
ShuffleNet V2 with atrous separable convolutions", SCIA 2019).

* backbone: ShuffleNet V2 x1.0 without conv5 (464 channels out), output stride 16: stage 4 has
  stride 1 and dilation 2 (the paper's text and Table 1). ``stage4_dilation=1`` keeps rate 1, which is
  what the authors' TF code computes (see ``backbones/shufflenetv2.py``);
* ``shufflenetv2_dpc``: the dense prediction cell of Chen et al. 2018 (NeurIPS, Fig. 5), five
  depthwise-separable 3x3 branches of 256 channels with (rate_h, rate_w) dilations wired as a small
  DAG, concat (1280), dropout 0.1 (DeepLab's keep_prob 0.9), 1x1 conv-BN-ReLU to 256, 1x1 to classes;
* ``shufflenetv2_basic``: DeepLabV3's "basic" head without atrous branches: image pooling + a 1x1
  branch, concat (512), 1x1 conv-BN-ReLU to 256, dropout 0.1, 1x1 to classes;
* logits at 1/16 are upsampled x16 bilinearly to the input size (by ``SegmentationModel.forward``).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import ConfigError
from .backbones.shufflenetv2 import ShuffleNetV2
from .base import SegmentationModel
from .blocks import ASPP, ConvBNAct
from .registry import register_model

# Chen et al. 2018 (searching for efficient multi-scale architectures), Fig. 5: for each branch
# (input branch index, -1 = backbone features; (rate_h, rate_w)).
DPC_BRANCHES = (
    (-1, (1, 6)),
    (0, (18, 15)),
    (1, (6, 3)),
    (0, (1, 1)),
    (0, (6, 21)),
)


class SeparableBranch(nn.Sequential):
    """Depthwise 3x3 with a (rate_h, rate_w) dilation -> BN -> ReLU -> 1x1 -> BN -> ReLU
    (DeepLab's split_separable_conv2d, which has BN+ReLU after both convs)."""

    def __init__(self, in_channels: int, out_channels: int, rate):
        super().__init__(
            ConvBNAct(in_channels, in_channels, 3, padding=rate, dilation=rate, groups=in_channels),
            ConvBNAct(in_channels, out_channels, 1),
        )


class DensePredictionCell(nn.Module):
    def __init__(self, in_channels: int, channels: int = 256, branches=DPC_BRANCHES, dropout: float = 0.1):
        super().__init__()
        self.inputs = [src for src, _ in branches]
        self.branches = nn.ModuleList(
            SeparableBranch(in_channels if src < 0 else channels, channels, rate) for src, rate in branches
        )
        self.dropout = nn.Dropout(dropout)
        self.project = ConvBNAct(channels * len(branches), channels, 1)
        self.out_channels = channels

    def forward(self, x):
        outs: list[torch.Tensor] = []
        for src, branch in zip(self.inputs, self.branches):
            outs.append(branch(x if src < 0 else outs[src]))
        return self.project(self.dropout(torch.cat(outs, dim=1)))


class ShuffleNetV2Seg(SegmentationModel):
    """ShuffleNet V2 x1.0 backbone (OS 16) + a DPC or DeepLabV3-basic head, no decoder, no aux heads."""

    def __init__(self, num_classes: int = 19, head: str = "dpc", stage4_dilation: int = 2,
                 output_stride: int = 16, dropout: float = 0.1):
        super().__init__()
        if head not in ("dpc", "basic"):
            raise ConfigError(f"head must be 'dpc' or 'basic', got {head!r}")
        if stage4_dilation not in (1, 2):
            raise ConfigError(f"model switch stage4_dilation must be 1 (authors' TF code) or 2 (paper text), got {stage4_dilation!r}")
        self.num_classes = num_classes
        self.aux_names = ()
        self.backbone = ShuffleNetV2(output_stride=output_stride, atrous=stage4_dilation == 2)
        c = self.backbone.channels[-1]
        if head == "dpc":
            self.head = DensePredictionCell(c, 256, dropout=dropout)
        else:
            # ASPP with no atrous rates is exactly the basic head: [1x1, image pooling] -> 1x1 -> dropout.
            self.head = ASPP(c, 256, rates=(), image_pooling=True, project_dropout=dropout)
        self.classifier = nn.Conv2d(256, num_classes, 1)

    def forward_features(self, x):
        features = self.backbone(x)[-1]
        return self.classifier(self.head(features)), []


_PAPER = "ShuffleNetV2+DPC (Türkmen & Heikkilä 2019)"


@register_model("shufflenetv2_dpc", paper=_PAPER, paper_size=(1024, 2048))
def shufflenetv2_dpc(num_classes: int = 19, stage4_dilation: int = 2, output_stride: int = 16) -> ShuffleNetV2Seg:
    return ShuffleNetV2Seg(num_classes, head="dpc", stage4_dilation=stage4_dilation, output_stride=output_stride)


@register_model("shufflenetv2_basic", paper=_PAPER, paper_size=(1024, 2048))
def shufflenetv2_basic(num_classes: int = 19, stage4_dilation: int = 2, output_stride: int = 16) -> ShuffleNetV2Seg:
    return ShuffleNetV2Seg(num_classes, head="basic", stage4_dilation=stage4_dilation, output_stride=output_stride)
