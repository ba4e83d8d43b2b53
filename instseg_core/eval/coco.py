"""COCO mask AP with pycocotools (the official COCO evaluation code).

Ground truth comes from Cityscapes-format samples: one annotation per instance of the 8 instance
classes, and one `iscrowd` annotation per class for its group regions (e.g. "cargroup"), so that
detections on crowds are neither rewarded nor punished, as in Cityscapes. Category ids are the
Cityscapes label ids (person 24 ... bicycle 33). Masks are run-length encoded by pycocotools.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from instseg_core.data.cityscapes import INSTANCE_CLASSES, INSTANCE_LABEL_IDS, CityscapesSample

CATEGORIES = [{"id": label_id, "name": name} for name, label_id in zip(INSTANCE_CLASSES, INSTANCE_LABEL_IDS,
                                                                           strict=True)]


@dataclass(frozen=True)
class ImagePredictions:
    """Instances predicted for one image: masks (N, H, W) bool, Cityscapes label ids (N,), scores (N,)."""

    masks: np.ndarray
    label_ids: Sequence[int]
    scores: Sequence[float]


@dataclass(frozen=True)
class CocoEvaluation:
    """stats: COCOeval's 12 numbers (AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl);
    per_class_ap: class name -> AP@[.5:.95] (NaN for classes without ground truth)."""

    stats: np.ndarray
    per_class_ap: dict[str, float]

    @property
    def ap(self) -> float:
        return float(self.stats[0])

    @property
    def ap50(self) -> float:
        return float(self.stats[1])


def encode_mask(mask: np.ndarray) -> dict:
    """pycocotools RLE of an (H, W) bool mask, its counts as str (JSON-ready)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def coco_ground_truth(samples: Iterable[CityscapesSample]) -> dict:
    """A COCO instances dict (images, annotations, categories) from Cityscapes samples."""
    images: list[dict] = []
    annotations: list[dict] = []
    for image_id, sample in enumerate(samples, start=1):
        height, width = sample.instance_ids.shape
        images.append({"id": image_id, "width": int(width), "height": int(height), "file_name": sample.stem})
        regions = [(m, int(c), 0) for m, c in zip(sample.masks, sample.label_ids_per_instance, strict=True)]
        regions += [(sample.instance_ids == c, c, 1) for c in INSTANCE_LABEL_IDS if np.any(sample.instance_ids == c)]
        for mask, label_id, crowd in regions:
            rle = encode_mask(mask)
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": label_id, "iscrowd": crowd,
                "segmentation": rle, "area": float(mask_utils.area(rle)),
                "bbox": [float(v) for v in mask_utils.toBbox(rle)],
            })
    return {"images": images, "annotations": annotations, "categories": CATEGORIES}


def coco_mask_ap(samples: Sequence[CityscapesSample], predictions: Sequence[ImagePredictions]) -> CocoEvaluation:
    """Mask AP of `predictions` (one entry per sample, same order) with pycocotools' COCOeval."""
    if len(samples) != len(predictions):
        raise ValueError(f"{len(samples)} samples but {len(predictions)} prediction sets")
    ground_truth = coco_ground_truth(samples)
    detections = [
        {"image_id": image_id, "category_id": int(label_id), "segmentation": encode_mask(mask), "score": float(score)}
        for image_id, prediction in enumerate(predictions, start=1)
        for mask, label_id, score in zip(prediction.masks, prediction.label_ids, prediction.scores, strict=True)
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = ground_truth
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(detections) if detections else COCO()
        if not detections:
            coco_dt.dataset = {"images": ground_truth["images"], "annotations": [], "categories": CATEGORIES}
            coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, iouType="segm")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    precision = evaluator.eval["precision"]  # [T, R, K, A, M]: thresholds, recalls, classes, areas, maxDets
    per_class: dict[str, float] = {}
    for k, category_id in enumerate(evaluator.params.catIds):
        values = precision[:, :, k, 0, -1]
        values = values[values > -1]
        name = str(next(c["name"] for c in CATEGORIES if c["id"] == category_id))
        per_class[name] = float(values.mean()) if values.size else float("nan")
    return CocoEvaluation(np.asarray(evaluator.stats, dtype=float), per_class)
