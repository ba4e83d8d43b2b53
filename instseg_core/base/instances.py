"""The one result type of every instance segmentation model, and what is done with it everywhere.

`Instances` (id image + per-instance arrays), `mask_box` / `masks_to_boxes` (boxes of masks),
`InstanceBuilder` (shared by the decoders), `filter_instances` and `resize_instances` (used by the runtime
and the evaluation). Boxes are (x0, y0, x1, y1) int pixels, x1/y1 exclusive, everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
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


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """(N, 4) int64 boxes x0, y0, x1 (exclusive), y1 (exclusive) of (N, H, W) bool masks; 0s if empty."""
    boxes = np.zeros((len(masks), 4), dtype=np.int64)
    for k, mask in enumerate(masks):
        box = mask_box(mask)
        if box is not None:
            boxes[k] = box
    return boxes


def filter_instances(instances: Instances, keep: np.ndarray) -> Instances:
    """The instances where `keep` (N,) bool is True, renumbered 1..M in the same order."""
    if keep.all():
        return instances
    lookup = np.zeros(len(instances) + 1, np.uint16)
    lookup[1:][keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.uint16)
    return Instances(lookup[instances.id_image], instances.classes[keep], instances.scores[keep],
                     instances.boxes[keep], instances.areas[keep])


def instances_from_labels(foreground: np.ndarray, labels: np.ndarray, height: int, width: int,
                          classes: np.ndarray, scores: np.ndarray, min_pixels: int = 1,
                          rows: np.ndarray | None = None, cols: np.ndarray | None = None) -> Instances:
    """Instances from per-pixel proposal labels: `foreground` (M,) flat pixel indices, `labels` (M,) int proposal
    index in [0, P) or -1 (none); `classes` (P,) int64 and `scores` (P,) float32 per proposal, highest score
    first. Proposals with fewer than `min_pixels` pixels are dropped; the others keep their order. Boxes are the
    masks' extents, areas their pixel counts. Linear in M: the extents come from per-instance row and column
    occupancy tables ((K, H) and (K, W), one np.bincount each), not from sorting the pixels. `rows`, `cols` (M,):
    the pixels' coordinates when the caller has them (else computed from `foreground`)."""
    count = len(scores)
    counts = np.bincount(labels + 1, minlength=count + 1)[1:]
    kept = np.flatnonzero(counts >= max(min_pixels, 1))
    if kept.size == 0:
        return Instances.empty(height, width)
    lookup = np.zeros(count + 1, np.uint16)
    lookup[kept + 1] = np.arange(1, kept.size + 1, dtype=np.uint16)
    ids = lookup[labels + 1]
    id_flat = np.zeros(height * width, np.uint16)
    id_flat[foreground] = ids
    inside = ids > 0
    ids = ids[inside].astype(np.int64) - 1
    if rows is None or cols is None:
        rows, cols = np.divmod(foreground[inside], width)
    else:
        rows, cols = rows[inside], cols[inside]
    row_used = np.bincount(ids * height + rows, minlength=kept.size * height).reshape(kept.size, height) > 0
    col_used = np.bincount(ids * width + cols, minlength=kept.size * width).reshape(kept.size, width) > 0
    boxes = np.stack([col_used.argmax(1), row_used.argmax(1), width - col_used[:, ::-1].argmax(1),
                      height - row_used[:, ::-1].argmax(1)], 1).astype(np.int64)
    return Instances(id_flat.reshape(height, width), np.asarray(classes)[kept], np.asarray(scores)[kept], boxes,
                     counts[kept].astype(np.int64))


def id_areas(id_image: np.ndarray, count: int, block: int = 1 << 20) -> np.ndarray:
    """(count,) int64 pixel count of ids 1..count in an (H, W) integer id image; counted `block` pixels at a
    time, so the temporary int64 copy np.bincount makes stays small (8 MB) however big the image."""
    areas = np.zeros(count + 1, np.int64)
    flat = id_image.reshape(-1)
    for start in range(0, flat.size, block):
        areas += np.bincount(flat[start:start + block], minlength=count + 1)[:count + 1]
    return areas[1:]


def resize_instances(instances: Instances, width: int, height: int) -> Instances:
    """Instances at network resolution -> (height, width): nearest-neighbour id image; boxes and areas are
    recomputed exactly from it (each box searched in a window around the scaled network box)."""
    net_height, net_width = instances.id_image.shape
    if (net_width, net_height) == (width, height):
        return instances
    id_image = cv2.resize(instances.id_image, (width, height), interpolation=cv2.INTER_NEAREST)
    count = len(instances)
    areas = id_areas(id_image, count)
    sx, sy = width / net_width, height / net_height
    margin_x, margin_y = int(np.ceil(sx)) + 1, int(np.ceil(sy)) + 1
    boxes = np.zeros((count, 4), np.int64)
    for k, (x0, y0, x1, y1) in enumerate(instances.boxes):
        wx0, wy0 = max(0, int(x0 * sx) - margin_x), max(0, int(y0 * sy) - margin_y)
        wx1, wy1 = min(width, int(np.ceil(x1 * sx)) + margin_x), min(height, int(np.ceil(y1 * sy)) + margin_y)
        box = mask_box(id_image[wy0:wy1, wx0:wx1] == k + 1)
        if box is not None:
            boxes[k] = np.add(box, (wx0, wy0, wx0, wy0))
    return Instances(id_image, instances.classes, instances.scores, boxes, areas)
