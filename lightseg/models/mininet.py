"""MiniNet (Liu, Lu, Li, Zhang, Wu, Cheng, "Efficient Multi-Scale Feature Extraction for Lightweight
Semantic Segmentation", Chinese Journal of Computers 2022; ../shared/papers/mininet.txt).

The network of Sec. 3 and Fig. 2, module by module:

* encoder, 4 stages at 1/2, 1/4, 1/8, 1/16 with C_k channels and P_k blocks (Table 1). Each stage opens with
  an SPP downsampling module (Fig. 1(b) standard conv in stage 1, Fig. 1(c) depthwise-separable conv after);
  stage 1 then has P_1 residual conv blocks, Eq. (1); stages 2-4 have P_k SPC modules (Fig. 1(a)); a long
  residual, Eq. (2), closes every stage;
* decoder, Eq. (3): three steps back to 1/2, each fusing a 1x1-conv-BN projection of the encoder map with an
  SPC module (PReLU omitted) on the upsampled deeper decoder map;
* a 1x1 classifier on F_1^D, upsampled to the input; deep supervision: a 1x1 conv + upsampling after F_2^D,
  F_3^D, F_4^D (train mode only), loss weights 1.0 / 0.4 / 0.4 / 0.4 against the full-resolution labels.

Every switch of the paper's ablation (Table 2) is a keyword of :class:`MiniNet`; ``lightseg models --paper
mininet`` rebuilds each row. docs/models.md gives the reasoning behind each choice the text leaves open.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from .base import SegmentationModel, resize_to
from .blocks import ConvPoolMerge
from .registry import PaperRow, register_model, register_paper_table

__all__ = ["SPPDownsample", "ResidualConvBlock", "SPCModule", "LongResidual", "DecoderStep", "MiniNet",
           "mininet_95k", "mininet_211k", "spc_dilations"]

# Deep-supervision loss weights for F_2^D, F_3^D, F_4^D (Sec. 3: "0.4"); the main output has 1.0.
AUX_WEIGHTS = (0.4, 0.4, 0.4)


def spc_dilations(branches: int) -> tuple[int, ...]:
    """Dilation rates of an SPC module with ``branches`` (r) branches: 1, 2, ..., 2^(r-1) (Sec. 3, "SPC";
    the text's flattened superscripts are settled by "a four-branch SPC has a receptive field of 17")."""
    return tuple(2 ** i for i in range(branches))


def _act(kind: str, channels: int) -> nn.Module:
    # PReLU per channel (ESPNet's choice, Sec. 4.2 "PReLU"); ReLU is Table 2(f)'s ablation.
    if kind == "prelu":
        return nn.PReLU(channels)
    if kind == "relu":
        return nn.ReLU(inplace=True)
    raise ValueError(f"MiniNet activation must be 'prelu' or 'relu', got {kind!r}")


class SPPDownsample(nn.Module):
    """SPP module, Fig. 1(b)/(c): a 2x2 max-pool branch beside a strided conv branch, concatenated, BN, act.

    With ``C_in < C_out`` the pool gives the ``C_in`` input channels and the conv the other ``C_out - C_in``;
    otherwise the pool branch is omitted and the conv gives all ``C_out`` (Sec. 3, "SPP"). ``branches``:
    ``"both"`` (the paper), ``"conv"`` or ``"pool"`` (Table 2(c)). A pool-only module keeps ``C_in``
    channels (the next block widens them). ``separable``: the conv branch is a 3x3 depthwise conv then a
    1x1 pointwise conv (Fig. 1(c), stages 2-4); otherwise a standard 3x3 conv (Fig. 1(b), stage 1).
    ``stride=1`` keeps the resolution (Table 2(a)'s 1/8 variant, conv branch only).
    """

    def __init__(self, in_channels: int, out_channels: int, separable: bool = True, branches: str = "both",
                 stride: int = 2, act: str = "prelu"):
        super().__init__()
        if branches not in ("both", "conv", "pool"):
            raise ValueError(f"SPP branches must be 'both', 'conv' or 'pool', got {branches!r}")
        use_pool = branches == "pool" or (branches == "both" and in_channels < out_channels and stride == 2)
        use_conv = branches != "pool"
        if branches == "pool" and stride != 2:
            raise ValueError("a pool-only SPP module must downsample (stride 2)")
        conv_out = out_channels - in_channels if use_pool else out_channels
        self.out_channels = conv_out * use_conv + in_channels * use_pool
        self.conv = None
        if use_conv:
            if separable:
                self.conv = nn.Sequential(
                    nn.Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels, bias=False),
                    nn.Conv2d(in_channels, conv_out, 1, bias=False),
                )
            else:
                self.conv = nn.Conv2d(in_channels, conv_out, 3, stride, 1, bias=False)
        # ceil_mode: a 3x3 / stride-2 / pad-1 conv gives ceil(H/2), so must the pool on odd sizes.
        self.pool = nn.MaxPool2d(2, 2, ceil_mode=True) if use_pool else None
        self.bn = nn.BatchNorm2d(self.out_channels)
        self.act = _act(act, self.out_channels)

    def forward(self, x):
        parts = [branch(x) for branch in (self.conv, self.pool) if branch is not None]
        y = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        return self.act(self.bn(y))

    def reparameterize(self) -> nn.Module:
        """Inference form (same output): with both branches, BN folded into each (:class:`ConvPoolMerge`).
        A single branch is left to the generic conv-BN folding."""
        if self.conv is None or self.pool is None:
            return self
        return ConvPoolMerge(self.conv, self.pool, self.bn, self.act, concat=True)


class ResidualConvBlock(nn.Module):
    """Stage-1 block, Eq. (1): F^l = PReLU(BN(W^l * F^(l-1) + F^(l-1))), one bias-free 3x3 conv.
    ``residual=False`` drops the "+ F^(l-1)" (Table 2(b), "w/o short")."""

    def __init__(self, channels: int, residual: bool = True, act: str = "prelu"):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.act = _act(act, channels)
        self.residual = residual

    def forward(self, x):
        y = self.conv(x)
        return self.act(self.bn(y + x if self.residual else y))


class SPCModule(nn.Module):
    """Spatial pyramid convolution, Fig. 1(a): a pointwise 1x1 conv, then r parallel 3x3 depthwise convs with
    dilations 1, 2, ..., 2^(r-1) on its output, summed; the residual (the module's input) is added to the sum,
    then BN and PReLU (Sec. 3: "after the element-wise sum of the dilated convolutions we add a residual
    connection, followed by batch normalisation and PReLU"). Weights: C_in*C_out + 9*r*C_out ("model analysis").

    ``residual``: the short residual; it needs C_in == C_out and is left out otherwise (the decoder's
    C_(k+2) -> C_(k+1) modules, and a pool-only stage's first module). ``act=None``: no activation (the
    decoder's SPC, Eq. (3)). ``pointwise_first``: the decoder's inference form (see :class:`DecoderStep`).
    """

    def __init__(self, in_channels: int, out_channels: int, branches: int, residual: bool = True,
                 act: str | None = "prelu"):
        super().__init__()
        self.dilations = spc_dilations(branches)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.branches = nn.ModuleList(
            nn.Conv2d(out_channels, out_channels, 3, 1, padding=d, dilation=d, groups=out_channels, bias=False)
            for d in self.dilations
        )
        self.residual = residual and in_channels == out_channels
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = _act(act, out_channels) if act else nn.Identity()

    def pyramid(self, y):
        """The summed dilated depthwise branches on the pointwise conv's output ``y``."""
        out = self.branches[0](y)
        for branch in self.branches[1:]:
            out = out + branch(y)
        return out

    def forward(self, x):
        y = self.pyramid(self.pointwise(x))
        if self.residual:
            y = y + x
        return self.act(self.bn(y))


class LongResidual(nn.Module):
    """Eq. (2): F_k^(P_k) = PReLU(BN(W_k^long * F_k^0 + F_k^(P_k))), W_k^long a 1x1 conv (C_k x C_k; a
    pool-only stage's F_k^0 has C_(k-1) channels, so there it is C_(k-1) -> C_k)."""

    def __init__(self, in_channels: int, out_channels: int, act: str = "prelu"):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = _act(act, out_channels)

    def forward(self, first, last):
        return self.act(self.bn(self.conv(first) + last))


class EncoderStage(nn.Module):
    """SPP downsampling (F_k^0), P_k blocks (F_k^1 .. F_k^(P_k)) and the long residual."""

    def __init__(self, down: nn.Module, blocks: Sequence[nn.Module], long: LongResidual | None):
        super().__init__()
        self.down = down
        self.blocks = nn.Sequential(*blocks)
        self.long = long

    def forward(self, x):
        first = self.down(x)
        last = self.blocks(first)
        return self.long(first, last) if self.long is not None else last


class DecoderStep(nn.Module):
    """One decoder stage, Eq. (3):

        F_k^D1 = BN(W_k^D * F_k^P)                 (1x1 conv C_k -> C_(k+1), the encoder path)
        F_k^D2 = SPC(Upsampling(F_(k+1)^D))        (SPC without its PReLU, the deep path)
        F_k^D  = PReLU(F_k^D1 + F_k^D2)

    so F_k^D has C_(k+1) channels (W_k^D is C_(k+1) x C_k), and the SPC maps the deeper map's channels to
    C_(k+1). Upsampling is bilinear to the encoder map's size (odd sizes work).

    ``pointwise_first``: run the SPC's pointwise conv before the upsampling instead of after. A bias-free
    1x1 conv (a per-pixel channel mix) and bilinear interpolation (a per-channel spatial mix) commute, so the
    output is the same at a quarter of the pointwise MACs. The paper's order (False) is the default, so MAC
    counts are the paper's; :meth:`reparameterize` switches it on for deployment.
    """

    def __init__(self, encoder_channels: int, deep_channels: int, out_channels: int, branches: int,
                 act: str = "prelu"):
        super().__init__()
        self.project = nn.Conv2d(encoder_channels, out_channels, 1, bias=False)
        self.project_bn = nn.BatchNorm2d(out_channels)
        self.spc = SPCModule(deep_channels, out_channels, branches, act=None)
        self.act = _act(act, out_channels)
        self.pointwise_first = False

    def forward(self, encoder, deep):
        size = encoder.shape[-2:]
        if self.pointwise_first:
            spc = self.spc
            y = resize_to(spc.pointwise(deep), size)
            up = resize_to(deep, size) if spc.residual else None
            y = spc.pyramid(y)
            deep_path = spc.bn(y + up if up is not None else y)
        else:
            deep_path = self.spc(resize_to(deep, size))
        return self.act(self.project_bn(self.project(encoder)) + deep_path)

    def reparameterize(self) -> nn.Module:
        self.pointwise_first = True
        return self


class MiniNet(SegmentationModel):
    """MiniNet, Fig. 2. Table 1's configurations: #1 ``channels=(16, 32, 64, 64), blocks=(2, 2, 3, 4)`` (95K),
    #2 ``channels=(16, 32, 64, 96), blocks=(2, 2, 3, 10)`` (211K).

    Switches (Table 2):
      ``channels`` C_1..C_4 (g); ``blocks`` P_1..P_4 (h); ``spc_branches`` r for stages 2-4 (Sec. 3: 3, 4, 4);
      ``scale`` 16 or 8, the resolution of stage 4 (a); ``long_residual`` / ``short_residual`` (b);
      ``spp`` "both" / "pool" / "conv" (c); ``deep_supervision`` (d); ``decoder`` (e); ``activation``
      "prelu" / "relu" (f). ``decoder_branches``: r of the decoder's SPC modules for k = 1, 2, 3 (not given
      in the paper; 2 is lightseg's choice, weighed against 3 and 4 over Tables 1-2 in docs/models.md).
    """

    def __init__(
        self,
        num_classes: int = 19,
        channels: Sequence[int] = (16, 32, 64, 96),
        blocks: Sequence[int] = (2, 2, 3, 10),
        spc_branches: Sequence[int] = (3, 4, 4),
        decoder_branches: int | Sequence[int] = 2,
        scale: int = 16,
        long_residual: bool = True,
        short_residual: bool = True,
        spp: str = "both",
        decoder: bool = True,
        deep_supervision: bool | None = None,
        activation: str = "prelu",
    ):
        super().__init__()
        channels, blocks, spc_branches = tuple(channels), tuple(blocks), tuple(spc_branches)
        if len(channels) != 4 or len(blocks) != 4 or len(spc_branches) != 3:
            raise ValueError(
                f"MiniNet needs 4 channels, 4 block counts and 3 SPC branch counts, got {channels}, {blocks}, {spc_branches}")
        if min(blocks) < 1 or min(channels) < 1 or min(spc_branches) < 1:
            raise ValueError(f"MiniNet channels, blocks and branches must be >= 1, got {channels}, {blocks}, {spc_branches}")
        if scale not in (8, 16):
            raise ValueError(f"MiniNet scale must be 16 (the paper) or 8 (Table 2(a)), got {scale}")
        if isinstance(decoder_branches, int):
            decoder_branches = (decoder_branches,) * 3
        if deep_supervision is None:
            deep_supervision = decoder
        if deep_supervision and not decoder:
            raise ValueError("deep supervision sits on the decoder maps F_2^D..F_4^D; with decoder=False set deep_supervision=False")
        self.num_classes = num_classes
        self.channels, self.blocks, self.scale = channels, blocks, scale
        act = activation

        stages, prev = [], 3
        for k, (c, n) in enumerate(zip(channels, blocks)):
            stride = 1 if (k == 3 and scale == 8) else 2
            if k == 0:
                # Stage 1: SPP with a standard conv; a pool-only network downsamples the image with a strided
                # conv instead (Sec. 4.2, Table 2(c)).
                down = SPPDownsample(3, c, separable=False, branches="conv" if spp == "pool" else spp, act=act)
            else:
                down = SPPDownsample(prev, c, separable=True, branches=spp if stride == 2 else "conv",
                                     stride=stride, act=act)
            width = down.out_channels
            body = []
            for _ in range(n):
                if k == 0:
                    body.append(ResidualConvBlock(c, residual=short_residual, act=act))
                else:
                    body.append(SPCModule(width, c, spc_branches[k - 1], residual=short_residual, act=act))
                width = c
            long = LongResidual(down.out_channels, c, act=act) if long_residual else None
            stages.append(EncoderStage(down, body, long))
            prev = c
        self.stage1, self.stage2, self.stage3, self.stage4 = stages

        c1, c2, c3, c4 = channels
        if decoder:
            # F_3^D = PReLU(BN(W_3 F_3^P) + SPC(Up F_4^P)): C3 -> C4 and C4 -> C4; then F_2^D: C3 channels, F_1^D: C2.
            self.up3 = DecoderStep(c3, c4, c4, decoder_branches[2], act)
            self.up2 = DecoderStep(c2, c4, c3, decoder_branches[1], act)
            self.up1 = DecoderStep(c1, c3, c2, decoder_branches[0], act)
            head_channels = c2
        else:
            self.up3 = self.up2 = self.up1 = None
            head_channels = c4  # Table 2(e) "w/o": predict at 1/16 and upsample
        self.decoder = decoder
        # 1x1 classifier (Sec. 3, "we apply a 1x1 conv on F_1^D"); with bias: it produces logits, no BN after it.
        self.classifier = nn.Conv2d(head_channels, num_classes, 1)
        if deep_supervision:
            self.aux_heads = nn.ModuleList(nn.Conv2d(c, num_classes, 1) for c in (c3, c4, c4))
            self.aux_names = ("f2", "f3", "f4")
            self.aux_weights = AUX_WEIGHTS
        else:
            self.aux_heads = None
            self.aux_names = ()
            self.aux_weights = ()

    def forward_features(self, x):
        f1 = self.stage1(x)
        f2 = self.stage2(f1)
        f3 = self.stage3(f2)
        f4 = self.stage4(f3)
        if not self.decoder:
            return self.classifier(f4), []
        d3 = self.up3(f3, f4)  # F_4^D = F_4^P
        d2 = self.up2(f2, d3)
        d1 = self.up1(f1, d2)
        logits = self.classifier(d1)
        aux = []
        if self.training and self.aux_heads is not None:
            # Sec. 3: "a 1x1 conv and an upsampling after F_2^D, F_3^D, F_4^D", supervised with the labels.
            aux = [resize_to(head(f), x.shape[-2:]) for head, f in zip(self.aux_heads, (d2, d3, f4))]
        return logits, aux


_PAPER = "MiniNet (Liu et al.)"
CONFIG_95K = dict(channels=(16, 32, 64, 64), blocks=(2, 2, 3, 4))
CONFIG_211K = dict(channels=(16, 32, 64, 96), blocks=(2, 2, 3, 10))


@register_model(
    "mininet_95k",
    paper=_PAPER,
    paper_size=(512, 1024),
    paper_params=95e3,
    paper_macs=2.1e9,
    paper_fps=104.2,  # Table 3
    paper_hardware="TITAN Xp",  # Sec. 4.1
)
def mininet_95k(num_classes: int = 19, **kwargs) -> MiniNet:
    """Table 1 #1: C = (16, 32, 64, 64), P = (2, 2, 3, 4)."""
    return MiniNet(num_classes, **{**CONFIG_95K, **kwargs})


@register_model(
    "mininet_211k",
    paper=_PAPER,
    paper_size=(512, 1024),
    paper_params=211e3,
    paper_macs=2.4e9,
    paper_fps=94.3,  # Table 3
    paper_hardware="TITAN Xp",
)
def mininet_211k(num_classes: int = 19, **kwargs) -> MiniNet:
    """Table 1 #2: C = (16, 32, 64, 96), P = (2, 2, 3, 10). The default of Table 2's ablations."""
    return MiniNet(num_classes, **{**CONFIG_211K, **kwargs})


def _t2(sub, label, params, flops, **kwargs):
    return PaperRow(f"Table 2({sub})", label, "mininet_211k", kwargs, params * 1e3, flops * 1e9)


register_paper_table(
    "mininet", "MiniNet (Liu et al.): Tables 1, 2(a)-(h), 4", flops_per_mac=1,
    flops_note="the paper's FLOPs are multiply-add operations (Sec. 4.1: \"乘法-加法操作 (FLOPs)\"), i.e. MACs; "
               "at 512x1024, 19 classes (Tables 1-3) and 360x480, 11 classes (Table 4)",
    rows=[
        PaperRow("Table 1", "#1 C=(16,32,64,64) P=(2,2,3,4)", "mininet_95k", {}, 95e3, 2.1e9),
        PaperRow("Table 1", "#2 C=(16,32,64,96) P=(2,2,3,10)", "mininet_211k", {}, 211e3, 2.4e9),
        _t2("a", "1/8", 217, 3.3, scale=8),
        _t2("a", "1/16", 211, 2.4, scale=16),
        _t2("b", "w/o long", 196, 2.3, long_residual=False),
        _t2("b", "w/o short", 211, 2.4, short_residual=False),
        _t2("b", "w/ all", 211, 2.4),
        _t2("c", "pool.", 194, 2.2, spp="pool"),
        _t2("c", "conv.", 219, 2.5, spp="conv"),
        _t2("c", "both", 211, 2.4, spp="both"),
        _t2("d", "w/o", 211, 2.4, deep_supervision=False),
        _t2("d", "w/", 211, 2.4, deep_supervision=True),
        _t2("e", "w/o", 182, 1.5, decoder=False),
        _t2("e", "w/", 211, 2.4, decoder=True),
        _t2("f", "ReLU", 209, 2.4, activation="relu"),
        _t2("f", "PReLU", 211, 2.4, activation="prelu"),
        _t2("g", "(16,32,32,64)", 108, 1.7, channels=(16, 32, 32, 64)),
        _t2("g", "(16,32,64,64)", 135, 2.2, channels=(16, 32, 64, 64)),
        _t2("g", "(16,32,64,96)", 211, 2.4, channels=(16, 32, 64, 96)),
        _t2("g", "(16,32,64,128)", 318, 2.8, channels=(16, 32, 64, 128)),
        _t2("g", "(32,64,96,128)", 376, 5.6, channels=(32, 64, 96, 128)),
        _t2("g", "(16,64,128,128)", 415, 4.0, channels=(16, 64, 128, 128)),
        _t2("g", "(32,64,128,128)", 431, 6.1, channels=(32, 64, 128, 128)),
        _t2("h", "(1,1,3,10)", 207, 2.0, blocks=(1, 1, 3, 10)),
        _t2("h", "(2,2,3,10)", 211, 2.4, blocks=(2, 2, 3, 10)),
        _t2("h", "(2,2,5,10)", 224, 2.5, blocks=(2, 2, 5, 10)),
        _t2("h", "(3,3,5,10)", 229, 2.9, blocks=(3, 3, 5, 10)),
        _t2("h", "(2,2,3,5)", 146, 2.3, blocks=(2, 2, 3, 5)),
        _t2("h", "(2,2,3,8)", 185, 2.4, blocks=(2, 2, 3, 8)),
        _t2("h", "(2,2,3,12)", 237, 2.5, blocks=(2, 2, 3, 12)),
        PaperRow("Table 4", "MiniNet 95K, CamVid", "mininet_95k", {}, 95e3, 0.7e9, size=(360, 480), num_classes=11),
        PaperRow("Table 4", "MiniNet 211K, CamVid", "mininet_211k", {}, 211e3, 0.8e9, size=(360, 480), num_classes=11),
    ],
)
