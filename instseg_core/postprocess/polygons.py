"""Masks -> polygons (shared by the annotation pipeline and the streaming segmenter)."""

from __future__ import annotations

import cv2
import numpy as np


def mask_to_polygon(mask: np.ndarray, tolerance: float) -> tuple[np.ndarray, float]:
    """(largest outer contour simplified with Douglas-Peucker `tolerance` px, IoU of its fill with the mask).

    mask (H, W) bool or 0/1; the polygon is (N, 2) int32 pixel x, y, at least 3 vertices (a line or a single
    pixel gives its bounding rectangle); empty (0, 2) for an empty mask.
    """
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return np.zeros((0, 2), np.int32), 0.0
    largest = max(contours, key=lambda c: (cv2.contourArea(c), len(c)))
    polygon = cv2.approxPolyDP(largest, float(tolerance), True) if tolerance > 0 else largest
    if len(polygon) < 3:  # simplified to a line: keep the raw contour
        polygon = largest
    polygon = polygon.reshape(-1, 2).astype(np.int32)
    if len(polygon) < 3:  # a line or a point: its bounding rectangle
        x, y, w, h = cv2.boundingRect(polygon)
        polygon = np.array([[x, y], [x + w - 1, y], [x + w - 1, y + h - 1], [x, y + h - 1]], np.int32)
    filled = np.zeros(mask.shape, np.uint8)
    cv2.fillPoly(filled, [polygon], 1)
    mask = mask.astype(bool)
    filled_mask = filled.astype(bool)
    union = np.count_nonzero(filled_mask | mask)
    return polygon, (np.count_nonzero(filled_mask & mask) / union if union else 0.0)
