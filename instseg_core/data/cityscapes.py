"""Cityscapes: the official label table, file layout, and a reader for leftImg8bit + gtFine.

The label table is the official one from `cityscapesscripts.helpers.labels` (re-exported, not copied),
so ids, trainIds, categories and colours are exactly Cityscapes'. Conventions:

- label id (`Label.id`): what `*_gtFine_labelIds.png` stores (e.g. person 24, car 26);
- instance id: what `*_gtFine_instanceIds.png` (uint16) stores: labelId * 1000 + k for an individual
  object of an instance class (k = 0, 1, ... in the polygons file's drawing order), the plain labelId for
  stuff and for "group" regions (e.g. "cargroup": several cars annotated together, instance id 26);
- boxes are (x0, y0, x1, y1) in pixels, inclusive of the first and exclusive of the last pixel;
- images are RGB uint8, shape (H, W, 3).

The reader works on a real Cityscapes tree unchanged: pass its root, or set CITYSCAPES_DATASET. A file that exists
but does not decode (truncated, damaged) is a `SampleError` naming it (a missing one stays FileNotFoundError; an
image without an instanceIds file is no sample at all, listed in `CityscapesDataset.unannotated`), and
`CityscapesSample.check_sizes` refuses label images whose size is not their image's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from cityscapesscripts.helpers.labels import Label, id2label, labels, name2label, trainId2label
from PIL import Image, ImageDraw

from instseg_core.base.atomic_files import write_bytes_atomically
from instseg_core.base.classes import INSTANCE_CLASSES, INSTANCE_LABEL_IDS
from instseg_core.base.command_exit import InputError
from instseg_core.base.instances import masks_to_boxes

__all__ = [
    "GROUP_SUFFIX",
    "INSTANCE_CLASSES",
    "INSTANCE_LABEL_IDS",
    "SPLITS",
    "CityscapesDataset",
    "CityscapesSample",
    "Label",
    "PolygonObject",
    "SampleError",
    "dataset_root",
    "id2label",
    "labels",
    "name2label",
    "polygon_mask",
    "trainId2label",
    "visible_masks",
    "write_image",
    "write_sample",
]

SPLITS = ("train", "val", "test")


class SampleError(InputError):
    """A sample that cannot be used: a file that does not decode, or label images of another size than the image;
    the message names the file and what is wrong."""
# A polygon labelled "<class>group" (e.g. "persongroup") covers several objects annotated together.
GROUP_SUFFIX = "group"

IMAGE_SUFFIX = "_leftImg8bit.png"
GT_SUFFIXES = {
    "instance_ids": "_gtFine_instanceIds.png",
    "label_ids": "_gtFine_labelIds.png",
    "color": "_gtFine_color.png",
    "polygons": "_gtFine_polygons.json",
}


def dataset_root(root: str | os.PathLike | None = None) -> Path:
    """`root`, else $CITYSCAPES_DATASET; raises FileNotFoundError naming what is missing."""
    if root is None:
        root = os.environ.get("CITYSCAPES_DATASET")
        if not root:
            raise FileNotFoundError("no Cityscapes root given and CITYSCAPES_DATASET is not set")
    path = Path(root)
    if not any((path / folder).is_dir() for folder in ("leftImg8bit", "leftImg8bit_sequence")):
        raise FileNotFoundError(f"{path} is not a Cityscapes root: it has no leftImg8bit/ folder")
    return path


def image_path(root: Path, split: str, city: str, stem: str, image_dir: str = "leftImg8bit") -> Path:
    """leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png, stem = '{city}_{seq:06d}_{frame:06d}'."""
    return root / image_dir / split / city / f"{stem}{IMAGE_SUFFIX}"


def gt_path(root: Path, split: str, city: str, stem: str, kind: str, gt_dir: str = "gtFine") -> Path:
    """gtFine/{split}/{city}/{stem}_gtFine_{kind}; kind in GT_SUFFIXES (instance_ids, label_ids, ...)."""
    return root / gt_dir / split / city / f"{stem}{GT_SUFFIXES[kind]}"


def _png_bytes(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"cannot encode {image.dtype} {image.shape} as PNG")
    return data.tobytes()


def write_image(root: str | os.PathLike, split: str, city: str, stem: str, rgb: np.ndarray,
                image_dir: str = "leftImg8bit") -> Path:
    """Write an (H, W, 3) uint8 RGB image as {image_dir}/{split}/{city}/{stem}_leftImg8bit.png, atomically."""
    path = image_path(Path(root), split, city, stem, image_dir)
    write_bytes_atomically(path, _png_bytes(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)))
    return path


def polygons_json(height: int, width: int, objects: Sequence[tuple[str, np.ndarray]],
                  extras: Sequence[Mapping[str, Any]] | None = None) -> str:
    """Cityscapes *_gtFine_polygons.json text for objects (label, (N, 2) int x, y) in drawing order; `extras`, one
    mapping per object, adds fields to its entry (e.g. a track id and attributes; cityscapesscripts' reader keeps
    only label and polygon, so they do not change the label images)."""
    extras = extras or [{}] * len(objects)
    return json.dumps({
        "imgHeight": int(height), "imgWidth": int(width),
        "objects": [{**extra, "label": label, "polygon": np.asarray(polygon).astype(int).tolist()}
                    for (label, polygon), extra in zip(objects, extras, strict=True)],
    })


def write_sample(root: str | os.PathLike, split: str, city: str, stem: str, rgb: np.ndarray,
                 objects: Sequence[tuple[str, np.ndarray]], *, image_dir: str = "leftImg8bit",
                 gt_dir: str = "gtFine", instance_numbers: Sequence[int | None] | None = None,
                 object_extras: Sequence[Mapping[str, Any]] | None = None) -> dict[str, Path]:
    """Write one annotated image in the Cityscapes layout; returns the paths written.

    `rgb` (H, W, 3) uint8; `objects`: (label name, (N, 2) int polygon) in drawing order (later objects
    occlude earlier ones). The polygons JSON is written first; the instanceIds, labelIds and color images
    are made from it by the official cityscapesscripts converters, exactly as for real Cityscapes.
    `instance_numbers` (one per object, 0-999, distinct per class; None entries and group objects ignored): the
    k of each object's instance id labelId * 1000 + k instead of its place in the drawing order (e.g. the same k
    for the same tracked object in every frame of a sequence). `object_extras`: fields added to each object's entry
    of the polygons JSON (polygons_json). Every file is written atomically (temporary file + rename).
    """
    from cityscapesscripts.helpers.annotation import Annotation
    from cityscapesscripts.preparation.json2instanceImg import createInstanceImage
    from cityscapesscripts.preparation.json2labelImg import createLabelImage

    root = Path(root)
    height, width = rgb.shape[:2]
    text = polygons_json(height, width, objects, object_extras)
    annotation = Annotation()
    annotation.fromJsonText(text)
    instance_ids = np.asarray(createInstanceImage(annotation, "ids"), dtype=np.int64)
    if instance_numbers is not None:
        instance_ids = _renumbered(instance_ids, objects, instance_numbers)
    if instance_ids.max() > np.iinfo(np.uint16).max:
        raise ValueError(f"{stem}: more than 999 instances of one class")
    paths = {"image": write_image(root, split, city, stem, rgb, image_dir)}
    paths |= {kind: gt_path(root, split, city, stem, kind, gt_dir) for kind in GT_SUFFIXES}
    colour = np.asarray(createLabelImage(annotation, "color"))
    write_bytes_atomically(paths["polygons"], text.encode())
    write_bytes_atomically(paths["instance_ids"], _png_bytes(instance_ids.astype(np.uint16)))
    write_bytes_atomically(paths["label_ids"], _png_bytes(np.asarray(createLabelImage(annotation, "ids"), np.uint8)))
    write_bytes_atomically(paths["color"], _png_bytes(cv2.cvtColor(colour, cv2.COLOR_RGBA2BGRA)))
    return paths


def _renumbered(instance_ids: np.ndarray, objects: Sequence[tuple[str, np.ndarray]],
                numbers: Sequence[int | None]) -> np.ndarray:
    """`instance_ids` as createInstanceImage made it (labelId * 1000 + the object's place among its class's
    individual objects in drawing order) with each object's k replaced by its entry of `numbers`."""
    if len(numbers) != len(objects):
        raise ValueError(f"{len(numbers)} instance numbers for {len(objects)} objects")
    seen: dict[str, int] = {}
    mapping: dict[int, int] = {}
    for (label, _), number in zip(objects, numbers, strict=True):
        if label not in name2label or not name2label[label].hasInstances:
            continue  # a group region or stuff: the label id only
        place = seen.get(label, 0)
        seen[label] = place + 1
        if number is not None and not 0 <= number <= 999:
            raise ValueError(f"instance number {number} of a {label} is not in 0-999")
        base = name2label[label].id * 1000
        mapping[base + place] = base + (place if number is None else number)
    if len(set(mapping.values())) != len(mapping):
        raise ValueError("two objects of one class have the same instance number")
    if all(old == new for old, new in mapping.items()):
        return instance_ids
    table = np.arange(max(int(instance_ids.max()), *mapping) + 1, dtype=np.int64)
    for old, new in mapping.items():
        table[old] = new
    return table[instance_ids]


@dataclass(frozen=True)
class PolygonObject:
    """One object of a *_gtFine_polygons.json: label name (may end in 'group') and (N, 2) int32 x, y."""

    label: str
    polygon: np.ndarray

    @property
    def is_group(self) -> bool:
        return self.label not in name2label and self.label.endswith(GROUP_SUFFIX)

    @property
    def class_name(self) -> str:
        return self.label[: -len(GROUP_SUFFIX)] if self.is_group else self.label


def polygon_mask(polygon: np.ndarray, width: int, height: int) -> np.ndarray:
    """(H, W) bool raster of an (N, 2) polygon, drawn by PIL exactly as cityscapesscripts' converters draw it."""
    image = Image.new("L", (width, height), 0)
    ImageDraw.Draw(image).polygon([tuple(map(int, p)) for p in polygon], fill=1)
    return np.asarray(image, dtype=bool)


def visible_masks(height: int, width: int, objects: Sequence[PolygonObject]) -> list[np.ndarray]:
    """Per object, the pixels it keeps after the objects drawn after it (painter's order) cover theirs."""
    covered = np.zeros((height, width), bool)
    result: list[np.ndarray] = [covered] * len(objects)
    for index in range(len(objects) - 1, -1, -1):
        raster = polygon_mask(objects[index].polygon, width, height)
        result[index] = raster & ~covered
        covered |= raster
    return result


def read_polygons(path: Path) -> tuple[int, int, list[PolygonObject]]:
    """(height, width, objects in drawing order) of a polygons JSON; deleted objects are skipped."""
    data = json.loads(path.read_text())
    objects = [
        PolygonObject(str(obj["label"]), np.asarray(obj["polygon"], dtype=np.int32).reshape(-1, 2))
        for obj in data["objects"]
        if not obj.get("deleted", 0)
    ]
    return int(data["imgHeight"]), int(data["imgWidth"]), objects


@dataclass
class CityscapesSample:
    """One annotated image. Arrays are loaded on first access.

    Attributes: `image` (H, W, 3) uint8 RGB; `instance_ids` (H, W) int32 (see module docstring);
    `label_ids` (H, W) uint8. Per instance of the 8 instance classes (group regions excluded, ordered by
    instance id): `masks` (N, H, W) bool, `label_ids_per_instance` (N,) int, `instance_id_values` (N,),
    `boxes` (N, 4) int (x0, y0, x1, y1), `class_names`. `group_mask` (H, W) bool marks group regions
    and `polygons` lists every object of the polygons JSON (signs and lights too).
    """

    root: Path
    split: str
    city: str
    stem: str
    paths: dict[str, Path] = field(default_factory=dict)

    @cached_property
    def image(self) -> np.ndarray:
        return _read_png(self.paths["image"], cv2.IMREAD_COLOR_RGB)

    @cached_property
    def instance_ids(self) -> np.ndarray:
        return _read_png(self.paths["instance_ids"], cv2.IMREAD_UNCHANGED).astype(np.int32)

    @cached_property
    def label_ids(self) -> np.ndarray:
        return _read_png(self.paths["label_ids"], cv2.IMREAD_UNCHANGED)

    @cached_property
    def _instances(self) -> tuple[np.ndarray, np.ndarray]:
        ids = np.unique(self.instance_ids)
        ids = ids[(ids >= 1000) & np.isin(ids // 1000, INSTANCE_LABEL_IDS)]
        return ids, ids // 1000

    @property
    def instance_id_values(self) -> np.ndarray:
        return self._instances[0]

    @property
    def label_ids_per_instance(self) -> np.ndarray:
        return self._instances[1]

    @property
    def class_names(self) -> list[str]:
        return [id2label[int(i)].name for i in self.label_ids_per_instance]

    @cached_property
    def masks(self) -> np.ndarray:
        ids = self.instance_id_values
        return self.instance_ids[None, :, :] == ids[:, None, None]

    @cached_property
    def boxes(self) -> np.ndarray:
        return masks_to_boxes(self.masks)

    @cached_property
    def group_mask(self) -> np.ndarray:
        ids = self.instance_ids
        return np.isin(ids, INSTANCE_LABEL_IDS)

    @cached_property
    def polygons(self) -> list[PolygonObject]:
        return read_polygons(self.paths["polygons"])[2]

    def check_sizes(self, *kinds: str) -> None:
        """Decode the image and the label images `kinds` (default: instance_ids and label_ids) and check that they
        have the image's size; SampleError naming the file otherwise (a label image of another size would be
        misaligned with every pixel of its image)."""
        height, width = self.image.shape[:2]
        for kind in kinds or ("instance_ids", "label_ids"):
            label_height, label_width = getattr(self, kind).shape[:2]
            if (label_height, label_width) != (height, width):
                raise SampleError(f"{self.paths[kind]} is {label_width}x{label_height}, but its image "
                                  f"{self.paths['image']} is {width}x{height}")


PNG_SIGNATURE, PNG_END = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"


def _ends_early(path: Path) -> bool:
    """A PNG file that lacks its end chunk (IEND): cut off. Checked before decoding, so libpng is not asked (it
    prints its own "libpng error" line on stderr)."""
    with open(path, "rb") as stream:
        if stream.read(len(PNG_SIGNATURE)) != PNG_SIGNATURE:
            return False
        stream.seek(max(0, path.stat().st_size - len(PNG_END)))
        return stream.read() != PNG_END


def _read_png(path: Path, flags: int) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"cannot read image {path}: no such file")
    image = None if _ends_early(path) else cv2.imread(str(path), flags)
    if image is None:
        raise SampleError(f"cannot decode image {path} ({path.stat().st_size} bytes): truncated or damaged")
    return image


class CityscapesDataset(Sequence[CityscapesSample]):
    """The annotated images of one split of a Cityscapes-format tree, sorted by city and file name.

    `root`: the folder holding leftImg8bit/ and gtFine/ (default $CITYSCAPES_DATASET). Images without
    gtFine annotation (e.g. the test split, or leftImg8bit of the extra sets) are skipped unless
    `require_gt` is False; `unannotated` lists the images skipped so (a caller that trains says so).
    """

    def __init__(self, root: str | os.PathLike | None = None, split: str = "train", *,
                 require_gt: bool = True, image_dir: str = "leftImg8bit", gt_dir: str = "gtFine") -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.root = dataset_root(root)
        self.split = split
        self.samples: list[CityscapesSample] = []
        self.unannotated: list[Path] = []  # images left out because their instanceIds file is missing
        for image in sorted((self.root / image_dir / split).glob(f"*/*{IMAGE_SUFFIX}")):
            city, stem = image.parent.name, image.name[: -len(IMAGE_SUFFIX)]
            paths = {"image": image}
            paths |= {kind: gt_path(self.root, split, city, stem, kind, gt_dir) for kind in GT_SUFFIXES}
            if require_gt and not paths["instance_ids"].is_file():
                self.unannotated.append(image)
                continue
            self.samples.append(CityscapesSample(self.root, split, city, stem, paths))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> CityscapesSample:  # type: ignore[override]
        return self.samples[index]

    def __iter__(self) -> Iterator[CityscapesSample]:
        return iter(self.samples)
