"""How far instances built on a semantic class map can get, whatever separates them: the ceiling of an encoder.

A streaming model whose instance masks are cut out of a frozen semantic head (Spatial Embeddings on ESPNetv2:
seed = P_semantic(class) * quality) cannot draw an object's pixels that the semantic map does not call its class.
For each labelled object this module measures, on a (H, W) map of Cityscapes train ids at the image's size:

- coverage: the share of the object's pixels that the map calls its class group;
- box IoU: IoU with the object of the map's class-group pixels inside the object's own bounding box, i.e. the
  instance an ideal separator would cut given a perfect box (an oracle; no model can do better from this map
  except by drawing pixels the map does not call the class);
- component IoU: IoU with the best-overlapping connected component of the class-group pixels (no separation at
  all: the baseline the issue measured).

Two recall ceilings follow (an object counts when its IoU reaches 0.5, IOU_THRESHOLD, as in the matching):
- "recall_ceiling_any" (coverage >= 0.5): the best any decoder can do from this map, one that picks exactly the
  object's pixels among those the map calls its class (IoU = coverage);
- "recall_ceiling_box" (box IoU >= 0.5): a perfect separator given perfect boxes, which keeps all the class pixels
  inside the box (neighbours' and background pixels in the box included).
The share of background pixels (outside every labelled object of ours) that the map calls a thing class is the
other side: those regions become predictions unless something other than the map (the instance branch's quality)
rejects them.

Class groups: a person and a rider are one group (the validation counts a predicted rider as a person); car,
truck, bus and train are one (vehicle bodies the semantic head confuses among themselves); bicycle and
motorcycle are one. The grouping is generous on purpose: it can only raise the ceiling.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from instseg_core.base.classes import CLASSES_BY_NAME, INSTANCE_CLASSES
from instseg_core.eval.real_photos import IOU_THRESHOLD, RealSample, decode_rle

THING_TRAIN_IDS: dict[str, int] = {name: CLASSES_BY_NAME[name].train_id for name in INSTANCE_CLASSES}
CLASS_GROUPS: tuple[tuple[str, ...], ...] = (("person", "rider"), ("car", "truck", "bus", "train"),
                                             ("motorcycle", "bicycle"))
GROUP_OF: dict[str, tuple[str, ...]] = {name: group for group in CLASS_GROUPS for name in group}
FALSE_REGION_MIN_PIXELS = 128  # the shipped Spatial Embeddings decoding's smallest instance
FALSE_REGION_OVERLAP = 0.1  # at most this share of a false region's pixels on labelled objects


@dataclass(frozen=True)
class ObjectCeiling:
    """One labelled object against the class map: coverage, box IoU and component IoU (each in [0, 1])."""

    class_name: str
    area: int
    coverage: float
    box_iou: float
    component_iou: float


@dataclass
class CeilingReport:
    """Per-object ceilings of one set, plus background pixels the map called a thing class."""

    objects: list[ObjectCeiling] = field(default_factory=list)
    background_pixels: int = 0
    background_thing_pixels: int = 0
    images: int = 0
    false_regions: int = 0

    def _share(self, values: Sequence[float], threshold: float) -> float | None:
        return float(np.mean(np.asarray(values) >= threshold)) if len(values) else None

    def to_dict(self) -> dict:
        """JSON-ready figures, overall and per class."""
        def figures(objects: Sequence[ObjectCeiling]) -> dict:
            return {"objects": len(objects),
                    "mean_coverage": float(np.mean([o.coverage for o in objects])) if objects else None,
                    "recall_ceiling_any": self._share([o.coverage for o in objects], IOU_THRESHOLD),
                    "recall_ceiling_box": self._share([o.box_iou for o in objects], IOU_THRESHOLD),
                    "recall_components": self._share([o.component_iou for o in objects], IOU_THRESHOLD)}
        per_class = {name: figures([o for o in self.objects if o.class_name == name])
                     for name in sorted({o.class_name for o in self.objects})}
        background = (self.background_thing_pixels / self.background_pixels) if self.background_pixels else None
        false_per_image = self.false_regions / self.images if self.images else None
        return {**figures(self.objects), "background_called_thing": background,
                "false_regions_per_image": false_per_image, "per_class": per_class}


def group_mask(class_map: np.ndarray, class_name: str) -> np.ndarray:
    """(H, W) bool: pixels of `class_map` ((H, W) integer Cityscapes train ids) in `class_name`'s group."""
    return np.isin(class_map, [THING_TRAIN_IDS[name] for name in GROUP_OF[class_name]])


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = int(np.count_nonzero(a | b))
    return int(np.count_nonzero(a & b)) / union if union else 0.0


def object_ceiling(class_map: np.ndarray, mask: np.ndarray, class_name: str) -> ObjectCeiling:
    """The ceilings of one object: `mask` (H, W) bool, `class_map` (H, W) train ids of the same size."""
    if class_map.shape != mask.shape:
        raise ValueError(f"class map {class_map.shape} and object mask {mask.shape} differ in size")
    area = int(np.count_nonzero(mask))
    if area == 0:
        return ObjectCeiling(class_name, 0, 0.0, 0.0, 0.0)
    called = group_mask(class_map, class_name)
    ys, xs = np.nonzero(mask)
    in_box = np.zeros_like(mask)
    in_box[ys.min():ys.max() + 1, xs.min():xs.max() + 1] = True
    _, components = cv2.connectedComponents(called.astype(np.uint8))
    touched = [k for k in np.unique(components[mask]) if k != 0]
    component_iou = max((_iou(components == k, mask) for k in touched), default=0.0)
    return ObjectCeiling(class_name, area, int(np.count_nonzero(called & mask)) / area, _iou(called & in_box, mask),
                         component_iou)


def add_image(report: CeilingReport, class_map: np.ndarray, sample: RealSample,
              min_region_pixels: int = FALSE_REGION_MIN_PIXELS) -> None:
    """Adds one image's objects and background to `report`; `class_map` is (H, W) train ids at the image's size.
    Background = pixels outside every labelled object of ours (objects of other COCO classes, e.g. a dog, count as
    background here: the map should not call them a person or a vehicle either). A false region is a connected
    component of the map's thing pixels (any class) of at least `min_region_pixels` with at most 10 % of its
    pixels on labelled objects: a prediction unless the instance branch rejects it."""
    if class_map.shape != (sample.height, sample.width):
        raise ValueError(f"{sample.name}: class map {class_map.shape} is not the image's "
                         f"{(sample.height, sample.width)}")
    foreground = np.zeros(class_map.shape, bool)
    for obj in sample.objects:
        mask = decode_rle(obj.rle).astype(bool)
        foreground |= mask
        if not obj.crowd:
            report.objects.append(object_ceiling(class_map, mask, obj.class_name))
    thing = np.isin(class_map, list(THING_TRAIN_IDS.values()))
    count, components, stats, _ = cv2.connectedComponentsWithStats(thing.astype(np.uint8))
    on_objects = np.bincount(components[foreground], minlength=count)
    areas = stats[:, cv2.CC_STAT_AREA]
    report.false_regions += int(np.count_nonzero((areas[1:] >= min_region_pixels)
                                                 & (on_objects[1:] <= FALSE_REGION_OVERLAP * areas[1:])))
    report.images += 1
    report.background_pixels += int(np.count_nonzero(~foreground))
    report.background_thing_pixels += int(np.count_nonzero(thing & ~foreground))
