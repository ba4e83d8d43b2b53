"""Box2Pix's box priors and box coding (NumPy only): shared by the network, its loss and its decoding.

Priors (Uhrig et al. 2018, §III-A, Fig. 4): `PRIOR_SIZES` are 21 (width, height) sizes in input pixels, chosen
for 1024 x 512 inputs (Cityscapes at half resolution, and our synthetic scenes). `assign_priors` puts each prior
on the first SSD layer whose theoretical receptive field (`receptive_field`, the paper's recursion) is at least
twice its larger side. `prior_boxes` lays them out on every cell of their layer's grid.

Conventions: boxes are (x0, y0, x1, y1) in input pixels, x1/y1 exclusive; the SSD heads regress corner deltas
relative to the prior's size (`encode_boxes` / `decode_boxes`); the dense offsets are (dx, dy) pixels from a
pixel's centre to its object's box centre, which the network predicts divided by `OFFSET_SCALE`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

OFFSET_SCALE = 128.0  # network offset output x OFFSET_SCALE = offset in pixels

# (name, kernel, stride) of every layer on the longest path, input to 7b; an inception module counts as its
# largest kernel (the 1x1 -> 5x5 branch). `SSD_LAYERS` name the heads.
LAYERS: tuple[tuple[str, int, int], ...] = (
    ("conv1", 7, 2), ("pool1", 3, 2), ("conv2", 1, 1), ("conv3", 3, 1), ("pool2", 3, 2),
    ("3a", 5, 1), ("3b", 5, 1), ("pool3", 3, 2),
    ("4a", 5, 1), ("4b", 5, 1), ("4c", 5, 1), ("4d", 5, 1), ("4e", 5, 1), ("pool4", 3, 2),
    ("5a", 5, 1), ("5b", 5, 1), ("pool5", 3, 2),
    ("6a", 5, 1), ("6b", 5, 1), ("pool6", 3, 2),
    ("7a", 5, 1), ("7b", 5, 1),
)
SSD_LAYERS = ("4e", "5b", "6b", "7b")
SSD_STRIDES = (16, 32, 64, 128)

# 21 prior sizes (width, height) in pixels of a 1024 x 512 input: persons/riders/bicycles (tall), cars (about
# square to 2:1), trucks/buses (large), spread so that most objects have a prior within d_change <= 0.7
# (`python -m training.box2pix coverage` reports it). By the receptive-field rule 15 land on 4e, 4 on 5b and
# one each on 6b and 7b (a bus filling most of the frame).
PRIOR_SIZES: tuple[tuple[int, int], ...] = (
    (8, 16), (12, 12), (16, 8), (14, 32), (24, 24), (32, 16), (24, 56), (44, 44), (64, 32),
    (40, 96), (80, 80), (120, 56), (72, 160), (144, 144), (208, 104), (120, 280), (240, 240), (352, 176),
    (320, 320), (480, 240), (800, 480),
)


def receptive_field(layers: Sequence[tuple[str, int, int]], up_to: str) -> int:
    """Theoretical receptive field (pixels) of layer `up_to`: the paper's recursion RF_in = (RF_out - 1) * s + k
    applied from that layer (RF 1) back to the input."""
    names = [name for name, _, _ in layers]
    rf = 1
    for _, kernel, stride in reversed(layers[: names.index(up_to) + 1]):
        rf = (rf - 1) * stride + kernel
    return rf


def assign_priors(prior_sizes: Sequence[tuple[int, int]] = PRIOR_SIZES) -> list[list[tuple[int, int]]]:
    """Prior sizes per SSD layer: each goes to the first layer with receptive field >= 2 x its larger side (the
    last layer takes whatever is larger still)."""
    fields = [receptive_field(LAYERS, name) for name in SSD_LAYERS]
    per_layer: list[list[tuple[int, int]]] = [[] for _ in SSD_LAYERS]
    for w, h in prior_sizes:
        layer = next((i for i, rf in enumerate(fields) if rf >= 2 * max(w, h)), len(fields) - 1)
        per_layer[layer].append((int(w), int(h)))
    return per_layer


def prior_boxes(height: int, width: int, priors_per_layer: Sequence[Sequence[tuple[int, int]]]) -> np.ndarray:
    """(P, 4) float32 prior boxes (x0, y0, x1, y1) for an input of (height, width), in the order of the network's
    flattened SSD output: layer by layer, then row, column, prior."""
    boxes = []
    for stride, sizes in zip(SSD_STRIDES, priors_per_layer, strict=True):
        if not sizes:
            continue
        rows, cols = height // stride, width // stride
        cy, cx = np.meshgrid((np.arange(rows) + 0.5) * stride, (np.arange(cols) + 0.5) * stride, indexing="ij")
        wh = np.asarray(sizes, np.float32)
        centre = np.stack([cx, cy], -1).reshape(-1, 1, 2)
        boxes.append(np.concatenate([centre - wh / 2, centre + wh / 2], -1).reshape(-1, 4))
    return np.concatenate(boxes).astype(np.float32)


def encode_boxes(gt: np.ndarray, priors: np.ndarray) -> np.ndarray:
    """(N, 4) box regression targets (the SSD heads' box output): corner deltas (gt - prior) / prior (w, h, w, h)."""
    wh = np.concatenate([priors[:, 2:] - priors[:, :2]] * 2, 1)
    return ((gt - priors) / wh).astype(np.float32)


def decode_boxes(deltas: np.ndarray, priors: np.ndarray) -> np.ndarray:
    """Inverse of encode_boxes: (N, 4) boxes (x0, y0, x1, y1) in pixels."""
    wh = np.concatenate([priors[:, 2:] - priors[:, :2]] * 2, 1)
    return priors + deltas * wh
