"""eval_sets/highway_stills.json, the labelled Udacity highway stills (issue 35): its structure without ../shared, and
the images' sha256 and the project's reader where /work/shared/real/udacity_highway is present."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from instseg_core.base.classes import INSTANCE_CLASSES
from instseg_core.eval.real_photos import read_coco_instances

REPO = Path(__file__).resolve().parents[1]
SET_FILE = REPO / "eval_sets" / "highway_stills.json"
IMAGES = REPO.parent / "shared" / "real" / "udacity_highway" / "images"  # ../shared beside the checkout


@pytest.fixture(scope="module")
def coco() -> dict:
    return json.loads(SET_FILE.read_text())


def _cross(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> float:
    return float((b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0]))


def self_intersections(polygon: list[float]) -> list[tuple[int, int]]:
    """Pairs of non-adjacent edges (i, j) of a closed polygon [x1, y1, x2, y2, ...] that cross properly."""
    points = np.asarray(polygon, float).reshape(-1, 2)
    n = len(points)
    crossings = []
    for i in range(n):
        p, q = points[i], points[(i + 1) % n]
        for j in range(i + 2, n):
            if i == 0 and j == n - 1:
                continue
            r, s = points[j], points[(j + 1) % n]
            if (_cross(p, q, r) * _cross(p, q, s) < 0) and (_cross(r, s, p) * _cross(r, s, q) < 0):
                crossings.append((i, j))
    return crossings


def test_self_intersections_finds_a_bow_tie_and_passes_a_square() -> None:
    assert self_intersections([0, 0, 10, 10, 10, 0, 0, 10]) == [(0, 2)]
    assert self_intersections([0, 0, 10, 0, 10, 10, 0, 10]) == []


def test_images_categories_and_ids(coco: dict) -> None:
    images = coco["images"]
    assert len({i["id"] for i in images}) == len(images) > 0
    assert len({i["file_name"] for i in images}) == len(images)
    for image in images:
        assert "/" not in image["file_name"] and image["file_name"].endswith(".jpg")
        assert isinstance(image["width"], int) and isinstance(image["height"], int)
        assert image["licence"].startswith("MIT, Udacity")
        assert len(image["sha256"]) == 64 and int(image["sha256"], 16) >= 0
    categories = coco["categories"]
    assert len({c["id"] for c in categories}) == len({c["name"] for c in categories}) == len(categories)
    assert {c["name"] for c in categories} <= set(INSTANCE_CLASSES)
    annotations = coco["annotations"]
    assert len({a["id"] for a in annotations}) == len(annotations) > 0
    assert {a["image_id"] for a in annotations} <= {i["id"] for i in images}
    assert {a["category_id"] for a in annotations} <= {c["id"] for c in categories}
    assert "NOT in the repository" in coco["description"]


def test_every_polygon_valid_inside_its_image_with_pycocotools_area_and_box(coco: dict) -> None:
    sizes = {i["id"]: (i["width"], i["height"]) for i in coco["images"]}
    for annotation in coco["annotations"]:
        width, height = sizes[annotation["image_id"]]
        where = f"annotation {annotation['id']}"
        assert annotation["iscrowd"] in (0, 1), where
        polygons = annotation["segmentation"]
        assert isinstance(polygons, list) and polygons, where
        for polygon in polygons:
            assert len(polygon) >= 6 and len(polygon) % 2 == 0, where
            assert all(isinstance(v, int | float) and math.isfinite(v) for v in polygon), where
            xs, ys = np.asarray(polygon[0::2]), np.asarray(polygon[1::2])
            assert xs.min() >= 0 and xs.max() <= width and ys.min() >= 0 and ys.max() <= height, where
            assert self_intersections(polygon) == [], where
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
        assert annotation["area"] == int(mask_utils.area(rle)) > 0, where
        assert annotation["bbox"] == pytest.approx([float(v) for v in mask_utils.toBbox(rle)], abs=0.05), where
        if annotation["iscrowd"]:
            continue
        # an object keeps its four extreme points (left, top, right, bottom), inside the image and within a few
        # pixels of its mask's box (the mask's box, [x0, y0, x1, y1])
        points = np.asarray(annotation["extreme_points"], float)
        assert points.shape == (4, 2), where
        assert (points >= 0).all() and (points[:, 0] <= width).all() and (points[:, 1] <= height).all(), where
        x, y, w, h = mask_utils.toBbox(rle)
        assert np.abs([points[0, 0] - x, points[1, 1] - y, points[2, 0] - (x + w), points[3, 1] - (y + h)]).max() \
            <= 3, where


@pytest.mark.skipif(not IMAGES.is_dir(), reason="needs ../shared/real/udacity_highway")
def test_images_match_their_sha256_and_the_reader_counts_every_object(coco: dict) -> None:
    for image in coco["images"]:
        assert hashlib.sha256((IMAGES / image["file_name"]).read_bytes()).hexdigest() == image["sha256"]
    real_set = read_coco_instances(SET_FILE, IMAGES)
    objects = [o for sample in real_set.samples for o in sample.objects]
    assert len(real_set.samples) == len(coco["images"])
    assert sum(not o.crowd for o in objects) == sum(not a["iscrowd"] for a in coco["annotations"])
    assert sum(o.crowd for o in objects) == sum(a["iscrowd"] for a in coco["annotations"])
