"""OpenCV GrabCut around extreme points: a refinement of the network's crop output, and the classic baseline.

Both work on the network's 128 x 128 crop (instseg_core.annotate.encoding), so that they see exactly what the
network saw, and return a (128, 128) float32 map in [0, 1] that paste_back puts into the image like the
network's probabilities.

- grabcut_refine: the network's probabilities seed GrabCut's trimap (>= `sure` certain foreground, <= 1 - `sure`
  certain background, the rest probable foreground/background by the 0.5 threshold); the extreme points are
  certain foreground and the crop's relaxation margin outside the points' box is certain background. GrabCut's
  colour models then move the uncertain border pixels to the colour edge.
- grabcut_from_points: GrabCut with nothing but the points: the box they span is probable foreground, the margin
  around it background, discs at the points foreground (the classic interactive baseline).

GrabCut initialises its colour models with k-means drawn from OpenCV's random generator, so without a seed the
same crop gives a different mask from call to call (and the baseline's mean IoU over a small set moved by up to
0.07 with what ran before it in the process). `seeded_grabcut` seeds the calling thread's generator first, so both are
deterministic.
"""

from __future__ import annotations

import cv2
import numpy as np

from instseg_core.annotate.encoding import CLICK_RADIUS, CROP_SIZE, outside_points_box


def _point_discs(trimap: np.ndarray, crop_points: np.ndarray | None, radius: int = 2, label: int = cv2.GC_FGD) -> None:
    if crop_points is None:
        return
    for u, v in np.asarray(crop_points, np.float64).reshape(-1, 2):
        cv2.circle(trimap, (round(float(u)), round(float(v))), radius, label, -1)


def _click_seeds(trimap: np.ndarray, crop_positive: np.ndarray | None, crop_negative: np.ndarray | None) -> None:
    """Correction clicks as hard seeds: discs of certain foreground / background (CLICK_RADIUS crop pixels)."""
    radius = round(CLICK_RADIUS)
    _point_discs(trimap, crop_positive, radius, cv2.GC_FGD)
    _point_discs(trimap, crop_negative, radius, cv2.GC_BGD)


def seeded_grabcut(rgb: np.ndarray, labels: np.ndarray, rectangle: tuple[int, int, int, int] | None,
                   iterations: int) -> np.ndarray:
    """OpenCV GrabCut on an (H, W, 3) uint8 RGB image, seeded first (the module docstring says why): from the
    (H, W) uint8 GC_* `labels` when `rectangle` is None, else from `rectangle` (x, y, width, height in pixels),
    `labels` then only receiving the result. Returns the (H, W) bool foreground (certain or probable)."""
    background, foreground = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)  # k-means initialisation: the same image gives the same mask
    cv2.grabCut(np.ascontiguousarray(rgb[..., ::-1]), labels, rectangle, background, foreground, iterations,
                cv2.GC_INIT_WITH_MASK if rectangle is None else cv2.GC_INIT_WITH_RECT)
    return (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)


def _run(crop_rgb: np.ndarray, trimap: np.ndarray, iterations: int) -> np.ndarray:
    if not np.any((trimap == cv2.GC_BGD) | (trimap == cv2.GC_PR_BGD)) or not np.any(
            (trimap == cv2.GC_FGD) | (trimap == cv2.GC_PR_FGD)):
        return ((trimap == cv2.GC_FGD) | (trimap == cv2.GC_PR_FGD)).astype(np.float32)
    return seeded_grabcut(crop_rgb, trimap, None, iterations).astype(np.float32)


def grabcut_refine(crop_rgb: np.ndarray, probability: np.ndarray, crop_points: np.ndarray, *,
                   sure: float = 0.9, iterations: int = 3, crop_positive: np.ndarray | None = None,
                   crop_negative: np.ndarray | None = None) -> np.ndarray:
    """(128, 128, 3) uint8 RGB crop, (128, 128) float32 network probabilities, (4, 2) crop points ->
    (128, 128) float32 0/1 refined mask. See the module docstring. Correction clicks ((K, 2) crop pixels) are hard
    seeds: discs of certain foreground (positive) or background (negative)."""
    trimap = np.where(probability >= 0.5, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
    trimap[probability >= sure] = cv2.GC_FGD
    trimap[probability <= 1.0 - sure] = cv2.GC_BGD
    trimap[outside_points_box(crop_points)] = cv2.GC_BGD
    _point_discs(trimap, crop_points)
    _click_seeds(trimap, crop_positive, crop_negative)
    return _run(crop_rgb, trimap, iterations)


def grabcut_from_points(crop_rgb: np.ndarray, crop_points: np.ndarray, *, iterations: int = 5,
                        crop_positive: np.ndarray | None = None, crop_negative: np.ndarray | None = None
                        ) -> np.ndarray:
    """(128, 128, 3) uint8 RGB crop and (4, 2) crop points -> (128, 128) float32 0/1 mask, GrabCut alone;
    correction clicks ((K, 2) crop pixels) as hard seeds like grabcut_refine's."""
    trimap = np.full((CROP_SIZE, CROP_SIZE), cv2.GC_PR_FGD, np.uint8)
    trimap[outside_points_box(crop_points)] = cv2.GC_BGD
    _point_discs(trimap, crop_points)
    _click_seeds(trimap, crop_positive, crop_negative)
    return _run(crop_rgb, trimap, iterations)
