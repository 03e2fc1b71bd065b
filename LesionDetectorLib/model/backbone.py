"""3-D U-Net with DenseNet blocks: the backbone of Table I.

Reading of Table I (the printed table is ambiguous; this is the reading closest to the text,
"all feature maps in Feature Pyramid contain 32 channels", "we do not increase the kernel
number as the feature map gets smaller"). Sizes for a 128^3 input; every "conv" is
BN-ReLU-Conv (DenseNet notation) except the very first one, which sees raw intensities::

    PreBlock      3^3 conv(1->S), BN-ReLU-3^3 conv(S->S), 2^3 max         -> S  x 64^3  (stride 2)
    Encode(1)     dense [1^3 conv, 3^3 conv] x 2, growth 16               -> S+32 x 64^3
    Transition(1) 1^3 conv (->32), 2^3 avg                                -> 32 x 32^3 (stride 4)
    Encode(2)     dense x 2                                               -> 64 x 32^3
    Transition(2) 1^3 conv (->32), 2^3 avg                                -> 32 x 16^3 (stride 8)
    Encode(3)     dense x 2                                               -> 64 x 16^3
    Transition(3) 1^3 conv (->32), 2^3 avg                                -> 32 x 8^3  (stride 16) = P16
    Upsample(3)   2^3 deconv(P16) ++ Encode(3), 1^3 conv (->32)           -> 32 x 16^3
    Decode(2)     dense x 2                                               -> 64 x 16^3
    Transition    1^3 conv (->32)                                         -> 32 x 16^3           = P8
    Upsample(2)   2^3 deconv(P8) ++ Encode(2), 1^3 conv (->32)            -> 32 x 32^3
    Decode(1)     dense x 2                                               -> 64 x 32^3
    Transition    1^3 conv (->32)                                         -> 32 x 32^3           = P4

"++" is the concatenation "Combination" module of Fig. 2. The pyramid is
``[P4, P8, P16]`` with strides 4, 8, 16 (32^3, 16^3, 8^3 for 128^3; 24^3, 12^3, 6^3 for 96^3).
"""
from __future__ import annotations

from typing import List

import torch
from torch import nn


def bn_relu_conv(cin: int, cout: int, kernel: int) -> nn.Sequential:
    """Pre-activation conv (DenseNet "conv"): BN -> ReLU -> Conv3d with 'same' padding."""
    return nn.Sequential(nn.BatchNorm3d(cin), nn.ReLU(inplace=True),
                         nn.Conv3d(cin, cout, kernel, padding=kernel // 2, bias=False))


class DenseLayer(nn.Module):
    """[1x1x1 conv (bottleneck), 3x3x3 conv (growth)]; the output is concatenated to the input."""

    def __init__(self, cin: int, growth: int, bottleneck_factor: int) -> None:
        super().__init__()
        width = bottleneck_factor * growth
        self.body = nn.Sequential(bn_relu_conv(cin, width, 1), bn_relu_conv(width, growth, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], dim=1)


class DenseBlock(nn.Sequential):
    """``n_layers`` dense layers: channels go ``cin -> cin + n_layers * growth``."""

    def __init__(self, cin: int, growth: int, bottleneck_factor: int, n_layers: int = 2) -> None:
        layers = [DenseLayer(cin + i * growth, growth, bottleneck_factor) for i in range(n_layers)]
        super().__init__(*layers)
        self.out_channels = cin + n_layers * growth


class Combination(nn.Module):
    """Pink "Combination" module of Fig. 2: 2x2x2 deconv (x2 up), concat with the skip, 1x1x1 conv."""

    def __init__(self, c_low: int, c_skip: int, cout: int) -> None:
        super().__init__()
        self.up = nn.Sequential(nn.BatchNorm3d(c_low), nn.ReLU(inplace=True),
                                nn.ConvTranspose3d(c_low, c_low, kernel_size=2, stride=2, bias=False))
        self.fuse = bn_relu_conv(c_low + c_skip, cout, 1)

    def forward(self, low: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([self.up(low), skip], dim=1))


class DenseUNetBackbone(nn.Module):
    """Input ``[B, C_in, D, H, W]`` (D, H, W multiples of 16) -> ``[P4, P8, P16]``, each
    ``[B, pyramid_channels, D/s, H/s, W/s]`` for s = 4, 8, 16."""

    def __init__(self, in_channels: int = 1, stem_channels: int = 24, pyramid_channels: int = 32,
                 growth_rate: int = 16, bottleneck_factor: int = 4) -> None:
        super().__init__()
        s, c, g, f = stem_channels, pyramid_channels, growth_rate, bottleneck_factor
        self.out_channels = c
        self.strides = (4, 8, 16)
        self.preblock = nn.Sequential(
            nn.Conv3d(in_channels, s, 3, padding=1, bias=False),
            bn_relu_conv(s, s, 3),
            nn.MaxPool3d(2),
        )
        self.encode1 = DenseBlock(s, g, f)
        self.trans1 = nn.Sequential(bn_relu_conv(self.encode1.out_channels, c, 1), nn.AvgPool3d(2))
        self.encode2 = DenseBlock(c, g, f)
        self.trans2 = nn.Sequential(bn_relu_conv(self.encode2.out_channels, c, 1), nn.AvgPool3d(2))
        self.encode3 = DenseBlock(c, g, f)
        self.trans3 = nn.Sequential(bn_relu_conv(self.encode3.out_channels, c, 1), nn.AvgPool3d(2))
        self.up3 = Combination(c, self.encode3.out_channels, c)
        self.decode2 = DenseBlock(c, g, f)
        self.out8 = bn_relu_conv(self.decode2.out_channels, c, 1)
        self.up2 = Combination(c, self.encode2.out_channels, c)
        self.decode1 = DenseBlock(c, g, f)
        self.out4 = bn_relu_conv(self.decode1.out_channels, c, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        if x.dim() != 5 or any(n % 16 for n in x.shape[2:]):
            raise ValueError(f"backbone input must be [B, C, D, H, W] with D, H, W multiples of 16, "
                             f"got {tuple(x.shape)}")
        e1 = self.encode1(self.preblock(x))      # stride 2
        e2 = self.encode2(self.trans1(e1))       # stride 4
        e3 = self.encode3(self.trans2(e2))       # stride 8
        p16 = self.trans3(e3)                    # stride 16
        p8 = self.out8(self.decode2(self.up3(p16, e3)))
        p4 = self.out4(self.decode1(self.up2(p8, e2)))
        return [p4, p8, p16]


class Bottleneck(nn.Module):
    """Pre-activation residual bottleneck ("Bottle Neck" of Table I's detector and Magnify rows):
    BN-ReLU-1^3 conv (c -> c/4), BN-ReLU-3^3 conv, BN-ReLU-1^3 conv (-> c), plus identity."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        mid = max(channels // reduction, 4)
        self.body = nn.Sequential(bn_relu_conv(channels, mid, 1), bn_relu_conv(mid, mid, 3),
                                  bn_relu_conv(mid, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)
