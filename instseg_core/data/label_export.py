"""Labelled frames -> a Cityscapes-format tree with COCO JSON and the clicks file, all or nothing.

The one writer behind `instseg-label` (clicks -> segmentation -> export) and the labelling studio (edited
polygons -> export), so that both produce the same files:

- `leftImg8bit/{split}/{city}/{city}_000000_{index:06d}_leftImg8bit.png` and the `gtFine` polygons JSON (each
  object's entry also carries "attributes": its track id and boolean attributes, as in the COCO file),
  instanceIds, labelIds and color images of each labelled frame (instseg_core.data.cityscapes.write_sample:
  the official converters; the project's reader and training commands load the tree unchanged). One export is
  one sequence: an object with a track id has the same instance id labelId * 1000 + k in every frame (k numbered
  per class in the order the tracks first appear; objects without a track take the free k of their frame; more
  than 1000 tracks of one class: the later ones are numbered per frame, counted in the summary). A crowd object
  (attribute "crowd") is written as a Cityscapes group ("persongroup", "cargroup"...): its pixels carry the class's
  label id in labelIds and instanceIds, and no instance id;
- `annotations_coco.json`: COCO instances with `info`, `licenses`, `images`, `annotations`, `categories`
  (Cityscapes label ids). Each annotation: `segmentation` a polygon in image pixels (x, y), or for a crowd object
  (`iscrowd` 1) the polygon's compressed RLE as COCO writes crowd regions; `area` and `bbox` [x, y, w, h] of the
  mask pycocotools makes from that segmentation (what COCOeval and annToMask use); `attributes` {"track_id", and
  the object's boolean attributes: "occluded", "truncated", "crowd"} as CVAT / Datumaro write them; and, as
  extensions, `instance_id` (its Cityscapes instance id; the label id for a crowd object), the extreme points
  (left, top, right, bottom as x0, y0, ..., x3, y3), score and polygon IoU;
- `clicks.json`: the extreme points per frame index in the format `instseg-label --clicks` reads, so the
  command line can redo the labels with another model.

`write_label_tree` writes into a staging folder beside OUT and renames it to OUT only when every frame was
written: OUT is either the previous tree or the complete new one, never a mixture.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import threading
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from instseg_core.base.atomic_files import replace_with, write_text_atomically
from instseg_core.data.cityscapes import GROUP_SUFFIX, name2label, write_sample

COCO_LICENSES = [{"id": 0, "name": "", "url": ""}]
"""The `licenses` of an export whose caller names none (what CVAT writes): one unnamed licence, id 0."""


class LabelExportError(RuntimeError):
    """The export cannot be written (an existing folder, an unknown class); the message says which."""


@dataclass(frozen=True)
class LabelledObject:
    """One object: Cityscapes class name, polygon (N, 2) int image x, y (N >= 3), the 4 extreme points
    (4, 2) float (left, top, right, bottom) it came from, and the model's score, polygon IoU and mask area
    (pixels) when known; its track id (the same object across the frames of the sequence) and boolean attributes
    ({"occluded", "truncated", "crowd"}) when it has them."""

    class_name: str
    polygon: np.ndarray
    extreme_points: np.ndarray
    score: float | None = None
    polygon_iou: float | None = None
    area: int | None = None
    track_id: int | None = None
    attributes: Mapping[str, bool] = field(default_factory=dict)

    @property
    def crowd(self) -> bool:
        """A crowd region (COCO iscrowd, a Cityscapes group), not one object."""
        return bool(self.attributes.get("crowd"))


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


def polygons_rle(polygons: Sequence[Sequence[float] | np.ndarray], shape: tuple[int, int]) -> dict:
    """The compressed RLE pycocotools makes of the union of `polygons` (each (N, 2) x, y or a flat [x0, y0, ...],
    N >= 3, in pixels) in an image of `shape` (H, W): the mask COCO tools see for a polygon segmentation
    (pycocotools fills each polygon as a continuous shape, so it is smaller than `polygon_area`'s filled pixel
    polygon by about half a pixel along the outline)."""
    from pycocotools import mask as mask_utils

    height, width = shape
    flat = [np.asarray(polygon, np.float64).reshape(-1).tolist() for polygon in polygons]
    return mask_utils.merge(mask_utils.frPyObjects(flat, int(height), int(width)))


def polygon_rle(polygon: np.ndarray, shape: tuple[int, int]) -> dict:
    """polygons_rle of one polygon (N, 2) x, y."""
    return polygons_rle([polygon], shape)


def object_attributes(obj: LabelledObject) -> dict[str, dict[str, Any]]:
    """{"attributes": {"track_id" (when known), and the object's boolean attributes}}: what the COCO annotation
    carries as CVAT / Datumaro write it, and the extra field of its entry in the Cityscapes polygons JSON."""
    attributes: dict[str, Any] = {} if obj.track_id is None else {"track_id": int(obj.track_id)}
    attributes |= {key: bool(value) for key, value in obj.attributes.items()}
    return {"attributes": attributes}


def coco_annotation(annotation_id: int, image_id: int, obj: LabelledObject, polygon: np.ndarray,
                    shape: tuple[int, int], instance_id: int | None = None) -> dict:
    """The COCO annotation of `obj` whose polygon, rounded to pixels, is `polygon` (N, 2) int32 x, y in an image of
    `shape` (H, W): category = Cityscapes label id; a polygon segmentation (a crowd object: its compressed RLE and
    iscrowd 1); area and bbox [x, y, w, h] of pycocotools' mask of it; "attributes" (track id and the boolean
    attributes); and the extensions instance_id (None when unknown), extreme points, score and polygon IoU."""
    from pycocotools import mask as mask_utils

    label = name2label[check_class(obj.class_name)]
    rle = polygon_rle(polygon, shape)
    if obj.crowd:
        segmentation: Any = {"size": [int(shape[0]), int(shape[1])], "counts": rle["counts"].decode("ascii")}
    else:
        segmentation = [polygon.astype(float).reshape(-1).tolist()]
    attributes = object_attributes(obj)["attributes"]
    return {"id": annotation_id, "image_id": image_id, "category_id": label.id, "iscrowd": int(obj.crowd),
            "segmentation": segmentation, "area": float(mask_utils.area(rle)),
            "bbox": [float(v) for v in mask_utils.toBbox(rle)], "attributes": attributes,
            "instance_id": instance_id, "score": obj.score, "polygon_iou": obj.polygon_iou,
            "extreme_points": np.asarray(obj.extreme_points, float).reshape(-1).tolist()}


CITY_PATTERN = re.compile(r"[^A-Za-z0-9-]+")


def city_name(*parts: str) -> str:
    """A Cityscapes city name from `parts` (e.g. a bag's name and a topic): letters, digits and '-' only (file
    names split on '_'), e.g. ("drive_0412.mcap", "/camera/image_raw") -> "drive-0412-camera-image-raw"."""
    words = [CITY_PATTERN.sub("-", part).strip("-") for part in parts]
    name = "-".join(w for w in words if w)
    return name[:120] or "labelled"


def bag_city_name(bag: str | os.PathLike, topic: str) -> str:
    """The Cityscapes city name of a bag's labels: the bag's name (without .mcap) and the topic, e.g.
    ("/data/drive_0412.mcap", "/camera/image_raw") -> "drive-0412-camera-image-raw", so that the trees of several
    bags (or topics) merged into one do not collide. The studio's export and instseg-label both use it."""
    name = Path(bag).name
    return city_name(name[:-len(".mcap")] if name.endswith(".mcap") else name, topic)


class InstanceNumbers:
    """The k of each object's Cityscapes instance id labelId * 1000 + k over the frames of one sequence: the same
    k for the same (class, track) in every frame, numbered per class in the order the tracks first appear; an
    object without a track, or a track beyond the 1000th of its class, takes the smallest k its frame leaves free
    (counted in `unstable`); crowd objects get none (groups carry no instance id)."""

    def __init__(self) -> None:
        self.tracks: dict[tuple[str, int], int] = {}
        self.used: dict[str, int] = {}
        self.unstable = 0

    def frame(self, objects: list[LabelledObject]) -> list[int | None]:
        numbers: list[int | None] = [None] * len(objects)
        taken: dict[str, set[int]] = {}
        for k, obj in enumerate(objects):
            if obj.crowd or obj.track_id is None:
                continue
            key = (obj.class_name, int(obj.track_id))
            if key not in self.tracks and self.used.get(obj.class_name, 0) < 1000:
                self.tracks[key] = self.used.get(obj.class_name, 0)
                self.used[obj.class_name] = self.tracks[key] + 1
            number = self.tracks.get(key)
            if number is not None and number not in taken.setdefault(obj.class_name, set()):
                numbers[k] = number
                taken[obj.class_name].add(number)
        for k, obj in enumerate(objects):
            if obj.crowd or numbers[k] is not None:
                continue
            free = next(n for n in range(1000) if n not in taken.setdefault(obj.class_name, set()))
            numbers[k] = free
            taken[obj.class_name].add(free)
            self.unstable += obj.track_id is not None
        return numbers


def write_label_tree(out: str | os.PathLike, frames: Iterable[LabelledFrame], *, split: str = "train",
                     city: str = "labelled", overwrite: bool = False, info: Mapping[str, Any] | None = None,
                     licenses: list[dict] | None = None) -> dict:
    """Write `frames` (those with at least one object) as a Cityscapes tree + COCO + clicks under `out`.

    One call is one sequence (instance ids of tracks are stable across its frames) of one `city` (letters, digits
    and '-': city_name makes one). `info` is merged into the COCO `info` (description, version, year,
    date_created, contributor, url); `licenses` replaces COCO_LICENSES. All or nothing (see the module docstring);
    an existing `out` is refused unless `overwrite`, and then replaced only once the new tree is complete. Returns
    {"frames", "objects", "crowd", "tracks", "unstable_instance_ids", "city", "out"}."""
    if not city or "_" in city or "/" in city:
        raise LabelExportError(f"city name {city!r}: must be non-empty without '_' or '/' (Cityscapes file names "
                               "split on '_')")
    out = Path(out)
    with _EXPORT_LOCK:  # one export at a time in this process: two at once shared a folder and published half a tree
        if out.exists() and not overwrite:
            raise LabelExportError(f"{out} exists; choose a new folder or allow overwriting (it is replaced only if "
                                   "the whole export succeeds)")
        staging = out.parent / f".{out.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        staging.mkdir(parents=True)
        now = datetime.datetime.now(datetime.UTC)
        coco_info = {"description": f"instseg labels ({city})", "version": "1.0", "year": now.year,
                     "date_created": now.isoformat(timespec="seconds"), "contributor": "", "url": "", **(info or {})}
        try:
            summary = _write_into(staging, frames, split, city, coco_info,
                                  COCO_LICENSES if licenses is None else licenses)
            replace_with(staging, out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return {**summary, "city": city, "out": str(out)}


_EXPORT_LOCK = threading.Lock()


def _write_into(root: Path, frames: Iterable[LabelledFrame], split: str, city: str, info: dict,
                licenses: list[dict]) -> dict:
    images: list[dict] = []
    annotations: list[dict] = []
    categories: dict[int, str] = {}
    clicks: dict[str, list[dict]] = {}
    numbering = InstanceNumbers()
    license_id = licenses[0]["id"] if licenses else None
    for frame in frames:
        objects = [o for o in frame.objects if len(o.polygon) >= 3]
        if not objects:
            continue
        for obj in objects:
            check_class(obj.class_name)
        polygons = [np.rint(np.asarray(o.polygon, np.float64)).astype(np.int32).reshape(-1, 2) for o in objects]
        numbers = numbering.frame(objects)
        stem = f"{city}_000000_{frame.index:06d}"
        write_sample(root, split, city, stem, frame.rgb,
                     [(o.class_name + (GROUP_SUFFIX if o.crowd else ""), p) for o, p in zip(objects, polygons,
                                                                                          strict=True)],
                     instance_numbers=numbers, object_extras=[object_attributes(o) for o in objects])
        height, width = frame.rgb.shape[:2]
        image_id = len(images) + 1
        captured = datetime.datetime.fromtimestamp(frame.stamp_ns / 1e9, datetime.UTC) if frame.stamp_ns else None
        images.append({"id": image_id, "file_name": f"leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png",
                       "height": int(height), "width": int(width), "license": license_id,
                       # one fixed form (microseconds always written) that a format string can parse
                       "date_captured": captured.isoformat(timespec="microseconds") if captured else "",
                       "frame_index": frame.index,
                       "stamp_ns": frame.stamp_ns, "frame_id": frame.frame_id})
        clicks[str(frame.index)] = [{"points": np.asarray(o.extreme_points, float).tolist(), "class": o.class_name}
                                    for o in objects]
        for obj, polygon, number in zip(objects, polygons, numbers, strict=True):
            label_id = name2label[obj.class_name].id
            instance_id = label_id if number is None else label_id * 1000 + number
            annotations.append(coco_annotation(len(annotations) + 1, image_id, obj, polygon, (height, width),
                                               instance_id))
            categories[annotations[-1]["category_id"]] = obj.class_name
    coco = {"info": info, "licenses": licenses, "images": images, "annotations": annotations,
            "categories": [{"id": i, "name": n, "supercategory": name2label[n].category}
                           for i, n in sorted(categories.items())]}
    write_text_atomically(root / "annotations_coco.json", json.dumps(coco))
    write_text_atomically(root / "clicks.json", json.dumps(clicks, indent=1))
    tracks = {(a["category_id"], a["attributes"]["track_id"]) for a in annotations if "track_id" in a["attributes"]}
    return {"frames": len(images), "objects": len(annotations), "crowd": sum(a["iscrowd"] for a in annotations),
            "tracks": len(tracks), "unstable_instance_ids": numbering.unstable}
