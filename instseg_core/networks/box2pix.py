"""Box2Pix (Uhrig et al. 2018): a GoogLeNet-v1 FCN predicting SSD boxes, per-pixel semantics and centre offsets.

Network (§III-A):
- GoogLeNet-v1 stem and inception 3a..5b (batch norm after every convolution, since we train from scratch);
  the final average pool is replaced by a 2-strided max pool, followed by inception 6a/6b (stride 64) and, after
  another 2-strided max pool, 7a/7b (stride 128), all with the parameters of 5a/5b. The "5x5" branches are real
  5x5 convolutions (the receptive fields below depend on it).
- SSD heads: 1x1 convolutions on 4e (stride 16), 5b (32), 6b (64) and 7b (128) predicting, per prior assigned
  to the layer, 4 box-corner regressions and n + 1 class logits (0 = background).
- FCN skip decoder starting at 6b: 1x1 convolutions to n + 3 channels (n + 1 semantic classes, 2 offsets),
  element-wise adds of the 1x1-projected 5b, 4e and 3b outputs, 2x deconvolutions (bilinear initialisation),
  output at stride 8; `upsample_dense` brings it to the input resolution (FCN-8s).

Input: (B, 3, H, W) float32 RGB in [0, 1] (instseg_core.base.network_input), H and W multiples of 128
(`INPUT_MULTIPLE`). Conventions: pixel (row i, column j) has its centre at (x, y) = (j + 0.5, i + 0.5); priors,
boxes, box coding and the offset scale are in instseg_core.networks.box_priors (shared with the loss and the
decoding).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import cast

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from instseg_core.base.classes import INSTANCE_CLASSES
from instseg_core.networks.box_priors import OFFSET_SCALE, PRIOR_SIZES, SSD_LAYERS, assign_priors

INPUT_MULTIPLE = 128


@dataclass
class Box2PixConfig:
    classes: tuple[str, ...] = INSTANCE_CLASSES
    prior_sizes: tuple[tuple[int, int], ...] = PRIOR_SIZES
    extra: dict = field(default_factory=dict)  # e.g. the decoding defaults stored at export

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def priors_per_layer(self) -> list[list[tuple[int, int]]]:
        return assign_priors(self.prior_sizes)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["classes"], d["prior_sizes"] = list(self.classes), [list(s) for s in self.prior_sizes]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Box2PixConfig:
        return cls(classes=tuple(d["classes"]), prior_sizes=tuple(tuple(s) for s in d["prior_sizes"]),
                   extra=dict(d.get("extra", {})))


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1) -> None:
        super().__init__(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class Inception(nn.Module):
    """GoogLeNet-v1 inception: 1x1 | 1x1 -> 3x3 | 1x1 -> 5x5 | 3x3 max pool -> 1x1, concatenated."""

    def __init__(self, cin: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, cp: int) -> None:
        super().__init__()
        self.branch1 = ConvBNReLU(cin, c1, 1)
        self.branch3 = nn.Sequential(ConvBNReLU(cin, c3r, 1), ConvBNReLU(c3r, c3, 3))
        self.branch5 = nn.Sequential(ConvBNReLU(cin, c5r, 1), ConvBNReLU(c5r, c5, 5))
        self.branch_pool = nn.Sequential(nn.MaxPool2d(3, 1, 1), ConvBNReLU(cin, cp, 1))
        self.out_channels = c1 + c3 + c5 + cp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch3(x), self.branch5(x), self.branch_pool(x)], 1)


# inception parameters (c1, c3 reduce, c3, c5 reduce, c5, pool proj) from GoogLeNet-v1 Table 1
_5A = (256, 160, 320, 32, 128, 128)
_5B = (384, 192, 384, 48, 128, 128)
_INCEPTIONS = {
    "3a": (64, 96, 128, 16, 32, 32), "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64), "4b": (160, 112, 224, 24, 64, 64), "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64), "4e": (256, 160, 320, 32, 128, 128),
    "5a": _5A, "5b": _5B, "6a": _5A, "6b": _5B, "7a": _5A, "7b": _5B,
}


def _bilinear_kernel(channels: int, size: int = 4) -> torch.Tensor:
    factor = (size + 1) // 2
    centre = factor - 0.5
    og = torch.arange(size, dtype=torch.float32)
    filt = 1 - (og - centre).abs() / factor
    kernel = torch.zeros(channels, channels, size, size)
    kernel[range(channels), range(channels)] = filt[:, None] * filt[None, :]
    return kernel


class Box2Pix(nn.Module):
    """forward(x) -> (ssd_boxes (B, P, 4), ssd_logits (B, P, n + 1), dense (B, n + 3, H/8, W/8)).

    ssd_boxes are corner regressions relative to the priors (`encode_boxes`); dense holds the
    semantic logits (channels 0..n) and the offsets / OFFSET_SCALE (channels n+1, n+2: dx, dy)."""

    def __init__(self, config: Box2PixConfig | None = None) -> None:
        super().__init__()
        self.config = config or Box2PixConfig()
        n = self.config.n_classes
        self.stem = nn.Sequential(ConvBNReLU(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1), ConvBNReLU(64, 64, 1),
                                  ConvBNReLU(64, 192, 3), nn.MaxPool2d(3, 2, 1))
        self.pool = nn.MaxPool2d(3, 2, 1)
        channels = 192
        self.inceptions = nn.ModuleDict()
        self.out_channels: dict[str, int] = {}
        for name, params in _INCEPTIONS.items():
            module = Inception(channels, *params)
            self.inceptions[name] = module
            channels = self.out_channels[name] = module.out_channels
        self.priors_per_layer = self.config.priors_per_layer()
        self.box_heads = nn.ModuleList()
        self.class_heads = nn.ModuleList()
        for name, sizes in zip(SSD_LAYERS, self.priors_per_layer, strict=True):
            anchors = max(len(sizes), 1)  # a layer without priors keeps a (unused) head so the graph is fixed
            self.box_heads.append(nn.Conv2d(self.out_channels[name], anchors * 4, 1))
            self.class_heads.append(nn.Conv2d(self.out_channels[name], anchors * (n + 1), 1))
        dense = n + 3
        self.dense_projections = nn.ModuleDict({name: nn.Conv2d(self.out_channels[name], dense, 1)
                                                for name in ("6b", "5b", "4e", "3b")})
        self.deconvs = nn.ModuleList([nn.ConvTranspose2d(dense, dense, 4, 2, 1, bias=False) for _ in range(3)])
        self._init_weights()

    def _init_weights(self) -> None:
        n = self.config.n_classes
        for module in self.class_heads:  # focal-loss prior: background probability ~0.99 at the start
            head = cast(nn.Conv2d, module)
            assert head.bias is not None  # the heads are built with a bias
            nn.init.normal_(head.weight, std=0.01)
            nn.init.zeros_(head.bias)
            with torch.no_grad():
                head.bias.view(-1, n + 1)[:, 0] = np.log(0.99 * n / 0.01)
        for module in self.box_heads:
            head = cast(nn.Conv2d, module)
            assert head.bias is not None
            nn.init.normal_(head.weight, std=0.01)
            nn.init.zeros_(head.bias)
        for module in self.deconvs:
            deconv = cast(nn.ConvTranspose2d, module)
            with torch.no_grad():
                deconv.weight.copy_(_bilinear_kernel(deconv.in_channels))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features = {}
        x = self.stem(x)
        for name, module in self.inceptions.items():
            if name in ("4a", "5a", "6a", "7a"):
                x = self.pool(x)
            x = features[name] = module(x)
        n1 = self.config.n_classes + 1
        boxes, logits = [], []
        for name, sizes, box_head, class_head in zip(SSD_LAYERS, self.priors_per_layer, self.box_heads,
                                                     self.class_heads, strict=True):
            if not sizes:
                continue
            b, _, h, w = features[name].shape
            # (B, A*4, h, w) -> (B, h, w, A, 4) -> (B, h*w*A, 4): row, column, prior order (see prior_boxes)
            boxes.append(box_head(features[name]).permute(0, 2, 3, 1).reshape(b, h * w * len(sizes), 4))
            logits.append(class_head(features[name]).permute(0, 2, 3, 1).reshape(b, h * w * len(sizes), n1))
        dense = self.dense_projections["6b"](features["6b"])
        for deconv, skip in zip(self.deconvs, ("5b", "4e", "3b"), strict=True):
            dense = deconv(dense) + self.dense_projections[skip](features[skip])
        return torch.cat(boxes, 1), torch.cat(logits, 1), dense


def upsample_dense(dense: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Stride-8 dense output -> (B, n + 3, height, width), bilinear (FCN-8s's last step)."""
    return functional.interpolate(dense, size=(height, width), mode="bilinear", align_corners=False)


class Box2PixInference(nn.Module):
    """The deployed graph: forward(x) -> (detections (1, P, 4 + n + 1), semantic (1, H, W) uint8,
    offsets (1, 2, H, W) float32 pixels).

    detections: raw corner regressions then softmax class probabilities per prior (decoding against the priors,
    NMS and the pixel-to-box assignment run in instseg_core.postprocess.box_assignment); semantic: argmax class
    (0 = background, k = classes[k - 1]); offsets: (dx, dy) from each pixel's centre to its object's box centre."""

    def __init__(self, model: Box2Pix) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        boxes, logits, dense = self.model(x)
        dense = upsample_dense(dense, x.shape[2], x.shape[3])
        n1 = self.model.config.n_classes + 1
        semantic = dense[:, :n1].argmax(1).to(torch.uint8)
        return torch.cat([boxes, logits.softmax(-1)], -1), semantic, dense[:, n1:] * OFFSET_SCALE


def model_from_checkpoint(checkpoint: dict) -> Box2Pix:
    """Box2Pix in eval mode from a checkpoint dict {'model': state_dict, 'model_config': dict}."""
    model = Box2Pix(Box2PixConfig.from_dict(checkpoint["model_config"]))
    model.load_state_dict(checkpoint["model"])
    return model.eval()
