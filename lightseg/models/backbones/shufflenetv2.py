"""ShuffleNet V2 x1.0 (Ma et al. 2018) with torchvision's parameter names, as a segmentation backbone.

Names match ``torchvision.models.shufflenet_v2_x1_0`` (``conv1.0.weight``, ``stage2.0.branch1.0.weight``,
``stage3.4.branch2.5.weight``, ...), so ``shufflenetv2_x1-5666bf0f80.pth`` loads strictly. ``conv5``
(1x1 464->1024) and ``fc`` are not built: Türkmen & Heikkilä put the segmentation head directly on
stage 4's 464 channels (their Table 1), so those checkpoint keys are ignored.

``output_stride`` < 32 replaces the stride of stage 4 (and stage 3) with dilation, DeepLab-style: the
first unit of a strided-out stage keeps the previous rate, the later units use the new one (paper
Table 1: stage 4 = 1 unit at rate 1 + 3 units at rate 2; the authors' TF code passes rates the same way).
``atrous=False`` removes the stride but keeps rate 1: what the authors' TF code actually computes
(its ``get_stride`` multiplies the rate by the already-reset layer stride of 1).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ...errors import ConfigError

from ..blocks import channel_shuffle


def _depthwise(channels: int, stride: int, dilation: int) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, 3, stride, padding=dilation, dilation=dilation, groups=channels, bias=False)


class InvertedResidual(nn.Module):
    """ShuffleNet V2 unit (Fig. 3c/d of Ma et al.): split (or duplicate when strided), transform, concat, shuffle."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, dilation: int = 1):
        super().__init__()
        branch = out_channels // 2
        # A unit that halves the resolution -- or would have, before dilation replaced the stride --
        # has two branches on the full input; that is what decides the parameter layout.
        self.downsampling = in_channels != out_channels or stride > 1
        if self.downsampling:
            self.branch1 = nn.Sequential(
                _depthwise(in_channels, stride, dilation), nn.BatchNorm2d(in_channels),
                nn.Conv2d(in_channels, branch, 1, bias=False), nn.BatchNorm2d(branch), nn.ReLU(inplace=True),
            )
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(
            nn.Conv2d(in_channels if self.downsampling else branch, branch, 1, bias=False),
            nn.BatchNorm2d(branch), nn.ReLU(inplace=True),
            _depthwise(branch, stride, dilation), nn.BatchNorm2d(branch),
            nn.Conv2d(branch, branch, 1, bias=False), nn.BatchNorm2d(branch), nn.ReLU(inplace=True),
        )

    def forward(self, x):
        if self.downsampling:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        else:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    """ShuffleNet V2 x1.0 without conv5/classifier. ``forward`` returns [stem (24 ch, after max-pool),
    stage2 (116), stage3 (232), stage4 (464)] at strides [4, 8, 16, 32] (OS 32)."""

    pretrained_ignore = ("conv5.", "fc.")

    def __init__(self, output_stride: int = 32, atrous: bool = True,
                 stage_repeats=(4, 8, 4), stage_channels=(24, 116, 232, 464)):
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ConfigError(f"model switch output_stride must be 8, 16 or 32, got {output_stride!r}")
        c0 = stage_channels[0]
        self.conv1 = nn.Sequential(nn.Conv2d(3, c0, 3, 2, 1, bias=False), nn.BatchNorm2d(c0), nn.ReLU(inplace=True))
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.channels = list(stage_channels)
        self.reductions = [4]
        stride_now, dilation, in_ch = 4, 1, c0
        for i, (repeats, out_ch) in enumerate(zip(stage_repeats, stage_channels[1:])):
            stride = 2
            previous_dilation = dilation
            if stride_now * stride > output_stride:
                dilation = dilation * stride if atrous else dilation
                stride = 1
            stride_now *= stride
            units = [InvertedResidual(in_ch, out_ch, stride, previous_dilation)]
            units += [InvertedResidual(out_ch, out_ch, 1, dilation) for _ in range(repeats - 1)]
            setattr(self, f"stage{i + 2}", nn.Sequential(*units))
            self.reductions.append(stride_now)
            in_ch = out_ch
        self.output_stride = output_stride
        default = tuple(stage_repeats) == (4, 8, 4) and tuple(stage_channels) == (24, 116, 232, 464)
        self.torchvision_name = "shufflenet_v2_x1_0" if default else None

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.conv1(x))
        feats = [x]
        for name in ("stage2", "stage3", "stage4"):
            x = getattr(self, name)(x)
            feats.append(x)
        return feats


def shufflenet_v2_x1_0(output_stride: int = 32, atrous: bool = True) -> ShuffleNetV2:
    return ShuffleNetV2(output_stride=output_stride, atrous=atrous)
