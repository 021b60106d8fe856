"""MobileNetV3-Large / -Small (Howard et al., ICCV 2019) as segmentation backbones, torchvision names.

``features.0`` is the stem, ``features.1 ..`` the bottleneck blocks of Tables 1 and 2 of the
MobileNetV3 paper (``features.N.block.M``, squeeze-excite ``fc1``/``fc2``), so torchvision's
``mobilenet_v3_large`` / ``mobilenet_v3_small`` checkpoints load with strict key matching.
The final 1x1 conv (160 -> 960 / 96 -> 576, ``features.16`` / ``features.12``) only feeds the
classifier; like ``features.18`` of MobileNetV2 it is dropped by default (see docs/models.md,
Dual ASPP section) and listed in ``pretrained_ignore``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..blocks import ConvBNAct, make_divisible
from . import stage_outputs
from .mobilenetv2 import check_output_stride


@dataclass(frozen=True)
class BlockConfig:
    in_channels: int
    kernel: int
    expanded: int
    out_channels: int
    use_se: bool
    activation: str  # "RE" (ReLU) or "HS" (hard-swish), as in the paper's tables
    stride: int


# MobileNetV3 paper, Table 1 (Large) and Table 2 (Small): in, kernel, exp size, out, SE, NL, stride.
LARGE = [
    BlockConfig(16, 3, 16, 16, False, "RE", 1),
    BlockConfig(16, 3, 64, 24, False, "RE", 2),
    BlockConfig(24, 3, 72, 24, False, "RE", 1),
    BlockConfig(24, 5, 72, 40, True, "RE", 2),
    BlockConfig(40, 5, 120, 40, True, "RE", 1),
    BlockConfig(40, 5, 120, 40, True, "RE", 1),
    BlockConfig(40, 3, 240, 80, False, "HS", 2),
    BlockConfig(80, 3, 200, 80, False, "HS", 1),
    BlockConfig(80, 3, 184, 80, False, "HS", 1),
    BlockConfig(80, 3, 184, 80, False, "HS", 1),
    BlockConfig(80, 3, 480, 112, True, "HS", 1),
    BlockConfig(112, 3, 672, 112, True, "HS", 1),
    BlockConfig(112, 5, 672, 160, True, "HS", 2),
    BlockConfig(160, 5, 960, 160, True, "HS", 1),
    BlockConfig(160, 5, 960, 160, True, "HS", 1),
]
SMALL = [
    BlockConfig(16, 3, 16, 16, True, "RE", 2),
    BlockConfig(16, 3, 72, 24, False, "RE", 2),
    BlockConfig(24, 3, 88, 24, False, "RE", 1),
    BlockConfig(24, 5, 96, 40, True, "HS", 2),
    BlockConfig(40, 5, 240, 40, True, "HS", 1),
    BlockConfig(40, 5, 240, 40, True, "HS", 1),
    BlockConfig(40, 5, 120, 48, True, "HS", 1),
    BlockConfig(48, 5, 144, 48, True, "HS", 1),
    BlockConfig(48, 5, 288, 96, True, "HS", 2),
    BlockConfig(96, 5, 576, 96, True, "HS", 1),
    BlockConfig(96, 5, 576, 96, True, "HS", 1),
]



def block_configs(arch: str, reduced_tail: bool = False) -> list[BlockConfig]:
    """The bottleneck table; ``reduced_tail`` halves the channels of the last stage (three blocks):
    the "RF2" setting the MobileNetV3 paper uses for segmentation (Sec. 6.4, Table 7) and
    torchvision's ``reduced_tail=True``."""
    configs = list(LARGE if arch == "large" else SMALL)
    if reduced_tail:
        first, *rest = configs[-3:]
        tail = [BlockConfig(first.in_channels, first.kernel, first.expanded, first.out_channels // 2, first.use_se, first.activation, first.stride)]
        tail += [BlockConfig(c.in_channels // 2, c.kernel, c.expanded // 2, c.out_channels // 2, c.use_se, c.activation, c.stride) for c in rest]
        configs[-3:] = tail
    return configs


# Index in ``features`` of the last block at strides 2, 4, 8, 16, 32 (the Large net's first block
# keeps stride 2; the Small net's first block already reaches 1/4, so its 1/2 output is the stem).
LARGE_STAGE_ENDS = [1, 3, 6, 12, 15]
SMALL_STAGE_ENDS = [0, 1, 3, 8, 11]


class SqueezeExcitation(nn.Module):
    """SE with hard-sigmoid gate (MobileNetV3 Sec. 5.3); names ``fc1``/``fc2`` as in torchvision."""

    def __init__(self, channels: int, squeeze_channels: int):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)

    def forward(self, x):
        scale = self.fc2(F.relu(self.fc1(self.avgpool(x))))
        return x * F.hardsigmoid(scale)


class InvertedResidual(nn.Module):
    """Expand 1x1 -> depthwise k x k (-> SE) -> linear 1x1, residual when shapes agree."""

    def __init__(self, cfg: BlockConfig, stride: int, dilation: int):
        super().__init__()
        act = nn.Hardswish if cfg.activation == "HS" else nn.ReLU
        self.use_res_connect = stride == 1 and cfg.in_channels == cfg.out_channels
        layers: list[nn.Module] = []
        if cfg.expanded != cfg.in_channels:
            layers.append(ConvBNAct(cfg.in_channels, cfg.expanded, 1, act=act))
        layers.append(ConvBNAct(cfg.expanded, cfg.expanded, cfg.kernel, stride=stride, dilation=dilation, groups=cfg.expanded, act=act))
        if cfg.use_se:
            # Squeeze to a quarter of the expansion, rounded to a multiple of 8 (paper Sec. 5.3).
            layers.append(SqueezeExcitation(cfg.expanded, make_divisible(cfg.expanded // 4, 8)))
        layers.append(ConvBNAct(cfg.expanded, cfg.out_channels, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.out_channels = cfg.out_channels

    def forward(self, x):
        y = self.block(x)
        return x + y if self.use_res_connect else y


class MobileNetV3Backbone(nn.Module):
    """Returns the outputs at strides 2, 4, 8, 16, 32.

    ``arch``: "large" (channels 16, 24, 40, 112, 160) or "small" (16, 16, 24, 48, 96).
    ``output_stride`` 8/16: stride-2 blocks past that stride run at stride 1 and their depthwise convs
    are dilated (x2 per removed stride, the whole stage, as torchvision's ``dilated=True``).
    ``include_last_conv``: keep the final 1x1 conv (6x the last stage's channels: 960 / 576).
    ``reduced_tail``: halve the last stage (160 -> 80 / 96 -> 48 channels), MobileNetV3 paper Table 7
    "RF2". Same key names as torchvision, but the last stage's shapes then differ from torchvision's
    ImageNet checkpoints, which only load with ``reduced_tail=False``.
    """

    def __init__(self, arch: str = "large", output_stride: int = 32, include_last_conv: bool = False, reduced_tail: bool = False):
        super().__init__()
        if arch not in ("large", "small"):
            raise ValueError(f"MobileNetV3 arch must be 'large' or 'small', got {arch!r}")
        check_output_stride(output_stride)
        self.arch = arch
        self.output_stride = output_stride
        self.reduced_tail = reduced_tail
        configs = block_configs(arch, reduced_tail)
        layers: list[nn.Module] = [ConvBNAct(3, 16, 3, stride=2, act=nn.Hardswish)]
        stride, dilation = 2, 1
        for cfg in configs:
            s = cfg.stride
            if s == 2 and stride >= output_stride:
                dilation *= 2
                s = 1
            stride *= s
            layers.append(InvertedResidual(cfg, s, dilation))
        stage_ends = list(LARGE_STAGE_ENDS if arch == "large" else SMALL_STAGE_ENDS)
        channels = [layers[i].out_channels for i in stage_ends]
        last_index = len(layers)
        if include_last_conv:
            last_in = configs[-1].out_channels
            layers.append(ConvBNAct(last_in, 6 * last_in, 1, act=nn.Hardswish))
            stage_ends[-1], channels[-1] = last_index, 6 * last_in
        self.features = nn.Sequential(*layers)
        # torchvision builds MobileNetV3 with BatchNorm eps=0.001, momentum=0.01; the ImageNet
        # statistics in its checkpoints are only right with that eps.
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eps, m.momentum = 0.001, 0.01
        self._stage_ends = stage_ends
        self.channels = channels
        self.reductions = [min(r, output_stride) for r in (2, 4, 8, 16, 32)]
        ignore = ["classifier."]
        if not include_last_conv:
            ignore.append(f"features.{last_index}.")
        self.pretrained_ignore = tuple(ignore)
        # torchvision publishes ImageNet weights for the full tail only.
        self.torchvision_name = None if reduced_tail else f"mobilenet_v3_{arch}"
        # Fix for the usual mistake, for the checkpoint loader's error message.
        self.pretrained_hint = (
            "torchvision's ImageNet MobileNetV3 checkpoints have the full tail; build the model with reduced_tail=False to load them"
            if reduced_tail
            else ""
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return stage_outputs(self.features, self._stage_ends, x)
