"""Correction clicks: validating them, the automatic click of the standard protocol, and the fallback for networks
without click channels.

A correction click is an image pixel (x right, y down, the same convention as the extreme points): positive when
it belongs to the object and the mask missed it, negative when the mask took it in wrongly. A network with the
correction-click channels (encoding.CLICK_CHANNELS) takes them as input; for an older network without them the
segmenter applies `paint_clicks` to its output instead (a local edit that cannot move the rest of the outline).

`next_correction_click` is the click of the interactive-segmentation protocol (Xu et al. 2016, RITM, f-BRS) that
both training (simulated corrections) and evaluation use: at the interior (the distance-transform maximum) of the
largest error region of the current mask, positive when that region is missed foreground, negative when it is a
false positive.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from instseg_core.annotate.encoding import CLICK_RADIUS, CROP_SIZE

CLICK_KINDS = ("positive", "negative")


@dataclass(frozen=True)
class CorrectionClick:
    """One simulated click: x, y pixel coordinates (int) of the mask's image; positive: foreground click."""

    x: int
    y: int
    positive: bool


def click_array(clicks: Sequence[Sequence[float]] | np.ndarray | None) -> np.ndarray:
    """(K, 2) float64 of a click list ([[x, y], ...], a flat [x0, y0, x1, y1, ...] or an (K, 2) array; None or empty:
    K = 0). Raises ValueError for anything that is not pairs of finite numbers."""
    if clicks is None:
        return np.zeros((0, 2), np.float64)
    array = np.asarray(clicks, dtype=np.float64)
    if array.size % 2:
        raise ValueError(f"clicks must be [x, y] pairs, got {array.size} numbers")
    array = array.reshape(-1, 2)
    if not np.all(np.isfinite(array)):
        raise ValueError("clicks must be finite numbers")
    return array


def largest_error_region(prediction: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, bool] | None:
    """The largest 8-connected region where (H, W) bool `prediction` and `truth` differ, as an (H, W) bool mask, and
    whether it is missed foreground (True) or a false positive (False); None where they agree everywhere."""
    best: tuple[int, np.ndarray, bool] | None = None
    for positive, error in ((True, truth & ~prediction), (False, prediction & ~truth)):
        if not error.any():
            continue
        _, labels, stats, _ = cv2.connectedComponentsWithStats(error.astype(np.uint8), connectivity=8)
        label = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        area = int(stats[label, cv2.CC_STAT_AREA])
        if best is None or area > best[0]:
            best = (area, labels == label, positive)
    return None if best is None else (best[1], best[2])


def next_correction_click(prediction: np.ndarray, truth: np.ndarray) -> CorrectionClick | None:
    """The protocol's next click for (H, W) bool masks: at the pixel of the largest error region
    (largest_error_region) farthest from its border (the image border counts as border), the first such pixel in
    row-major order on ties. None when the masks agree."""
    found = largest_error_region(prediction, truth)
    if found is None:
        return None
    region, positive = found
    padded = np.pad(region.astype(np.uint8), 1)
    distance = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return CorrectionClick(int(x), int(y), positive)


def paint_clicks(probability: np.ndarray, crop_positive: np.ndarray, crop_negative: np.ndarray,
                 radius: float = CLICK_RADIUS) -> np.ndarray:
    """(128, 128) float32 probabilities with a filled circle of `radius` crop pixels set to 1 around each (K, 2)
    positive crop click and to 0 around each negative one (negative last): the fallback for a network without
    click channels. Returns a new array."""
    painted = np.array(probability, np.float32, copy=True).reshape(CROP_SIZE, CROP_SIZE)
    for clicks, value in ((crop_positive, 1.0), (crop_negative, 0.0)):
        for u, v in np.asarray(clicks, np.float64).reshape(-1, 2):
            cv2.circle(painted, (round(float(u) * 16), round(float(v) * 16)), round(radius * 16), value, -1,
                       cv2.LINE_8, 4)
    return painted
