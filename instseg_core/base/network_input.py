"""The input convention the streaming networks share (Spatial Embeddings, Box2Pix): RGB scaled to [0, 1]."""

from __future__ import annotations

import numpy as np


def rgb_to_unit_nchw(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (1, 3, H, W) float32 in [0, 1] (image / 255), C-contiguous."""
    return np.ascontiguousarray(rgb.transpose(2, 0, 1)[None], dtype=np.float32) * np.float32(1 / 255)
