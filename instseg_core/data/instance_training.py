"""Training samples for the dense instance networks (Spatial Embeddings, Box2Pix, DCME): targets and crops.

From a Cityscapes-format split, each image becomes
- `image` (H, W, 3) uint8 RGB;
- `instances` (H, W) int32: 0 = background, 1..K = the image's objects of the chosen classes;
- `labels` (H, W) uint8: class index + 1 (index into `classes`) on instance pixels, 0 elsewhere;
- `ignore` (H, W) bool: group regions (e.g. "cargroup") of the chosen classes, which are neither
  background nor a single object.
Objects of instance classes not in `classes` count as background. `scale` resizes everything (area
interpolation for the image, nearest for the maps), e.g. 0.5 to train on 2048 x 1024 Cityscapes at
1024 x 512. Every sample is checked when it is read: its image and instanceIds must decode and have one size, or
`load_split` stops with a SampleError naming the file (with `skip_bad`, the sample is left out and listed).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from instseg_core.data.cityscapes import CityscapesDataset, CityscapesSample, SampleError, name2label


@dataclass
class InstanceSample:
    """One image and its targets (see the module docstring); `centers` (K, 2) float (x, y) pixel centroid of
    instance k + 1."""

    stem: str
    image: np.ndarray
    instances: np.ndarray
    labels: np.ndarray
    ignore: np.ndarray
    centers: np.ndarray


def instance_targets(instance_ids: np.ndarray, classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(instances int32, labels uint8, ignore bool) from a Cityscapes instanceIds map (H, W)."""
    label_ids = np.array([name2label[name].id for name in classes])
    ids = np.unique(instance_ids)
    instances = np.zeros(instance_ids.shape, np.int32)
    labels = np.zeros(instance_ids.shape, np.uint8)
    objects = ids[(ids >= 1000) & np.isin(ids // 1000, label_ids)]
    if len(objects):
        lookup_ids = np.searchsorted(objects, instance_ids)
        lookup_ids = np.minimum(lookup_ids, len(objects) - 1)
        is_object = objects[lookup_ids] == instance_ids
        instances[is_object] = lookup_ids[is_object] + 1
        class_of_object = np.searchsorted(label_ids, objects // 1000, sorter=np.argsort(label_ids))
        class_of_object = np.argsort(label_ids)[class_of_object]
        labels[is_object] = class_of_object[lookup_ids[is_object]] + 1
    ignore = np.isin(instance_ids, label_ids)
    return instances, labels, ignore


def _centers(instances: np.ndarray) -> np.ndarray:
    count = int(instances.max())
    if count == 0:
        return np.zeros((0, 2), np.float32)
    rows, cols = np.nonzero(instances)
    index = instances[rows, cols] - 1
    area = np.bincount(index, minlength=count)
    return np.stack([np.bincount(index, cols, count) / np.maximum(area, 1),
                     np.bincount(index, rows, count) / np.maximum(area, 1)], 1).astype(np.float32)


def instance_sample(sample: CityscapesSample, classes: Sequence[str], scale: float = 1.0,
                    centers: np.ndarray | None = None) -> InstanceSample:
    """The training targets of one Cityscapes sample (module docstring), decoded now; SampleError naming the file
    when its image or instanceIds does not decode or their sizes differ. `centers` (K, 2): the objects' centroids
    when already known (an object index), else computed."""
    sample.check_sizes("instance_ids")
    image, instance_ids = sample.image, sample.instance_ids
    if scale != 1.0:
        size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        instance_ids = cv2.resize(instance_ids, size, interpolation=cv2.INTER_NEAREST)
    instances, labels, ignore = instance_targets(instance_ids, classes)
    return InstanceSample(f"{sample.city}/{sample.stem}", image, instances, labels, ignore,
                          _centers(instances) if centers is None else centers)


def load_split(root: str | os.PathLike | None, split: str, classes: Sequence[str], *, scale: float = 1.0,
               limit: int | None = None, skip_bad: bool = False,
               skipped: list[dict] | None = None) -> list[InstanceSample]:
    """Every annotated image of `split` (first `limit`), loaded into memory with its targets. A sample whose image
    or instanceIds does not decode, or whose instanceIds is not the image's size, raises SampleError naming the
    file; with `skip_bad` it is left out instead, reported on stderr and appended to `skipped` ({"sample",
    "reason"}). Images without an instanceIds file are not samples (CityscapesDataset leaves them out); a warning
    on stderr counts them and names the first, so a tree whose labels went missing is not trained on in part
    without a word."""
    dataset = CityscapesDataset(root, split)
    if dataset.unannotated:
        count = len(dataset.unannotated)
        print(f"warning: {count} image(s) of split {split!r} in {dataset.root} have no gtFine instanceIds file and "
              f"are left out (the first: {dataset.unannotated[0]})", file=sys.stderr, flush=True)
    samples = []
    bad: list[dict] = [] if skipped is None else skipped
    for sample in list(dataset)[:limit]:
        try:
            samples.append(instance_sample(sample, classes, scale))
        except SampleError as exc:
            if not skip_bad:
                raise SampleError(f"{exc} (--skip-bad leaves such samples out)") from exc
            bad.append({"sample": f"{sample.city}/{sample.stem}", "reason": str(exc)})
            print(f"skipped a bad sample: {exc}", file=sys.stderr, flush=True)
    if not samples:
        raise FileNotFoundError(f"no {'usable ' if bad else ''}annotated images in split {split!r} of {dataset.root}"
                                + (f" ({len(bad)} bad ones skipped)" if bad else ""))
    return samples


def object_centered_crop(sample: InstanceSample, height: int, width: int, rng: np.random.Generator,
                         flip: bool = True, object_index: int | None = None,
                         anywhere: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A (height, width) window around object `object_index` (a random object when None; jittered by up to a
    quarter of the window), or anywhere in the image when `anywhere` or the image has no object; randomly
    mirrored. Windows larger than the image are zero-padded (padding is background). Returns image, instances,
    labels, ignore of the window."""
    image_h, image_w = sample.instances.shape
    if len(sample.centers) and not anywhere:
        index = rng.integers(len(sample.centers)) if object_index is None else object_index
        cx, cy = sample.centers[index]
        cx += rng.uniform(-0.25, 0.25) * width
        cy += rng.uniform(-0.25, 0.25) * height
    else:
        cx, cy = rng.uniform(0, image_w), rng.uniform(0, image_h)
    x0 = int(np.clip(round(cx - width / 2), 0, max(image_w - width, 0)))
    y0 = int(np.clip(round(cy - height / 2), 0, max(image_h - height, 0)))
    window = (slice(y0, y0 + height), slice(x0, x0 + width))
    arrays = [sample.image[window], sample.instances[window], sample.labels[window], sample.ignore[window]]
    if arrays[1].shape != (height, width):
        padded = []
        for array in arrays:
            out = np.zeros((height, width, *array.shape[2:]), array.dtype)
            out[: array.shape[0], : array.shape[1]] = array
            padded.append(out)
        arrays = padded
    if flip and rng.random() < 0.5:
        arrays = [a[:, ::-1] for a in arrays]
    return tuple(np.ascontiguousarray(a) for a in arrays)  # type: ignore[return-value]


CROP_MODES = ("objects", "balanced")


class CropSampler:
    """Chooses the training windows of the dense instance networks.

    'objects' (the default): a random image, then a random object of it, so frequent classes dominate (cars fill
    most windows). 'balanced': a class drawn uniformly among the classes present in the split, then a random object
    of that class anywhere in the split, so rare classes (bus, train, motorcycle) get as many windows as cars.
    A fraction `anywhere_fraction` of the windows is placed anywhere in a random image instead (full-frame
    context: sky, road and buildings that object-centred windows rarely show).

    `samples` is any sequence of InstanceSample: a list in memory (load_split), or one that decodes an image when
    it is indexed (instseg_core.data.streamed_dataset), which then passes `classes_per_image` ((K,) int64 class
    index of each image's objects, from its object index) so that nothing is decoded to build the sampler; the
    windows drawn for a given generator are the same either way."""

    def __init__(self, samples: Sequence[InstanceSample], mode: str = "objects", anywhere_fraction: float = 0.0,
                 classes_per_image: Sequence[np.ndarray] | None = None):
        if mode not in CROP_MODES:
            raise ValueError(f"crop mode {mode!r}: expected one of {CROP_MODES}")
        if not 0.0 <= anywhere_fraction <= 1.0:
            raise ValueError(f"anywhere_fraction {anywhere_fraction} is not in [0, 1]")
        self.samples = samples if classes_per_image is not None else list(samples)
        self.mode = mode
        self.anywhere_fraction = anywhere_fraction
        objects: dict[int, list[tuple[int, int]]] = {}
        per_image = classes_per_image if classes_per_image is not None else [object_classes(s) for s in self.samples]
        for sample_index, image_classes in enumerate(per_image):
            for object_index, label in enumerate(image_classes):
                objects.setdefault(int(label), []).append((sample_index, object_index))
        self.objects_by_class = {label: np.array(pairs) for label, pairs in sorted(objects.items())}
        self._class_objects = list(self.objects_by_class.values())

    def crop(self, height: int, width: int, rng: np.random.Generator
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """One window (see object_centered_crop) chosen by the sampler's mode."""
        if self.anywhere_fraction and rng.random() < self.anywhere_fraction:
            return object_centered_crop(self.samples[int(rng.integers(len(self.samples)))], height, width, rng,
                                        anywhere=True)
        if self.mode == "objects" or not self.objects_by_class:
            return object_centered_crop(self.samples[int(rng.integers(len(self.samples)))], height, width, rng)
        pairs = self._class_objects[rng.integers(len(self._class_objects))]
        sample_index, object_index = pairs[rng.integers(len(pairs))]
        return object_centered_crop(self.samples[sample_index], height, width, rng, object_index=int(object_index))


def object_classes(sample: InstanceSample) -> np.ndarray:
    """(K,) int64 class index (into the training classes) of each of the sample's objects 1..K."""
    count = len(sample.centers)
    classes = np.zeros(count, np.int64)
    on_object = sample.instances > 0
    classes[sample.instances[on_object] - 1] = sample.labels[on_object].astype(np.int64) - 1
    return classes


def batch_images(crops: Sequence[tuple[np.ndarray, ...]]) -> torch.Tensor:
    """The crops' images (each (H, W, 3) uint8, first in its tuple) as (B, 3, H, W) float32 in [0, 1],
    channels_last."""
    images = torch.from_numpy(np.stack([c[0] for c in crops])).permute(0, 3, 1, 2).float().div_(255)
    return images.contiguous(memory_format=torch.channels_last)


def to_batch(crops: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack crops: images (B, 3, H, W) float32 in [0, 1] (channels_last), instances (B, H, W) int64,
    labels (B, H, W) int64, ignore (B, H, W) bool."""
    return (batch_images(crops),
            torch.from_numpy(np.stack([c[1] for c in crops]).astype(np.int64)),
            torch.from_numpy(np.stack([c[2] for c in crops]).astype(np.int64)),
            torch.from_numpy(np.stack([c[3] for c in crops])))
