"""Binary (one object per crop) segmentation metrics of the extreme-point paper.

Definitions (paper §3, after Kirillov 2019), for predicted and ground-truth masks of the same crops:

- aIoU ("average IoU"): the IoU of each batch, pooled over its pixels (sum of intersections / sum of
  unions of the batch's crops), averaged over batches. This is the paper's per-epoch validation metric.
- mIoU ("mean IoU"): per class, the pooled IoU of all its crops; then the mean over classes.
- iIoU ("instance IoU"): the IoU of every crop on its own, averaged over crops.
- border error: for every pixel on the predicted mask's boundary, the Euclidean distance (pixels) to the
  nearest ground-truth boundary pixel; reported as the mean over all such pixels, with a histogram.
  A boundary pixel is a mask pixel with a 4-neighbour outside the mask (or on the crop's edge).

Masks are (H, W) or (B, H, W) arrays, nonzero = object. The paper evaluates at the network's 128 x 128.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

# Histogram bin edges of the border error, in pixels (last bin open-ended).
BORDER_BINS = np.array([0.0, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0, np.inf])


def iou(prediction: np.ndarray, ground_truth: np.ndarray) -> float:
    """IoU of two binary masks of the same shape; 1.0 when both are empty."""
    pred, gt = prediction.astype(bool), ground_truth.astype(bool)
    union = np.count_nonzero(pred | gt)
    return 1.0 if union == 0 else np.count_nonzero(pred & gt) / union


def boundary(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool: mask pixels with a 4-neighbour outside the mask (pixels outside the crop count as outside)."""
    padded = np.pad(mask.astype(np.uint8), 1)
    eroded = cv2.erode(padded, np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], np.uint8))[1:-1, 1:-1]
    return mask.astype(bool) & ~eroded.astype(bool)


def border_distances(prediction: np.ndarray, ground_truth: np.ndarray) -> np.ndarray:
    """Distance (pixels, float32) from each predicted boundary pixel to the nearest ground-truth boundary pixel.

    Empty when the prediction is empty; +inf for every pixel when the ground truth is empty.
    """
    pred_edge = boundary(prediction)
    if not pred_edge.any():
        return np.zeros(0, np.float32)
    gt_edge = boundary(ground_truth)
    if not gt_edge.any():
        return np.full(np.count_nonzero(pred_edge), np.inf, np.float32)
    distance = cv2.distanceTransform((~gt_edge).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return distance[pred_edge]


@dataclass
class BinarySegmentationMetrics:
    """Accumulates crops batch by batch; `result()` gives aIoU, mIoU, iIoU and the border error."""

    batch_ious: list[float] = field(default_factory=list)
    instance_ious: list[float] = field(default_factory=list)
    class_sums: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    border_histogram: np.ndarray = field(default_factory=lambda: np.zeros(len(BORDER_BINS) - 1, np.int64))
    border_sum: float = 0.0
    border_count: int = 0
    empty_predictions: int = 0

    def add_batch(self, predictions: np.ndarray, ground_truths: np.ndarray,
                  class_names: Sequence[str] | None = None) -> None:
        """Add one batch: (B, H, W) predicted and ground-truth masks and, for mIoU, each crop's class."""
        preds, gts = np.asarray(predictions).astype(bool), np.asarray(ground_truths).astype(bool)
        if preds.shape != gts.shape or preds.ndim != 3:
            raise ValueError(f"expected two (B, H, W) arrays of one shape, got {preds.shape} and {gts.shape}")
        names = list(class_names) if class_names is not None else ["object"] * len(preds)
        if len(names) != len(preds):
            raise ValueError(f"{len(names)} class names for {len(preds)} crops")
        intersections = np.count_nonzero(preds & gts, axis=(1, 2))
        unions = np.count_nonzero(preds | gts, axis=(1, 2))
        self.batch_ious.append(float(intersections.sum() / unions.sum()) if unions.sum() else 1.0)
        for pred, gt, name, inter, union in zip(preds, gts, names, intersections, unions, strict=True):
            self.instance_ious.append(float(inter / union) if union else 1.0)
            self.class_sums[name][0] += int(inter)
            self.class_sums[name][1] += int(union)
            distances = border_distances(pred, gt)
            if distances.size == 0:
                self.empty_predictions += 1
                continue
            self.border_histogram += np.histogram(distances, BORDER_BINS)[0]
            finite = distances[np.isfinite(distances)]
            self.border_sum += float(finite.sum()) + float(np.inf if finite.size < distances.size else 0.0)
            self.border_count += distances.size

    def result(self) -> dict:
        """aIoU, mIoU, iIoU, per-class IoU, border error mean and histogram (counts per BORDER_BINS bin)."""
        per_class = {name: inter / union if union else 1.0 for name, (inter, union) in sorted(self.class_sums.items())}
        return {
            "aIoU": float(np.mean(self.batch_ious)) if self.batch_ious else float("nan"),
            "mIoU": float(np.mean(list(per_class.values()))) if per_class else float("nan"),
            "iIoU": float(np.mean(self.instance_ious)) if self.instance_ious else float("nan"),
            "per_class_iou": per_class,
            "border_error": self.border_sum / self.border_count if self.border_count else float("nan"),
            "border_histogram": {"edges": BORDER_BINS.tolist(), "counts": self.border_histogram.tolist()},
            "empty_predictions": self.empty_predictions,
            "crops": len(self.instance_ious),
        }
