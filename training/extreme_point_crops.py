"""Object crops for the extreme-point U-Net, from any Cityscapes-format tree.

Objects come from the polygons JSON (not instanceIds), so traffic signs and lights count too. Each
object's mask is what stays visible after the objects drawn later cover it. For each of the paper's 9
classes, objects of at least `min_area` visible pixels are taken. The extreme points come from the
visible mask, the crop box from the points with the relaxation margin, and image and mask are
resampled to 128 x 128 (instseg_core.annotate.encoding). The result is cached as one .npz per split.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from instseg_core.annotate.encoding import crop, crop_box, extreme_points_from_mask, points_in_crop
from instseg_core.base.atomic_files import atomic_path
from instseg_core.base.classes import ANNOTATION_CLASSES
from instseg_core.data.cityscapes import CityscapesDataset, read_polygons, visible_masks


@dataclass
class CropSet:
    """N object crops: images (N, 128, 128, 3) uint8 RGB; masks (N, 128, 128) uint8 0/1; points
    (N, 4, 2) float32 extreme points in crop pixels (left, top, right, bottom); classes (N,) int16 index
    into ANNOTATION_CLASSES, or RANDOMISED_CLASS; areas (N,) int32 visible pixels in the full image (0 for
    randomised objects, whose canvas is not an image)."""

    images: np.ndarray
    masks: np.ndarray
    points: np.ndarray
    classes: np.ndarray
    areas: np.ndarray

    def __len__(self) -> int:
        return len(self.images)

    @classmethod
    def concatenate(cls, sets: list[CropSet]) -> CropSet:
        return cls(*(np.concatenate([getattr(s, field) for s in sets]) for field in
                     ("images", "masks", "points", "classes", "areas")))

    @classmethod
    def empty(cls) -> CropSet:
        return cls(np.zeros((0, 128, 128, 3), np.uint8), np.zeros((0, 128, 128), np.uint8),
                   np.zeros((0, 4, 2), np.float32), np.zeros(0, np.int16), np.zeros(0, np.int32))

    def subset(self, index: np.ndarray | slice) -> CropSet:
        return CropSet(self.images[index], self.masks[index], self.points[index], self.classes[index],
                       self.areas[index])

    def save(self, path: str | os.PathLike) -> None:
        with atomic_path(path, suffix=".npz") as temporary:
            np.savez_compressed(temporary, images=self.images, masks=self.masks, points=self.points,
                                classes=self.classes, areas=self.areas)

    @classmethod
    def load(cls, path: str | os.PathLike) -> CropSet:
        with np.load(path) as data:
            return cls(data["images"], data["masks"], data["points"], data["classes"], data["areas"])


RELAX_SEED = 7  # the stream of relaxation fractions (`relax` ranges), apart from every other random draw


def relax_fractions(relax: tuple[float, float], *key: int) -> Callable[[], float]:
    """The draw of relaxation fractions for `key`: each call gives the next one, uniform in `relax` (low, high) from
    its own seeded stream, or low itself when low == high (then nothing is drawn)."""
    low, high = relax
    if not 0.0 <= low <= high:
        raise ValueError(f"the relaxation range must be 0 <= low <= high, not {relax}")
    if low == high:
        return lambda: low
    generator = np.random.default_rng(np.random.SeedSequence([RELAX_SEED, *key]))
    return lambda: float(generator.uniform(low, high))


def build_crops(root: str | os.PathLike | None, split: str, *, min_area: int = 150,
                relax: tuple[float, float] = (0.1, 0.1), relax_min: float = 4.0, limit: int | None = None
                ) -> CropSet:
    """Crops of every visible object of the 9 classes in a split (at most `limit` images). Each crop box is
    relaxed by a fraction drawn uniformly from `relax` (low, high) of the points' box, seeded (RELAX_SEED, so the
    crops are reproducible); (0.1, 0.1), the default, is the pipeline's fixed 10 %."""
    images, masks, points, classes, areas = [], [], [], [], []
    next_fraction = relax_fractions(relax)
    dataset = CityscapesDataset(root, split)
    for sample in list(dataset)[:limit]:
        height, width, objects = read_polygons(sample.paths["polygons"])
        visible = visible_masks(height, width, objects)
        image = sample.image
        for obj, mask in zip(objects, visible, strict=True):
            if obj.is_group or obj.label not in ANNOTATION_CLASSES:
                continue
            area = int(np.count_nonzero(mask))
            if area < min_area:
                continue
            extreme = extreme_points_from_mask(mask)
            box = crop_box(extreme, next_fraction(), relax_min)
            images.append(crop(image, box))
            masks.append((crop(mask.astype(np.float32), box) > 0.5).astype(np.uint8))
            points.append(points_in_crop(extreme, box))
            classes.append(ANNOTATION_CLASSES.index(obj.label))
            areas.append(area)
    if not images:
        return CropSet.empty()
    return CropSet(np.stack(images), np.stack(masks), np.stack(points).astype(np.float32),
                   np.asarray(classes, np.int16), np.asarray(areas, np.int32))


def randomised_crops(seed: int, start: int, count: int, truncate: float = 0.0, neighbours: float = 0.0,
                     relax: tuple[float, float] = (0.1, 0.1)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Samples start..start+count-1 of the set drawn with `seed` (`truncate`, `neighbours`: see render_object),
    cropped as at inference, with the relaxation fraction drawn from `relax` (see build_crops; the draw is apart
    from the sample's own Generator, so a range changes only the crop window, never the rendered object):
    images (N, 128, 128, 3) uint8, masks (N, 128, 128) uint8 0/1, points (N, 4, 2) float32 crop pixels."""
    from instseg_core.data.randomised_objects import render_object, sample_rng

    images, masks, points = [], [], []
    for index in range(start, start + count):
        sample = render_object(sample_rng(seed, index), truncate, neighbours)
        extreme = extreme_points_from_mask(sample.mask)
        box = crop_box(extreme, relax_fractions(relax, seed, index)())
        images.append(crop(sample.image, box))
        masks.append((crop(sample.mask.astype(np.float32), box) > 0.5).astype(np.uint8))
        points.append(points_in_crop(extreme, box))
    return np.stack(images), np.stack(masks), np.stack(points).astype(np.float32)


RANDOMISED_CLASS = -1  # CropSet.classes of a domain-randomised object (no street class)


def build_randomised_crops(count: int, seed: int, jobs: int = 1, truncate: float = 0.0,
                           neighbours: float = 0.0, relax: tuple[float, float] = (0.1, 0.1)) -> CropSet:
    """`count` domain-randomised object crops (instseg_core.data.randomised_objects) drawn with `seed`,
    rendered in `jobs` processes; identical for any `jobs` (every sample has its own seeded Generator)."""
    from concurrent.futures import ProcessPoolExecutor

    chunk = 250
    starts = list(range(0, count, chunk))
    sizes = [min(chunk, count - start) for start in starts]
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as pool:
            parts = list(pool.map(randomised_crops, [seed] * len(starts), starts, sizes, [truncate] * len(starts),
                                  [neighbours] * len(starts), [relax] * len(starts)))
    else:
        parts = [randomised_crops(seed, start, size, truncate, neighbours, relax)
                 for start, size in zip(starts, sizes, strict=True)]
    images, masks, points = (np.concatenate([part[k] for part in parts]) for k in range(3))
    areas = np.full(count, 0, np.int32)
    return CropSet(images, masks, points, np.full(count, RANDOMISED_CLASS, np.int16), areas)


def mirrored_points(points: np.ndarray, width: int) -> np.ndarray:
    """(4, 2) extreme points (left, top, right, bottom; x, y) of an image `width` pixels wide, as they are in its
    left-right mirror image: x -> width - 1 - x, and the left and right points swap. Same dtype, a new array."""
    mirrored = points[[2, 1, 0, 3]]  # left and right swap (fancy indexing copies)
    mirrored[:, 0] = width - 1 - mirrored[:, 0]
    return mirrored


def augment(image: np.ndarray, mask: np.ndarray, points: np.ndarray, rng: np.random.Generator, *,
            jitter: float = 2.0, max_rotation: float = 15.0, flip: bool = True, photometric: float = 0.0
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training augmentation of one crop: point jitter (crop pixels), horizontal flip, rotation (degrees),
    and with probability `photometric` the colour/blur/noise/JPEG jitter of the randomised objects."""
    if photometric > 0 and rng.random() < photometric:
        from instseg_core.data.randomised_objects import photometric_jitter

        image = photometric_jitter(rng, image)
    points = points + rng.uniform(-jitter, jitter, points.shape).astype(np.float32)
    if flip and rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
        points = mirrored_points(points, image.shape[1])
    angle = rng.uniform(-max_rotation, max_rotation)
    if abs(angle) > 0.5:
        centre = ((image.shape[1] - 1) / 2, (image.shape[0] - 1) / 2)
        matrix = cv2.getRotationMatrix2D(centre, angle, 1.0)
        image = cv2.warpAffine(np.ascontiguousarray(image), matrix, image.shape[1::-1], flags=cv2.INTER_LINEAR)
        mask = cv2.warpAffine(np.ascontiguousarray(mask), matrix, mask.shape[::-1], flags=cv2.INTER_NEAREST)
        points = (points @ matrix[:, :2].T + matrix[:, 2]).astype(np.float32)
    return np.ascontiguousarray(image), np.ascontiguousarray(mask), points


def crops_of_labelled_objects(objects: list[tuple[np.ndarray, np.ndarray]], variants: int,
                              relax: tuple[float, float], seed: int) -> CropSet:
    """`variants` crops of each labelled object of a full image, given as (image (H, W, 3) uint8 RGB, visible
    mask (H, W) bool): the extreme points of its mask; each crop's margin drawn uniformly from `relax` by a
    Generator seeded with `seed`; every second crop mirrored (the points' left and right swapped). Class
    RANDOMISED_CLASS and area 0, as the randomised crops have, so training treats them alike."""
    rng = np.random.default_rng(seed)
    images, masks, points = [], [], []
    for image, mask in objects:
        extreme = extreme_points_from_mask(mask).astype(np.float64)
        for variant in range(variants):
            view, view_mask, these = image, mask.astype(np.float32), extreme
            if variant % 2:
                view, view_mask = np.ascontiguousarray(image[:, ::-1]), np.ascontiguousarray(view_mask[:, ::-1])
                these = mirrored_points(extreme, image.shape[1])
            box = crop_box(these, rng.uniform(*relax))
            images.append(crop(view, box))
            masks.append((crop(view_mask, box) > 0.5).astype(np.uint8))
            points.append(points_in_crop(these, box))
    count = len(images)
    if not count:
        return CropSet.empty()
    return CropSet(np.stack(images), np.stack(masks), np.stack(points).astype(np.float32),
                   np.full(count, RANDOMISED_CLASS, np.int16), np.zeros(count, np.int32))
