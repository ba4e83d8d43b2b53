"""The one result type of every instance segmentation model, and a builder shared by the post-processors."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) int pixels, x1/y1 exclusive, of the True pixels of an (H, W) mask; None if it is empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


@dataclass
class Instances:
    """Instances of one image.

    id_image: (H, W) uint16, 0 = background, k = the k-th instance (1-based index into the arrays);
    classes: (N,) int64 class index into the model's class list; scores: (N,) float32 in [0, 1];
    boxes: (N, 4) int64 (x0, y0, x1, y1) in pixels, x1/y1 exclusive; areas: (N,) int64 pixels in id_image.
    Instances never overlap: where two proposals claim a pixel, the earlier (higher-scoring) one keeps it.
    """

    id_image: np.ndarray
    classes: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray
    areas: np.ndarray

    def __len__(self) -> int:
        return len(self.classes)

    def masks(self) -> np.ndarray:
        """(N, H, W) bool, one mask per instance."""
        return self.id_image[None] == np.arange(1, len(self) + 1, dtype=self.id_image.dtype)[:, None, None]

    @classmethod
    def empty(cls, height: int, width: int) -> Instances:
        return cls(np.zeros((height, width), np.uint16), np.zeros(0, np.int64), np.zeros(0, np.float32),
                   np.zeros((0, 4), np.int64), np.zeros(0, np.int64))


class InstanceBuilder:
    """Paints accepted proposals into an id image, first come first served; drops those left too small.

    add(flat_pixel_indices, class_index, score) in decreasing order of priority; build() -> Instances.
    """

    def __init__(self, height: int, width: int, min_pixels: int = 1) -> None:
        self.height, self.width, self.min_pixels = height, width, min_pixels
        self.id_flat = np.zeros(height * width, np.uint16)
        self.classes: list[int] = []
        self.scores: list[float] = []
        self.boxes: list[tuple[int, int, int, int]] = []
        self.areas: list[int] = []

    def add(self, flat_indices: np.ndarray, class_index: int, score: float) -> bool:
        free = flat_indices[self.id_flat[flat_indices] == 0]
        if free.size < self.min_pixels or len(self.classes) >= np.iinfo(np.uint16).max:
            return False
        self.id_flat[free] = len(self.classes) + 1
        cols = free % self.width
        row0, row1 = int(free.min()) // self.width, int(free.max()) // self.width
        self.boxes.append((int(cols.min()), row0, int(cols.max()) + 1, row1 + 1))
        self.classes.append(class_index)
        self.scores.append(score)
        self.areas.append(int(free.size))
        return True

    def build(self) -> Instances:
        if not self.classes:
            return Instances.empty(self.height, self.width)
        return Instances(self.id_flat.reshape(self.height, self.width), np.array(self.classes, np.int64),
                         np.array(self.scores, np.float32), np.array(self.boxes, np.int64),
                         np.array(self.areas, np.int64))
