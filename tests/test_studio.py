"""The labelling studio's server side: bag index, session, HTTP API, propagation, export (real bags, the real
in-process model, FastAPI's TestClient). The browser and the ROS service mode are in test_studio_browser.py."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from pycocotools.coco import COCO
from studio_fixtures import START_NS, GroundTruth, sequence_bag

from instseg_core.annotate.encoding import order_extreme_points
from instseg_core.annotate.segmenter import create_annotation_segmenter
from instseg_core.data.cityscapes import CityscapesDataset
from instseg_core.eval.binary_metrics import iou
from instseg_ros import label_bag
from instseg_studio import bag_frames
from instseg_studio.app import Studio, create_app, json_depth
from instseg_studio.bag_frames import BagFrames, BagFramesError
from instseg_studio.segmenters import InProcessSegmenter
from instseg_studio.session import SESSION_FILE, Session, SessionError

CLASSES = ("person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def bag(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GroundTruth]:
    path = tmp_path_factory.mktemp("studio") / "camera"
    return path, sequence_bag(path, 4, compressed=True)


@pytest.fixture(scope="module")
def model() -> InProcessSegmenter:
    return InProcessSegmenter(create_annotation_segmenter())


@pytest.fixture
def client(bag: tuple[Path, GroundTruth], model: InProcessSegmenter, tmp_path: Path) -> TestClient:
    frames = BagFrames(bag[0], "/camera/image_raw", cache_dir=tmp_path)
    studio = Studio(frames, Session(tmp_path / SESSION_FILE, str(bag[0]), frames.topic, CLASSES), model, tmp_path)
    return TestClient(create_app(studio, {"testserver"}))


def _mask(polygon: list, shape: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    cv2.fillPoly(mask, [np.asarray(polygon, np.int32).reshape(-1, 1, 2)], 1)
    return mask.astype(bool)


# --- the bag index -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_index_from_the_storage_indexes_equals_reading_every_message(storage: str, tmp_path: Path) -> None:
    gt = sequence_bag(tmp_path / "bag", 3, storage=storage)
    frames = BagFrames(tmp_path / "bag")
    expected = [START_NS + round(k * 1e9 / 10) for k in range(3)]
    assert frames.timestamps.tolist() == expected
    assert frames._timestamps_by_reading(None) == expected
    assert frames._timestamps_from_indexes() == expected
    assert np.array_equal(frames.frame(2).rgb, gt.images[2])


def test_the_index_is_cached_and_rebuilt_when_the_bag_changes(bag: tuple[Path, GroundTruth], tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    first = BagFrames(bag[0], "/camera/image_raw", cache_dir=tmp_path)
    assert list(tmp_path.glob("index_*.json"))

    def fail(*_: object) -> None:
        raise AssertionError("the cached index was not used")

    monkeypatch.setattr(BagFrames, "_timestamps_from_indexes", fail)
    assert BagFrames(bag[0], "/camera/image_raw", cache_dir=tmp_path).timestamps.tolist() == first.timestamps.tolist()
    copy = tmp_path / "copy"
    shutil.copytree(bag[0], copy)
    with pytest.raises(AssertionError, match="cached index"):  # another bag (other files): not from the cache
        BagFrames(copy, "/camera/image_raw", cache_dir=tmp_path)


def test_frames_of_a_compressed_topic_decode(bag: tuple[Path, GroundTruth]) -> None:
    frames = BagFrames(bag[0], "/camera/image_raw/compressed")
    frame = frames.frame(1)
    assert frame.rgb.shape == bag[1].images[1].shape
    assert np.abs(frame.rgb.astype(int) - bag[1].images[1]).mean() < 6  # JPEG
    assert frame.stamp_ns == START_NS + 100_000_000


def test_bad_bags_and_topics_give_clear_errors(bag: tuple[Path, GroundTruth], tmp_path: Path) -> None:
    with pytest.raises(BagFramesError, match="2 image topics"):
        BagFrames(bag[0])
    with pytest.raises(BagFramesError, match=r"topic /nope is not in .*it has: /camera/image_raw \(sensor_msgs"):
        BagFrames(bag[0], "/nope")
    with pytest.raises(BagFramesError, match="does not exist"):
        BagFrames(tmp_path / "missing")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "broken.mcap").write_bytes(b"\x89MCAP0\r\n" + b"garbage" * 100)
    with pytest.raises(BagFramesError, match="cannot read bag"):
        BagFrames(broken)
    frames = BagFrames(bag[0], "/camera/image_raw")
    with pytest.raises(BagFramesError, match=r"frame 4 is not in /camera/image_raw \(4 frames\)"):
        frames.frame(4)


def test_a_sqlite_bag_with_a_damaged_row_fails_that_frame_only(tmp_path: Path) -> None:
    sequence_bag(tmp_path / "bag", 3, storage="sqlite3")
    database = next((tmp_path / "bag").glob("*.db3"))
    with sqlite3.connect(database) as db:
        db.execute("UPDATE messages SET data = x'00010203' WHERE id = (SELECT MIN(id) + 1 FROM messages)")
    frames = BagFrames(tmp_path / "bag")
    with pytest.raises(BagFramesError, match="frame 1"):
        frames.frame(1)
    assert frames.frame(2).rgb.shape == (256, 512, 3)


# --- points and the session ------------------------------------------------------------------------------

def test_clicks_in_any_order_become_left_top_right_bottom() -> None:
    points = np.array([[10, 50], [40, 5], [80, 45], [45, 90]], float)
    rng = np.random.default_rng(0)
    for _ in range(10):
        assert order_extreme_points(points[rng.permutation(4)]).tolist() == points.tolist()


def _object(object_id: str = "o1", name: str = "car") -> dict:
    return {"id": object_id, "class": name, "points": [[1, 5], [5, 1], [9, 5], [5, 9]],
            "polygon": [[1, 5], [5, 1], [9, 5], [5, 9]], "tolerance": 1.0}


def test_session_saves_each_change_and_refuses_stale_versions(tmp_path: Path) -> None:
    session = Session(tmp_path / SESSION_FILE, "bag", "/cam", CLASSES)
    assert session.set_objects(3, 7, [_object()], 0) == 1
    with pytest.raises(SessionError, match=r"changed elsewhere.*version 1.*version 0"):
        session.set_objects(3, 7, [], 0)
    restored = Session(tmp_path / SESSION_FILE, "bag", "/cam", CLASSES)
    assert restored.version == 1 and restored.objects(3)[0]["class"] == "car"
    assert not list(tmp_path.glob("*.tmp*")), "no temporary file is left behind"


@pytest.mark.parametrize("objects, message", [
    ("x", "list of at most"),
    ([{**_object(), "class": "sky"}], "not one of the studio's classes"),
    ([{**_object(), "polygon": [[1, 2], [3, 4]]}], "at least 3 vertices"),
    ([{**_object(), "points": [[1, 2]] * 3}], "list of 4"),
    ([{**_object(), "polygon": [[1, "a"], [3, 4], [5, 6]]}], "finite number"),
    ([{**_object(), "polygon": [[1, float("nan")], [3, 4], [5, 6]]}], "finite number"),
    ([_object("a"), _object("a")], "share an id"),
])
def test_session_refuses_malformed_objects(tmp_path: Path, objects: object, message: str) -> None:
    session = Session(tmp_path / SESSION_FILE, "bag", "/cam", CLASSES)
    with pytest.raises(SessionError, match=message):
        session.set_objects(0, 0, objects, 0)
    assert session.version == 0 and not (tmp_path / SESSION_FILE).exists()


@pytest.mark.parametrize("content, message", [
    ("{not json", "cannot be read"), ('{"format": "other"}', "not a studio session"),
    ('{"format": "instseg-studio-session/1", "bag": "bag", "topic": "/other", "version": 1, "frames": {}}',
     "labels topic"),
    ('{"format": "instseg-studio-session/1", "bag": "/elsewhere/other", "topic": "/cam", "version": 1, "frames": {}}',
     "labels the bag"),
    ('{"format": "instseg-studio-session/1", "bag": "/moved/bag", "topic": "/cam", "version": 1, "frames": {"x": {}}}',
     "damaged"),
])
def test_a_bad_session_file_is_named_and_left_alone(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / SESSION_FILE
    path.write_text(content)
    with pytest.raises(SessionError, match=message):
        Session(path, "bag", "/cam", CLASSES)
    assert path.read_text() == content


# --- the HTTP API ------------------------------------------------------------------------------------------

def test_four_clicks_give_the_object(client: TestClient, bag: tuple[Path, GroundTruth]) -> None:
    gt = bag[1]
    info = client.get("/api/info").json()
    assert info["frames"] == 4 and info["classes"] == list(CLASSES) and info["segmenter"] == "inprocess"
    assert client.get("/api/frames/2/image").headers["content-type"] == "image/jpeg"
    ious = []
    for k, (_, mask) in enumerate(gt.objects[2]):
        points = gt.extreme_points(2, k)
        answer = client.post("/api/segment", json={"frame": 2, "points": points[::-1]}).json()
        assert answer["points"] == points, "the clicks are sorted into left, top, right, bottom"
        ious.append(iou(_mask(answer["polygon"], mask.shape), mask))
        again = client.post("/api/segment", json={"frame": 2, "points": points}).json()
        assert again["polygon"] == answer["polygon"], "any click order gives the same polygon"
    # the shipped model on these frames: cars ~0.98, persons of ~500 pixels 0.78-0.92 (docs/studio.md)
    assert min(ious) >= 0.75 and np.mean(ious) >= 0.85, ious


def test_objects_are_saved_and_versions_checked(client: TestClient) -> None:
    saved = client.put("/api/frames/1/objects", json={"base_version": 0, "objects": [_object()]})
    assert saved.status_code == 200 and saved.json() == {"version": 1, "next_track_id": 2}
    assert client.get("/api/frames/1").json()["objects"][0]["id"] == "o1"
    assert client.get("/api/timeline").json()["labelled"] == [1]
    stale = client.put("/api/frames/1/objects", json={"base_version": 0, "objects": []})
    assert stale.status_code == 409 and "another tab" in stale.json()["error"]
    assert client.get("/api/info").json()["counters"]["version_conflicts"] == 1


@pytest.mark.parametrize("method, path, kwargs, status, message", [
    ("get", "/api/info", {"headers": {"Host": "attacker.example:8080"}}, 403, "unknown Host"),
    ("post", "/api/segment", {"headers": {"Origin": "http://attacker.example", **JSON}, "content": "{}"}, 403,
     "cross-site"),
    ("post", "/api/segment", {"headers": {"Content-Type": "application/x-www-form-urlencoded"}, "content": "a=1"},
     415, "application/json"),
    ("post", "/api/segment", {"headers": JSON, "content": "{" + " " * (2 << 20) + "}"}, 413, "over"),
    ("post", "/api/segment", {"headers": JSON, "content": "{nope"}, 400, "not JSON"),
    ("post", "/api/segment", {"headers": JSON, "content": "[" * 100_000 + "]" * 100_000}, 400, "100000 levels deep"),
    ("post", "/api/segment", {"headers": JSON, "content": '{"a": ' * 33 + "1" + "}" * 33}, 400, "33 levels deep"),
    ("post", "/api/segment", {"headers": JSON, "content": "[1, 2]"}, 400, "JSON object"),
    ("post", "/api/segment", {"json": {"frame": 9, "points": []}}, 404, "frame must be an index"),
    ("post", "/api/segment", {"json": {"frame": 0, "points": [["a", 1]]}}, 422, "4 pairs of numbers"),
    ("post", "/api/segment", {"json": {"frame": 0, "points": [[1, 1], [2, 0], [600, 1], [2, 2]]}}, 422,
     "outside the 512x256 image"),
    ("post", "/api/segment", {"json": {"frame": 0, "points": [[1, 1]] * 4}}, 422, "span 0 x 0"),
    ("post", "/api/segment", {"json": {"frame": 0, "points": [[10, 50], [11, 51], [40, 5], [45, 90]]}}, 422,
     "the points (10, 50) and (11, 51) are 1.41 px apart: an object needs four distinct extreme points"),
    ("post", "/api/segment", {"json": {"frame": 0, "points": [[10, 50], [40, 5], [80, 45], [80.4, 45.4]]}}, 422,
     "are 0 px apart"),
    ("post", "/api/segment", {"json": {"frame": 0, "points": [[1, 1], [5, 0], [9, 1], [5, 9]],
                                       "tolerance": "big"}}, 400, "tolerance"),
    ("get", "/api/frames/-1/image", {}, 404, "frame must be an index"),
    ("get", "/static/../app.py", {}, 404, "Not Found"),
    ("put", "/api/frames/0/objects", {"json": {"base_version": 0, "objects": [{"id": 3}]}}, 400, "short string"),
    ("put", "/api/frames/0/objects", {"json": {"base_version": 0, "objects": [
        _object("o2"), {**_object(), "polygon": [[1, 5], [5000, 65], [9, 5], [-300, 90]]}]}}, 422,
     "objects[1] (id 'o1', car).polygon[1] [5000.0, 65.0] is outside the 512x256 image"),
    ("put", "/api/frames/0/objects", {"json": {"base_version": 0, "objects": [
        {**_object(), "points": [[1, 5], [5, 1], [9, 5], [5, 300]]}]}}, 422, "objects[0] (id 'o1', car).points[3]"),
    ("post", "/api/frames/1/proposals", {"json": {}}, 409, "proposals are off"),
    ("post", "/api/frames/0/propagate", {"json": {"source": 3}}, 422, "no objects to copy"),
    ("post", "/api/segment", {"json": {"frame": 0, "points": [[1, 1], [5, 0], [9, 1], [5, 9]],
                                       "positive": [[600, 1]]}}, 422, "outside the 512x256 image"),
    ("post", "/api/segment", {"json": {"frame": 0, "points": [[1, 1], [5, 0], [9, 1], [5, 9]],
                                       "negative": "here"}}, 422, "negative must be a list"),
    ("post", "/api/segment", {"json": {"frame": 0, "points": [[1, 1], [5, 0], [9, 1], [5, 9]],
                                       "positive": [[1, 1]] * 101}}, 422, "0 to 100"),
    ("post", "/api/frames/0/brush", {"json": {"polygon": [[1, 1], [9, 1], [5, 9]], "strokes": "x"}}, 422, "strokes"),
    ("post", "/api/frames/0/brush", {"json": {"polygon": [[1, 1], [9, 1], [5, 9]], "strokes": [
        {"mode": "erase", "radius": 20, "points": [[5, 5]]}]}}, 422, "nothing is left"),
    ("post", "/api/frames/9/warm", {"json": {}}, 404, "frame must be an index"),
    ("post", "/api/frames/0/brush", {"json": {"polygon": [[1e12, 1e12], [0, 0], [5, 5]], "strokes": [
        {"mode": "paint", "radius": 2, "points": [[5, 5]]}]}}, 422, "outside the 512x256 image"),
    ("post", "/api/segment", {"json": {"frame": "0", "points": []}}, 400, "integer index"),
    ("get", "/api/frames/1.5", {}, 400, "bad request: path.index"),
    ("post", "/api/export", {"json": {"overwrite": "no"}}, 400, "overwrite must be true or false"),
    ("post", "/api/segment", {"headers": JSON, "content": '{"frame": ' + "9" * 5000 + "}"}, 400, "4300 digits"),
    ("post", "/api/frames/0/proposals", {"json": {"objects": [{"id": "o1"}]}}, 400, "objects[0].class"),
    # operator probe: long values are cut in messages; a frame is a whole number (404 when the bag has none such)
    ("get", "/api/frames/" + "9" * 4000, {}, 404, "frame must be an index in [0, 4), got 99999"),
    ("post", "/api/segment", {"json": {"frame": "7" * 5000, "points": []}}, 400, "integer index in [0, 4), got '777"),
    ("put", "/api/frames/0/objects", {"json": {"base_version": 0, "objects": [{**_object(), "class": "x" * 9000}]}},
     400, "characters) is not one of the studio's classes"),
    ("post", "/api/segment", {"json": {"frame": -1, "points": []}}, 404, "frame must be an index"),
    ("post", "/api/segment", {"json": {"frame": 1e300, "points": []}}, 404, "frame must be an index"),
    ("post", "/api/segment", {"json": {"frame": 1.5, "points": []}}, 400, "integer index"),
    ("post", "/api/segment", {"json": {"frame": None, "points": []}}, 400, "integer index"),
    ("post", "/api/frames/2/propagate", {"json": {"source": None}}, 422, "frame 1 has no objects to copy"),
    ("put", "/api/frames/0/objects", {"json": {"base_version": None, "objects": []}}, 400,
     "base_version must be the session version"),
])
def test_hostile_and_bad_requests_get_a_clear_refusal(client: TestClient, method: str, path: str, kwargs: dict,
                                                      status: int, message: str) -> None:
    response = getattr(client, method)(path, **kwargs)
    assert response.status_code == status, response.text
    body = response.json()
    assert message in (body.get("error") or body.get("detail", "")), body
    assert len(body.get("error") or body.get("detail", "")) < 300, "a message names a value, never echoes it whole"
    assert client.get("/api/info").status_code == 200, "the server keeps serving"
    assert client.get("/api/info").json()["version"] == 0, "nothing refused was saved"


def test_brush_tracks_and_warming_through_the_api(client: TestClient, bag: tuple[Path, GroundTruth]) -> None:
    """The page's new routes: a painted stroke grows the polygon, the track list names each track's frames, and
    warming a frame runs the segmenter once on it."""
    square = [[100, 100], [140, 100], [140, 140], [100, 140]]
    painted = client.post("/api/frames/0/brush", json={"polygon": square, "strokes": [
        {"mode": "paint", "radius": 5, "points": [[140, 120], [170, 120]]}], "tolerance": 1.0}).json()
    assert max(x for x, _ in painted["polygon"]) >= 174 and painted["area"] > 41 * 41
    version = 0
    for frame in (0, 1, 3):
        version = client.put(f"/api/frames/{frame}/objects", json={"base_version": version, "objects": [
            {**_object(), "track_id": 7}]}).json()["version"]
    assert client.get("/api/tracks").json()["tracks"] == [
        {"track_id": 7, "class": "car", "frames": [0, 1, 3], "objects": 3, "ranges": "1-2, 4"}]
    assert client.post("/api/frames/2/warm", json={}).status_code == 202
    assert client.get("/api/info").json()["segmenter_stats"]["warm"] >= 1


def test_json_depth_counts_brackets_outside_strings_only() -> None:
    assert json_depth(b'{"frame": 0, "points": [[1, 2], [3, 4]]}') == 3
    assert json_depth(b'{"note": "[[[[{{{{ \\" ]]]", "k": [1]}') == 2  # an escaped quote does not end the string
    assert json_depth(b"7") == json_depth(b"") == 0


def test_copying_objects_to_the_next_frame_follows_them(client: TestClient, bag: tuple[Path, GroundTruth]) -> None:
    gt = bag[1]
    objects = []
    for k, (name, _) in enumerate(gt.objects[2]):
        answer = client.post("/api/segment", json={"frame": 2, "points": gt.extreme_points(2, k)}).json()
        objects.append({"id": f"o{k}", "class": name, "points": answer["points"], "polygon": answer["polygon"],
                        "tolerance": 1.0})
    assert client.put("/api/frames/2/objects", json={"base_version": 0, "objects": objects}).status_code == 200
    copied = client.post("/api/frames/3/propagate", json={"source": 2}).json()
    assert not copied["failures"] and len(copied["objects"]) == len(objects)
    moved, kept = [], []
    for obj, before, (name, mask) in zip(copied["objects"], objects, gt.objects[3], strict=True):
        assert obj["class"] == name and obj["source"] == "propagated"
        moved.append(iou(_mask(obj["polygon"], mask.shape), mask))
        kept.append(iou(_mask(before["polygon"], mask.shape), mask))
    cars = [value for value, (name, _) in zip(moved, gt.objects[3], strict=True) if name == "car"]
    assert cars and min(cars) >= 0.9, moved  # rigid objects follow; a walking person's limbs change its extremes
    assert np.mean(moved) > np.mean(kept) + 0.02, ("following the motion beats copying in place", moved, kept)


def test_export_loads_in_the_readers_and_replays_with_instseg_label(client: TestClient, tmp_path: Path,
                                                                    bag: tuple[Path, GroundTruth]) -> None:
    gt = bag[1]
    version = 0
    for frame in (1, 3):
        objects = []
        for k, (name, _) in enumerate(gt.objects[frame][:2]):
            answer = client.post("/api/segment", json={"frame": frame, "points": gt.extreme_points(frame, k)}).json()
            objects.append({"id": f"o{k}", "class": name, "points": answer["points"], "polygon": answer["polygon"],
                            "tolerance": 1.0})
        version = client.put(f"/api/frames/{frame}/objects",
                             json={"base_version": version, "objects": objects}).json()["version"]
    summary = client.post("/api/export", json={}).json()
    assert summary["frames"] == 2 and summary["objects"] == 4
    export = Path(summary["out"])
    coco = COCO(str(export / "annotations_coco.json"))
    assert len(coco.getAnnIds()) == 4 and sorted(img["frame_index"] for img in coco.dataset["images"]) == [1, 3]
    samples = list(CityscapesDataset(export, "train"))
    assert len(samples) == 2 and all(len(np.unique(s.instance_ids[s.instance_ids >= 1000])) == 2 for s in samples)
    clicks = label_bag.parse_clicks(json.loads((export / "clicks.json").read_text()))
    replay = label_bag.label_bag(bag[0], "/camera/image_raw", clicks, tmp_path / "replay",
                                 create_annotation_segmenter(), progress=False)
    assert replay["objects"] == 4
    replayed = json.loads((tmp_path / "replay" / "annotations_coco.json").read_text())["annotations"]
    assert [a["segmentation"] for a in replayed] == [a["segmentation"] for a in coco.dataset["annotations"]], \
        "the command line reproduces the studio's polygons from its clicks file"


def test_a_failed_export_leaves_the_previous_one(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    client.put("/api/frames/2/objects", json={"base_version": 0, "objects": [_object()]})
    first = client.post("/api/export", json={"overwrite": None}).json()  # null: the default, as left out
    before = sorted(p.name for p in Path(first["out"]).rglob("*"))

    def broken(*_: object) -> None:
        raise BagFramesError("frame 2 cannot be read")

    monkeypatch.setattr(bag_frames.BagFrames, "frame", broken)
    failed = client.post("/api/export", json={})
    assert failed.status_code == 422 and "nothing written" in failed.json()["error"]
    assert sorted(p.name for p in Path(first["out"]).rglob("*")) == before
    assert not [p for p in Path(first["out"]).parent.iterdir() if p.name.startswith(".export")]


# --- start-up ----------------------------------------------------------------------------------------------

def test_a_start_that_fails_writes_nothing(bag: tuple[Path, GroundTruth], tmp_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    """The bag is indexed, then the label file lists no class: status 2, one line, and --out is not created (before,
    it held the bag's index cache). A port out of range is refused by the argument parser (status 2; before,
    socket.bind raised OverflowError: an internal error, status 1)."""
    from instseg_studio import cli

    labels, out = tmp_path / "labels.txt", tmp_path / "out"
    labels.write_text("# no class\n")
    with pytest.raises(SystemExit) as ended:
        cli.main([str(bag[0]), "--topic", "/camera/image_raw", "--out", str(out), "--labels", str(labels),
                  "--port", "0", "--segmenter", "inprocess"])
    err = capsys.readouterr().err
    assert ended.value.code == 2 and f"instseg-studio: label file {labels} lists no class" in err, err
    assert not out.exists(), list(out.iterdir())
    for port in ("70000", "-1", "http"):
        with pytest.raises(SystemExit) as ended:
            cli.main([str(bag[0]), "--out", str(out), "--port", port])
        err = capsys.readouterr().err
        assert ended.value.code == 2 and "argument --port" in err and "Traceback" not in err, err
    assert not out.exists()


def test_the_index_cache_is_written_once_the_studio_has_started(bag: tuple[Path, GroundTruth],
                                                                tmp_path: Path) -> None:
    """BagFrames writes its index into cache_dir at once, or with defer_cache_write when save_index_cache is
    called (what instseg-studio does after everything else has started); a second open reads it."""
    BagFrames(bag[0], "/camera/image_raw", cache_dir=tmp_path / "now").close()
    assert len(list((tmp_path / "now").glob("index_*.json"))) == 1
    frames = BagFrames(bag[0], "/camera/image_raw", cache_dir=tmp_path / "later", defer_cache_write=True)
    assert not (tmp_path / "later").exists()
    frames.save_index_cache()
    frames.close()
    cached = list((tmp_path / "later").glob("index_*.json"))
    assert [p.name for p in cached] == [p.name for p in (tmp_path / "now").glob("index_*.json")]
    assert cached[0].read_text() == next((tmp_path / "now").glob("index_*.json")).read_text()
