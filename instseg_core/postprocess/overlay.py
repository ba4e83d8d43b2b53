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


def render_overlay(rgb: np.ndarray, id_image: np.ndarray, alpha: float = 0.5, outline: bool = True,
                   bgr: bool = False) -> np.ndarray:
    """(H, W, 3) uint8: instance k's pixels blended with its colour by `alpha` (rounded), outlines drawn in full
    colour, background pixels unchanged.

    rgb (H, W, 3) uint8 RGB (BGR with `bgr`: the colours are then given in BGR too, so the result is ready for a
    bgr8 message); id_image (H, W) integer, 0 = background. Everything is computed in uint8/uint16 (about
    9 bytes per pixel of temporary memory, whatever the number of instances).
    """
    count = int(id_image.max()) if id_image.size else 0
    palette = instance_palette(count)
    if bgr:
        palette = np.ascontiguousarray(palette[:, ::-1])
    ids = id_image if id_image.dtype == np.uint16 else id_image.astype(np.uint16)
    colours = palette[ids]
    out = cv2.addWeighted(rgb, 1.0 - alpha, colours, alpha, 0.0, dtype=cv2.CV_8U)
    background = ids == 0
    np.copyto(out, rgb, where=background[..., None])
    if outline and count:
        edges = cv2.morphologyEx(ids, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
        edges &= ~background
        np.copyto(out, colours, where=edges[..., None])
    return out
