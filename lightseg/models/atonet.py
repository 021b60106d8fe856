"""ATONet (Cao, Huang, Shao): ResNet-18 encoder, aspect-ratio spatial pyramid pooling, and a decoder that
sums all encoder levels at 1/4 resolution.

Layout (ours follows the issue's spec; see docs/models.md for each choice):

* encoder: ResNet-18 (torchvision names), output stride 32;
* SPP on layer4: 1x1 conv 512->512, then per bin b in (8, 4, 2) an average pool to
  (b, round(b * W / H)) -- the bins follow the image's aspect ratio, 8x16 / 4x8 / 2x4 on Cityscapes --
  a 1x1 conv to 128 and an upsample; concat 512 + 3*128 = 896 -> 1x1 conv to 128;
* "up" modules: a 3x3 conv-BN (no ReLU) to 128 on layer1..layer4 and on the SPP output, each at its
  own resolution, resized to 1/4 and summed; ReLU; 3x3 conv-BN-ReLU ("final");
* segmentation head: 3x3 conv-BN-ReLU, Dropout2d(0.1), 1x1 to classes, x4 bilinear (to input size);
* auxiliary heads (training only) on layer3, layer4 and SPP: 3x3 conv-BN-ReLU + 1x1 to classes, at
  their own stride. ``aux=False`` leaves them out (deployment); the paper's 13.3M params is this
  inference network without the aux heads.

The aspect-ratio pooling is written as two matrix products with averaging matrices built from the
input size (:func:`adaptive_avg_pool2d_matmul`): numerically the same as ``F.adaptive_avg_pool2d`` but
exportable to ONNX for output sizes that do not divide the input (ONNX has no adaptive pooling).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbones.resnet import ResNet18
from .base import SegmentationModel, resize_to
from .blocks import ConvBNAct
from .registry import register_model


def _averaging_matrix(in_size, out_size, device, dtype) -> torch.Tensor:
    """(out_size, in_size) matrix whose row i averages input cells [floor(i*n/m), ceil((i+1)*n/m)),
    the windows of ``F.adaptive_avg_pool``. Integer tensor arithmetic only, so that the sizes stay
    symbolic when traced for ONNX export with dynamic height/width."""
    i = torch.arange(out_size, device=device)
    j = torch.arange(in_size, device=device)
    start = torch.div(i * in_size, out_size, rounding_mode="floor")
    end = torch.div((i + 1) * in_size + out_size - 1, out_size, rounding_mode="floor")
    inside = (j[None, :] >= start[:, None]) & (j[None, :] < end[:, None])
    return inside.to(dtype) / (end - start)[:, None].to(dtype)


def adaptive_avg_pool2d_matmul(x: torch.Tensor, output_size) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(x, output_size)`` as ``A_h @ x @ A_w^T`` (same windows, same averages)."""
    out_h, out_w = output_size
    a_h = _averaging_matrix(x.shape[-2], out_h, x.device, x.dtype)
    a_w = _averaging_matrix(x.shape[-1], out_w, x.device, x.dtype)
    return torch.matmul(torch.matmul(a_h, x), a_w.transpose(0, 1))


def aspect_bins(height, width, bin_size: int):
    """(bin, round(bin * W / H)), rounding half up, at least 1. Integer arithmetic (floor((2bW + H) / 2H))
    instead of Python's round(), which rounds half to even (round(2.5) == 2) and would not trace."""
    cols = (2 * bin_size * width + height) // (2 * height)
    if isinstance(cols, torch.Tensor):
        cols = torch.clamp(cols, min=1)
    else:
        cols = max(int(cols), 1)
    return bin_size, cols


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    """``resize_to`` in eager mode. While traced for ONNX export, interpolate to the traced ``size``
    (never turned into Python ints), so that an export with dynamic height/width stays correct."""
    if torch.jit.is_tracing():
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return resize_to(x, size)


class AspectRatioSPP(nn.Module):
    """ATONet's spatial pyramid pooling with bins that follow the feature map's aspect ratio."""

    def __init__(self, in_channels: int = 512, mid_channels: int = 512, branch_channels: int = 128,
                 out_channels: int = 128, bins=(8, 4, 2)):
        super().__init__()
        self.bins = tuple(bins)
        self.reduce = ConvBNAct(in_channels, mid_channels, 1)
        self.branches = nn.ModuleList(ConvBNAct(mid_channels, branch_channels, 1) for _ in self.bins)
        self.fuse = ConvBNAct(mid_channels + branch_channels * len(self.bins), out_channels, 1)

    def forward(self, x):
        x = self.reduce(x)
        h, w = x.shape[-2], x.shape[-1]
        outs = [x]
        for b, conv in zip(self.bins, self.branches):
            pooled = adaptive_avg_pool2d_matmul(x, aspect_bins(h, w, b))
            outs.append(_resize(conv(pooled), x.shape[-2:]))
        return self.fuse(torch.cat(outs, dim=1))


class _AuxHead(nn.Sequential):
    def __init__(self, in_channels: int, mid_channels: int, num_classes: int):
        super().__init__(ConvBNAct(in_channels, mid_channels, 3), nn.Conv2d(mid_channels, num_classes, 1))


class ATONet(SegmentationModel):
    """ATONet on ResNet-18; see the module docstring for the layout and docs/models.md for the choices."""

    def __init__(self, num_classes: int = 19, decoder_channels: int = 128, aux: bool = True,
                 dropout: float = 0.1, output_stride: int = 32):
        super().__init__()
        self.num_classes = num_classes
        self.backbone = ResNet18(output_stride=output_stride)
        c1, c2, c3, c4 = self.backbone.channels
        d = decoder_channels
        self.spp = AspectRatioSPP(c4, c4, 128, d)
        # 3x3 conv-BN without ReLU on every level: the five maps are summed, then one ReLU.
        self.up = nn.ModuleList(ConvBNAct(c, d, 3, act=None) for c in (c1, c2, c3, c4, d))
        self.relu = nn.ReLU(inplace=True)
        self.final = ConvBNAct(d, d, 3)
        self.head = nn.Sequential(ConvBNAct(d, d, 3), nn.Dropout2d(dropout), nn.Conv2d(d, num_classes, 1))
        if aux:
            # Mid width 128 like the main head (the paper gives no width for these training-only heads).
            self.aux_heads = nn.ModuleList(_AuxHead(c, d, num_classes) for c in (c3, c4, d))
            self.aux_names = ("layer3", "layer4", "spp")
        else:
            self.aux_heads = None
            self.aux_names = ()

    def forward_features(self, x):
        f1, f2, f3, f4 = self.backbone(x)
        context = self.spp(f4)
        size = f1.shape[-2:]
        fused = None
        for conv, f in zip(self.up, (f1, f2, f3, f4, context)):
            y = _resize(conv(f), size)
            fused = y if fused is None else fused + y
        logits = self.head(self.final(self.relu(fused)))
        # The paper's x4 bilinear upsampling, done here (not left to SegmentationModel.forward) so that
        # it follows the traced input size in a dynamic-shape ONNX export.
        logits = _resize(logits, x.shape[-2:])
        aux = []
        if self.training and self.aux_heads is not None:
            aux = [head(f) for head, f in zip(self.aux_heads, (f3, f4, context))]
        return logits, aux


@register_model(
    "atonet_r18",
    paper="ATONet (Cao, Huang, Shao)",
    paper_size=(1024, 2048),
    paper_params=13.3e6,
    paper_macs=134.5e9,
    paper_fps=42.7,
    paper_hardware="GTX 1080 Ti",
)
def atonet_r18(num_classes: int = 19, aux: bool = True, output_stride: int = 32) -> ATONet:
    return ATONet(num_classes=num_classes, aux=aux, output_stride=output_stride)
