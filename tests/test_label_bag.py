"""instseg-label: a camera bag + extreme-point clicks -> COCO JSON and Cityscapes polygons (real model, real bag)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from instseg_core.annotate.encoding import extreme_points_from_mask
from instseg_core.data.bags import write_image_bag
from instseg_core.data.cityscapes import CityscapesDataset, read_polygons, visible_masks
from instseg_core.eval.binary_metrics import iou
from instseg_ros import label_bag

START_NS = 1_700_000_000_000_000_000
RATE = 15.0


@pytest.fixture(scope="module")
def camera_bag(synthetic_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list, list]:
    """The synthetic val frames as an MCAP camera bag, and per frame its objects' (class, mask)."""
    samples = list(CityscapesDataset(synthetic_tree, "val"))
    objects = []
    for sample in samples:
        height, width, polygons = read_polygons(sample.paths["polygons"])
        masks = visible_masks(height, width, polygons)
        objects.append([(p.label, m) for p, m in zip(polygons, masks, strict=True)
                        if p.label in ("car", "person", "traffic sign") and m.sum() > 300])
    bag = tmp_path_factory.mktemp("label") / "camera"
    write_image_bag(bag, [s.image for s in samples], rate_hz=RATE, storage="mcap", start_ns=START_NS,
                    compressed_topic="/camera/image_raw/compressed")
    return bag, [s.image for s in samples], objects


def stamp(index: int) -> int:
    return START_NS + round(index * 1e9 / RATE)


def write_clicks(path: Path, objects: list, keys: list[str]) -> Path:
    clicks = {}
    for key, frame_objects in zip(keys, objects, strict=True):
        clicks[key] = [{"points": extreme_points_from_mask(m).tolist(), "class": c} if k % 2 == 0
                       else [*extreme_points_from_mask(m).tolist(), c] for k, (c, m) in enumerate(frame_objects)]
    path.write_text(json.dumps(clicks))
    return path


@pytest.mark.parametrize("topic", ["/camera/image_raw", "/camera/image_raw/compressed"])
def test_label_bag_writes_coco_and_cityscapes(camera_bag: tuple, tmp_path: Path, topic: str) -> None:
    bag, images, objects = camera_bag
    keys = ["0", str(stamp(1)), f"{stamp(2) // 10**9}.{stamp(2) % 10**9:09d}"]  # index, ns, seconds
    clicks = write_clicks(tmp_path / "clicks.json", objects, keys)
    label_bag.main([str(bag), "--topic", topic, "--clicks", str(clicks), "--out", str(tmp_path / "out"), "--quiet"])
    coco = COCO(str(tmp_path / "out" / "annotations_coco.json"))
    assert len(coco.imgs) == 3
    assert len(coco.anns) == sum(len(o) for o in objects)
    assert {c["name"] for c in coco.cats.values()} <= {"car", "person", "traffic sign"}
    assert [img["stamp_ns"] for img in coco.imgs.values()] == [stamp(0), stamp(1), stamp(2)]
    dataset = CityscapesDataset(tmp_path / "out", "train")
    assert [s.stem for s in dataset] == [f"labelled_000000_{i:06d}" for i in range(3)]
    ious = []
    for sample, frame_objects, image in zip(dataset, objects, images, strict=True):
        if topic.endswith("raw"):  # raw frames are stored losslessly; JPEG ones are not
            np.testing.assert_array_equal(sample.image, image)
        labelled = read_polygons(sample.paths["polygons"])[2]
        assert [o.label for o in labelled] == [c for c, _ in frame_objects]
        for annotation in coco.loadAnns(coco.getAnnIds(imgIds=[dataset.samples.index(sample) + 1])):
            assert len(annotation["segmentation"][0]) >= 6 and annotation["polygon_iou"] > 0.8
        for (_, truth), polygon in zip(frame_objects, labelled, strict=True):
            ious.append(iou(_fill(polygon.polygon, truth.shape), truth))
    assert np.mean(ious) > 0.75, "the shipped model labels held-out objects well"


def _fill(polygon: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    cv2.fillPoly(mask, [polygon.astype(np.int32)], 1)
    return mask.astype(bool)


def test_missing_topic_lists_the_topics(camera_bag: tuple, tmp_path: Path) -> None:
    bag, _, objects = camera_bag
    clicks = write_clicks(tmp_path / "clicks.json", objects[:1], ["0"])
    with pytest.raises(SystemExit, match=r"topic /front/image is not in .*it has: /camera/image_raw \("):
        label_bag.main([str(bag), "--topic", "/front/image", "--clicks", str(clicks), "--out", str(tmp_path / "o")])


def test_stamps_not_in_bag_are_named(camera_bag: tuple, tmp_path: Path) -> None:
    bag, _, objects = camera_bag
    clicks = write_clicks(tmp_path / "clicks.json", objects[:2], ["0", str(stamp(1) + 5)])
    with pytest.raises(SystemExit, match=rf"1 clicked frame\(s\) not in .*{stamp(1) + 5}"):
        label_bag.main([str(bag), "--topic", "/camera/image_raw", "--clicks", str(clicks), "--out",
                        str(tmp_path / "o"), "--quiet"])
    assert not (tmp_path / "o" / "annotations_coco.json").exists(), "no partial COCO file"


def test_corrupt_bag_is_a_clear_error(camera_bag: tuple, tmp_path: Path) -> None:
    bag, _, objects = camera_bag
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metadata.yaml").write_text((bag / "metadata.yaml").read_text())
    for data_file in bag.glob("*.mcap"):
        (broken / data_file.name).write_bytes(data_file.read_bytes()[:2000])
    clicks = write_clicks(tmp_path / "clicks.json", objects[:1], ["0"])
    with pytest.raises(SystemExit, match=r"instseg-label: (cannot read bag|.*broken)"):
        label_bag.main([str(broken), "--topic", "/camera/image_raw", "--clicks", str(clicks), "--out",
                        str(tmp_path / "o"), "--quiet"])
    with pytest.raises(SystemExit, match="cannot read bag"):
        label_bag.main([str(tmp_path / "nothing"), "--topic", "/camera/image_raw", "--clicks", str(clicks), "--out",
                        str(tmp_path / "o"), "--quiet"])


@pytest.mark.parametrize(
    ("clicks", "words"),
    [
        ({}, "non-empty"),
        ({"0": [{"points": [[1, 2], [3, 4]], "class": "car"}]}, "need 4 points"),
        ({"0": [{"points": [[1, 2], [3, 4], [5, 6], [7, 8]], "class": "spaceship"}]}, "unknown Cityscapes class"),
        ({"0": "car"}, "must be a list"),
    ],
)
def test_bad_clicks_files(clicks: dict, words: str) -> None:
    with pytest.raises(label_bag.LabelError, match=words):
        label_bag.parse_clicks(clicks)
