"""ShuffleNet V2 + DeepLab heads (Türkmen & Heikkilä, "An efficient solution for semantic segmentation:
ShuffleNet V2 with atrous separable convolutions", SCIA 2019).

The paper's Sec. 3 numbers were lost in our copy; Table 1 (layers) and Table 5 survived, and the authors'
TensorFlow code (sercant/mobile-segmentation, built on DeepLab's) fills the gaps. docs/models.md gives the
source of every choice.

* backbone: ShuffleNet V2 x1.0 without conv5 (464 channels out), output stride 16 (authors' code): stage 4
  has stride 1, one unit at rate 1 then three at rate 2 (Table 1). ``stage4_dilation=1`` keeps rate 1, which
  is what the authors' TF code computes (see ``backbones/shufflenetv2.py``). ``output_stride=8`` also
  dilates stage 3, and then the DPC rates double, as DeepLab's ``conv_rate_multiplier = 16 // output_stride``
  (authors' code, ``model.py``). ``backbone="mobilenetv2"``: Table 5's MobileNet V2 comparison (DeepLab's
  MobileNetV2 feature extractor, 320 channels out);
* ``head="dpc"``: the dense prediction cell of Chen et al. 2018 (NeurIPS, Fig. 5), five depthwise-separable
  3x3 branches of 256 channels with (rate_h, rate_w) dilations wired as a small DAG, concat (1280), dropout
  0.1 (DeepLab's keep_prob 0.9), 1x1 conv-BN-ReLU to 256, 1x1 to classes;
* ``head="basic"``: DeepLabV3's head without atrous branches: image pooling + a 1x1 branch, concat (512),
  1x1 conv-BN-ReLU to 256, dropout 0.1, 1x1 to classes;
* logits at 1/16 are upsampled x16 bilinearly to the input size ("a simple bilinear resizing").
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import ConfigError
from .backbones.mobilenetv2 import MobileNetV2Backbone
from .backbones.shufflenetv2 import ShuffleNetV2
from .base import SegmentationModel
from .blocks import ASPP, ConvBNAct
from .registry import PaperRow, register_model, register_paper_table

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
    """Chen et al. 2018's searched cell. ``rate_multiplier`` scales every rate: 2 at output stride 8, so that
    the cell sees the same image area as at 16 (DeepLab's ``conv_rate_multiplier``)."""

    def __init__(self, in_channels: int, channels: int = 256, branches=DPC_BRANCHES, dropout: float = 0.1,
                 rate_multiplier: int = 1):
        super().__init__()
        self.inputs = [src for src, _ in branches]
        self.rates = tuple(tuple(r * rate_multiplier for r in rate) for _, rate in branches)
        self.branches = nn.ModuleList(
            SeparableBranch(in_channels if src < 0 else channels, channels, rate)
            for (src, _), rate in zip(branches, self.rates)
        )
        self.dropout = nn.Dropout(dropout)
        self.project = ConvBNAct(channels * len(branches), channels, 1)
        self.out_channels = channels

    def forward(self, x):
        outs: list[torch.Tensor] = []
        for src, branch in zip(self.inputs, self.branches):
            outs.append(branch(x if src < 0 else outs[src]))
        return self.project(self.dropout(torch.cat(outs, dim=1)))


HEADS = ("dpc", "basic")
BACKBONES = ("shufflenetv2", "mobilenetv2")


class ShuffleNetV2Seg(SegmentationModel):
    """ShuffleNet V2 x1.0 backbone + a DPC or DeepLabV3-basic head, no decoder, no aux heads.

    ``backbone="mobilenetv2"`` swaps in MobileNet V2 for Table 5's comparison rows."""

    def __init__(self, num_classes: int = 19, head: str = "dpc", stage4_dilation: int = 2,
                 output_stride: int = 16, dropout: float = 0.1, backbone: str = "shufflenetv2"):
        super().__init__()
        if head not in HEADS:
            raise ConfigError(f"model switch head must be 'dpc' or 'basic' (Table 5's encoders), got {head!r}")
        if backbone not in BACKBONES:
            raise ConfigError(f"model switch backbone must be 'shufflenetv2' or 'mobilenetv2' (Table 5), got {backbone!r}")
        if stage4_dilation not in (1, 2):
            raise ConfigError(f"model switch stage4_dilation must be 1 (authors' TF code) or 2 (paper text), got {stage4_dilation!r}")
        if output_stride not in (8, 16, 32):
            raise ConfigError(f"model switch output_stride must be 8, 16 or 32, got {output_stride!r}")
        if head == "dpc" and output_stride == 32:
            # DeepLab: conv_rate_multiplier = 16 // output_stride must be >= 1; the searched rates are for 16.
            raise ConfigError("the DPC head's rates are defined at output stride 16 (doubled at 8); output_stride=32 "
                              "is for the basic head only")
        self.num_classes = num_classes
        self.aux_names = ()
        if backbone == "shufflenetv2":
            self.backbone = ShuffleNetV2(output_stride=output_stride, atrous=stage4_dilation == 2)
        else:
            if stage4_dilation != 2:
                raise ConfigError("stage4_dilation is a ShuffleNet V2 switch; MobileNet V2 is always dilated DeepLab-style")
            self.backbone = MobileNetV2Backbone(output_stride=output_stride)
        c = self.backbone.channels[-1]
        if head == "dpc":
            self.head = DensePredictionCell(c, 256, dropout=dropout, rate_multiplier=16 // output_stride)
        else:
            # ASPP with no atrous rates is exactly the basic head: [1x1, image pooling] -> 1x1 -> dropout.
            self.head = ASPP(c, 256, rates=(), image_pooling=True, project_dropout=dropout)
        self.classifier = nn.Conv2d(256, num_classes, 1)

    def forward_features(self, x):
        features = self.backbone(x)[-1]
        return self.classifier(self.head(features)), []


_PAPER = "ShuffleNetV2+DPC (Türkmen & Heikkilä 2019)"
_INIT = "ImageNet (Sec. 3.2: \"restored from an ImageNet checkpoint\"), then MS COCO and Cityscapes coarse"


@register_model("shufflenetv2_dpc", paper=_PAPER, paper_size=(1024, 2048), paper_params=6e6 / 4, paper_pretrained=_INIT,
                extra={"paper_note": "Table 5: 6.0 MB of fp32 weights, 0.65 GFLOPs at 224x224"})
def shufflenetv2_dpc(num_classes: int = 19, head: str = "dpc", output_stride: int = 16, backbone: str = "shufflenetv2",
                     stage4_dilation: int = 2) -> ShuffleNetV2Seg:
    return ShuffleNetV2Seg(num_classes, head=head, stage4_dilation=stage4_dilation, output_stride=output_stride,
                           backbone=backbone)


@register_model("shufflenetv2_basic", paper=_PAPER, paper_size=(1024, 2048), paper_params=4.6e6 / 4, paper_pretrained=_INIT,
                extra={"paper_note": "Table 5: 4.6 MB of fp32 weights, 0.47 GFLOPs at 224x224"})
def shufflenetv2_basic(num_classes: int = 19, head: str = "basic", output_stride: int = 16, backbone: str = "shufflenetv2",
                       stage4_dilation: int = 2) -> ShuffleNetV2Seg:
    return ShuffleNetV2Seg(num_classes, head=head, stage4_dilation=stage4_dilation, output_stride=output_stride,
                           backbone=backbone)


_SIZE = "params: Table 5's fp32 model size / 4 bytes"


def _t5(label, model, size_mb, gflops, **kwargs):
    return PaperRow("Table 5", label, model, kwargs, size_mb * 1e6 / 4, gflops * 1e9, size=(224, 224), note=_SIZE)


register_paper_table(
    "shufflenetv2_dpc", "ShuffleNetV2+DPC (Türkmen & Heikkilä): Table 5", flops_per_mac=2,
    flops_note="the paper does not define FLOPs (Sec. 2: \"the total number of floating point operations (FLOPs)\"); "
               "Table 5's GFLOPs count a multiply-add as 2, as TensorFlow's profiler does: ShuffleNet V2 + basic head is "
               "0.235 G MACs here at the 224x224 phone input of Sec. 4.1, 0.47 GFLOPs in Table 5. 19 classes",
    rows=[
        _t5("ShuffleNet V2, basic", "shufflenetv2_basic", 4.6, 0.47),
        _t5("ShuffleNet V2, DPC", "shufflenetv2_dpc", 6.0, 0.65),
        _t5("MobileNet V2, basic", "shufflenetv2_basic", 8.4, 1.00, backbone="mobilenetv2"),
        _t5("MobileNet V2, DPC", "shufflenetv2_dpc", 9.9, 1.18, backbone="mobilenetv2"),
    ],
)
