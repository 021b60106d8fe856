"""ResNet-18 (He et al. 2016) with torchvision's parameter names, as a segmentation backbone.

Parameter names match ``torchvision.models.resnet18`` exactly (``conv1.weight``, ``bn1.*``,
``layer1.0.conv1.weight``, ``layer2.0.downsample.0.weight``, ...), so its ImageNet checkpoint
(``resnet18-f37072fd.pth``) loads strictly; only ``fc.*`` is left unused.

``output_stride`` 16 or 8 replaces the stride of layer4 (and layer3) by dilation, as DeepLab does
(Chen et al. 2017, Sec. 3.1). torchvision refuses dilation in BasicBlock; the dilated 3x3 convs
here add no parameters, so the checkpoint still fits.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ...errors import ConfigError


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN with an identity (or 1x1 conv-BN) shortcut; torchvision's names."""

    expansion = 1

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1,
                 first_dilation: int | None = None):
        super().__init__()
        first_dilation = first_dilation or dilation
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=first_dilation, dilation=first_dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


def _check_output_stride(output_stride: int) -> None:
    if output_stride not in (8, 16, 32):
        raise ConfigError(f"model switch output_stride must be 8, 16 or 32, got {output_stride!r}")


class ResNet18(nn.Module):
    """ResNet-18 without the classifier. ``forward`` returns [layer1, layer2, layer3, layer4]."""

    pretrained_ignore = ("fc.",)

    def __init__(self, output_stride: int = 32, layers=(2, 2, 2, 2)):
        super().__init__()
        _check_output_stride(output_stride)
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.channels = [64, 128, 256, 512]
        self.reductions: list[int] = []
        stride_now, dilation, in_ch = 4, 1, 64
        for i, (blocks, out_ch) in enumerate(zip(layers, self.channels)):
            stride = 1 if i == 0 else 2
            previous_dilation = dilation
            if stride_now * stride > output_stride:
                # DeepLab: keep the resolution, grow the dilation instead of striding.
                dilation *= stride
                stride = 1
            stride_now *= stride
            # As torchvision's _make_layer: the first block keeps the previous dilation.
            stage = [BasicBlock(in_ch, out_ch, stride, dilation, first_dilation=previous_dilation)]
            stage += [BasicBlock(out_ch, out_ch, 1, dilation) for _ in range(blocks - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
            self.reductions.append(stride_now)
            in_ch = out_ch
        self.output_stride = output_stride
        self.torchvision_name = "resnet18" if tuple(layers) == (2, 2, 2, 2) else None
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        feats = []
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = getattr(self, name)(x)
            feats.append(x)
        return feats


def resnet18(output_stride: int = 32) -> ResNet18:
    return ResNet18(output_stride=output_stride)
