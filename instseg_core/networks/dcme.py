"""DCME (Watanabe and Wolf): one encoder-decoder whose encoder classifies grid blocks and whose decoder points every
pixel of an object to the object's centre of mass.

Structure (the paper's, §III-§IV): the encoder output is the class grid, grid size Gs = 2^n = 16 (Eq. 1): logits
for background + n classes per 16 x 16 block of the input (Eq. 2); the decoder output is the vector field at the
input's resolution. The paper's network is DeepLabv3+ (atrous convolution, ASPP) with an ImageNet VGG encoder and
deconvolution upsampling. No ImageNet weights can be had here and the network trains from scratch on 2 CPU cores,
so the encoder is built from ERFNet's blocks (instseg_core.networks.erfnet: factorised, dilated = atrous residual
blocks, the real-time encoder the Spatial Embeddings model already uses), extended to stride 16 with an ASPP
(1x1, three dilated 3x3 and image pooling) in DeepLabv3+'s place; the decoder is DeepLabv3+'s: the ASPP features
brought to stride 4 by deconvolutions, joined with the encoder's stride-4 features, refined, and a last
deconvolution pair to the full resolution.

Decoder output, 3 channels (B, 3, H, W):
- 0, 1: (dx, dy) from the pixel's centre to its object's centre of mass, in input pixels; the raw channels are
  scaled by `vector_scale` (the network regresses values of order 1);
- 2: foreground logit. The paper does not say how background is told apart from objects: a zero vector means both
  "background" and "the centre of mass itself". This channel decides it (one more output channel of the same
  decoder, no separate network); the vectors are supervised on object pixels only.
Encoder output: (B, n + 1, H/16, W/16) class logits, 0 = background.

Input: (B, 3, H, W) float32 RGB in [0, 1] (instseg_core.base.network_input), H and W multiples of 16.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.nn import functional

from instseg_core.base.classes import INSTANCE_CLASSES
from instseg_core.networks.erfnet import BN_EPS, DownsamplerBlock, NonBottleneck1d, UpsamplerBlock

GRID_SIZE = 16  # Gs = 2^4: four stride-2 stages
INPUT_MULTIPLE = GRID_SIZE
# Cityscapes' instance classes from the fewest instances to the most (the paper's Table III counts): a grid block
# holding pixels of several classes takes the first of this list (the paper's priority list, rare classes first).
CLASS_PRIORITY = ("train", "truck", "bus", "motorcycle", "rider", "bicycle", "person", "car")


@dataclass
class DcmeConfig:
    """What defines a DCME network (stored in checkpoints and ONNX manifests)."""

    classes: tuple[str, ...] = INSTANCE_CLASSES
    vector_scale: float = 16.0  # pixels per unit of the raw vector channels
    dropout: float = 0.1
    extra: dict = field(default_factory=dict)  # e.g. the decoding defaults stored at export

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["classes"] = list(self.classes)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> DcmeConfig:
        d = dict(d)
        d["classes"] = tuple(d["classes"])
        return cls(**d)


def _conv_bn_relu(cin: int, cout: int, kernel: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=dilation * (kernel // 2), dilation=dilation,
                                   bias=False), nn.BatchNorm2d(cout, eps=BN_EPS), nn.ReLU(inplace=True))


class Aspp(nn.Module):
    """Atrous spatial pyramid pooling (DeepLabv3): 1x1, three dilated 3x3 and global pooling, concatenated and
    projected; (B, cin, h, w) -> (B, cout, h, w). The pooled branch has no batch norm (one value per channel and
    image: batch norm cannot train on it with a batch of one)."""

    def __init__(self, cin: int, cout: int, dilations: tuple[int, ...] = (2, 4, 6)) -> None:
        super().__init__()
        self.branches = nn.ModuleList([_conv_bn_relu(cin, cout)] + [_conv_bn_relu(cin, cout, 3, d) for d in dilations])
        self.pooled = nn.Sequential(nn.Conv2d(cin, cout, 1), nn.ReLU(inplace=True))
        self.project = _conv_bn_relu(cout * (len(dilations) + 2), cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pooled(x.mean((2, 3), keepdim=True)).expand(-1, -1, x.shape[2], x.shape[3])
        return self.project(torch.cat([branch(x) for branch in self.branches] + [pooled], 1))


class Dcme(nn.Module):
    """(B, 3, H, W) RGB in [0, 1] -> (dense (B, 3, H, W): raw dx, dy, foreground logit; classes (B, n + 1, H/16,
    W/16) logits). See the module docstring."""

    def __init__(self, config: DcmeConfig | None = None) -> None:
        super().__init__()
        self.config = config or DcmeConfig()
        drop = self.config.dropout
        self.stem = nn.Sequential(DownsamplerBlock(3, 16), DownsamplerBlock(16, 64),
                                  *[NonBottleneck1d(64, drop / 3, 1) for _ in range(4)])  # stride 4
        self.middle = nn.Sequential(DownsamplerBlock(64, 128),
                                    *[NonBottleneck1d(128, drop, d) for d in (1, 2, 4)])  # stride 8
        self.deep = nn.Sequential(DownsamplerBlock(128, 160),
                                  *[NonBottleneck1d(160, drop, d) for d in (2, 4, 8)])  # stride 16
        self.aspp = Aspp(160, 96)
        self.class_head = nn.Conv2d(96, self.config.n_classes + 1, 1)
        self.up = nn.Sequential(UpsamplerBlock(96, 64), UpsamplerBlock(64, 64))  # stride 16 -> 4, deconvolutions
        self.skip = _conv_bn_relu(64, 32)
        self.refine = nn.Sequential(_conv_bn_relu(96, 64, 3), NonBottleneck1d(64, 0.0, 1))
        self.to_full = nn.Sequential(UpsamplerBlock(64, 16), NonBottleneck1d(16, 0.0, 1))  # stride 2
        self.output_conv = nn.ConvTranspose2d(16, 3, 2, stride=2)  # full resolution
        bias = self.output_conv.bias
        assert bias is not None
        with torch.no_grad():  # start with zero vectors and a background-leaning foreground logit
            self.output_conv.weight.mul_(0.1)
            bias.copy_(torch.tensor([0.0, 0.0, -2.0]))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low = self.stem(x)
        features = self.aspp(self.deep(self.middle(low)))
        classes = self.class_head(features)
        up = self.up(features)
        dense = self.refine(torch.cat([up, self.skip(low)], 1))
        return self.output_conv(self.to_full(dense)), classes


class DcmeInference(nn.Module):
    """The deployed graph: forward(x) -> (dense (1, 3, H, W) float32: dx, dy in input pixels and the foreground
    probability; classes (1, n + 1, H/16, W/16) float32 class probabilities per grid block, 0 = background).
    Decoding (voting for centres, grouping, block classes) runs in instseg_core.postprocess.dcme_voting."""

    def __init__(self, model: Dcme) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dense, classes = self.model(x)
        vectors = dense[:, :2] * self.model.config.vector_scale
        return torch.cat([vectors, torch.sigmoid(dense[:, 2:3])], 1), functional.softmax(classes, 1)


def model_from_checkpoint(checkpoint: dict) -> Dcme:
    """DCME in eval mode from a checkpoint dict {'model': state_dict, 'model_config': dict}."""
    model = Dcme(DcmeConfig.from_dict(checkpoint["model_config"]))
    model.load_state_dict(checkpoint["model"])
    return model.eval()
