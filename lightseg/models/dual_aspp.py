"""Dual ASPP (Xiao, Wang, Zhao, Chen) and the DeepLabV3+ head it is compared with, on MobileNet encoders.

Dual ASPP: one separable ASPP on the 1/32 features (rates 6, 12, 18; 128 channels) for context and a
second on the 1/8 features (rates 12, 24, 36; num_classes channels) for detail; the first is upsampled
to the second's size and concatenated (128 + num_classes channels), refined by a "3x3 convolution
block" (two depthwise 3x3 and three 1x1 convolutions, the last giving the logits) and upsampled x8
to the input size. ``skip=True`` adds a 1/4 skip connection (the paper's Table 4 ablation).

DeepLabV3+ ("DL's head" in the paper's Tables 1-2): Chen et al., ECCV 2018, with MobileNet encoders
at output stride 16: separable ASPP (256 channels), 48-channel 1x1 projection of the 1/4 features,
two separable 3x3 convs, 1x1 classifier, x4 upsampling.

Every number and the reason for each choice: docs/models.md, section "Dual ASPP".
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .backbones.mobilenetv2 import MobileNetV2Backbone
from .backbones.mobilenetv3 import MobileNetV3Backbone
from .base import SegmentationModel, resize_to
from .blocks import ASPP, ConvBNAct, DepthwiseSeparableConv
from .registry import register_model

__all__ = [
    "DualASPP",
    "DeepLabV3Plus",
    "dualaspp_mobilenetv2",
    "dualaspp_mobilenetv3_large",
    "dualaspp_mobilenetv3_small",
    "deeplabv3plus_mobilenetv2",
    "deeplabv3plus_mobilenetv3_large",
    "deeplabv3plus_mobilenetv3_small",
]

_PAPER = "Dual ASPP (Xiao, Wang, Zhao, Chen)"

# Backbone stage indices (stride 2, 4, 8, 16, 32 -> 0..4).
_S4, _S8, _DEEP = 1, 2, 4


def _refine_block(in_channels: int, channels: int, num_classes: int) -> nn.Sequential:
    """Two depthwise-separable 3x3 convs (each: depthwise 3x3 -> BN -> ReLU -> 1x1 -> BN -> ReLU) and a
    1x1 classifier. Dual ASPP: the paper's "3x3 convolution block" of two 3x3 depthwise and three 1x1
    convolutions ending in num_classes. DeepLabV3+: its two 3x3 decoder convs, separable as in the
    "atrous separable" variant (DeepLabV3+ Sec. 3.2), then the classifier."""
    return nn.Sequential(
        DepthwiseSeparableConv(in_channels, channels, 3),
        DepthwiseSeparableConv(channels, channels, 3),
        nn.Conv2d(channels, num_classes, 1),
    )


class DualASPP(SegmentationModel):
    """Dual ASPP head on an encoder at output stride 32.

    ``skip``: also use the 1/4 features (48-channel 1x1 projection, concatenated after the fused 1/8
    map is upsampled to 1/4); the refine block then runs at 1/4 and the logits are upsampled x4.
    """

    def __init__(self, backbone: nn.Module, num_classes: int = 19, aspp1_channels: int = 128, skip: bool = False):
        super().__init__()
        self.num_classes = num_classes
        self.aux_names = ()
        self.backbone = backbone
        ch = backbone.channels
        # Separable convs and image pooling in both ASPPs: with plain 3x3 convs ASPP1 alone would
        # have 1.27M parameters and the model 3.14M, against the paper's 2.16M (Table 3).
        self.aspp1 = ASPP(ch[_DEEP], aspp1_channels, rates=(6, 12, 18), separable=True, image_pooling=True)
        self.aspp2 = ASPP(ch[_S8], num_classes, rates=(12, 24, 36), separable=True, image_pooling=True)
        fused = aspp1_channels + num_classes
        self.skip = skip
        if skip:
            self.skip_project = ConvBNAct(ch[_S4], 48, 1)
            fused += 48
        # The block keeps the fused width (147 for 19 classes) until its classifier.
        self.refine = _refine_block(fused, fused, num_classes)

    def forward_features(self, x: torch.Tensor):
        feats = self.backbone(x)
        detail = self.aspp2(feats[_S8])
        # Align by size, not by assuming exact halving (360x480 gives 45x60 at 1/8, 12x15 at 1/32).
        context = resize_to(self.aspp1(feats[_DEEP]), detail.shape[-2:])
        y = torch.cat([context, detail], dim=1)
        if self.skip:
            low = self.skip_project(feats[_S4])
            y = torch.cat([resize_to(y, low.shape[-2:]), low], dim=1)
        return self.refine(y), []


class DeepLabV3Plus(SegmentationModel):
    """DeepLabV3+ (Chen et al., ECCV 2018) head: separable ASPP on the deep features, decoder with the
    1/4 features projected to 48 channels, two separable 3x3 convs (256), 1x1 classifier."""

    def __init__(self, backbone: nn.Module, num_classes: int = 19, aspp_channels: int = 256, decoder_channels: int = 256):
        super().__init__()
        self.num_classes = num_classes
        self.aux_names = ()
        self.backbone = backbone
        ch = backbone.channels
        # Rates 6/12/18 at output stride 16 and dropout 0.1 after the projection: DeepLabV3+ Sec. 4.
        self.aspp = ASPP(ch[_DEEP], aspp_channels, rates=(6, 12, 18), separable=True, image_pooling=True, project_dropout=0.1)
        # 48 channels for the low-level projection: DeepLabV3+ Table 1.
        self.low_project = ConvBNAct(ch[_S4], 48, 1)
        self.decoder = _refine_block(aspp_channels + 48, decoder_channels, num_classes)

    def forward_features(self, x: torch.Tensor):
        feats = self.backbone(x)
        low = self.low_project(feats[_S4])
        high = resize_to(self.aspp(feats[_DEEP]), low.shape[-2:])
        return self.decoder(torch.cat([high, low], dim=1)), []


# ---------------------------------------------------------------- encoders
def _mobilenetv2(output_stride: int) -> nn.Module:
    return MobileNetV2Backbone(output_stride=output_stride)


def _mobilenetv3(arch: str, output_stride: int, reduced_tail: bool) -> nn.Module:
    # reduced_tail=True (MobileNetV3 Table 7 "RF2") is what the paper's V3 parameter counts imply
    # (Table 1: 2.14M / 1.03M); reduced_tail=False loads torchvision's ImageNet checkpoints.
    return MobileNetV3Backbone(arch, output_stride=output_stride, reduced_tail=reduced_tail)


# ---------------------------------------------------------------- Dual ASPP (output stride 32)
@register_model("dualaspp_mobilenetv2", paper=_PAPER, paper_size=(1024, 2048), paper_params=2.16e6, paper_fps=61)
def dualaspp_mobilenetv2(num_classes: int = 19, skip: bool = False) -> DualASPP:
    return DualASPP(_mobilenetv2(32), num_classes, skip=skip)


@register_model("dualaspp_mobilenetv3_large", paper=_PAPER, paper_size=(1024, 2048))
def dualaspp_mobilenetv3_large(num_classes: int = 19, skip: bool = False, reduced_tail: bool = True) -> DualASPP:
    return DualASPP(_mobilenetv3("large", 32, reduced_tail), num_classes, skip=skip)


@register_model("dualaspp_mobilenetv3_small", paper=_PAPER, paper_size=(1024, 2048))
def dualaspp_mobilenetv3_small(num_classes: int = 19, skip: bool = False, reduced_tail: bool = True) -> DualASPP:
    return DualASPP(_mobilenetv3("small", 32, reduced_tail), num_classes, skip=skip)


# ---------------------------------------------------------------- DeepLabV3+ baseline (output stride 16)
@register_model("deeplabv3plus_mobilenetv2", paper=_PAPER + ", DeepLabV3+ baseline", paper_size=(1024, 2048), paper_params=2.72e6)
def deeplabv3plus_mobilenetv2(num_classes: int = 19) -> DeepLabV3Plus:
    return DeepLabV3Plus(_mobilenetv2(16), num_classes)


@register_model("deeplabv3plus_mobilenetv3_large", paper=_PAPER + ", DeepLabV3+ baseline", paper_size=(1024, 2048), paper_params=2.14e6)
def deeplabv3plus_mobilenetv3_large(num_classes: int = 19, reduced_tail: bool = True) -> DeepLabV3Plus:
    return DeepLabV3Plus(_mobilenetv3("large", 16, reduced_tail), num_classes)


@register_model("deeplabv3plus_mobilenetv3_small", paper=_PAPER + ", DeepLabV3+ baseline", paper_size=(1024, 2048), paper_params=1.03e6)
def deeplabv3plus_mobilenetv3_small(num_classes: int = 19, reduced_tail: bool = True) -> DeepLabV3Plus:
    return DeepLabV3Plus(_mobilenetv3("small", 16, reduced_tail), num_classes)
