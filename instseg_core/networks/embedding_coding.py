"""Spatial Embeddings' output coding (NumPy only): shared by the network, its loss, its decoding and tests.

Coordinate convention (for every input size): pixel (row r, col c) of the network input has the coordinate
(x, y) = (c, r) * PIXEL_SPACING, PIXEL_SPACING = 1/1024, i.e. embedding units are "1024 input pixels". The
clustering bandwidth of a pixel is exp(SIGMA_SCALE * sigma_raw) = 1 / (2 sigma^2), as in the reference code.
"""

from __future__ import annotations

import numpy as np

PIXEL_SPACING = 1.0 / 1024.0
SIGMA_SCALE = 10.0  # bandwidth = exp(SIGMA_SCALE * sigma_raw), as in the reference code


def margin_to_sigma_raw(margin_px: float) -> float:
    """The sigma raw value whose clustering margin (phi = 0.5, Eq. 6) is `margin_px` input pixels."""
    margin = margin_px * PIXEL_SPACING
    return float(np.log(np.log(2.0) / margin**2) / SIGMA_SCALE)
