"""The extreme-point U-Net of "Binary instance segmentation with extreme points on CPU" (paper §2).

Architecture: U-Net with base width f = 16 and five levels of f, 2f, 4f, 8f, 16f channels; each
level is two 3x3 convolutions with batch norm and ReLU. Max pooling takes 128 -> 64 -> 32 -> 16 -> 8,
and 2x2 transposed convolutions bring it back up, concatenated with the encoder's skip features at each
level. A 1x1 convolution gives one output channel at 128 x 128.

Inputs: (B, C, 128, 128) float32. C = 4 for the extreme-point model (normalised RGB + the
extreme-point channel, see instseg_core.annotate.encoding) or 3 for the paper's box-only baseline
(normalised RGB of the same crop). `forward` returns logits (B, 1, 128, 128); `SigmoidOutput` wraps a
model for export so that the ONNX file outputs foreground probabilities in [0, 1].
"""

from __future__ import annotations

from copy import deepcopy as copy_module
from typing import cast

import torch
from torch import nn

INPUT_SIZE = 128
BASE_WIDTH = 16
LEVELS = 5


class DoubleConv(nn.Sequential):
    """(conv 3x3 -> batch norm -> ReLU) x 2; keeps the spatial size."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class ExtremeUNet(nn.Module):
    """U-Net (f=16, 5 levels) for binary segmentation of one object crop; see the module docstring."""

    def __init__(self, in_channels: int = 4, base_width: int = BASE_WIDTH, levels: int = LEVELS) -> None:
        super().__init__()
        widths = [base_width * 2**level for level in range(levels)]
        self.in_channels = in_channels
        self.encoders = nn.ModuleList([DoubleConv(in_channels, widths[0])])
        self.encoders.extend(DoubleConv(widths[i - 1], widths[i]) for i in range(1, levels))
        self.pool = nn.MaxPool2d(2)
        self.upsamplers = nn.ModuleList(
            nn.ConvTranspose2d(widths[i], widths[i - 1], 2, stride=2) for i in range(levels - 1, 0, -1)
        )
        self.decoders = nn.ModuleList(DoubleConv(2 * widths[i - 1], widths[i - 1]) for i in range(levels - 1, 0, -1))
        self.head = nn.Conv2d(widths[0], 1, 1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) float32, H and W divisible by 16 -> (B, 1, H, W) logits."""
        return self.decode(self.encode(x))

    def encode(self, x: torch.Tensor, added: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """The encoder's features at strides 1, 2, 4, 8 and 16; `added[i]`, when given, is added to the pooled
        input of level i + 1 (same shape: (B, widths[i], H / 2**(i + 1), W / 2**(i + 1)))."""
        skips = []
        for index, encoder in enumerate(self.encoders):
            if index == 0:
                x = encoder(x)
            else:
                x = self.pool(x)
                x = encoder(x if added is None else x + added[index - 1])
            skips.append(x)
        return skips

    def decode(self, skips: list[torch.Tensor]) -> torch.Tensor:
        """`encode`'s features -> (B, 1, H, W) logits."""
        x = skips[-1]
        for upsample, decoder, skip in zip(self.upsamplers, self.decoders, reversed(skips[:-1]), strict=True):
            x = decoder(torch.cat([upsample(x), skip], dim=1))
        return self.head(x)


class PixelShuffleUpsample(nn.Module):
    """A 2x2, stride-2 transposed convolution rewritten as a 1x1 convolution to 4 * C_out channels followed
    by a pixel shuffle (ONNX DepthToSpace, mode CRD); the two are equal up to float rounding.

    Why: ONNX Runtime has no int8 kernel for ConvTranspose, so in the quantised model each one ran in fp32
    between a dequantise and a quantise (with layout transposes around them); a 1x1 convolution is quantised
    like every other convolution. (B, C_in, H, W) -> (B, C_out, 2H, 2W).
    """

    def __init__(self, transposed: nn.ConvTranspose2d) -> None:
        super().__init__()
        if transposed.kernel_size != (2, 2) or transposed.stride != (2, 2) or transposed.padding != (0, 0):
            raise ValueError("only 2x2 stride-2 transposed convolutions without padding can be rewritten")
        in_channels, out_channels = transposed.in_channels, transposed.out_channels
        self.conv = nn.Conv2d(in_channels, 4 * out_channels, 1, bias=transposed.bias is not None)
        with torch.no_grad():
            # ConvTranspose weight (C_in, C_out, ky, kx) -> conv channel c_out * 4 + ky * 2 + kx, as
            # pixel_shuffle reads it: out[c, 2y + ky, 2x + kx] = in[c * 4 + ky * 2 + kx, y, x].
            weight = transposed.weight.permute(1, 2, 3, 0).reshape(4 * out_channels, in_channels, 1, 1)
            self.conv.weight.copy_(weight)
            if transposed.bias is not None and self.conv.bias is not None:
                self.conv.bias.copy_(transposed.bias.repeat_interleave(4))
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.conv(x))


def deployable(model: nn.Module) -> nn.Module:
    """A copy of `model` for export, computing the same function: the transposed convolutions in its
    `upsamplers` (ExtremeUNet, extreme_efficientnet.ExtremeEfficientNetUNet) become PixelShuffleUpsample (see
    there). The training checkpoints keep the ConvTranspose2d layout."""
    copy = copy_module(model).eval()
    copy.upsamplers = nn.ModuleList(PixelShuffleUpsample(cast(nn.ConvTranspose2d, upsample))
                                    for upsample in cast(nn.ModuleList, model.upsamplers))
    return copy


class SigmoidOutput(nn.Module):
    """Wraps a logits model so that it returns probabilities (used for ONNX export)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(x))


def box_only_unet() -> ExtremeUNet:
    """The paper's baseline: the same U-Net on the RGB crop alone (the box is all it is given)."""
    return ExtremeUNet(in_channels=3)
