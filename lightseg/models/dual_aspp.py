"""Dual ASPP (Xiao, Wang, Zhao, Chen) and the DeepLabV3+ head it is compared with, on MobileNet encoders.

Dual ASPP (Sec. 3.2): one separable ASPP on the 1/32 features (rates 6, 12, 18; 128 channels) for context
and a second on the 1/8 features (rates 12, 24, 36; num_classes channels) for detail; the first is
upsampled to the second's size and concatenated (128 + num_classes channels), refined by a "3x3
convolution block" (two depthwise 3x3 and three 1x1 convolutions, the last giving the logits) and
upsampled x8 to the input size. ``skip=True`` adds a 1/4 skip connection (Table 4).

DeepLabV3+ ("DL's head" in Tables 1-2): Chen et al., ECCV 2018, with MobileNet encoders at output
stride 16: separable ASPP (256 channels), 48-channel 1x1 projection of the 1/4 features, two separable
3x3 convs, 1x1 classifier, x4 upsampling. ``head="none"``: Table 2's encoder-only rows.

Every ablation of Tables 1-4 is a keyword: ``head`` (dual / deeplab / none), ``skip``, ``reduced_tail``
(MobileNetV3). The paper's tables are rebuilt by ``lightseg models --paper dual_aspp``; every number and
the reason for each choice: docs/models.md, section "Dual ASPP".
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .backbones.mobilenetv2 import MobileNetV2Backbone
from .backbones.mobilenetv3 import MobileNetV3Backbone
from .base import SegmentationModel, resize_to
from .blocks import ASPP, ConvBNAct, DepthwiseSeparableConv
from .registry import PaperRow, register_model, register_paper_table

__all__ = [
    "DualASPP",
    "DeepLabV3Plus",
    "EncoderOnly",
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
    """Dual ASPP head on an encoder at output stride 32 (Sec. 3.2, Fig. 2).

    ``skip``: Table 4's variant with the 1/4 skip connection. The 1/4 features are projected by a 1x1
    conv-BN to the fused width (128 + classes) and added to the fused 1/8 map upsampled to 1/4; the
    3x3 convolution block then runs at 1/4 and the logits are upsampled x4. Of the wirings we measured
    this is the one that gives Table 4's 8.6 G (docs/models.md, "Table 4's skip variant").
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
        # Linear projection (no ReLU): it is summed with the fused map, which the block then activates.
        self.skip_project = ConvBNAct(ch[_S4], fused, 1, act=None) if skip else None
        # "the number of filters of the first 3x3 depth-wise separable convolution is set to 147"
        # (= 128 + 19): the block keeps the fused width until its classifier.
        self.refine = _refine_block(fused, fused, num_classes)

    def forward_features(self, x: torch.Tensor):
        feats = self.backbone(x)
        detail = self.aspp2(feats[_S8])
        # Align by size, not by assuming exact halving (360x480 gives 45x60 at 1/8, 12x15 at 1/32).
        context = resize_to(self.aspp1(feats[_DEEP]), detail.shape[-2:])
        y = torch.cat([context, detail], dim=1)
        if self.skip_project is not None:
            low = self.skip_project(feats[_S4])
            y = resize_to(y, low.shape[-2:]) + low
        return self.refine(y), []


class EncoderOnly(SegmentationModel):
    """Table 2's rows without a segmentation head: "the output of the encoder (output stride=16) is
    directly followed by a 3 x 3 convolution block and an up-sample block" (Sec. 4.3). The block is the
    one of Dual ASPP, at the encoder's output width (320 / 160 / 96 channels)."""

    def __init__(self, backbone: nn.Module, num_classes: int = 19):
        super().__init__()
        self.num_classes = num_classes
        self.aux_names = ()
        self.backbone = backbone
        c = backbone.channels[_DEEP]
        self.refine = _refine_block(c, c, num_classes)

    def forward_features(self, x: torch.Tensor):
        return self.refine(self.backbone(x)[_DEEP]), []


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


def _mobilenetv3(arch: str, reduced_tail: bool):
    # reduced_tail=False (default): the tail torchvision's ImageNet checkpoints have, and the one that gives
    # Table 2's Dual ASPP FLOPs; reduced_tail=True (MobileNetV3 Table 7 "RF2") gives Table 1's V3 params.
    return lambda output_stride: MobileNetV3Backbone(arch, output_stride=output_stride, reduced_tail=reduced_tail)


HEADS = ("dual", "deeplab", "none")


def _build(encoder, num_classes: int, head: str, skip: bool) -> SegmentationModel:
    """``head``: "dual" (Dual ASPP, encoder at OS 32), "deeplab" (DeepLabV3+, OS 16) or "none" (Table 2's
    encoder-only rows, OS 16); ``skip`` is Table 4's switch of the Dual ASPP head."""
    if head not in HEADS:
        raise ValueError(f"head must be one of {', '.join(HEADS)} (Table 2: Dual ASPP, DeepLabV3+, none), got {head!r}")
    if skip and head != "dual":
        raise ValueError(f"skip applies to the Dual ASPP head (Table 4); head {head!r} has "
                         + ("its own 1/4 skip" if head == "deeplab" else "no decoder"))
    if head == "dual":
        return DualASPP(encoder(32), num_classes, skip=skip)
    if head == "deeplab":
        return DeepLabV3Plus(encoder(16), num_classes)
    return EncoderOnly(encoder(16), num_classes)


_IMAGENET = "ours: the paper does not say; ImageNet as in DeepLabV3+, the model it builds on and compares with"


# ---------------------------------------------------------------- Dual ASPP (head="dual": output stride 32)
@register_model("dualaspp_mobilenetv2", paper=_PAPER, paper_size=(1024, 2048), paper_params=2.16e6, paper_macs=14.2e9,
                paper_fps=61, paper_hardware="GeForce RTX 2080 Ti", paper_pretrained=_IMAGENET)
def dualaspp_mobilenetv2(num_classes: int = 19, head: str = "dual", skip: bool = False) -> SegmentationModel:
    return _build(_mobilenetv2, num_classes, head, skip)


@register_model("dualaspp_mobilenetv3_large", paper=_PAPER, paper_size=(1024, 2048), paper_macs=10.8e9,
                paper_pretrained=_IMAGENET)
def dualaspp_mobilenetv3_large(num_classes: int = 19, head: str = "dual", skip: bool = False,
                               reduced_tail: bool = False) -> SegmentationModel:
    return _build(_mobilenetv3("large", reduced_tail), num_classes, head, skip)


@register_model("dualaspp_mobilenetv3_small", paper=_PAPER, paper_size=(1024, 2048), paper_macs=4.2e9,
                paper_pretrained=_IMAGENET)
def dualaspp_mobilenetv3_small(num_classes: int = 19, head: str = "dual", skip: bool = False,
                               reduced_tail: bool = False) -> SegmentationModel:
    return _build(_mobilenetv3("small", reduced_tail), num_classes, head, skip)


# ---------------------------------------------------------------- DeepLabV3+ baseline (output stride 16)
_DL = _PAPER + ", DeepLabV3+ baseline"


@register_model("deeplabv3plus_mobilenetv2", paper=_DL, paper_size=(1024, 2048), paper_params=2.72e6, paper_macs=45.7e9,
                paper_pretrained=_IMAGENET)
def deeplabv3plus_mobilenetv2(num_classes: int = 19) -> DeepLabV3Plus:
    return DeepLabV3Plus(_mobilenetv2(16), num_classes)


@register_model("deeplabv3plus_mobilenetv3_large", paper=_DL, paper_size=(1024, 2048), paper_params=2.14e6,
                paper_macs=35.5e9, paper_pretrained=_IMAGENET,
                extra={"paper_note": "the paper's count fits the reduced tail (reduced_tail=True)"})
def deeplabv3plus_mobilenetv3_large(num_classes: int = 19, reduced_tail: bool = False) -> DeepLabV3Plus:
    return DeepLabV3Plus(_mobilenetv3("large", reduced_tail)(16), num_classes)


@register_model("deeplabv3plus_mobilenetv3_small", paper=_DL, paper_size=(1024, 2048), paper_params=1.03e6,
                paper_macs=26.1e9, paper_pretrained=_IMAGENET,
                extra={"paper_note": "the paper's count fits the reduced tail (reduced_tail=True)"})
def deeplabv3plus_mobilenetv3_small(num_classes: int = 19, reduced_tail: bool = False) -> DeepLabV3Plus:
    return DeepLabV3Plus(_mobilenetv3("small", reduced_tail)(16), num_classes)


# ---------------------------------------------------------------- the paper's tables, rebuilt
def _row(table, label, model, params=None, flops=None, note="", **kwargs):
    return PaperRow(table, label, model, kwargs, params, flops, note=note)


_V3_PARAMS = "Table 1's V3 counts need MobileNetV3's reduced tail (next row), for which torchvision has no ImageNet weights"
_NONE_V3 = "no wiring of Sec. 4.3's text fits both V3 rows: reduced tail 9.12 / 2.37 G, full tail 13.87 / 4.09 G"
register_paper_table(
    "dual_aspp", "Dual ASPP (Xiao, Wang, Zhao, Chen): Tables 1-4", flops_per_mac=1,
    flops_note="Sec. 4.2 says FLOPs are \"the number of addition and multiplication calculations\" but the tables count "
               "a multiply-add once: MobileNetV2 + DeepLabV3+ is 44.7 G MACs in lightseg against the paper's 45.7 G "
               "(2 x MACs would be 89.4 G). At 1024x2048, 19 classes (\"FLOPs are estimated for an input of 3 x 1024 x 2048\")",
    rows=[
        _row("Table 1", "MobileNetV2 + DL head", "deeplabv3plus_mobilenetv2", 2.72e6, 45.7e9),
        _row("Table 1", "MobileNetV3-Large + DL head", "deeplabv3plus_mobilenetv3_large", 2.14e6, 35.5e9, note=_V3_PARAMS),
        _row("Table 1", "MobileNetV3-Large + DL head, RF2 tail", "deeplabv3plus_mobilenetv3_large", 2.14e6, 35.5e9,
             reduced_tail=True),
        _row("Table 1", "MobileNetV3-Small + DL head", "deeplabv3plus_mobilenetv3_small", 1.03e6, 26.1e9, note=_V3_PARAMS),
        _row("Table 1", "MobileNetV3-Small + DL head, RF2 tail", "deeplabv3plus_mobilenetv3_small", 1.03e6, 26.1e9,
             reduced_tail=True),
        _row("Table 2", "MobileNetV2, no head", "dualaspp_mobilenetv2", flops=20.9e9, head="none"),
        _row("Table 2", "MobileNetV2, DL head", "deeplabv3plus_mobilenetv2", flops=45.6e9),
        _row("Table 2", "MobileNetV2, DA head", "dualaspp_mobilenetv2", flops=14.2e9),
        _row("Table 2", "MobileNetV3-Large, no head", "dualaspp_mobilenetv3_large", flops=11.8e9, head="none", note=_NONE_V3),
        _row("Table 2", "MobileNetV3-Large, DL head", "deeplabv3plus_mobilenetv3_large", flops=35.5e9),
        _row("Table 2", "MobileNetV3-Large, DA head", "dualaspp_mobilenetv3_large", flops=10.8e9),
        _row("Table 2", "MobileNetV3-Small, no head", "dualaspp_mobilenetv3_small", flops=3.2e9, head="none", note=_NONE_V3),
        _row("Table 2", "MobileNetV3-Small, DL head", "deeplabv3plus_mobilenetv3_small", flops=26.1e9),
        _row("Table 2", "MobileNetV3-Small, DA head", "dualaspp_mobilenetv3_small", flops=4.2e9),
        _row("Table 3", "MobileNetV2 + DA", "dualaspp_mobilenetv2", 2.16e6),
        _row("Table 4", "MobileNetV3-Small, DA, skip", "dualaspp_mobilenetv3_small", flops=8.6e9, skip=True),
        _row("Table 4", "MobileNetV3-Small, DA, no skip", "dualaspp_mobilenetv3_small", flops=4.2e9),
    ],
)
