"""Box2Pix training targets and losses (Uhrig et al. 2018, §III-B/C).

- `relative_change` (Eq. 2) and `box_iou`: (G, P) matrices between ground-truth and prior boxes.
- `match_priors`: each prior takes the ground-truth box it is closest to when within the threshold (change
  <= 0.7, or IoU >= 0.5 for the IoU ablation); every ground-truth box also takes its single best prior.
- box targets are `encode_boxes` (instseg_core.networks.box2pix): corner deltas divided by the prior's size
  (the L2 box loss and the change metric live in the same corner space).
- `dense_targets`: per-pixel semantic class and offset to the object's box centre (not the instance id: the
  only public implementation regressed ids).
- `Box2PixLoss`: focal loss (gamma) or 50/50 FG/BG weighting for the box classes, L2 on encoded corners,
  cross-entropy on semantics (ignore label), L2 on offsets normalised by valid pixels, combined with Kendall
  et al.'s learned task uncertainties (Eq. 1).

Eq. 2 as printed divides squared pixel differences by w or h, which is not dimensionless: the same relative
change would be 7x stricter for a 100-pixel object than for a 2-pixel one, and 21 priors could not cover
large objects. We use the dimensionless form the text describes ("relative box parameter changes"):
d = sqrt((dy_tl/h)^2 + (dx_tl/w)^2 + (dy_br/h)^2 + (dx_br/w)^2). `literal=True` gives the printed one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from instseg_core.networks.box_priors import OFFSET_SCALE, encode_boxes

IGNORE_LABEL = 255


def relative_change(gt: np.ndarray, priors: np.ndarray, literal: bool = False) -> np.ndarray:
    """(G, P) d_change between ground-truth boxes gt (G, 4) and priors (P, 4), both (x0, y0, x1, y1)."""
    w = np.maximum(gt[:, 2] - gt[:, 0], 1e-6)[:, None]
    h = np.maximum(gt[:, 3] - gt[:, 1], 1e-6)[:, None]
    delta = priors[None, :, :] - gt[:, None, :]
    if literal:
        total = (delta[..., 0] ** 2 + delta[..., 2] ** 2) / w + (delta[..., 1] ** 2 + delta[..., 3] ** 2) / h
    else:
        total = (delta[..., 0] ** 2 + delta[..., 2] ** 2) / w ** 2 + (delta[..., 1] ** 2 + delta[..., 3] ** 2) / h ** 2
    return np.sqrt(total)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(A, B) intersection over union of boxes a (A, 4) and b (B, 4), (x0, y0, x1, y1)."""
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def match_priors(gt: np.ndarray, priors: np.ndarray, metric: str = "change",
                 threshold: float | None = None) -> np.ndarray:
    """(P,) int64 index of the ground-truth box each prior is matched to, -1 for background.

    metric 'change' (threshold default 0.7, lower is closer) or 'iou' (default 0.5, higher is closer)."""
    matched = np.full(len(priors), -1, np.int64)
    if len(gt) == 0:
        return matched
    if metric == "change":
        distance = relative_change(gt, priors)
        threshold = 0.7 if threshold is None else threshold
    elif metric == "iou":
        distance = -box_iou(gt, priors)
        threshold = -(0.5 if threshold is None else threshold)
    else:
        raise ValueError(f"unknown matching metric {metric!r} (change | iou)")
    best_gt = distance.argmin(0)
    within = distance[best_gt, np.arange(len(priors))] <= threshold
    matched[within] = best_gt[within]
    matched[distance.argmin(1)] = np.arange(len(gt))  # every object keeps its closest prior
    return matched


@dataclass
class DenseTargets:
    """Targets of one image: boxes (K, 4) float32 (x0, y0, x1, y1, exclusive) and classes (K,) int64 (1-based)
    of its instances; semantic (H, W) int64 (0 background, k class, IGNORE_LABEL ignored); offsets (2, H, W)
    float32 (dx, dy) / OFFSET_SCALE to the box centre, valid on instance pixels (offset_valid (H, W) bool)."""

    boxes: np.ndarray
    classes: np.ndarray
    semantic: np.ndarray
    offsets: np.ndarray
    offset_valid: np.ndarray


def dense_targets(instances: np.ndarray, labels: np.ndarray, ignore: np.ndarray) -> DenseTargets:
    """From instances (H, W) int (0 background, k object), labels (H, W) (class + 1) and ignore (H, W) bool."""
    height, width = instances.shape
    flat = instances.ravel()
    pixels = np.flatnonzero(flat)
    semantic = labels.astype(np.int64)
    semantic[ignore & (instances == 0)] = IGNORE_LABEL
    offsets = np.zeros((2, height, width), np.float32)
    if pixels.size == 0:
        return DenseTargets(np.zeros((0, 4), np.float32), np.zeros(0, np.int64), semantic, offsets,
                            np.zeros((height, width), bool))
    ids, first = np.unique(flat[pixels], return_index=True)
    order = np.argsort(flat[pixels], kind="stable")
    sorted_pixels = pixels[order]
    starts = np.searchsorted(flat[sorted_pixels], ids)
    rows, cols = sorted_pixels // width, sorted_pixels % width
    boxes = np.stack([np.minimum.reduceat(cols, starts), np.minimum.reduceat(rows, starts),
                      np.maximum.reduceat(cols, starts) + 1, np.maximum.reduceat(rows, starts) + 1], 1)
    boxes = boxes.astype(np.float32)
    classes = labels.ravel()[pixels[first]].astype(np.int64)
    index = np.searchsorted(ids, flat[pixels])
    centre_x = (boxes[:, 0] + boxes[:, 2]) / 2
    centre_y = (boxes[:, 1] + boxes[:, 3]) / 2
    offsets[0].ravel()[pixels] = (centre_x[index] - (pixels % width + 0.5)) / OFFSET_SCALE
    offsets[1].ravel()[pixels] = (centre_y[index] - (pixels // width + 0.5)) / OFFSET_SCALE
    return DenseTargets(boxes, classes, semantic, offsets, instances > 0)


@dataclass
class Box2PixLossConfig:
    matching: str = "change"          # change | iou
    match_threshold: float | None = None  # default 0.7 (change) / 0.5 (iou)
    class_weighting: str = "focal"    # focal | balanced (50 % FG / 50 % BG)
    gamma: float = 2.0
    uncertainty_weighting: bool = True  # Kendall et al.; False: plain sum


class Box2PixLoss(nn.Module):
    """forward(outputs, targets, priors) -> (total, parts dict of floats).

    outputs: the network's (boxes (B, P, 4), logits (B, P, n + 1), dense (B, n + 3, H/8, W/8));
    targets: list of B DenseTargets; priors (P, 4) float32 for the batch's input size. The four learned
    log-variances s = log sigma^2 (Eq. 1) are parameters of this module: train them with the network."""

    TASKS = ("semantics", "offsets", "box", "class")

    def __init__(self, config: Box2PixLossConfig | None = None) -> None:
        super().__init__()
        self.config = config or Box2PixLossConfig()
        self.log_variance = nn.Parameter(torch.zeros(4))

    def ssd_targets(self, targets: list[DenseTargets], priors: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, P) int64 class per prior (0 background) and (B, P, 4) float32 encoded box targets."""
        labels = np.zeros((len(targets), len(priors)), np.int64)
        boxes = np.zeros((len(targets), len(priors), 4), np.float32)
        for i, target in enumerate(targets):
            matched = match_priors(target.boxes, priors, self.config.matching, self.config.match_threshold)
            positive = matched >= 0
            labels[i, positive] = target.classes[matched[positive]]
            boxes[i, positive] = encode_boxes(target.boxes[matched[positive]], priors[positive])
        return torch.from_numpy(labels), torch.from_numpy(boxes)

    def class_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        log_p = logits.float().log_softmax(-1)
        log_pt = log_p.gather(-1, labels[..., None])[..., 0]
        positive = labels > 0
        if self.config.class_weighting == "focal":
            weight = (1 - log_pt.exp()).pow(self.config.gamma)
            return -(weight * log_pt).sum() / positive.sum().clamp(min=1)
        if self.config.class_weighting == "balanced":
            ce = -log_pt
            fg = ce[positive].mean() if positive.any() else ce.new_zeros(())
            return 0.5 * fg + 0.5 * ce[~positive].mean()
        raise ValueError(f"unknown class weighting {self.config.class_weighting!r} (focal | balanced)")

    def forward(self, outputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor], targets: list[DenseTargets],
                priors: np.ndarray) -> tuple[torch.Tensor, dict]:
        boxes, logits, dense = outputs
        device = dense.device  # the targets are built on the CPU and moved to the network's device
        height, width = targets[0].semantic.shape
        n1 = logits.shape[-1]
        labels, box_targets = (t.to(device) for t in self.ssd_targets(targets, priors))
        positive = labels > 0
        loss_class = self.class_loss(logits, labels)
        loss_box = ((boxes.float() - box_targets) ** 2).sum(-1)[positive].sum() / positive.sum().clamp(min=1)
        dense = functional.interpolate(dense.float(), size=(height, width), mode="bilinear", align_corners=False)
        semantic = torch.from_numpy(np.stack([t.semantic for t in targets])).to(device)
        loss_semantics = functional.cross_entropy(dense[:, :n1], semantic, ignore_index=IGNORE_LABEL)
        offsets = torch.from_numpy(np.stack([t.offsets for t in targets])).to(device)
        valid = torch.from_numpy(np.stack([t.offset_valid for t in targets])).to(device)
        squared = ((dense[:, n1:] - offsets) ** 2).sum(1)
        loss_offsets = squared[valid].sum() / valid.sum().clamp(min=1)
        losses = torch.stack([loss_semantics, loss_offsets, loss_box, loss_class])
        if self.config.uncertainty_weighting:
            s = self.log_variance
            # Eq. 1 with s = log sigma^2: classification 1/sigma^2, regression 1/(2 sigma^2); + log sigma = s / 2
            factor = torch.tensor([1.0, 0.5, 0.5, 1.0], device=s.device)
            total = (factor * torch.exp(-s) * losses).sum() + 0.5 * s.sum()
        else:
            total = losses.sum()
        parts = {name: float(value) for name, value in zip(self.TASKS, losses.detach(), strict=True)}
        parts["positives_per_image"] = float(positive.sum()) / len(targets)
        return total, parts
