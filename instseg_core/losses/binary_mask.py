"""Losses for binary (one object per crop) segmentation, on soft masks (extreme-point paper §3).

All take `logits` (B, 1, H, W) and `target` (B, 1, H, W) in {0, 1}, and return a scalar tensor (mean
over the batch). Soft set operations on probabilities p = sigmoid(logits):
|y ∩ y'| = sum p t, |y ∪ y'| = sum (p + t - p t).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812

EPS = 1.0


def _soft_sets(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    probability = torch.sigmoid(logits).flatten(1)
    target = target.flatten(1).to(probability.dtype)
    intersection = (probability * target).sum(1)
    union = (probability + target - probability * target).sum(1)
    return intersection, union, target.sum(1)


def average_distance_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The paper's Eq. 2: Δd = (|y ∪ y'| - |y ∩ y'|) / sqrt(A_g), A_g = ground-truth area (pixels).

    Approximates the mean boundary distance (the line integral of the distance transform over the
    boundary divided by its length, with the length approximated by sqrt(A_g)).
    """
    intersection, union, area = _soft_sets(logits, target)
    return ((union - intersection) / torch.sqrt(area + EPS)).mean()


def soft_iou_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Differentiable IoU loss 1 - |y ∩ y'| / |y ∪ y'| (Kirillov et al.)."""
    intersection, union, _ = _soft_sets(logits, target)
    return (1.0 - (intersection + EPS) / (union + EPS)).mean()


def iou_bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft IoU loss plus binary cross-entropy (Iglovikov et al.)."""
    return soft_iou_loss(logits, target) + F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype))


LOSSES = {"average_distance": average_distance_loss, "iou": soft_iou_loss, "iou_bce": iou_bce_loss}
