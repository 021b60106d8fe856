"""ATONet (Cao, Huang, Shao): ResNet-18 encoder, aspect-ratio spatial pyramid pooling, and a decoder that
sums all encoder levels at 1/4 resolution ("aggregation architecture").

Layout (the paper's Methods; its Figure 2 is lost, the authors' code KTMomo/ATONet settles the rest;
docs/models.md gives the source of each choice):

* encoder: ResNet-18 (torchvision names), output stride 32;
* SPP on layer4 ("pooling sizes of 8, 4, and 2", ``bins``): 1x1 conv 512->512, then per bin b an average
  pool to (b, round(b * W / H)) -- the bins follow the image's aspect ratio, 8x16 / 4x8 / 2x4 on
  Cityscapes -- a 1x1 conv to 128 and an upsample; concat 512 + 128 per bin -> 1x1 conv to 128;
* "up" modules: a conv-BN (no ReLU) to 128 on layer1..layer4 and on the SPP output, each at its own
  resolution, resized to 1/4 and summed; ReLU; 3x3 conv-BN-ReLU ("final"). The text says 1x1; the
  authors' code and Table 1's 13.3M / 134.5G say 3x3 (``up_kernel``);
* segmentation head: 3x3 conv-BN-ReLU, Dropout2d(0.1), 1x1 to classes, x4 bilinear (to input size);
* auxiliary heads (training only, ``aux_losses``): Table 4's loss1..loss5 on layer1..layer4 and the SPP,
  3x3 conv-BN-ReLU + 1x1 to classes at the level's own stride, weight 1 each, against nearest-downsampled
  labels; the paper's choice is loss3 + loss4 + loss5. The 13.3M of Table 1 excludes them.

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
from .registry import PaperRow, register_model, register_paper_table


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
    """(bin, round(bin * W / H)), at least 1 column: the authors' code's grid (``round(ar * bin)`` with
    Python's round, half to even: 2.5 -> 2). Exact integer arithmetic, so that it also traces with symbolic
    sizes (ONNX export with dynamic height/width) and no float error moves a .5 case."""
    n = bin_size * width
    q = n // height
    twice_rest = 2 * (n - q * height)
    up = (twice_rest > height) | ((twice_rest == height) & (q % 2 == 1))
    if isinstance(q, torch.Tensor):
        return bin_size, torch.clamp(q + up.to(q.dtype), min=1)
    return bin_size, max(int(q) + int(up), 1)


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
    """3x3 conv-BN-ReLU, then a 1x1 conv to the classes (authors' code ``aux_cls1..5``)."""

    def __init__(self, in_channels: int, mid_channels: int, num_classes: int):
        super().__init__(ConvBNAct(in_channels, mid_channels, 3), nn.Conv2d(mid_channels, num_classes, 1))


# The five levels that can carry an auxiliary loss (Table 4's loss1..loss5): layer1..layer4 and the SPP.
AUX_LEVELS = ("layer1", "layer2", "layer3", "layer4", "spp")
# "sum_loss = main_loss + loss3 + loss4 + loss5" (Methods, "All-to-One Network"): Table 4's best set.
PAPER_AUX_LOSSES = (3, 4, 5)


def _check_aux_losses(aux_losses) -> tuple[int, ...]:
    picked = tuple(aux_losses)
    if any(isinstance(i, bool) or not isinstance(i, int) or not 1 <= i <= 5 for i in picked) or len(set(picked)) != len(picked):
        raise ValueError(f"aux_losses must list distinct heads among 1..5 (Table 4's loss1..loss5: "
                         f"{', '.join(AUX_LEVELS)}), got {aux_losses!r}")
    return tuple(sorted(picked))


def _check_bins(bins) -> tuple[int, ...]:
    bins = tuple(bins)
    if not bins or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in bins):
        raise ValueError(f"bins must be a non-empty list of positive pooling sizes such as (8, 4, 2), got {bins!r}")
    return bins


class ATONet(SegmentationModel):
    """ATONet on ResNet-18; see the module docstring for the layout and docs/models.md for the choices.

    ``bins``: the SPP pooling sizes (Table 4: (6, 3, 2, 1), (8, 4, 2, 1), (8, 4, 2)).
    ``aux_losses``: which of Table 4's loss1..loss5 heads exist (on layer1..layer4 and the SPP); each is
    trained with weight 1 (``aux_weights``) against labels nearest-downsampled to its own resolution.
    ``()`` builds the deployment network. ``up_kernel``: 3 (authors' code, the 13.3M / 134.5G of
    Table 1) or 1 (the text's "1 x 1 convolutional layer"; Table 3's aggregation network).
    """

    def __init__(self, num_classes: int = 19, decoder_channels: int = 128, bins=(8, 4, 2),
                 aux_losses=PAPER_AUX_LOSSES, up_kernel: int = 3, dropout: float = 0.1, output_stride: int = 32):
        super().__init__()
        if up_kernel not in (1, 3):
            raise ValueError(f"up_kernel must be 3 (authors' code) or 1 (the paper's text), got {up_kernel!r}")
        self.num_classes = num_classes
        self.aux_losses = _check_aux_losses(aux_losses)
        self.backbone = ResNet18(output_stride=output_stride)
        c1, c2, c3, c4 = self.backbone.channels
        d = decoder_channels
        self.spp = AspectRatioSPP(c4, c4, 128, d, bins=_check_bins(bins))
        # conv-BN without ReLU on every level, at the level's own resolution: the five maps are resized to
        # 1/4, summed, then one ReLU (authors' code ``singleUp``).
        self.up = nn.ModuleList(ConvBNAct(c, d, up_kernel, act=None) for c in (c1, c2, c3, c4, d))
        self.relu = nn.ReLU(inplace=True)
        self.final = ConvBNAct(d, d, 3)
        self.head = nn.Sequential(ConvBNAct(d, d, 3), nn.Dropout2d(dropout), nn.Conv2d(d, num_classes, 1))
        level_channels = (c1, c2, c3, c4, d)
        # Mid width: the level's own 64 on layer1, else 128 (authors' code; the paper gives none).
        self.aux_heads = nn.ModuleList(
            _AuxHead(level_channels[i - 1], min(level_channels[i - 1], d), num_classes) for i in self.aux_losses
        ) if self.aux_losses else None
        self.aux_names = tuple(AUX_LEVELS[i - 1] for i in self.aux_losses)
        # w_i = 1 for every loss used (Methods, "Multi-level Auxiliary Loss").
        self.aux_weights = (1.0,) * len(self.aux_losses)

    def forward_features(self, x):
        f1, f2, f3, f4 = self.backbone(x)
        context = self.spp(f4)
        levels = (f1, f2, f3, f4, context)
        size = f1.shape[-2:]
        fused = None
        for conv, f in zip(self.up, levels):
            y = _resize(conv(f), size)
            fused = y if fused is None else fused + y
        logits = self.head(self.final(self.relu(fused)))
        # The paper's x4 bilinear upsampling, done here (not left to SegmentationModel.forward) so that
        # it follows the traced input size in a dynamic-shape ONNX export.
        logits = _resize(logits, x.shape[-2:])
        aux = []
        if self.training and self.aux_heads is not None:
            # At the level's own resolution: the loss compares them with nearest-downsampled labels.
            aux = [head(levels[i - 1]) for head, i in zip(self.aux_heads, self.aux_losses)]
        return logits, aux


@register_model(
    "atonet_r18",
    paper="ATONet (Cao, Huang, Shao)",
    paper_size=(1024, 2048),
    paper_params=13.3e6,
    paper_macs=134.5e9,
    paper_fps=42.7,
    paper_hardware=None,  # our copy of the paper does not name the GPU behind its 42.7 FPS
    paper_pretrained="ImageNet ResNet-18 (authors' code: resnet18(pretrained=True))",
)
def atonet_r18(num_classes: int = 19, bins=(8, 4, 2), aux_losses=PAPER_AUX_LOSSES, up_kernel: int = 3,
               output_stride: int = 32) -> ATONet:
    return ATONet(num_classes=num_classes, bins=bins, aux_losses=aux_losses, up_kernel=up_kernel,
                  output_stride=output_stride)


def _t4(label, bins=(8, 4, 2), losses=(), size=(1024, 1024), note=""):
    kwargs = {}
    if tuple(bins) != (8, 4, 2):
        kwargs["bins"] = bins
    if tuple(losses) != PAPER_AUX_LOSSES:
        kwargs["aux_losses"] = losses
    return PaperRow("Table 4", label, "atonet_r18", kwargs, size=size, note=note)


_TRAIN_ONLY = "aux heads are train-only: same inference network as the row above"
register_paper_table(
    "atonet", "ATONet (Cao, Huang, Shao): Tables 1, 3 (aggregation row) and 4", flops_per_mac=1,
    flops_note="the paper does not define its FLOPs; they are multiply-accumulates (MACs): Table 1's 134.5 G "
               "is our MAC count of the network its text and code describe (134.0 G), 2 x MACs would be 268 G, and "
               "the authors' training script counts with ptflops' get_model_complexity_info, which reports MACs. "
               "Table 4 gives no params/FLOPs (mIoU only): its rows show that every variant builds",
    rows=[
        PaperRow("Table 1", "ATONet, Cityscapes test", "atonet_r18", {}, 13.3e6, 134.5e9, size=(1024, 2048)),
        PaperRow("Table 3", "Aggregation (100 epochs)", "atonet_r18", {"up_kernel": 1}, 12.58e6, 58.05e9,
                 size=(1024, 1024), note="with the text's 1x1 up convs; 3x3 gives 13.30M / 67.0G"),
        _t4("100 ep, (6,3,2,1), no aux", bins=(6, 3, 2, 1)),
        _t4("100 ep, (8,4,2,1), no aux", bins=(8, 4, 2, 1)),
        _t4("100 ep, (8,4,2), no aux"),
        _t4("100 ep, loss1", losses=(1,), note=_TRAIN_ONLY),
        _t4("100 ep, loss1-2", losses=(1, 2), note=_TRAIN_ONLY),
        _t4("100 ep, loss1-3", losses=(1, 2, 3), note=_TRAIN_ONLY),
        _t4("100 ep, loss1-4", losses=(1, 2, 3, 4), note=_TRAIN_ONLY),
        _t4("100 ep, loss1-5", losses=(1, 2, 3, 4, 5), note=_TRAIN_ONLY),
        _t4("100 ep, loss2-5", losses=(2, 3, 4, 5), note=_TRAIN_ONLY),
        _t4("100 ep, loss3-5 (best)", losses=(3, 4, 5), note=_TRAIN_ONLY),
        _t4("100 ep, loss4-5", losses=(4, 5), note=_TRAIN_ONLY),
        _t4("100 ep, loss5", losses=(5,), note=_TRAIN_ONLY),
        _t4("100 ep, loss3-5, aux upsampled (†)", losses=(3, 4, 5),
            note="same network; the recipe's train.loss.aux_mode=upsample"),
        _t4("100 ep, loss3-5, val 1024x2048", losses=(3, 4, 5), size=(1024, 2048)),
        _t4("200 ep, loss3-5, val 1024x2048", losses=(3, 4, 5), size=(1024, 2048),
            note="75.58% mIoU: the recipe's 200 epochs"),
    ],
)
