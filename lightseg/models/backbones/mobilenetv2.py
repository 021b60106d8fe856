"""MobileNetV2 (Sandler et al., CVPR 2018) as a segmentation backbone, with torchvision's parameter names.

``features.0`` is the stem conv, ``features.1`` .. ``features.17`` the inverted residual blocks of
Table 2 of the MobileNetV2 paper, so torchvision's ``mobilenet_v2`` ImageNet checkpoint loads with
strict key matching. ``features.18`` (the 320 -> 1280 1x1 conv that feeds the classifier) is left out
by default: the Dual ASPP paper's parameter counts (2.16M for MobileNetV2 + Dual ASPP, Table 3;
2.72M for MobileNetV2 + DeepLabV3+ head, Table 1) only add up without its 0.41M parameters, and
the segmentation heads read the 320-channel output of ``features.17``.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ...errors import ConfigError
from ..blocks import ConvBNAct
from . import stage_outputs

# (expansion t, output channels c, repeats n, stride s): Table 2 of the MobileNetV2 paper.
INVERTED_RESIDUAL_SETTING = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


def check_output_stride(output_stride) -> None:
    if output_stride not in (8, 16, 32):
        raise ConfigError(f"output_stride must be 8, 16 or 32, got {output_stride!r}")


class InvertedResidual(nn.Module):
    """Expand 1x1 (ReLU6) -> depthwise 3x3 (ReLU6) -> linear 1x1 projection, residual when shapes agree.

    Submodule layout ``conv.0 .. conv.3`` is torchvision's, so checkpoint keys match.
    """

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int, dilation: int = 1):
        super().__init__()
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNAct(inp, hidden, 1, act=nn.ReLU6))
        layers += [
            ConvBNAct(hidden, hidden, 3, stride=stride, dilation=dilation, groups=hidden, act=nn.ReLU6),
            nn.Conv2d(hidden, oup, 1, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup

    def forward(self, x):
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2Backbone(nn.Module):
    """Returns the outputs at strides 2, 4, 8, 16, 32 (channels 16, 24, 32, 96, 320).

    ``output_stride`` 8/16: the stride-2 blocks past that stride run at stride 1 with their depthwise
    convs dilated (x2 per removed stride), as in DeepLabV3 / torchvision's dilated MobileNetV3.
    ``include_last_conv``: keep ``features.18`` (320 -> 1280); then the last stage has 1280 channels.
    """

    def __init__(self, output_stride: int = 32, include_last_conv: bool = False):
        super().__init__()
        check_output_stride(output_stride)
        self.output_stride = output_stride
        layers: list[nn.Module] = [ConvBNAct(3, 32, 3, stride=2, act=nn.ReLU6)]
        stride, dilation, inp = 2, 1, 32
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            if s == 2 and stride >= output_stride:
                # Keep the resolution, grow the receptive field instead (DeepLab's atrous convolution).
                dilation *= 2
                s = 1
            stride *= s
            for i in range(n):
                layers.append(InvertedResidual(inp, c, s if i == 0 else 1, t, dilation=dilation))
                inp = c
        # Last block of each resolution: features.1 (1/2), .3 (1/4), .6 (1/8), .13 (1/16), .17 (1/32).
        stage_ends = [1, 3, 6, 13, 17]
        channels = [16, 24, 32, 96, 320]
        if include_last_conv:
            layers.append(ConvBNAct(inp, 1280, 1, act=nn.ReLU6))
            stage_ends[-1], channels[-1] = 18, 1280
        self.features = nn.Sequential(*layers)
        self._stage_ends = stage_ends
        self.channels = channels
        self.reductions = [min(r, output_stride) for r in (2, 4, 8, 16, 32)]
        self.torchvision_name = "mobilenet_v2"
        self.pretrained_ignore = ("classifier.",) if include_last_conv else ("classifier.", "features.18.")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return stage_outputs(self.features, self._stage_ends, x)
