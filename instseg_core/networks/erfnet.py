"""ERFNet (Romera et al., 2018): the real-time encoder-decoder the Spatial Embeddings network is built on.

Blocks as in the paper and the Spatial Embeddings reference code:

- `DownsamplerBlock`: a 3x3 stride-2 convolution (out - in channels) concatenated with a 2x2 max pool of
  the input (in channels), batch norm, ReLU. Halves height and width.
- `NonBottleneck1d`: two pairs of factorised 3x1 / 1x3 convolutions, the second pair dilated, batch norm
  after each pair, dropout, residual connection, ReLU.
- `UpsamplerBlock`: 3x3 stride-2 transposed convolution, batch norm, ReLU. Doubles height and width.

`Encoder`: 3 -> 16 (1/2) -> 64 (1/4) + 5 non-bottleneck blocks -> 128 (1/8) + 2 x dilations (2, 4, 8, 16).
`Decoder`: 128 -> 64 (1/4) + 2 blocks -> 16 (1/2) + 2 blocks -> `out_channels` (full resolution, a 2x2
stride-2 transposed convolution). Input height and width must be multiples of 8.
Batch norm uses eps=1e-3 as in ERFNet.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional

BN_EPS = 1e-3


class DownsamplerBlock(nn.Module):
    """(B, in, H, W) -> (B, out, H/2, W/2); requires out > in."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels - in_channels, 3, stride=2, padding=1, bias=True)
        self.pool = nn.MaxPool2d(2, stride=2)
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return functional.relu(self.bn(torch.cat([self.conv(x), self.pool(x)], 1)))


class NonBottleneck1d(nn.Module):
    """Residual block of factorised convolutions; (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, channels: int, dropout: float, dilation: int) -> None:
        super().__init__()
        self.conv3x1_1 = nn.Conv2d(channels, channels, (3, 1), padding=(1, 0), bias=True)
        self.conv1x3_1 = nn.Conv2d(channels, channels, (1, 3), padding=(0, 1), bias=True)
        self.bn1 = nn.BatchNorm2d(channels, eps=BN_EPS)
        self.conv3x1_2 = nn.Conv2d(channels, channels, (3, 1), padding=(dilation, 0), dilation=(dilation, 1),
                                   bias=True)
        self.conv1x3_2 = nn.Conv2d(channels, channels, (1, 3), padding=(0, dilation), dilation=(1, dilation),
                                   bias=True)
        self.bn2 = nn.BatchNorm2d(channels, eps=BN_EPS)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = functional.relu(self.conv3x1_1(x))
        y = functional.relu(self.bn1(self.conv1x3_1(y)))
        y = functional.relu(self.conv3x1_2(y))
        y = self.dropout(self.bn2(self.conv1x3_2(y)))
        return functional.relu(y + x)


class UpsamplerBlock(nn.Module):
    """(B, in, H, W) -> (B, out, 2H, 2W)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(in_channels, out_channels, 3, stride=2, padding=1, output_padding=1,
                                       bias=True)
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return functional.relu(self.bn(self.conv(x)))


class Encoder(nn.Module):
    """(B, 3, H, W) normalised image -> (B, 128, H/8, W/8) features.

    `dropout_low` applies to the five 64-channel blocks, `dropout_high` to the eight dilated 128-channel
    blocks (0.03 and 0.3 in the reference code).
    """

    def __init__(self, in_channels: int = 3, dropout_low: float = 0.03, dropout_high: float = 0.3) -> None:
        super().__init__()
        self.initial_block = DownsamplerBlock(in_channels, 16)
        layers: list[nn.Module] = [DownsamplerBlock(16, 64)]
        layers += [NonBottleneck1d(64, dropout_low, 1) for _ in range(5)]
        layers.append(DownsamplerBlock(64, 128))
        for _ in range(2):
            layers += [NonBottleneck1d(128, dropout_high, d) for d in (2, 4, 8, 16)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.initial_block(x))


class Decoder(nn.Module):
    """(B, 128, H/8, W/8) -> (B, out_channels, H, W) raw outputs (no activation)."""

    def __init__(self, out_channels: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            UpsamplerBlock(128, 64), NonBottleneck1d(64, 0.0, 1), NonBottleneck1d(64, 0.0, 1),
            UpsamplerBlock(64, 16), NonBottleneck1d(16, 0.0, 1), NonBottleneck1d(16, 0.0, 1),
        )
        self.output_conv = nn.ConvTranspose2d(16, out_channels, 2, stride=2, padding=0, output_padding=0, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_conv(self.layers(x))


class BranchedERFNet(nn.Module):
    """One shared ERFNet encoder, one decoder per entry of `branch_channels`; outputs are concatenated.

    (B, 3, H, W) -> (B, sum(branch_channels), H, W), raw (pre-activation) values.
    """

    def __init__(self, branch_channels: list[int], dropout_low: float = 0.03, dropout_high: float = 0.3) -> None:
        super().__init__()
        self.branch_channels = list(branch_channels)
        self.encoder = Encoder(3, dropout_low, dropout_high)
        self.decoders = nn.ModuleList(Decoder(c) for c in self.branch_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)
        return torch.cat([decoder(features) for decoder in self.decoders], 1)
