"""Streaming models on real labelled photographs: labelled-set readers, class-aware matching at mask IoU 0.5, AP50.

No ROS, no torch: pycocotools, OpenCV and NumPy.

**Labelled sets** (`RealSet`, a list of `RealSample`):

- YOLO-seg layout, `read_yolo_seg(ROOT)`: `ROOT/images/<stem>.jpg|jpeg|png|bmp` and `ROOT/labels/<stem>.txt`, one
  line per instance, `class x1 y1 x2 y2 ...`: a COCO-80 class id, then at least 3 polygon vertices with x and y
  normalised to the image's width and height ([0, 1]). Ids 0 person, 1 bicycle, 2 car, 3 motorcycle, 5 bus, 6 train,
  7 truck are ground truth (`COCO80_CLASSES`); any other id is another object: its line must still be well formed,
  then it is neither ground truth nor counted (only tallied as `other_objects`). An image without a label file has
  no objects; blank lines are skipped.
- COCO instances JSON and an image folder, `read_coco_instances(FILE, DIR)` (COCO's own files, the labelling
  studio's `annotations_coco.json`): images by `file_name` under DIR, whose decoded size must equal the JSON's
  `width` x `height`; categories mapped by name to the 8 instance classes of `instseg_core.base.classes` (COCO and
  the studio use the same names); other categories are other objects. Segmentations are polygons (pixels) or RLE.

Polygons are rasterised at the image size by pycocotools (`frPyObjects`, COCO's own rasterisation; normalised
coordinates are first multiplied by the width and height). A malformed label line, an unreadable JSON, an image
that is missing or does not decode raise `RealDataError`, whose message begins with the file's path; with
`skip_bad=True` the readers skip that image instead and list the message in `RealSet.skipped`.

**Metrics** (`evaluate_predictions`; IoU = mask IoU by pycocotools' `mask.iou`):

- Classes. COCO labels riders "person", so a predicted "rider" counts as "person", and so does a ground-truth
  "rider" (a studio export): `MATCH_CLASS`. Every other class must match exactly. Reports list the 7 classes that
  remain, `REPORT_CLASSES`.
- Ignore. Ground truth of fewer than `min_gt_area` pixels (default 0: none) and `iscrowd` regions are "ignore": never
  missed, and a prediction matched to one is neither a true nor a false positive.
- Matching, per image: predictions in decreasing score order (stable for ties); each takes, among the ground truth
  of its class that is neither matched yet nor ignore, the one of highest IoU if that IoU >= 0.5; failing that, an
  ignore object of its class with IoU >= 0.5 (a crowd region may take any number of predictions, a small object
  one; the IoU with a crowd region is the intersection over the prediction's area). This is COCOeval's matching.
- recall@0.5 = matched ground truth / ground truth; precision@0.5 = matched predictions / predictions; both pooled
  over the whole set, ignored ground truth and predictions excluded from both counts; per class the same, ground
  truth counted by its class, predictions by their predicted class. None where the denominator is 0.
- predictions per image = every prediction kept (ignored ones included) / images; ground truth per image = ground
  truth that is not ignore / images.
- mask AP50: pycocotools' COCOeval, iouType 'segm', the AP at IoU 0.5, area 'all', maxDets 100, with the same
  classes and the same ignore (ground truth below `min_gt_area` is marked ignore; COCOeval's own area ranges would
  also drop small unmatched predictions, which the definition above does not), averaged over the classes that have
  ground truth in the set (COCO's convention; predictions of a class without ground truth do not count).
- class-agnostic: the same figures with a single class (any predicted class matches any ground truth), a
  diagnostic of whether a model finds the objects at all.

**Predictions** (`ImageInstances`: RLE masks, class names, scores) are kept apart from the network:
`predict_real_set` runs a Segmenter once, `evaluate_predictions` scores them, and `sweep_score_thresholds` scores
them at several thresholds without running the network again. The Segmenter filters by score after decoding, so the
predictions >= t of a pass at a lower threshold are exactly those of a pass at t.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from instseg_core.base.classes import INSTANCE_CLASSES
from instseg_core.data.label_export import polygons_rle
from instseg_core.eval.coco import encode_mask

if TYPE_CHECKING:
    from instseg_core.runtime.segmenter import SegmentationResult, Segmenter

IOU_THRESHOLD = 0.5
COCO80_CLASSES: dict[int, str] = {0: "person", 1: "bicycle", 2: "car", 3: "motorcycle", 5: "bus", 6: "train",
                                  7: "truck"}
MATCH_CLASS: dict[str, str] = {name: "person" if name == "rider" else name for name in INSTANCE_CLASSES}
REPORT_CLASSES: tuple[str, ...] = tuple(dict.fromkeys(MATCH_CLASS.values()))
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
_AGNOSTIC = "object"  # the one class of the class-agnostic figures
_COORDINATE_SLACK = 1e-3  # normalised YOLO coordinates may overshoot [0, 1] by rounding


class RealDataError(ValueError):
    """A labelled set cannot be read; the message begins with the offending file's path."""


# ---------------------------------------------------------------------------------------------- labelled sets


@dataclass(frozen=True)
class GroundTruthObject:
    """One labelled object: class name (one of INSTANCE_CLASSES), pycocotools RLE at the image size, area in
    pixels, and whether it is an `iscrowd` region."""

    class_name: str
    rle: dict
    area: int
    crowd: bool = False

    @classmethod
    def from_rle(cls, class_name: str, rle: dict, crowd: bool = False) -> GroundTruthObject:
        return cls(class_name, rle, int(mask_utils.area(rle)), crowd)

    @classmethod
    def from_mask(cls, class_name: str, mask: np.ndarray, crowd: bool = False) -> GroundTruthObject:
        """From an (H, W) bool mask."""
        return cls.from_rle(class_name, encode_mask(mask), crowd)


@dataclass(frozen=True)
class RealSample:
    """One labelled photograph: a name (file stem), its path, width and height in pixels, its ground truth, and the
    number of labelled objects of other classes (not ground truth)."""

    name: str
    image_path: Path
    width: int
    height: int
    objects: tuple[GroundTruthObject, ...]
    other_objects: int = 0

    def rgb(self) -> np.ndarray:
        """The photograph, (H, W, 3) uint8 RGB; RealDataError if it no longer decodes."""
        return read_rgb(self.image_path)


@dataclass
class RealSet:
    """The samples read, and one message per image skipped (`skip_bad`)."""

    samples: list[RealSample] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def extend(self, other: RealSet) -> None:
        self.samples += other.samples
        self.skipped += other.skipped


def read_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image file, its pixels as stored (an EXIF orientation is not applied: COCO's and
    YOLO's labels refer to the stored pixels); RealDataError when it is missing or does not decode."""
    if not path.is_file():
        raise RealDataError(f"{path}: image file not found")
    rgb = cv2.imread(str(path), cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION)
    if rgb is None:
        raise RealDataError(f"{path}: not a decodable image")
    return rgb


def decode_rle(rle: dict) -> np.ndarray:
    """(H, W) bool mask of a pycocotools RLE. pycocotools 2.0.11's decode warns under NumPy 2 (its Cython array
    wrapper lacks __array__'s copy keyword; the result is right): that one warning is silenced here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="__array__ implementation doesn't accept a copy keyword",
                                category=DeprecationWarning)
        return mask_utils.decode(rle).astype(bool)


def parse_yolo_seg_line(line: str) -> tuple[int, np.ndarray]:
    """`class x1 y1 x2 y2 ...` -> (class id, (K, 2) float64 normalised x, y with K >= 3); ValueError saying what is
    wrong."""
    fields_ = line.split()
    try:
        class_id = int(fields_[0])
        values = np.array([float(v) for v in fields_[1:]], np.float64)
    except ValueError:
        raise ValueError("expected an integer class id followed by numbers") from None
    if class_id < 0:
        raise ValueError(f"negative class id {class_id}")
    if values.size % 2 or values.size < 6:
        raise ValueError(f"expected pairs of x y for at least 3 points, got {values.size} numbers")
    if not np.all(np.isfinite(values)) or values.min() < -_COORDINATE_SLACK or values.max() > 1 + _COORDINATE_SLACK:
        raise ValueError("coordinates must be normalised to [0, 1]")
    return class_id, values.reshape(-1, 2)


def _yolo_sample(image_path: Path, label_path: Path) -> RealSample:
    height, width = read_rgb(image_path).shape[:2]
    objects, others = [], 0
    lines = label_path.read_text().splitlines() if label_path.exists() else []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            class_id, points = parse_yolo_seg_line(line)
        except ValueError as error:
            raise RealDataError(f"{label_path}:{number}: malformed label line ({error}): "
                                f"{line.strip()[:60]!r}") from None
        if class_id not in COCO80_CLASSES:
            others += 1
            continue
        pixels = (points * (width, height)).ravel()
        objects.append(GroundTruthObject.from_rle(COCO80_CLASSES[class_id], polygons_rle([pixels], (height, width))))
    return RealSample(image_path.stem, image_path, width, height, tuple(objects), others)


def _collect(items: Iterable[Any], read: Callable[[Any], RealSample], skip_bad: bool) -> RealSet:
    real_set = RealSet()
    for item in items:
        try:
            real_set.samples.append(read(item))
        except RealDataError as error:
            if not skip_bad:
                raise
            real_set.skipped.append(str(error))
    return real_set


def read_yolo_seg(root: str | Path, *, skip_bad: bool = False, limit: int | None = None) -> RealSet:
    """The labelled set in YOLO-seg layout under `root` (module docstring), images in name order (the first `limit`)."""
    root = Path(root)
    images_dir, labels_dir = root / "images", root / "labels"
    if not images_dir.is_dir():
        raise RealDataError(f"{images_dir}: no such directory (expected ROOT/images and ROOT/labels)")
    images = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    stems = [p.stem for p in images]
    if len(set(stems)) < len(stems):
        duplicate = next(s for s in stems if stems.count(s) > 1)
        raise RealDataError(f"{images_dir}: two images named {duplicate!r} share one label file")
    return _collect(images[:limit], lambda p: _yolo_sample(p, labels_dir / f"{p.stem}.txt"), skip_bad)


def _coco_segmentation(segmentation: Any, width: int, height: int) -> dict:
    """pycocotools RLE of a COCO `segmentation` (polygon list in pixels, uncompressed or compressed RLE); ValueError."""
    if isinstance(segmentation, list):
        if not segmentation or any(not isinstance(p, list) or len(p) < 6 or len(p) % 2 for p in segmentation):
            raise ValueError("polygons must be lists of x, y pairs with at least 3 points")
        return polygons_rle(segmentation, (height, width))
    if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        if list(segmentation["size"]) != [height, width]:
            raise ValueError(f"RLE size {segmentation['size']} is not the image's [{height}, {width}]")
        if isinstance(segmentation["counts"], list):
            return mask_utils.frPyObjects(segmentation, height, width)
        counts = segmentation["counts"]
        return {"size": [height, width], "counts": counts.encode() if isinstance(counts, str) else bytes(counts)}
    raise ValueError("segmentation is neither a polygon list nor an RLE")


def read_coco_instances(json_file: str | Path, image_dir: str | Path, *, skip_bad: bool = False,
                        limit: int | None = None) -> RealSet:
    """The labelled set of a COCO instances JSON over `image_dir` (module docstring), images in the JSON's order
    (the first `limit`)."""
    json_file, image_dir = Path(json_file), Path(image_dir)
    if not image_dir.is_dir():
        raise RealDataError(f"{image_dir}: no such directory")
    try:
        dataset = json.loads(json_file.read_text())
        categories = {c["id"]: c["name"] for c in dataset["categories"]}
        images = [(i["id"], i["file_name"], int(i["width"]), int(i["height"])) for i in dataset["images"]]
        labels = list(dataset.get("annotations", []))
    except FileNotFoundError:
        raise RealDataError(f"{json_file}: no such file") from None
    except (ValueError, KeyError, TypeError) as error:
        raise RealDataError(f"{json_file}: not a COCO instances file ({type(error).__name__}: {error})") from None
    by_image: dict[Any, list[dict]] = {image_id: [] for image_id, *_ in images}
    for annotation in labels:
        if annotation.get("image_id") not in by_image or annotation.get("category_id") not in categories:
            raise RealDataError(f"{json_file}: annotation {annotation.get('id')} names an unknown image or category")
        by_image[annotation["image_id"]].append(annotation)

    def read(entry: tuple[Any, str, int, int]) -> RealSample:
        image_id, file_name, width, height = entry
        path = image_dir / file_name
        decoded_height, decoded_width = read_rgb(path).shape[:2]
        if (decoded_width, decoded_height) != (width, height):
            raise RealDataError(f"{path}: {decoded_width}x{decoded_height} pixels, but {json_file} says "
                                f"{width}x{height}")
        objects, others = [], 0
        for annotation in by_image[image_id]:
            name = categories[annotation["category_id"]]
            if name not in MATCH_CLASS:
                others += 1
                continue
            try:
                rle = _coco_segmentation(annotation.get("segmentation"), width, height)
            except (ValueError, TypeError) as error:
                raise RealDataError(f"{json_file}: annotation {annotation.get('id')} of {file_name}: "
                                    f"{error}") from None
            objects.append(GroundTruthObject.from_rle(name, rle, bool(annotation.get("iscrowd", 0))))
        return RealSample(Path(file_name).stem, path, width, height, tuple(objects), others)

    return _collect(images[:limit], read, skip_bad)


# ------------------------------------------------------------------------------------------------ predictions


@dataclass(frozen=True)
class ImageInstances:
    """Predicted instances of one image: pycocotools RLEs at the image size, class names (the model's) and scores
    (N,) float32 in [0, 1]. `min_score`: the score threshold they were made with (no prediction below it was kept)."""

    rles: tuple[dict, ...]
    class_names: tuple[str, ...]
    scores: np.ndarray
    min_score: float = 0.0

    @classmethod
    def from_masks(cls, masks: np.ndarray, class_names: Sequence[str], scores: Sequence[float] | np.ndarray,
                   min_score: float = 0.0) -> ImageInstances:
        """From masks (N, H, W) bool."""
        return cls(tuple(encode_mask(m) for m in masks), tuple(class_names), np.asarray(scores, np.float32),
                   min_score)

    @classmethod
    def from_result(cls, result: SegmentationResult, min_score: float = 0.0) -> ImageInstances:
        """From a Segmenter's result (instances at the image's resolution)."""
        return cls.from_masks(result.instances.masks(), result.class_names, result.instances.scores, min_score)

    def above(self, threshold: float) -> ImageInstances:
        """The predictions with score >= threshold; ValueError below `min_score` (those were never kept)."""
        if threshold < self.min_score:
            raise ValueError(f"score threshold {threshold} is below the {self.min_score} these predictions were "
                             "made with: predict again with a lower threshold")
        keep = np.flatnonzero(self.scores >= threshold)
        return ImageInstances(tuple(self.rles[k] for k in keep), tuple(self.class_names[k] for k in keep),
                              self.scores[keep], threshold)


def predict_real_set(segmenter: Segmenter, samples: Sequence[RealSample]) -> list[ImageInstances]:
    """Run `segmenter` once on every sample's photograph (RealDataError if one no longer decodes)."""
    return [ImageInstances.from_result(segmenter(sample.rgb()), segmenter.score_threshold) for sample in samples]


# ---------------------------------------------------------------------------------------------------- matching


@dataclass(frozen=True)
class ImageMatch:
    """Matching of one image (module docstring): per ground truth (G,) bool `gt_matched`, `gt_ignored`; per
    prediction (N,) bool `pred_matched` (a true positive), `pred_ignored` (matched to an ignore object)."""

    gt_matched: np.ndarray
    gt_ignored: np.ndarray
    pred_matched: np.ndarray
    pred_ignored: np.ndarray


def _class_of(name: str, class_aware: bool) -> str:
    return MATCH_CLASS.get(name, name) if class_aware else _AGNOSTIC


def match_image(predictions: ImageInstances, sample: RealSample, *, class_aware: bool = True,
                min_gt_area: float = 0) -> ImageMatch:
    """Greedy one-to-one matching at mask IoU >= 0.5 of one image's predictions to its ground truth."""
    objects = sample.objects
    crowd = np.array([o.crowd for o in objects], bool)
    ignored = crowd | np.array([o.area < min_gt_area for o in objects], bool)
    count = len(predictions.rles)
    ious = np.zeros((count, len(objects)))
    if count and objects:
        ious = np.asarray(mask_utils.iou(list(predictions.rles), [o.rle for o in objects], crowd.astype(np.uint8)))
        gt_classes = np.array([_class_of(o.class_name, class_aware) for o in objects])
        pred_classes = np.array([_class_of(n, class_aware) for n in predictions.class_names])
        ious = np.where(pred_classes[:, None] == gt_classes[None, :], ious, -1.0)
    gt_taken = np.zeros(len(objects), bool)
    pred_matched, pred_ignored = np.zeros(count, bool), np.zeros(count, bool)
    for d in np.argsort(-predictions.scores, kind="stable"):
        for candidates in (~ignored & ~gt_taken, ignored & (~gt_taken | crowd)):
            values = np.where(candidates, ious[d], -1.0)
            if values.size and values.max() >= IOU_THRESHOLD:
                g = int(np.argmax(values))
                gt_taken[g] = True
                pred_matched[d], pred_ignored[d] = not ignored[g], bool(ignored[g])
                break
    return ImageMatch(gt_taken & ~ignored, ignored, pred_matched, pred_ignored)


# -------------------------------------------------------------------------------------------------------- AP50


class _IgnoringCOCOeval(COCOeval):
    """COCOeval that also marks ground truth below `min_gt_area` pixels as ignore (pycocotools' _prepare sets
    'ignore' from 'iscrowd' alone)."""

    def __init__(self, coco_gt: COCO, coco_dt: COCO, min_gt_area: float) -> None:
        super().__init__(coco_gt, coco_dt, iouType="segm")
        self.min_gt_area = min_gt_area

    def _prepare(self) -> None:
        super()._prepare()
        for image_objects in self._gts.values():
            for annotation in image_objects:
                annotation["ignore"] = int(bool(annotation["ignore"]) or annotation["area"] < self.min_gt_area)


def _coco(images: list[dict], annotations: list[dict], categories: list[dict]) -> COCO:
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations, "categories": categories}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def coco_ap50(predictions: Sequence[ImageInstances], samples: Sequence[RealSample], *, class_aware: bool = True,
              min_gt_area: float = 0) -> tuple[float | None, dict[str, float | None]]:
    """Mask AP50 with COCOeval (module docstring): (mean over classes with ground truth, per class); None where a
    class has no ground truth."""
    names = list(REPORT_CLASSES) if class_aware else [_AGNOSTIC]
    category = {name: k + 1 for k, name in enumerate(names)}
    images = [{"id": i + 1, "width": s.width, "height": s.height} for i, s in enumerate(samples)]
    ground_truth: list[dict] = []
    detections: list[dict] = []
    for i, (sample, prediction) in enumerate(zip(samples, predictions, strict=True)):
        for o in sample.objects:
            ground_truth.append({"id": len(ground_truth) + 1, "image_id": i + 1, "iscrowd": int(o.crowd),
                                 "category_id": category[_class_of(o.class_name, class_aware)], "segmentation": o.rle,
                                 "area": float(o.area), "bbox": mask_utils.toBbox(o.rle).tolist()})
        for rle, name, score in zip(prediction.rles, prediction.class_names, prediction.scores, strict=True):
            detections.append({"id": len(detections) + 1, "image_id": i + 1, "iscrowd": 0, "score": float(score),
                               "category_id": category[_class_of(name, class_aware)], "segmentation": rle,
                               "area": float(mask_utils.area(rle)), "bbox": mask_utils.toBbox(rle).tolist()})
    categories = [{"id": k, "name": name} for name, k in category.items()]
    evaluator = _IgnoringCOCOeval(_coco(images, ground_truth, categories), _coco(images, detections, categories),
                                  min_gt_area)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
    # COCOeval's default parameters: iouThrs[0] = 0.5, areaRng[0] = 'all', maxDets[-1] = 100
    precision = evaluator.eval["precision"][0, :, :, 0, -1]  # (101 recall points, classes)
    per_class = {}
    for name, k in category.items():
        values = precision[:, evaluator.params.catIds.index(k)]
        per_class[name] = float(values.mean()) if np.all(values > -1) else None
    valid = [v for v in per_class.values() if v is not None]
    return (float(np.mean(valid)) if valid else None), per_class


# ----------------------------------------------------------------------------------------------------- reports


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


@dataclass(frozen=True)
class Figures:
    """Counts of one class (or of all): ground truth (ignore excluded) and how much of it was matched, predictions
    (those matched to ignore objects excluded) and how many matched, predictions matched to ignore objects; AP50."""

    ground_truth: int = 0
    matched_ground_truth: int = 0
    predictions: int = 0
    matched_predictions: int = 0
    ignored_predictions: int = 0
    ap50: float | None = None

    @property
    def recall(self) -> float | None:
        return _ratio(self.matched_ground_truth, self.ground_truth)

    @property
    def precision(self) -> float | None:
        return _ratio(self.matched_predictions, self.predictions)

    def __add__(self, other: Figures) -> Figures:
        """Counts summed; AP50 is not additive and is left None."""
        return Figures(self.ground_truth + other.ground_truth, self.matched_ground_truth + other.matched_ground_truth,
                       self.predictions + other.predictions, self.matched_predictions + other.matched_predictions,
                       self.ignored_predictions + other.ignored_predictions)

    def to_dict(self) -> dict:
        return {"recall": self.recall, "precision": self.precision, "ap50": self.ap50,
                "ground_truth": self.ground_truth, "matched_ground_truth": self.matched_ground_truth,
                "predictions": self.predictions, "matched_predictions": self.matched_predictions,
                "ignored_predictions": self.ignored_predictions}


@dataclass(frozen=True)
class RealSetReport:
    """Figures of a model on a labelled set (module docstring): `overall` and `per_class` (REPORT_CLASSES)
    class-aware, `class_agnostic`; the score threshold applied (None: predictions as given), `min_gt_area` (pixels),
    ground truth ignored, other objects, and the images skipped as bad (messages)."""

    images: int
    score_threshold: float | None
    min_gt_area: float
    overall: Figures
    per_class: dict[str, Figures]
    class_agnostic: Figures
    ignored_ground_truth: int
    other_objects: int
    skipped: tuple[str, ...] = ()

    @property
    def recall(self) -> float | None:
        return self.overall.recall

    @property
    def precision(self) -> float | None:
        return self.overall.precision

    @property
    def ap50(self) -> float | None:
        return self.overall.ap50

    @property
    def predictions_per_image(self) -> float | None:
        return _ratio(self.overall.predictions + self.overall.ignored_predictions, self.images)

    @property
    def ground_truth_per_image(self) -> float | None:
        return _ratio(self.overall.ground_truth, self.images)

    def to_dict(self) -> dict:
        """JSON-ready: the headline figures first, then the counts, per class and class-agnostic."""
        return {"recall": self.recall, "precision": self.precision, "ap50": self.ap50,
                "predictions_per_image": self.predictions_per_image,
                "ground_truth_per_image": self.ground_truth_per_image, "images": self.images,
                "score_threshold": self.score_threshold, "min_gt_area": self.min_gt_area,
                **{k: v for k, v in self.overall.to_dict().items() if k not in ("recall", "precision", "ap50")},
                "ignored_ground_truth": self.ignored_ground_truth, "other_objects": self.other_objects,
                "skipped_images": len(self.skipped), "skipped": list(self.skipped),
                "per_class": {name: figures.to_dict() for name, figures in self.per_class.items()},
                "class_agnostic": self.class_agnostic.to_dict()}


def _tally(predictions: Sequence[ImageInstances], samples: Sequence[RealSample], class_aware: bool,
           min_gt_area: float) -> tuple[dict[str, Figures], int]:
    """Figures per (matching) class without AP, and the number of ignored ground truth."""
    names = REPORT_CLASSES if class_aware else (_AGNOSTIC,)
    counts = {name: np.zeros(5, np.int64) for name in names}  # the first five fields of Figures
    ignored = 0
    for prediction, sample in zip(predictions, samples, strict=True):
        match = match_image(prediction, sample, class_aware=class_aware, min_gt_area=min_gt_area)
        ignored += int(match.gt_ignored.sum())
        for k, o in enumerate(sample.objects):
            if not match.gt_ignored[k]:
                counts[_class_of(o.class_name, class_aware)][:2] += (1, match.gt_matched[k])
        for k, name in enumerate(prediction.class_names):
            row = counts.setdefault(_class_of(name, class_aware), np.zeros(5, np.int64))
            row[2:] += (not match.pred_ignored[k], match.pred_matched[k], match.pred_ignored[k])
    return {name: Figures(*(int(v) for v in row)) for name, row in counts.items()}, ignored


def evaluate_predictions(predictions: Sequence[ImageInstances], samples: Sequence[RealSample], *,
                         min_gt_area: float = 0, score_threshold: float | None = None) -> RealSetReport:
    """The report of `predictions` (one per sample, same order) on `samples`; with `score_threshold`, only the
    predictions of at least that score count."""
    if len(predictions) != len(samples):
        raise ValueError(f"{len(samples)} samples but {len(predictions)} prediction sets")
    if score_threshold is not None:
        predictions = [p.above(score_threshold) for p in predictions]
    per_class, ignored = _tally(predictions, samples, True, min_gt_area)
    agnostic, _ = _tally(predictions, samples, False, min_gt_area)
    ap50, per_class_ap50 = coco_ap50(predictions, samples, class_aware=True, min_gt_area=min_gt_area)
    agnostic_ap50, _ = coco_ap50(predictions, samples, class_aware=False, min_gt_area=min_gt_area)
    overall = replace(sum(per_class.values(), Figures()), ap50=ap50)
    per_class = {name: replace(f, ap50=per_class_ap50.get(name)) for name, f in per_class.items()}
    return RealSetReport(len(samples), score_threshold, min_gt_area, overall, per_class,
                         replace(agnostic[_AGNOSTIC], ap50=agnostic_ap50), ignored,
                         sum(s.other_objects for s in samples))


def sweep_score_thresholds(predictions: Sequence[ImageInstances], samples: Sequence[RealSample],
                           thresholds: Iterable[float], *, min_gt_area: float = 0) -> list[RealSetReport]:
    """One report per score threshold from one inference pass (made at a threshold <= each of `thresholds`)."""
    return [evaluate_predictions(predictions, samples, min_gt_area=min_gt_area, score_threshold=t)
            for t in thresholds]


def evaluate_real_set(segmenter: Segmenter, samples: Sequence[RealSample], *,
                      min_gt_area: float = 0) -> RealSetReport:
    """Run `segmenter` on `samples` and report at its own score threshold."""
    return evaluate_predictions(predict_real_set(segmenter, samples), samples, min_gt_area=min_gt_area,
                                score_threshold=segmenter.score_threshold)


def format_rate(value: float | None, digits: int = 3) -> str:
    """A rate for tables: fixed digits, '-' for None (nothing to divide by) or NaN."""
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"
