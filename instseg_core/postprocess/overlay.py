"""Instance overlays for people: coloured masks and outlines blended over the image."""

from __future__ import annotations

import cv2
import numpy as np


def instance_palette(count: int) -> np.ndarray:
    """(count + 1, 3) uint8 colours; row 0 (background) black, instance k a well separated hue (golden ratio)."""
    hues = (np.arange(count) * 0.618033988749895 % 1.0 * 180).astype(np.uint8)
    hsv = np.stack([hues, np.full(count, 220, np.uint8), np.full(count, 255, np.uint8)], 1)[None]
    colours = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0] if count else np.zeros((0, 3), np.uint8)
    return np.vstack([np.zeros((1, 3), np.uint8), colours])


def render_overlay(rgb: np.ndarray, id_image: np.ndarray, alpha: float = 0.5, outline: bool = True) -> np.ndarray:
    """(H, W, 3) uint8 RGB: instance k's pixels blended with its colour by `alpha`, outlines drawn in full colour.

    rgb (H, W, 3) uint8; id_image (H, W) integer, 0 = background. Returns RGB (convert for bgr8 output).
    """
    count = int(id_image.max()) if id_image.size else 0
    palette = instance_palette(count)
    colours = palette[id_image]
    foreground = id_image > 0
    out = rgb.copy()
    out[foreground] = (rgb[foreground] * (1.0 - alpha) + colours[foreground] * alpha).astype(np.uint8)
    if outline and count:
        edges = cv2.morphologyEx(id_image.astype(np.uint16), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
        edges &= foreground
        out[edges] = colours[edges]
    return out
