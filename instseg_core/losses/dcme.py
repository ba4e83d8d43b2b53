"""DCME targets and loss (Watanabe and Wolf, §III-§IV).

Targets of one labelled image (`dcme_targets`), from instances (H, W) int (0 = background, k = object k) and labels
(H, W) class index + 1 on object pixels:
- vectors (2, H, W) float32: (dx, dy) from each object pixel to its object's centre of mass (CM), in pixels; the
  CM is the mean of the object's pixel positions, all its parts together, so an object split by an occluder keeps
  one CM (the encoding's point); 0 elsewhere. The CM pixel itself gets (0, 0) like the sub-pixel rest of it;
  whether a pixel is an object pixel at all is the foreground target's job;
- foreground (H, W) float32: 1 on object pixels, 0 on background, `IGNORE` on ignored pixels (group regions);
- grid (H/Gs, W/Gs) int64: the class of each Gs x Gs block (Eq. 2/3): 0 = background, else class index + 1 of the
  highest-priority class present in the block (`CLASS_PRIORITY`, rare classes first, as the paper's priority
  list); `IGNORE_BLOCK` for blocks holding only ignored pixels.

Loss (`DcmeLoss`): the decoder's vectors, its foreground logit and the encoder's class grid.
- vectors, Eq. 4-6: with `independent` (the paper's fix) every output pixel of both channels is an independent
  output with its own error, N = 2 x (supervised pixels) (Eq. 5 counts all pixels; background has no vector
  here); without it (the Caffe Euclidean loss the paper replaced) every output gets the mean error. With `clip`
  the error e is replaced by f(e) = A (1 / (1 + exp(-e)) - 0.5) before back-propagation (Eq. 6; amplitude A/2,
  slope 1 at 0); the reported loss uses the unclipped error, as in the paper. The paper ran A = 4 at 512 x 1024
  ("a clip amplitude of two").
- foreground: binary cross-entropy; classes: cross-entropy over the grid blocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from instseg_core.networks.dcme import CLASS_PRIORITY, GRID_SIZE

IGNORE = 255.0  # foreground target of ignored pixels
IGNORE_BLOCK = 255  # grid target of blocks with only ignored pixels


@dataclass
class DcmeTargets:
    """See the module docstring; numpy arrays of one image."""

    vectors: np.ndarray
    foreground: np.ndarray
    grid: np.ndarray


def centres_of_mass(instances: np.ndarray) -> np.ndarray:
    """(K + 1, 2) float64 (x, y) centre of mass of objects 1..K in pixel-centre coordinates (row 0 unused);
    K = instances.max()."""
    count = int(instances.max()) if instances.size else 0
    rows, cols = np.nonzero(instances)
    ids = instances[rows, cols]
    area = np.maximum(np.bincount(ids, minlength=count + 1), 1)
    return np.stack([np.bincount(ids, cols + 0.5, count + 1) / area, np.bincount(ids, rows + 0.5, count + 1) / area], 1)


def block_classes(labels: np.ndarray, ignore: np.ndarray, classes: Sequence[str], grid: int = GRID_SIZE,
                  priority: Sequence[str] = CLASS_PRIORITY) -> np.ndarray:
    """(H/grid, W/grid) int64 block classes (Eq. 2/3): 0 = background, else class index + 1 of the first class of
    `priority` present in the block (classes missing from `priority` rank after it, in `classes` order);
    IGNORE_BLOCK where the block has only ignored pixels. H and W must be multiples of `grid`."""
    height, width = labels.shape
    if height % grid or width % grid:
        raise ValueError(f"image {width}x{height} is not a multiple of the grid size {grid}")
    blocks = (height // grid, grid, width // grid, grid)
    order = [c for c in priority if c in classes] + [c for c in classes if c not in priority]
    out = np.zeros((height // grid, width // grid), np.int64)
    ignored = (ignore & (labels == 0)).reshape(blocks).all((1, 3))
    out[ignored] = IGNORE_BLOCK
    for name in reversed(order):  # the highest priority is painted last
        index = classes.index(name) + 1
        out[(labels == index).reshape(blocks).any((1, 3))] = index
    return out


def dcme_targets(instances: np.ndarray, labels: np.ndarray, ignore: np.ndarray, classes: Sequence[str],
                 grid: int = GRID_SIZE, priority: Sequence[str] = CLASS_PRIORITY) -> DcmeTargets:
    """The targets of one image; see the module docstring."""
    height, width = instances.shape
    centres = centres_of_mass(instances)
    vectors = np.zeros((2, height, width), np.float32)
    rows, cols = np.nonzero(instances)
    ids = instances[rows, cols]
    vectors[0, rows, cols] = centres[ids, 0] - (cols + 0.5)
    vectors[1, rows, cols] = centres[ids, 1] - (rows + 0.5)
    foreground = (instances > 0).astype(np.float32)
    foreground[ignore & (instances == 0)] = IGNORE
    return DcmeTargets(vectors, foreground, block_classes(labels, ignore, classes, grid, priority))


def translated_logistic(error: torch.Tensor, amplitude: float) -> torch.Tensor:
    """Eq. 6: f(x) = A (1 / (1 + e^-x) - 0.5): odd, slope 1 at 0 for A = 4, bounded by A / 2."""
    return amplitude * (torch.sigmoid(error) - 0.5)


class _VectorRegression(torch.autograd.Function):
    """Forward: the unclipped loss sum(e^2) / (2 N) over the supervised outputs (Eq. 4, N of Eq. 5). Backward:
    the gradient each output gets is its own error (independent) or the mean error (shared), through Eq. 6 when
    clipping, divided by N."""

    @staticmethod
    def forward(ctx: Any, prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, amplitude: float,
                clip: bool, independent: bool) -> torch.Tensor:
        error = (prediction - target) * mask
        count = mask.sum().clamp(min=1)
        ctx.save_for_backward(error, mask, count)
        ctx.amplitude, ctx.clip, ctx.independent = amplitude, clip, independent
        return (error ** 2).sum() / (2 * count)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple:
        error, mask, count = ctx.saved_tensors
        if not ctx.independent:
            error = (error.sum() / count) * mask
        if ctx.clip:
            error = translated_logistic(error, ctx.amplitude) * mask
        return grad_output * error / count, None, None, None, None, None


def vector_loss(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, amplitude: float = 4.0,
                clip: bool = True, independent: bool = True) -> torch.Tensor:
    """The decoder's vector loss: prediction and target (B, 2, H, W) in pixels, mask (B, 1, H, W) float 0/1 (the
    supervised pixels). Returns the unclipped loss; its gradient is clipped by Eq. 6 when `clip`."""
    mask = mask.expand_as(prediction).to(prediction.dtype)
    return _VectorRegression.apply(prediction, target, mask, amplitude, clip, independent)


@dataclass
class DcmeLossConfig:
    amplitude: float = 4.0  # A of Eq. 6
    clip: bool = True
    independent: bool = True
    foreground_weight: float = 1.0
    class_weight: float = 1.0
    vector_weight: float = 1.0


class DcmeLoss(nn.Module):
    """(dense (B, 3, H, W) raw, classes (B, n + 1, H/Gs, W/Gs) logits), targets -> (total, parts). The raw vector
    channels are scaled by `vector_scale` into pixels before the loss (instseg_core.networks.dcme), and the vector
    term enters the total divided by `vector_scale`: its gradient with respect to the network's raw output is then
    f(e) / N, as in the paper, whose network outputs pixels. Without that division the x16 output scaling made
    the vector gradients drown the foreground and class terms in the shared decoder (a first training run learned
    only the foreground prior: BCE flat at 0.45, foreground IoU < 0.2 after 10 epochs). `parts` report the vector
    loss in pixels squared, unscaled and unclipped."""

    def __init__(self, vector_scale: float, config: DcmeLossConfig | None = None) -> None:
        super().__init__()
        self.vector_scale = vector_scale
        self.config = config or DcmeLossConfig()

    def forward(self, outputs: tuple[torch.Tensor, torch.Tensor], targets: list[DcmeTargets]
                ) -> tuple[torch.Tensor, dict[str, float]]:
        dense, class_logits = outputs
        device = dense.device
        vectors = torch.from_numpy(np.stack([t.vectors for t in targets])).to(device)
        foreground = torch.from_numpy(np.stack([t.foreground for t in targets])).to(device)[:, None]
        grid = torch.from_numpy(np.stack([t.grid for t in targets])).to(device)
        cfg = self.config
        dense = dense.float()
        loss_vectors = vector_loss(dense[:, :2] * self.vector_scale, vectors, (foreground == 1).float(),
                                   cfg.amplitude, cfg.clip, cfg.independent)
        valid = foreground != IGNORE
        loss_foreground = functional.binary_cross_entropy_with_logits(dense[:, 2:3][valid], foreground[valid])
        loss_classes = functional.cross_entropy(class_logits.float(), grid, ignore_index=IGNORE_BLOCK)
        total = cfg.vector_weight * loss_vectors / self.vector_scale + cfg.foreground_weight * loss_foreground \
            + cfg.class_weight * loss_classes
        return total, {"vectors": loss_vectors.item(), "foreground": loss_foreground.item(),
                       "classes": loss_classes.item()}
