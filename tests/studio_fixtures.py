"""Shared set-up of the studio tests: a synthetic camera sequence as a real bag, with its ground truth."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from instseg_core.annotate.encoding import extreme_points_from_mask
from instseg_core.data.bags import write_image_bag
from instseg_core.data.cityscapes import PolygonObject, visible_masks
from instseg_core.data.synth_cli import sequence_frames

START_NS = 1_700_000_000_000_000_000
RATE_HZ = 10.0
SIZE = (512, 256)


@dataclass
class GroundTruth:
    """Per frame: the RGB image and its objects (class name, visible mask (H, W) bool) big enough to click."""

    images: list[np.ndarray]
    objects: list[list[tuple[str, np.ndarray]]]

    def extreme_points(self, frame: int, k: int) -> list[list[int]]:
        return extreme_points_from_mask(self.objects[frame][k][1]).tolist()


def sequence_bag(path: Path, frames: int = 4, storage: str = "mcap", compressed: bool = False,
                 seed: int = 11) -> GroundTruth:
    """Write `frames` frames of a synthetic street sequence (512x256, 10 Hz) as a rosbag2 at `path` (Image on
    /camera/image_raw, and JPEG CompressedImage on /camera/image_raw/compressed when `compressed`)."""
    images, objects = [], []
    for _, frame in sequence_frames(seed, "val", 0, frames, width=SIZE[0], height=SIZE[1], fps=RATE_HZ,
                                    ego_speed=6.0):
        polygons = [PolygonObject(label, np.asarray(polygon)) for label, polygon in frame.objects]
        masks = visible_masks(SIZE[1], SIZE[0], polygons)
        images.append(frame.rgb)
        objects.append([(p.label, m) for p, m in zip(polygons, masks, strict=True)
                        if p.label in ("car", "person") and m.sum() > 400])
    write_image_bag(path, images, rate_hz=RATE_HZ, storage=storage, start_ns=START_NS,
                    compressed_topic="/camera/image_raw/compressed" if compressed else None)
    return GroundTruth(images, objects)
