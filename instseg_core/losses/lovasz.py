"""Lovasz hinge (Berman et al., CVPR 2018; Yu & Blaschko, ICML 2015): a convex surrogate of 1 - IoU."""

from __future__ import annotations

import torch
from torch.nn import functional


def lovasz_grad(gt_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovasz extension of the Jaccard loss w.r.t. errors sorted in decreasing order.

    `gt_sorted`: (P,) float 0/1 labels in the order of decreasing error.
    """
    positives = gt_sorted.sum()
    intersection = positives - gt_sorted.cumsum(0)
    union = positives + (1.0 - gt_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    if gt_sorted.numel() > 1:
        jaccard[1:] = jaccard[1:] - jaccard[:-1].clone()
    return jaccard


def lovasz_hinge_flat(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary Lovasz hinge of (P,) logits (positive = foreground) against (P,) {0, 1} labels; scalar."""
    if logits.numel() == 0:
        return logits.sum() * 0.0
    labels = labels.float()
    signs = 2.0 * labels - 1.0
    errors = 1.0 - logits * signs
    errors_sorted, order = torch.sort(errors, descending=True)
    grad = lovasz_grad(labels[order])
    return torch.dot(functional.relu(errors_sorted), grad)
