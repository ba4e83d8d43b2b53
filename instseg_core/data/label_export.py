"""Labelled frames -> a Cityscapes-format tree with COCO JSON and the clicks file, all or nothing.

The one writer behind `instseg-label` (clicks -> segmentation -> export) and the labelling studio (edited
polygons -> export), so that both produce the same files:

- `leftImg8bit/{split}/{city}/{city}_000000_{index:06d}_leftImg8bit.png` and the `gtFine` polygons JSON,
  instanceIds, labelIds and color images of each labelled frame (instseg_core.data.cityscapes.write_sample:
  the official converters; the project's reader and training commands load the tree unchanged);
- `annotations_coco.json`: COCO instances, polygon segmentations in image pixels (x, y), `bbox` [x, y, w, h],
  `area` (mask pixels when known, else the filled polygon's), categories with Cityscapes label ids, and per
  annotation the extreme points (left, top, right, bottom as x0, y0, ..., x3, y3), score and polygon IoU;
- `clicks.json`: the extreme points per frame index in the format `instseg-label --clicks` reads, so the
  command line can redo the labels with another model.

`write_label_tree` writes into a staging folder beside OUT and renames it to OUT only when every frame was
written: OUT is either the previous tree or the complete new one, never a mixture.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from instseg_core.base.atomic_files import write_text_atomically
from instseg_core.data.cityscapes import name2label, write_sample


class LabelExportError(RuntimeError):
    """The export cannot be written (an existing folder, an unknown class); the message says which."""


@dataclass(frozen=True)
class LabelledObject:
    """One object: Cityscapes class name, polygon (N, 2) int image x, y (N >= 3), the 4 extreme points
    (4, 2) float (left, top, right, bottom) it came from, and the model's score, polygon IoU and mask area
    (pixels) when known."""

    class_name: str
    polygon: np.ndarray
    extreme_points: np.ndarray
    score: float | None = None
    polygon_iou: float | None = None
    area: int | None = None


@dataclass(frozen=True)
class LabelledFrame:
    """One frame of a bag topic: its index on the topic, header stamp (ns) and frame_id, the (H, W, 3) uint8 RGB
    image and its objects (drawing order: later objects occlude earlier ones)."""

    index: int
    stamp_ns: int
    frame_id: str
    rgb: np.ndarray
    objects: list[LabelledObject]


def polygon_area(polygon: np.ndarray, shape: tuple[int, int]) -> int:
    """Pixels of the filled polygon (N, 2) inside an image of `shape` (H, W)."""
    mask = np.zeros(shape, np.uint8)
    cv2.fillPoly(mask, [np.asarray(polygon, np.int32).reshape(-1, 1, 2)], 1)
    return int(mask.sum())


def check_class(name: str) -> str:
    """`name` when it is a Cityscapes class with a label id, else LabelExportError."""
    if name not in name2label or name2label[name].id < 0:
        raise LabelExportError(f"unknown Cityscapes class {name!r}")
    return name


def coco_annotation(annotation_id: int, image_id: int, obj: LabelledObject, polygon: np.ndarray,
                    shape: tuple[int, int]) -> dict:
    """The COCO annotation of `obj` whose polygon, rounded to pixels, is `polygon` (N, 2) int32 x, y in an image of
    `shape` (H, W): category = Cityscapes label id, polygon segmentation, bbox [x, y, w, h], area (the mask's when
    known, else the filled polygon's), and the extreme points, score and polygon IoU (None when unknown)."""
    label = name2label[check_class(obj.class_name)]
    x0, y0 = polygon.min(axis=0)
    x1, y1 = polygon.max(axis=0)
    area = obj.area if obj.area is not None else polygon_area(polygon, shape)
    return {"id": annotation_id, "image_id": image_id, "category_id": label.id, "iscrowd": 0,
            "segmentation": [polygon.astype(float).reshape(-1).tolist()], "area": float(area),
            "bbox": [float(x0), float(y0), float(x1 - x0 + 1), float(y1 - y0 + 1)],
            "score": obj.score, "polygon_iou": obj.polygon_iou,
            "extreme_points": np.asarray(obj.extreme_points, float).reshape(-1).tolist()}


def write_label_tree(out: str | os.PathLike, frames: Iterable[LabelledFrame], *, split: str = "train",
                     city: str = "labelled", overwrite: bool = False) -> dict:
    """Write `frames` (those with at least one object) as a Cityscapes tree + COCO + clicks under `out`.

    All or nothing (see the module docstring); an existing `out` is refused unless `overwrite`, and then replaced
    only once the new tree is complete. Returns {"frames", "objects", "out"}."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise LabelExportError(f"{out} exists; choose a new folder or allow overwriting (it is replaced only if "
                               "the whole export succeeds)")
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        summary = _write_into(staging, frames, split, city)
        _publish(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {**summary, "out": str(out)}


def _publish(staging: Path, out: Path) -> None:
    """Replace `out` by `staging` with renames (an existing `out` goes only once the new one is in place)."""
    previous = out.parent / f".{out.name}.previous-{os.getpid()}"
    if out.exists():
        os.replace(out, previous)
    os.replace(staging, out)
    shutil.rmtree(previous, ignore_errors=True)


def _write_into(root: Path, frames: Iterable[LabelledFrame], split: str, city: str) -> dict:
    images: list[dict] = []
    annotations: list[dict] = []
    categories: dict[int, str] = {}
    clicks: dict[str, list[dict]] = {}
    for frame in frames:
        objects = [o for o in frame.objects if len(o.polygon) >= 3]
        if not objects:
            continue
        for obj in objects:
            check_class(obj.class_name)
        polygons = [np.rint(np.asarray(o.polygon, np.float64)).astype(np.int32).reshape(-1, 2) for o in objects]
        stem = f"{city}_000000_{frame.index:06d}"
        write_sample(root, split, city, stem, frame.rgb, [(o.class_name, p) for o, p in zip(objects, polygons,
                                                                                           strict=True)])
        height, width = frame.rgb.shape[:2]
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": f"leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png",
                       "height": int(height), "width": int(width), "frame_index": frame.index,
                       "stamp_ns": frame.stamp_ns, "frame_id": frame.frame_id})
        clicks[str(frame.index)] = [{"points": np.asarray(o.extreme_points, float).tolist(), "class": o.class_name}
                                    for o in objects]
        for obj, polygon in zip(objects, polygons, strict=True):
            annotations.append(coco_annotation(len(annotations) + 1, image_id, obj, polygon, (height, width)))
            categories[annotations[-1]["category_id"]] = obj.class_name
    coco = {"images": images, "annotations": annotations,
            "categories": [{"id": i, "name": n} for i, n in sorted(categories.items())]}
    write_text_atomically(root / "annotations_coco.json", json.dumps(coco))
    write_text_atomically(root / "clicks.json", json.dumps(clicks, indent=1))
    return {"frames": len(images), "objects": len(annotations)}
