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

Input: (B, 3, H, W) float32 RGB in [0, 1] (as the reference code: image / 255), H and W multiples of 8.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from instseg_core.models.erfnet import BranchedERFNet

PIXEL_SPACING = 1.0 / 1024.0
SIGMA_SCALE = 10.0  # bandwidth = exp(SIGMA_SCALE * sigma_raw), as in the reference code
CITYSCAPES_INSTANCE_CLASSES = ("person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")


@dataclass
class SpatialEmbeddingsConfig:
    """What defines a Spatial Embeddings network (stored in checkpoints and ONNX manifests)."""

    classes: tuple[str, ...] = CITYSCAPES_INSTANCE_CLASSES
    n_sigma: int = 2
    dropout_low: float = 0.03
    dropout_high: float = 0.3
    extra: dict = field(default_factory=dict)

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
        self.network = BranchedERFNet([2 + self.config.n_sigma, len(self.config.classes)],
                                      self.config.dropout_low, self.config.dropout_high)
        self.init_output()

    @property
    def n_sigma(self) -> int:
        return self.config.n_sigma

    @property
    def n_classes(self) -> int:
        return len(self.config.classes)

    def init_output(self) -> None:
        """Reference initialisation: zero offsets (every pixel is its own embedding) and sigma raw = 1
        (bandwidth e^10, a margin of ~0.02 px: nothing clusters until the network learns to)."""
        conv = self.network.decoders[0].output_conv
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


def preprocess(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (1, 3, H, W) float32 in [0, 1], the network input."""
    return np.ascontiguousarray(rgb.transpose(2, 0, 1)[None], dtype=np.float32) * np.float32(1 / 255)


def margin_to_sigma_raw(margin_px: float) -> float:
    """The sigma raw value whose clustering margin (phi = 0.5, Eq. 6) is `margin_px` input pixels."""
    margin = margin_px * PIXEL_SPACING
    return float(np.log(np.log(2.0) / margin**2) / SIGMA_SCALE)


def ideal_output(instances: np.ndarray, labels: np.ndarray, n_classes: int, n_sigma: int = 2, *,
                 margin_px: float = 8.0, noise_px: float = 0.0, rng: np.random.Generator | None = None
                 ) -> np.ndarray:
    """What a perfect network would output for a labelled image, for tests and benchmarks.

    instances (H, W) int, 0 = background; labels (H, W) class index + 1 on instance pixels. Every instance
    pixel's offset points at its instance's centroid (plus Gaussian noise of `noise_px` pixels), sigma
    gives a margin of `margin_px` pixels, and the seediness of the instance's class is what training
    regresses it to, phi of the pixel's embedding (Eq. 5/10: ~1 on the centroid, 0.5 at the margin;
    0.0025 elsewhere). Returns (2 + n_sigma + n_classes, H, W) float32 raw.
    """
    rng = rng or np.random.default_rng(0)
    height, width = instances.shape
    raw = np.zeros((2 + n_sigma + n_classes, height, width), np.float32)
    raw[2 + n_sigma:] = -6.0
    raw[2:2 + n_sigma] = margin_to_sigma_raw(margin_px)
    count = int(instances.max())
    if count == 0:
        return raw
    rows, cols = np.nonzero(instances)
    index = instances[rows, cols] - 1
    area = np.maximum(np.bincount(index, minlength=count), 1)
    center_x = np.bincount(index, cols, count) / area
    center_y = np.bincount(index, rows, count) / area
    noise_x, noise_y = rng.normal(0, noise_px, cols.size), rng.normal(0, noise_px, rows.size)
    offset_x = (center_x[index] - cols + noise_x) * PIXEL_SPACING
    offset_y = (center_y[index] - rows + noise_y) * PIXEL_SPACING
    raw[0, rows, cols] = np.arctanh(np.clip(offset_x, -0.999, 0.999))
    raw[1, rows, cols] = np.arctanh(np.clip(offset_y, -0.999, 0.999))
    distance = np.hypot(noise_x, noise_y) / margin_px  # of the embedding from the centre, in margins
    phi = np.clip(np.exp2(-distance**2), 0.0025, 0.9975)  # Eq. 5 for this margin: 0.5 at the margin
    raw[2 + n_sigma + labels[rows, cols].astype(np.int64) - 1, rows, cols] = np.log(phi / (1 - phi))
    return raw
