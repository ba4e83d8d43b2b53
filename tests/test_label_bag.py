"""instseg-label: a camera bag + extreme-point clicks -> COCO JSON and Cityscapes polygons (real model, real bag)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from instseg_core.annotate.encoding import extreme_points_from_mask
from instseg_core.data.bags import write_image_bag
from instseg_core.data.cityscapes import CityscapesDataset, read_polygons, visible_masks
from instseg_core.data.label_export import bag_city_name
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


@pytest.mark.parametrize(("topic", "refine"),
                         [("/camera/image_raw", "none"), ("/camera/image_raw/compressed", "grabcut")])
def test_label_bag_writes_coco_and_cityscapes(camera_bag: tuple, tmp_path: Path, topic: str, refine: str) -> None:
    bag, images, objects = camera_bag
    keys = ["0", str(stamp(1)), f"{stamp(2) // 10**9}.{stamp(2) % 10**9:09d}"]  # index, ns, seconds
    clicks = write_clicks(tmp_path / "clicks.json", objects, keys)
    label_bag.main([str(bag), "--topic", topic, "--clicks", str(clicks), "--out", str(tmp_path / "out"), "--quiet",
                    "--refine", refine])
    coco = COCO(str(tmp_path / "out" / "annotations_coco.json"))
    assert len(coco.imgs) == 3
    assert len(coco.anns) == sum(len(o) for o in objects)
    assert {c["name"] for c in coco.cats.values()} <= {"car", "person", "traffic sign"}
    assert [img["stamp_ns"] for img in coco.imgs.values()] == [stamp(0), stamp(1), stamp(2)]
    dataset = CityscapesDataset(tmp_path / "out", "train")
    assert [s.stem for s in dataset] == [f"{bag_city_name(bag, topic)}_000000_{i:06d}" for i in range(3)]
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


def run_label(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `instseg-label args`."""
    try:
        label_bag.main([*args, "--quiet"])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_missing_topic_lists_the_topics(camera_bag: tuple, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bag, _, objects = camera_bag
    clicks = write_clicks(tmp_path / "clicks.json", objects[:1], ["0"])
    code, _, err = run_label(capsys, str(bag), "--topic", "/front/image", "--clicks", str(clicks), "--out",
                             str(tmp_path / "o"))
    assert code == 2 and re.search(r"topic /front/image is not in .*it has: /camera/image_raw \(", err), err


def test_stamps_not_in_bag_are_named(camera_bag: tuple, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bag, _, objects = camera_bag
    clicks = write_clicks(tmp_path / "clicks.json", objects[:2], ["0", str(stamp(1) + 5)])
    code, _, err = run_label(capsys, str(bag), "--topic", "/camera/image_raw", "--clicks", str(clicks), "--out",
                             str(tmp_path / "o"))
    assert code == 2 and "1 clicked frame(s) not in" in err and str(stamp(1) + 5) in err, err
    assert not (tmp_path / "o").exists(), "nothing written: not even the frames labelled before the error"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clicks.json"], "no staging folder left behind"


def mixed_bag(path: Path, images: list[np.ndarray]) -> Path:
    """An MCAP bag of rgb8 frames with a mono16 frame in the middle (index 1)."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    from instseg_core.data.bags import TYPESTORE, image_message

    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        connection = writer.add_connection("/camera/image_raw", "sensor_msgs/msg/Image", typestore=TYPESTORE)
        for index, rgb in enumerate(images[:3]):
            message = image_message(rgb, stamp(index), "camera")
            if index == 1:
                depth = np.zeros(rgb.shape[:2], np.uint16)
                message.encoding, message.step = "mono16", 2 * rgb.shape[1]
                message.data = depth.view(np.uint8).reshape(-1)
            writer.write(connection, stamp(index), TYPESTORE.serialize_cdr(message, "sensor_msgs/msg/Image"))
    return path


def test_a_run_is_all_or_nothing_and_skip_bad_labels_the_rest(camera_bag: tuple, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    """A frame index out of range, a negative coordinate and a mono16 frame in the middle: the default run
    fails naming the first and writes nothing; --skip-bad labels every good entry and reports each bad one."""
    _, images, objects = camera_bag
    bag = mixed_bag(tmp_path / "mixed", images)
    clicks = json.loads(write_clicks(tmp_path / "good.json", objects[:3], ["0", "1", "2"]).read_text())
    bad_object = {"points": [[-5, 10], [20, 2], [40, 10], [20, 30]], "class": "car"}
    clicks["0"].append(bad_object)
    clicks["99"] = [bad_object]
    path = tmp_path / "clicks.json"
    path.write_text(json.dumps(clicks))
    out = tmp_path / "out"
    code, _, err = run_label(capsys, str(bag), "--topic", "/camera/image_raw", "--clicks", str(path), "--out", str(out))
    assert code == 2 and f"clicks['0'][{len(clicks['0']) - 1}]" in err and "outside" in err, err
    assert not out.exists() and not list(tmp_path.glob(".out.*"))
    code, stdout, err = run_label(capsys, str(bag), "--topic", "/camera/image_raw", "--clicks", str(path), "--out",
                                  str(out), "--skip-bad")
    assert code == 0, err
    summary = json.loads(stdout.strip().splitlines()[-1])
    reasons = {(s["key"], s["object"]): s["reason"] for s in summary["skipped"]}
    assert set(reasons) == {("0", len(clicks["0"]) - 1), ("1", None), ("99", None)}, reasons
    assert "outside" in reasons[("0", len(clicks["0"]) - 1)] and "mono16" in reasons[("1", None)]
    assert "not in /camera/image_raw" in reasons[("99", None)]
    assert summary["frames"] == 2 and summary["objects"] == len(objects[0]) + len(objects[2])
    coco = COCO(str(out / "annotations_coco.json"))
    assert sorted(img["frame_index"] for img in coco.imgs.values()) == [0, 2]
    city = bag_city_name(bag, "/camera/image_raw")  # the city is named after the bag and topic, as the studio does
    assert "_" not in city and "camera-image-raw" in city
    assert [s.stem for s in CityscapesDataset(out, "train")] == [f"{city}_000000_000000", f"{city}_000000_000002"]
    # running into the same folder again is refused; --overwrite replaces it only as a whole
    (out / "stale.txt").write_text("from an earlier run")
    code, _, err = run_label(capsys, str(bag), "--topic", "/camera/image_raw", "--clicks", str(path), "--out",
                             str(out), "--skip-bad")
    assert code == 2 and "exists" in err and (out / "stale.txt").exists()
    code, _, err = run_label(capsys, str(bag), "--topic", "/camera/image_raw", "--clicks", str(path), "--out",
                             str(out), "--skip-bad", "--overwrite")
    assert code == 0 and not (out / "stale.txt").exists() and (out / "annotations_coco.json").is_file(), err
    code, _, err = run_label(capsys, str(bag), "--topic", "/camera/image_raw", "--clicks", str(path), "--out",
                             str(out), "--overwrite")  # fails: the earlier output stays as it was
    assert code == 2 and (out / "annotations_coco.json").is_file()


def test_corrupt_bag_is_a_clear_error(camera_bag: tuple, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bag, _, objects = camera_bag
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metadata.yaml").write_text((bag / "metadata.yaml").read_text())
    for data_file in bag.glob("*.mcap"):
        (broken / data_file.name).write_bytes(data_file.read_bytes()[:2000])
    clicks = write_clicks(tmp_path / "clicks.json", objects[:1], ["0"])
    code, _, err = run_label(capsys, str(broken), "--topic", "/camera/image_raw", "--clicks", str(clicks), "--out",
                             str(tmp_path / "o"))
    assert code == 2 and re.search(r"instseg-label: (cannot read bag|.*broken)", err), err
    code, _, err = run_label(capsys, str(tmp_path / "nothing"), "--topic", "/camera/image_raw", "--clicks",
                             str(clicks), "--out", str(tmp_path / "o"))
    assert code == 2 and "cannot read bag" in err and not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("clicks", "words"),
    [
        ({}, "non-empty"),
        ({"0": [{"points": [[1, 2], [3, 4]], "class": "car"}]}, "need 4 points"),
        ({"0": [{"points": [[1, 2], [3, 4], [5, 6], [7, 8]], "class": "spaceship"}]}, "unknown Cityscapes class"),
        ({"0": "car"}, "must be a non-empty list"),
        ({"0": []}, "must be a non-empty list"),
        ({"0": [{"points": ["a", "b", "c", "d"], "class": "car"}]}, r"each point must be \[x, y\]"),
        ({"0": [{"points": [["a", 1], [2, 3], [4, 5], [6, 7]], "class": "car"}]}, "must be numbers"),
        ({"0": [{"points": {"x": 1, "y": 2}, "class": "car"}]}, "need 4 points"),
        ({"0": [{"points": [[1, 2], [3, 4, 5], [5, 6], [7, 8]], "class": "car"}]}, r"each point must be \[x, y\]"),
        ({"0": [{"points": [[1, 2], [3, 4], [5, 6], [7, 1e999]], "class": "car"}]}, "finite"),
        ({"0": [{"points": [[1, 2], [3, 4], [5, 6], [7, 8]], "class": ["car"]}]}, "unknown Cityscapes class"),
        ({"2": [[[1, 2], [3, 4], [5, 6], [7, 8], "car"]], "02": [[[1, 2], [3, 4], [5, 6], [7, 8], "car"]]},
         r"clicks\['02'\] and clicks\['2'\] are duplicates"),
        ({"1700000000066666667": [[[1, 2], [3, 4], [5, 6], [7, 8], "car"]],
          "1700000000.066666667": [[[1, 2], [3, 4], [5, 6], [7, 8], "car"]]}, "duplicates"),
        (["not", "an", "object"], "non-empty object"),
        ({"x1": [[[1, 2], [3, 4], [5, 6], [7, 8], "car"]]}, "cannot read 'x1'"),
    ],
)
def test_bad_clicks_files(clicks: dict, words: str) -> None:
    with pytest.raises(label_bag.LabelError, match=words):
        label_bag.parse_clicks(clicks)


CAR = '[[1, 5], [30, 1], [60, 5], [30, 30], "car"]'
PERSON = '[[70, 5], [80, 1], [90, 5], [80, 40], "person"]'


@pytest.mark.parametrize(("text", "words"), [
    (f'{{"0": [{CAR}], "0": [{PERSON}]}}', "key '0' appears twice"),  # json.loads kept only the person
    ('{"0": [{"points": [[1, 5], [30, 1], [60, 5], [30, 30]], "class": "car", "class": "person"}]}',
     "key 'class' appears twice"),
    (b"\xff\xfe\x00", "is not UTF-8"),  # was UnicodeDecodeError: an internal error, status 1
    ("[" * 100_000 + "]" * 100_000, "cannot be read as JSON"),  # was RecursionError, status 1
    (f'{{"0": [{CAR}], "1": "car"}}', r"clicks\['1'\] must be a non-empty list"),
])
def test_a_clicks_file_that_cannot_be_read_whole_is_named(text: str | bytes, words: str, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    """Status 2 and one line naming the file and the reason, before the bag or the model is opened. Before, a key
    given twice kept only its last objects and labelled the rest with status 0."""
    clicks = tmp_path / "clicks.json"
    clicks.write_bytes(text if isinstance(text, bytes) else text.encode())
    code, stdout, err = run_label(capsys, str(tmp_path / "no bag"), "--topic", "/camera/image_raw", "--clicks",
                                  str(clicks), "--out", str(tmp_path / "out"))
    assert code == 2 and stdout == "" and "Traceback" not in err, err
    assert err.startswith(f"instseg-label: {clicks}") and re.search(words, err) and len(err.splitlines()) == 1, err


def test_a_full_disk_names_the_file_and_leaves_out_untouched(camera_bag: tuple, tmp_path: Path) -> None:
    """instseg-label into a 100 kB tmpfs (tests/small_filesystems.py): status 2 and one line naming ENOSPC and the
    file that did not fit (before: the errno only); no --out and no staging folder left."""
    import subprocess
    import sys

    from small_filesystems import SCRIPT as SMALL_FILESYSTEM
    from small_filesystems import small_filesystem_arguments

    bag, _, objects = camera_bag
    clicks = write_clicks(tmp_path / "clicks.json", objects[:1], ["0"])
    disk, kept = tmp_path / "disk", tmp_path / "kept"
    result = subprocess.run([sys.executable, str(SMALL_FILESYSTEM), *small_filesystem_arguments(disk, 100_000, kept),
                             sys.executable, "-m", "instseg_ros.label_bag", str(bag), "--topic", "/camera/image_raw",
                             "--clicks", str(clicks), "--out", str(disk / "out"), "--quiet"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"instseg-label: [Errno 28 ENOSPC] No space left on device: {disk}/.out.partial-"), line
    assert line.endswith((".png", ".json")) and list(kept.iterdir()) == [], (line, list(kept.iterdir()))
