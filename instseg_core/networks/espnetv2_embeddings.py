"""Spatial Embeddings on a real-data encoder: ESPNetv2 trained on the real Cityscapes (instseg_core.networks.espnetv2)
with a light instance head, keeping the Spatial Embeddings output contract (instseg_core.networks.spatial_embeddings).

Input: (B, 3, H, W) float32 RGB in [0, 1], H and W multiples of 16. Output, raw, (B, 2 + n_sigma + n_classes, H, W):
offsets (tanh), sigma raw values and one seed logit per class, exactly as the ERFNet version, so the clustering,
the runtime, the int8 derivation and the node are the same for both.

- **Semantic branch (frozen by default):** the ESPNetv2 segmentation network with its Cityscapes weights. Its
  softmax over the 19 train ids gives P(class | pixel) for each of our instance classes (person, rider, car,
  truck, bus, train, motorcycle, bicycle are train ids 11-18). This is the real-world knowledge: it is never trained
  on synthetic images unless `train_semantic` is set.
- **Instance head (trained):** from the encoder's 1/8 features and the decoder's 1/8 features (which carry the
  pyramid pooling's 1/16 context): a 1x1 reduction and three depth-wise separable blocks with dilations 2, 4, 8;
  upsampled to 1/4 and fused with the encoder's and decoder's 1/4 features; a 1x1 output of offsets (2), sigma
  (n_sigma) and one class-agnostic "quality" logit q, computed at 1/4 and upsampled to 1/2.
- **Seeds:** seed_k = P(k | pixel) * sigmoid(q), written as a logit. An instance can therefore only start where
  the real-data semantic branch sees its class; q learns (from synthetic objects and real photographs without any
  person or vehicle) how close a pixel is to an object's centre and where the semantic branch is wrong.
All of it is computed at 1/2 resolution and upsampled bilinearly (corners aligned) to the input.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn
from torch.nn import functional

from instseg_core.networks.espnetv2 import (
    CITYSCAPES_TRAIN_IDS,
    ESPNETV2_CHANNELS,
    ESPNetv2Segmentation,
    normalise_unit_rgb,
)

SEMANTIC_CLASSES = 19  # Cityscapes train ids; the zoo's 20th output (background) is left out of the softmax
PROBABILITY_FLOOR = 1e-6
QUALITY_INIT = 2.0  # sigmoid(2) = 0.88: at the start the seeds are nearly the semantic probabilities


class SeparableBlock(nn.Module):
    """Depth-wise 3x3 (dilated) + point-wise 1x1 convolution, batch norm, ReLU, residual when shapes allow."""

    def __init__(self, in_channels: int, out_channels: int, dilation: int = 1) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, 3, padding=dilation, dilation=dilation,
                                   groups=in_channels, bias=False)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.residual = in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.pointwise(self.depthwise(x)))
        return functional.relu(y + x if self.residual else y)


def _reduction(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU())


class ESPNetv2Embeddings(nn.Module):
    """(B, 3, H, W) RGB in [0, 1] -> (B, 2 + n_sigma + n_classes, H, W) raw Spatial Embeddings outputs."""

    def __init__(self, classes: Sequence[str], n_sigma: int = 2, scale: float = 2.0, head_channels: int = 64,
                 train_semantic: bool = False) -> None:
        super().__init__()
        unknown = [c for c in classes if c not in CITYSCAPES_TRAIN_IDS]
        if unknown:
            raise ValueError(f"classes {unknown} have no Cityscapes train id for the ESPNetv2 semantic branch")
        self.class_channels = [CITYSCAPES_TRAIN_IDS[c] for c in classes]
        self.n_sigma = n_sigma
        self.semantic = ESPNetv2Segmentation(scale)
        self.train_semantic = train_semantic
        encoder, decoder = ESPNETV2_CHANNELS[scale], self.semantic.decoder_planes
        half = head_channels // 2
        self.reduce_8 = _reduction(encoder[2] + decoder[0], head_channels)
        self.context_8 = nn.Sequential(*(SeparableBlock(head_channels, head_channels, d) for d in (2, 4, 8)))
        self.reduce_4 = _reduction(encoder[1] + decoder[1], half)
        self.fuse_4 = SeparableBlock(head_channels + half, half)
        self.output = nn.Conv2d(half, 2 + n_sigma + 1, 1)
        self.set_semantic_trainable(train_semantic)
        self.init_output()

    def init_output(self) -> None:
        """Zero offsets, sigma raw 1 (as the ERFNet version: nothing clusters until learned), quality QUALITY_INIT."""
        with torch.no_grad():
            self.output.weight.zero_()
            bias = self.output.bias
            assert bias is not None
            bias.zero_()
            bias[2:2 + self.n_sigma].fill_(1.0)
            bias[2 + self.n_sigma].fill_(QUALITY_INIT)

    def set_semantic_trainable(self, trainable: bool) -> None:
        self.train_semantic = trainable
        for parameter in self.semantic.parameters():
            parameter.requires_grad_(trainable)
        self.train(self.training)

    def train(self, mode: bool = True) -> ESPNetv2Embeddings:
        super().train(mode)
        if not self.train_semantic:
            self.semantic.eval()  # frozen: its batch-norm statistics stay those of the real data
        return self

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters outside the semantic branch."""
        for name, parameter in self.named_parameters():
            if not name.startswith("semantic."):
                yield parameter

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        height, width = rgb.shape[2], rgb.shape[3]
        with torch.set_grad_enabled(self.train_semantic and torch.is_grad_enabled()):
            encoder, decoder, logits = self.semantic.decode_features(normalise_unit_rgb(rgb))
        features = self.context_8(self.reduce_8(torch.cat([encoder[2], decoder[0]], 1)))
        features = functional.interpolate(features, size=(encoder[1].shape[2], encoder[1].shape[3]),
                                          mode="bilinear", align_corners=False)
        features = self.fuse_4(torch.cat([features, self.reduce_4(torch.cat([encoder[1], decoder[1]], 1))], 1))
        instance = functional.interpolate(self.output(features), size=(logits.shape[2], logits.shape[3]),
                                          mode="bilinear", align_corners=False)
        probabilities = torch.softmax(logits[:, :SEMANTIC_CLASSES], 1)[:, self.class_channels]
        quality = instance[:, 2 + self.n_sigma:]
        seeds = (probabilities * torch.sigmoid(quality)).clamp(PROBABILITY_FLOOR, 1.0 - PROBABILITY_FLOOR)
        raw = torch.cat([instance[:, :2 + self.n_sigma], torch.log(seeds) - torch.log1p(-seeds)], 1)
        return functional.interpolate(raw, size=(height, width), mode="bilinear", align_corners=True)
