"""Spatial Embeddings (Neven et al., CVPR 2019): a two-branch ERFNet predicting offsets, sigma and seeds.

Network output, raw (pre-activation), shape (B, 2 + n_sigma + n_classes, H, W) float32:

- channels 0-1: offset x, y; the offset is tanh(raw) in [-1, 1] embedding units;
- channels 2 .. 2+n_sigma: sigma raw value s; the clustering bandwidth is exp(10 s) = 1 / (2 sigma^2)
  (one channel: circular margin; two channels: sigma_x, sigma_y, elliptical margin);
- then one seed logit per class; the seediness is sigmoid(raw).

Coordinate convention (ours, for every input size): pixel (row r, col c) of the network input has the
coordinate (x, y) = (c, r) * PIXEL_SPACING with PIXEL_SPACING = 1/1024, i.e. embedding units are
"1024 input pixels". The reference code stretches a fixed [0, 2] x [0, 1] grid over a 2048 x 1024 input;
that equals ours at 2048 x 1024 and keeps the same spacing at any other size, so offsets mean the same
distance in pixels everywhere and an offset can reach at most 1024 pixels. The embedding of a pixel is
e = tanh(offset) + coordinate.

Input: (B, 3, H, W) float32 RGB in [0, 1] (as the reference code: image / 255), H and W multiples of 8 (16 for
the ESPNetv2 backbone, instseg_core.networks.espnetv2_embeddings, which has the same outputs).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import cast

import torch
from torch import nn

from instseg_core.base.classes import INSTANCE_CLASSES
from instseg_core.networks.embedding_coding import PIXEL_SPACING
from instseg_core.networks.erfnet import BranchedERFNet
from instseg_core.networks.espnetv2_embeddings import ESPNetv2Embeddings


@dataclass
class SpatialEmbeddingsConfig:
    """What defines a Spatial Embeddings network (stored in checkpoints and ONNX manifests)."""

    classes: tuple[str, ...] = INSTANCE_CLASSES
    n_sigma: int = 2
    dropout_low: float = 0.03
    dropout_high: float = 0.3
    extra: dict = field(default_factory=dict)
    backbone: str = "erfnet"  # 'erfnet' (the paper's) or 'espnetv2' (real-data encoder, espnetv2_embeddings)
    espnetv2_scale: float = 2.0
    train_semantic: bool = False  # espnetv2: train the semantic branch too (default: frozen)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["classes"] = list(self.classes)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SpatialEmbeddingsConfig:
        d = dict(d)
        d["classes"] = tuple(d["classes"])
        return cls(**d)


class SpatialEmbeddings(nn.Module):
    """(B, 3, H, W) RGB in [0, 1] -> (B, 2 + n_sigma + n_classes, H, W) raw outputs (see module docstring)."""

    def __init__(self, config: SpatialEmbeddingsConfig | None = None) -> None:
        super().__init__()
        self.config = config or SpatialEmbeddingsConfig()
        if self.config.n_sigma not in (1, 2):
            raise ValueError(f"n_sigma must be 1 or 2, got {self.config.n_sigma}")
        self.network: nn.Module
        if self.config.backbone == "espnetv2":
            self.network = ESPNetv2Embeddings(self.config.classes, self.config.n_sigma, self.config.espnetv2_scale,
                                              train_semantic=self.config.train_semantic)
        elif self.config.backbone == "erfnet":
            self.network = BranchedERFNet([2 + self.config.n_sigma, len(self.config.classes)],
                                          self.config.dropout_low, self.config.dropout_high)
            self.init_output()
        else:
            raise ValueError(f"unknown backbone {self.config.backbone!r}; use 'erfnet' or 'espnetv2'")

    @property
    def n_sigma(self) -> int:
        return self.config.n_sigma

    @property
    def n_classes(self) -> int:
        return len(self.config.classes)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the optimiser updates: everything, except a frozen ESPNetv2 semantic branch."""
        return [p for p in self.parameters() if p.requires_grad]

    def init_output(self) -> None:
        """ERFNet version: reference initialisation: zero offsets (every pixel is its own embedding) and sigma raw = 1
        (bandwidth e^10, a margin of ~0.02 px: nothing clusters until the network learns to)."""
        conv = cast(nn.Conv2d, cast(BranchedERFNet, self.network).decoders[0].output_conv)
        assert conv.bias is not None  # ERFNet's output convolution has a bias
        with torch.no_grad():
            conv.weight[:, 0:2].fill_(0)
            conv.bias[0:2].fill_(0)
            conv.weight[:, 2:2 + self.n_sigma].fill_(0)
            conv.bias[2:2 + self.n_sigma].fill_(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)


def model_from_checkpoint(checkpoint: dict) -> SpatialEmbeddings:
    """The network of a training checkpoint or shipped .pt ({'model_config', 'model': state dict}), in eval mode."""
    model = SpatialEmbeddings(SpatialEmbeddingsConfig.from_dict(checkpoint["model_config"]))
    model.load_state_dict(checkpoint["model"])
    return model.eval()


def coordinate_map(height: int, width: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(2, H, W) float32: x = col * PIXEL_SPACING, y = row * PIXEL_SPACING."""
    xs = torch.arange(width, dtype=torch.float32, device=device) * PIXEL_SPACING
    ys = torch.arange(height, dtype=torch.float32, device=device) * PIXEL_SPACING
    return torch.stack([xs[None, :].expand(height, width), ys[:, None].expand(height, width)], 0)
