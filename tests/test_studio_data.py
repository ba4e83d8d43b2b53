"""The studio's data: object schema (track ids, attributes, exclusion, correction clicks), sessions written before
them, propagation that updates tracks, and the exports read back by pycocotools and the Cityscapes reader."""

from __future__ import annotations

import datetime
import json
import logging
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from studio_fixtures import GroundTruth, sequence_bag

from instseg_core.annotate.segmenter import AnnotationError, create_annotation_segmenter
from instseg_core.data.cityscapes import CityscapesDataset
from instseg_core.data.label_export import (
    InstanceNumbers,
    LabelExportError,
    LabelledObject,
    city_name,
    write_label_tree,
)
from instseg_core.eval.binary_metrics import iou
from instseg_studio.assist import (
    brush,
    distinct,
    frame_proposals,
    merge_propagated,
    polygon_overlaps,
    propagate,
    suppress_overlapping,
)
from instseg_studio.bag_frames import BagFrames
from instseg_studio.segmenters import (
    CombinedProposals,
    InProcessSegmenter,
    SemanticProposals,
    polygon_extreme_points,
)
from instseg_studio.session import (
    SESSION_FILE,
    SESSION_FORMAT,
    Session,
    SessionError,
    export_city,
    export_labels,
    parse_attribute_config,
)

CLASSES = ("person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")


def _object(object_id: str = "o1", name: str = "car", x: float = 0.0, **extra: object) -> dict:
    square = [[1 + x, 5], [5 + x, 1], [9 + x, 5], [5 + x, 9]]
    return {"id": object_id, "class": name, "points": square, "polygon": square, "tolerance": 1.0, **extra}


# --- object schema: track ids, attributes, excluded, clicks ---------------------------------------------

def test_a_session_written_before_track_ids_loads_and_links_copied_objects(tmp_path: Path) -> None:
    """An old file (no track ids, no counter): objects that kept their id when copied to the next frame share a
    track, others get their own; the counter continues after them and is saved with the next change."""
    old = {"format": SESSION_FORMAT, "bag": "/data/bag", "topic": "/cam", "version": 4, "frames": {
        "2": {"stamp_ns": 5, "objects": [_object("o1"), _object("o2", "person", 20, hidden=True)]},
        "3": {"stamp_ns": 6, "objects": [_object("o1", x=2, source="propagated"), _object("o9", x=40)]}}}
    (tmp_path / SESSION_FILE).write_text(json.dumps(old))
    session = Session(tmp_path / SESSION_FILE, "/moved/bag", "/cam", CLASSES)
    two, three = session.objects(2), session.objects(3)
    assert two[0]["track_id"] == three[0]["track_id"], "the copied object is the same track"
    assert len({two[0]["track_id"], two[1]["track_id"], three[1]["track_id"]}) == 3
    assert two[1]["hidden"] and two[1]["attributes"] == {"occluded": False, "truncated": False, "crowd": False}
    assert not two[0]["excluded"] and two[0]["clicks"] == {"positive": [], "negative": []}
    assert session.version == 4 and session.next_track_id == 4
    assert [t["frames"] for t in session.tracks()] == [[2, 3], [2], [3]]
    version, saved = session.save_objects(7, 8, [_object("new")], 4)
    assert version == 5 and saved[0]["track_id"] == 4
    data = json.loads((tmp_path / SESSION_FILE).read_text())
    assert data["next_track_id"] == 5 and data["frames"]["3"]["objects"][0]["track_id"] == two[0]["track_id"]


def test_track_ids_are_assigned_kept_and_never_reused(tmp_path: Path) -> None:
    session = Session(tmp_path / SESSION_FILE, "bag", "/cam", CLASSES)
    version, saved = session.save_objects(0, 0, [_object("a"), _object("b", track_id=7)], 0)
    assert [o["track_id"] for o in saved] == [1, 7] and session.next_track_id == 8
    session.set_objects(0, 0, [], version)  # the objects are deleted: their track ids stay used
    reopened = Session(tmp_path / SESSION_FILE, "bag", "/cam", CLASSES)
    assert reopened.next_track_id == 8 and reopened.reserve_track_id() == 8
    assert reopened.save_objects(1, 0, [_object("c")], reopened.version)[1][0]["track_id"] == 9
    with pytest.raises(SessionError, match="share a track id"):
        reopened.set_objects(1, 0, [_object("c", track_id=3), _object("d", track_id=3)], reopened.version)


@pytest.mark.parametrize("field, value, message", [
    ("track_id", 0, "whole number from 1"), ("track_id", "3", "whole number"), ("track_id", True, "whole number"),
    ("attributes", {"shiny": True}, "unknown attribute 'shiny'"), ("attributes", {"occluded": 1}, "true or false"),
    ("attributes", [], "expected"), ("excluded", "yes", "true or false"), ("hidden", "no", "true or false"),
    ("clicks", {"positive": [[1, 2]], "middle": []}, "expected"), ("clicks", {"negative": [[1, "a"]]}, "finite"),
    ("clicks", {"positive": [[1, 1]] * 101}, "more than 100"), ("source", "magic", "not one of"),
])
def test_bad_new_fields_are_refused_by_name(tmp_path: Path, field: str, value: object, message: str) -> None:
    session = Session(tmp_path / SESSION_FILE, "bag", "/cam", CLASSES)
    with pytest.raises(SessionError, match=message) as refused:
        session.set_objects(0, 0, [_object(**{field: value})], 0)
    assert f"objects[0].{field}" in str(refused.value)
    assert session.version == 0 and session.next_track_id == 1


def test_new_fields_round_trip_through_the_file(tmp_path: Path) -> None:
    session = Session(tmp_path / SESSION_FILE, "bag", "/cam", CLASSES)
    sent = _object(track_id=2, excluded=True, source="brush", attributes={"occluded": True},
                   clicks={"positive": [[3.5, 4]], "negative": [[6, 7.25]]})
    session.set_objects(0, 0, [sent], 0)
    loaded = Session(tmp_path / SESSION_FILE, "bag", "/cam", CLASSES).objects(0)[0]
    assert loaded["excluded"] and loaded["source"] == "brush" and loaded["track_id"] == 2
    assert loaded["attributes"] == {"occluded": True, "truncated": False, "crowd": False}
    assert loaded["clicks"] == {"positive": [[3.5, 4.0]], "negative": [[6.0, 7.25]]}


def test_attributes_are_configured_per_class(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = parse_attribute_config("*=occluded,truncated; person=occluded,truncated,crowd; bicycle=none", CLASSES)
    assert config["person"] == ("occluded", "truncated", "crowd") and config["car"] == ("occluded", "truncated")
    assert config["bicycle"] == () and parse_attribute_config(None, CLASSES)["car"] == ("occluded", "truncated",
                                                                                        "crowd")
    for text, message in [("car", "expected CLASS=ATTR"), ("sky=occluded", "not one of the studio's classes"),
                          ("car=shiny", "unknown attribute 'shiny'")]:
        with pytest.raises(ValueError, match=message):
            parse_attribute_config(text, CLASSES)
    session = Session(tmp_path / SESSION_FILE, "bag", "/cam", CLASSES, config)
    assert session.attribute_config()["car"] == ["occluded", "truncated"]
    with pytest.raises(SessionError, match="does not offer 'crowd'"):
        session.set_objects(0, 0, [_object(attributes={"crowd": True})], 0)
    saved = session.save_objects(0, 0, [_object(attributes={"crowd": False, "truncated": True}),
                                        _object("p", "person", 20, attributes={"crowd": True})], 0)[1]
    assert saved[0]["attributes"] == {"occluded": False, "truncated": True}
    assert saved[1]["attributes"] == {"occluded": False, "truncated": False, "crowd": True}
    # opened again with a configuration that no longer offers crowd for persons: dropped with a warning
    with caplog.at_level(logging.WARNING, logger="instseg_studio"):
        narrower = Session(tmp_path / SESSION_FILE, "bag", "/cam", CLASSES, parse_attribute_config("*=occluded",
                                                                                                  CLASSES))
    assert narrower.objects(0)[1]["attributes"] == {"occluded": False}
    assert "crowd: dropped" in caplog.text


def test_a_file_holding_one_track_twice_in_a_frame_is_damaged(tmp_path: Path) -> None:
    data = {"format": SESSION_FORMAT, "bag": "bag", "topic": "/cam", "version": 1, "next_track_id": 3,
            "frames": {"0": {"stamp_ns": 0, "objects": [_object("a", track_id=2), _object("b", track_id=2)]}}}
    (tmp_path / SESSION_FILE).write_text(json.dumps(data))
    with pytest.raises(SessionError, match="holds track 2 twice"):
        Session(tmp_path / SESSION_FILE, "bag", "/cam", CLASSES)


# --- propagation updates tracks; correction clicks; brush; proposal suppression -------------------------------

@pytest.fixture(scope="module")
def sequence(tmp_path_factory: pytest.TempPathFactory) -> tuple[BagFrames, GroundTruth]:
    path = tmp_path_factory.mktemp("studio_data") / "camera"
    truth = sequence_bag(path, 2)
    return BagFrames(path, "/camera/image_raw"), truth


@pytest.fixture(scope="module")
def model() -> InProcessSegmenter:
    return InProcessSegmenter(create_annotation_segmenter())


def _segmented(model: InProcessSegmenter, frames: BagFrames, truth: GroundTruth, index: int) -> list[dict]:
    objects = []
    for k, (name, _) in enumerate(truth.objects[index]):
        result = model.segment(frames.frame(index), truth.extreme_points(index, k), 1.0)
        objects.append({"id": f"o{k}", "class": name, "points": result.points.tolist(),
                        "polygon": result.polygon.tolist(), "tolerance": 1.0})
    return objects


def test_copying_twice_updates_each_track_instead_of_stacking(sequence: tuple[BagFrames, GroundTruth],
                                                              model: InProcessSegmenter, tmp_path: Path) -> None:
    frames, truth = sequence
    session = Session(tmp_path / SESSION_FILE, "bag", "/cam", CLASSES)
    version, source = session.save_objects(0, 0, _segmented(model, frames, truth, 0), 0)
    # the operator marks one object occluded on frame 1 before copying again: that stays
    moved, failures = propagate(source, frames.frame(0), frames.frame(1), model)
    assert not failures and [o["track_id"] for o in moved] == [o["track_id"] for o in source]
    first, summary = merge_propagated([], moved)
    assert summary == {"updated": [], "added": [o["track_id"] for o in source], "kept": []}
    version, saved = session.save_objects(1, 0, first, version)
    saved[0]["attributes"] = {**saved[0]["attributes"], "occluded": True}
    version, saved = session.save_objects(1, 0, saved, version)
    again, summary = merge_propagated(saved, propagate(source, frames.frame(0), frames.frame(1), model)[0])
    assert len(again) == len(source) and summary["updated"] == [o["track_id"] for o in source]
    assert again[0]["attributes"]["occluded"] and again[0]["id"] == saved[0]["id"]
    session.set_objects(1, 0, again, version)  # one object per track: accepted
    assert [t["frames"] for t in session.tracks()] == [[0, 1]] * len(source)


def test_copying_keeps_hand_edits_on_the_target_and_carries_them_from_the_source(
        sequence: tuple[BagFrames, GroundTruth], model: InProcessSegmenter, tmp_path: Path) -> None:
    """A target object edited by hand after it was copied is kept (reported in "kept"), not segmented again; an
    edited source object's polygon is carried (shifted by its motion), not segmented again from its points."""
    frames, truth = sequence
    session = Session(tmp_path / SESSION_FILE, "bag", "/cam", CLASSES)
    version, source = session.save_objects(0, 0, _segmented(model, frames, truth, 0), 0)
    assert not any(o["edited"] for o in source)  # default false
    first, _ = merge_propagated([], propagate(source, frames.frame(0), frames.frame(1), model)[0])
    version, copied = session.save_objects(1, 0, first, version)
    # the operator drags a vertex of the first object on frame 1: the page marks it edited and "clicks"
    fixed = [[x + 3.0, y] if k == 0 else [x, y] for k, (x, y) in enumerate(copied[0]["polygon"])]
    copied[0] = {**copied[0], "polygon": fixed, "edited": True, "source": "clicks"}
    version, copied = session.save_objects(1, 0, copied, version)
    again, summary = merge_propagated(copied, propagate(source, frames.frame(0), frames.frame(1), model)[0])
    tracks = [o["track_id"] for o in source]
    assert summary == {"updated": tracks[1:], "added": [], "kept": tracks[:1]}
    assert again[0] == copied[0] and again[0]["polygon"] == fixed
    # an edited source object: its own (odd) polygon arrives shifted, not the network's outline of its points
    odd = [[x, y] for x, y in source[0]["polygon"][::2]]
    edited_source = [{**source[0], "polygon": odd, "edited": True}, {**source[1], "source": "brush"}]
    moved, failures = propagate(edited_source, frames.frame(0), frames.frame(1), model)
    assert not failures
    for before, after in zip(edited_source, moved, strict=True):
        dx, dy = after["motion"]
        np.testing.assert_allclose(after["polygon"], np.add(before["polygon"], (dx, dy)), atol=0.01)
        assert after["source"] == "propagated" and after["edited"] is False
    assert len(moved[0]["polygon"]) == len(odd) and all(o["carried"] for o in moved)
    # ... and carried again from that copy to the next frame (a chain of copies keeps the hand edit)
    onward, failures = propagate(moved, frames.frame(1), frames.frame(0), model)
    assert not failures and len(onward[0]["polygon"]) == len(odd)
    np.testing.assert_allclose(onward[0]["polygon"], np.add(moved[0]["polygon"], onward[0]["motion"]),
                               atol=0.01)
    # "edited" is a bool (missing: false, as in the objects above); anything else is refused by name
    with pytest.raises(SessionError, match=r"objects\[0\]\.edited: expected true or false"):
        session.set_objects(2, 0, [_object(edited="yes")], version)


def test_correction_clicks_reach_the_model_and_are_checked(sequence: tuple[BagFrames, GroundTruth],
                                                           model: InProcessSegmenter) -> None:
    frames, truth = sequence
    frame, points = frames.frame(0), truth.extreme_points(0, 0)
    plain = model.segment(frame, points, 1.0)
    assert np.array_equal(model.segment(frame, points, 1.0, positive=[], negative=None).polygon, plain.polygon)
    mask = truth.objects[0][0][1]
    ys, xs = np.nonzero(mask)
    centre = [[float(np.median(xs)), float(np.median(ys))]]
    cut = model.segment(frame, points, 1.0, negative=centre)
    assert cut.area < plain.area and model.stats["with_clicks"] >= 1
    with pytest.raises(AnnotationError, match="negative clicks outside"):
        model.segment(frame, points, 1.0, negative=[[9999, 1]])
    model.warm(frame)  # the frame is shown: one run on a central box, nothing kept
    assert model.stats["warm"] == 1


def test_the_brush_paints_and_erases_the_mask_behind_the_polygon() -> None:
    square = [[10, 10], [49, 10], [49, 49], [10, 49]]
    painted = brush(square, (100, 100), [{"mode": "paint", "radius": 5, "points": [[50, 30], [80, 30]]}])
    mask = np.zeros((100, 100), np.uint8)
    cv2.fillPoly(mask, [np.asarray(painted["polygon"], np.int32).reshape(-1, 1, 2)], 1)
    assert mask[30, 75] and mask[30, 20] and not mask[40, 75] and painted["polygon_iou"] > 0.95
    erased = brush(square, (100, 100), [{"mode": "erase", "radius": 4, "points": [[0, 30], [30, 30]]}])
    mask[:] = 0
    cv2.fillPoly(mask, [np.asarray(erased["polygon"], np.int32).reshape(-1, 1, 2)], 1)
    assert not mask[30, 20] and mask[40, 20] and mask[30, 40] and erased["area"] == pytest.approx(mask.sum(), rel=0.01)
    assert erased["area"] < 40 * 40 - 20 * 7
    for strokes, message in [([], "1 to 1000"), ([{"mode": "glue", "radius": 2, "points": [[1, 1]]}], "paint or"),
                             ([{"mode": "paint", "points": [[1, 1]]}], "radius")]:
        with pytest.raises(AnnotationError, match=message):
            brush(square, (100, 100), strokes)
    with pytest.raises(AnnotationError, match="nothing is left"):
        brush(square, (100, 100), [{"mode": "erase", "radius": 40, "points": [[30, 30]]}])


def test_proposals_overlapping_objects_of_the_frame_are_left_out() -> None:
    def box(x: int, w: int = 20) -> list[list[int]]:
        return [[x, 10], [x + w - 1, 10], [x + w - 1, 29], [x, 29]]

    found = [{"polygon": box(0), "score": 0.9}, {"polygon": box(50), "score": 0.8}, {"polygon": box(100), "score": 0.7}]
    existing = [{"polygon": box(2)}, {"polygon": box(62)}]  # IoU 17/21 with the first, 7/31 with the second
    ious = polygon_overlaps([p["polygon"] for p in found], [o["polygon"] for o in existing], (40, 200), "iou")
    # pycocotools fills polygons as continuous shapes: [0, 19] is 19 pixels wide
    assert ious[0, 0] == pytest.approx(17 / 21) and ious[1, 1] == pytest.approx(7 / 31) and ious[2].max() == 0
    kept, suppressed = suppress_overlapping(found, existing, (40, 200))
    assert [p["score"] for p in kept] == [0.8, 0.7] and suppressed == 1
    # one object proposed twice (an instance and the region around it) is offered once, the better one
    twice = [found[0], {"polygon": box(1), "score": 0.85}, *found[1:]]
    assert [p["score"] for p in distinct(twice, (40, 200))] == [0.9, 0.8, 0.7]


def test_proposals_that_are_pieces_of_an_object_or_of_a_better_proposal_are_left_out() -> None:
    """Operator probe on a highway bag: after a whole car was labelled, P still offered two slivers of it (IoU with
    the car under 0.5, but all inside it). A proposal mostly covered by an object is left out (intersection over the
    proposal's own area), and so is one a better proposal covers so; a worse proposal much bigger than a better
    one inside it stays."""
    def box(x: int, w: int) -> list[list[int]]:
        return [[x, 10], [x + w - 1, 10], [x + w - 1, 29], [x, 29]]

    car = {"polygon": box(0, 60)}
    slivers = [{"polygon": box(2, 12), "score": 0.77}, {"polygon": box(40, 15), "score": 0.72}]
    half_out = {"polygon": box(50, 30), "score": 0.6}  # a third inside the car: another object beside it
    kept, suppressed = suppress_overlapping([*slivers, half_out], [car], (40, 200))
    assert kept == [half_out] and suppressed == 2
    # a sliver inside a bigger, better proposal; one car proposed as "car" (better) and as a somewhat bigger "bus"
    big, piece = {"polygon": box(100, 50), "score": 0.9}, {"polygon": box(110, 12), "score": 0.8}
    as_car, as_bus = {"polygon": box(160, 20), "score": 0.7}, {"polygon": box(157, 26), "score": 0.6}
    assert distinct([big, piece, as_car, as_bus], (40, 200)) == [big, as_car]
    # a worse region three times the size of a better proposal inside it is another object (two cars, say): offered
    region = {"polygon": box(100, 60), "score": 0.5}
    assert distinct([piece, region], (40, 200)) == [piece, region]


# --- exports: COCO (pycocotools), Cityscapes (the project's reader and cityscapesscripts), tracks, attributes ---

def test_export_carries_tracks_attributes_crowd_and_leaves_excluded_out(sequence: tuple[BagFrames, GroundTruth],
                                                                        model: InProcessSegmenter,
                                                                        tmp_path: Path) -> None:
    from cityscapesscripts.helpers.annotation import Annotation
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    frames, truth = sequence
    bag = "/data/drive_0412.mcap"
    session = Session(tmp_path / SESSION_FILE, bag, "/camera/image_raw", CLASSES)
    objects = _segmented(model, frames, truth, 0)  # person, car, person, car
    objects[0]["attributes"] = {"crowd": True}
    objects[1]["attributes"] = {"occluded": True, "truncated": True}
    version, first = session.save_objects(0, 5, objects, 0)
    moved, failures = propagate(first, frames.frame(0), frames.frame(1), model)
    assert not failures
    second = [{**o, "excluded": o["track_id"] == first[3]["track_id"]} for o in reversed(moved)]  # other order
    session.set_objects(1, 6, second, version)
    summary = export_labels(session, frames.frame, tmp_path / "export")
    city = export_city(bag, "/camera/image_raw")
    assert city == "drive-0412-camera-image-raw" and summary["city"] == city
    assert summary["frames"] == 2 and summary["objects"] == 7 and summary["excluded"] == 1
    assert summary["crowd"] == 2 and summary["tracks"] == 4 and summary["unstable_instance_ids"] == 0

    coco = COCO(str(tmp_path / "export" / "annotations_coco.json"))
    assert {"info", "licenses"} <= coco.dataset.keys() and coco.dataset["info"]["bag"] == bag
    for image in coco.dataset["images"]:  # one format for every frame, whole seconds or not
        datetime.datetime.strptime(image["date_captured"], "%Y-%m-%dT%H:%M:%S.%f%z")
    prefix = f"leftImg8bit/train/{city}/{city}_000000_"
    assert all(img["file_name"].startswith(prefix) for img in coco.dataset["images"])
    by_track: dict[int, list[dict]] = {}
    for ann in coco.dataset["annotations"]:
        image = coco.imgs[ann["image_id"]]
        mask = coco.annToMask(ann)
        if ann["iscrowd"]:
            rle = ann["segmentation"]
            assert isinstance(rle, dict) and ann["attributes"]["crowd"]
        else:
            rle = mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], image["height"], image["width"]))
        assert ann["area"] == mask_utils.area(rle) == mask.sum() > 0
        assert ann["bbox"] == mask_utils.toBbox(rle).tolist()
        by_track.setdefault(ann["attributes"]["track_id"], []).append(ann)
    assert sorted(by_track) == sorted(o["track_id"] for o in first)
    assert [len(anns) for _, anns in sorted(by_track.items())] == [2, 2, 2, 1], "the excluded object is left out"
    occluded = by_track[first[1]["track_id"]]
    assert all(a["attributes"] == {"track_id": first[1]["track_id"], "occluded": True, "truncated": True,
                                   "crowd": False} for a in occluded)

    samples = {s.paths["image"].name: s for s in CityscapesDataset(tmp_path / "export", "train")}
    assert len(samples) == 2
    for track, anns in by_track.items():
        assert len({a["instance_id"] for a in anns}) == 1, "one instance id per track across the sequence"
        for ann in anns:
            image = coco.imgs[ann["image_id"]]
            sample = samples[Path(image["file_name"]).name]
            visible = sample.instance_ids[coco.annToMask(ann).astype(bool)]
            assert np.mean(visible == ann["instance_id"]) > 0.7, (track, np.unique(visible))
            if ann["iscrowd"]:
                assert ann["instance_id"] == 24 and ann["instance_id"] not in sample.instance_id_values
                assert sample.group_mask[sample.instance_ids == 24].all()
            else:
                assert ann["instance_id"] // 1000 == ann["category_id"] and ann["instance_id"] in \
                    sample.instance_id_values
    polygons_file = next((tmp_path / "export" / "gtFine").rglob("*_000000_000000_gtFine_polygons.json"))
    polygons = Annotation()
    polygons.fromJsonFile(str(polygons_file))
    assert [o.label for o in polygons.objects] == ["persongroup", "car", "person", "car"]
    # the polygons JSON carries each object's track id and attributes as the COCO file does
    entries = json.loads(polygons_file.read_text())["objects"]
    first_frame = [a["attributes"] for a in coco.dataset["annotations"] if a["image_id"] == 1]
    assert [e["attributes"] for e in entries] == first_frame


def test_city_names_and_instance_numbers() -> None:
    assert export_city("/a/drive_1.mcap", "/cam") != export_city("/b/drive_2", "/cam")
    assert city_name("", "") == "labelled" and "_" not in city_name("a_b", "/x_y/z")
    numbers = InstanceNumbers()

    def obj(track: int | None, name: str = "car", crowd: bool = False) -> LabelledObject:
        return LabelledObject(name, np.zeros((3, 2)), np.zeros((4, 2)), track_id=track, attributes={"crowd": crowd})

    assert numbers.frame([obj(5), obj(9), obj(None), obj(2, "person")]) == [0, 1, 2, 0]
    assert numbers.frame([obj(None), obj(9), obj(7), obj(3, crowd=True)]) == [0, 1, 2, None]
    with pytest.raises(LabelExportError, match="city name"):
        write_label_tree(Path("/nonexistent/out"), [], city="a_b")


def test_semantic_proposals_find_the_cars_and_skip_labelled_ones(sequence: tuple[BagFrames, GroundTruth]) -> None:
    """`--proposals semantic`: the shipped Spatial Embeddings model and its real-data ESPNetv2 semantic branch in one
    graph (exported once into the user's cache) + the extreme-point network, on a synthetic street frame: both cars
    are proposed with their outline, best first, each once; with the cars labelled, the frame's proposals leave them
    out (suppressed)."""
    frames, truth = sequence
    source = CombinedProposals(create_annotation_segmenter())
    frame = frames.frame(0)
    found = source.propose(frame.rgb, CLASSES)
    assert [p["score"] for p in found] == sorted((p["score"] for p in found), reverse=True)
    assert all(0 <= p["score"] <= 1 and len(p["points"]) == 4 for p in found)
    best = []
    for name, mask in truth.objects[0]:
        if name == "car":
            scored = [(iou(_filled(p["polygon"], mask.shape), mask), k) for k, p in enumerate(found)]
            best.append(max(scored))
    assert len({k for _, k in best}) == 2 and all(value >= 0.7 and found[k]["score"] >= 0.5 and
                                                  found[k]["class"] == "car" for value, k in best), best
    offered = frame_proposals(source, frame, CLASSES, [{"polygon": found[k]["polygon"]} for _, k in best])
    assert offered["suppressed"] == 2 and len(offered["proposals"]) == len(found) - 2


class _LabelMapProposals(SemanticProposals):
    """SemanticProposals on a label map given by the test (no network) with a stand-in annotation model."""

    def __init__(self, label: np.ndarray, annotation: object) -> None:
        from instseg_core.networks.espnetv2 import CITYSCAPES_TRAIN_IDS

        self.label, self.annotation, self.instances = label, annotation, None
        self.train_ids, self.stats = dict(CITYSCAPES_TRAIN_IDS), Counter()

    def analyse(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, None]:
        return self.label, np.full(self.label.shape, 0.9, np.float32), rgb.shape[1] / self.label.shape[1], None


def test_semantic_proposals_take_four_distinct_points_from_their_final_mask() -> None:
    """Operator probe on a highway bag: 31 of 594 semantic proposals had two of their four points equal or within 2
    px (taken from the half-resolution label map), and accepting one stored them. A proposal's points are now those
    of its final polygon's mask, four distinct ones; a proposal whose mask has none is dropped and counted."""
    from types import SimpleNamespace

    label = np.zeros((128, 256), np.int64)
    for k in range(21):  # a diagonal "car": its left- and top-most label pixel are one pixel (so are right, bottom)
        label[40 + k, 40 + k:42 + k] = 13
    label[20:40, 150:170] = 11  # a "person" the stand-in model outlines as a 1-pixel band
    rectangle = [[80, 76], [124, 76], [124, 124], [80, 124]]
    band = [[300, 50], [340, 50], [340, 51], [300, 51]]

    class Annotation:
        def segment_batch(self, rgb: np.ndarray, points: list, tolerance: float) -> list:
            return [SimpleNamespace(polygon=np.array(rectangle if p[0][0] < 200 else band), polygon_iou=1.0, area=99)
                    for p in points]

    source = _LabelMapProposals(label, Annotation())
    found = source.propose(np.zeros((256, 512, 3), np.uint8), CLASSES)
    assert [p["class"] for p in found] == ["car"] and source.stats["without_four_points"] == 1
    points = np.asarray(found[0]["points"])
    assert min(np.hypot(*(points[i] - points[j])) for i in range(4) for j in range(i)) >= 2, points
    assert points.tolist() == polygon_extreme_points(rectangle, (256, 512)).tolist()  # type: ignore[union-attr]
    assert points[:, 0].min() == 80 and points[:, 1].min() == 76, "the points lie on the final outline"


def _filled(polygon: list, shape: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    cv2.fillPoly(mask, [np.asarray(polygon, np.int32).reshape(-1, 1, 2)], 1)
    return mask.astype(bool)


def test_a_bad_attributes_option_stops_the_studio_with_one_line(sequence: tuple[BagFrames, GroundTruth],
                                                                tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    from instseg_studio import cli

    with pytest.raises(SystemExit) as ended:
        cli.main([str(sequence[0].bag), "--topic", "/camera/image_raw", "--out", str(tmp_path / "out"), "--port", "0",
                  "--segmenter", "inprocess", "--attributes", "car=shiny"])
    err = capsys.readouterr().err
    assert ended.value.code == 2 and "unknown attribute 'shiny'" in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


def test_proposals_are_prepared_in_the_background_once_and_a_failure_is_counted() -> None:
    """Studio.prepare_proposals_in_background builds the proposal segmenter before the first P (its models take
    seconds to load); P then gets that same instance. A source that fails to build is counted and logged, and the
    first P reports the failure itself."""
    from instseg_studio.app import RequestError, Studio

    built: list[object] = []

    def build() -> object:
        built.append(object())
        return built[-1]

    studio = Studio(None, None, None, Path("."), build)  # type: ignore[arg-type]
    thread = studio.prepare_proposals_in_background()
    assert thread is not None
    thread.join(10)
    assert len(built) == 1 and studio.streaming_segmenter() is built[0] and len(built) == 1

    def broken() -> object:
        raise FileNotFoundError("espnetv2 weights missing")

    failing = Studio(None, None, None, Path("."), broken)  # type: ignore[arg-type]
    failed = failing.prepare_proposals_in_background()
    assert failed is not None
    failed.join(10)
    assert failing.counters["proposals_prepare_failures"] == 1
    with pytest.raises(FileNotFoundError, match="weights missing"):
        failing.streaming_segmenter()
    assert Studio(None, None, None, Path(".")).prepare_proposals_in_background() is None  # type: ignore[arg-type]
    with pytest.raises(RequestError, match="proposals are off"):
        Studio(None, None, None, Path(".")).streaming_segmenter()  # type: ignore[arg-type]


def test_copying_keeps_an_object_cut_by_the_frame_edge_on_that_edge() -> None:
    """A car entering the frame at x = 0 and moving right by the flow: its copy's left point and its carried outline
    stay at x = 0 (the hidden part goes on beyond the edge), the other points move; clipping still holds."""
    import cv2 as cv

    from instseg_studio.assist import propagate, shift_within_frame
    from instseg_studio.bag_frames import Frame
    from instseg_studio.segmenters import Segmentation

    moved = shift_within_frame(np.array([[0.0, 50], [20, 10], [40, 50], [639, 90], [20, 119.5]]), np.array([16, -3]),
                               640, 120)
    assert moved.tolist() == [[0, 47], [36, 7], [56, 47], [639, 87], [36, 119]]

    rng = np.random.default_rng(0)
    background = rng.integers(0, 60, (120, 640, 3), np.uint8)
    texture = rng.integers(120, 255, (60, 80, 3), np.uint8)
    first, second = background.copy(), background.copy()
    first[30:90, 0:40] = texture[:, 40:]  # the car's right half is in view
    second[30:90, 0:56] = texture[:, 24:]  # 16 px more of it, one frame later
    frames = [Frame(i, 0, 0, "cam", cv.GaussianBlur(rgb, (3, 3), 0)) for i, rgb in enumerate((first, second))]

    class Recording:
        name = "recording"

        def __init__(self) -> None:
            self.points: list[np.ndarray] = []

        def segment(self, frame: Frame, points: object, tolerance: float, positive: object = None,
                    negative: object = None) -> Segmentation:
            array = np.asarray(points, np.float64)
            self.points.append(array)
            box = np.array([[array[:, 0].min(), array[:, 1].min()], [array[:, 0].max(), array[:, 1].min()],
                            [array[:, 0].max(), array[:, 1].max()], [array[:, 0].min(), array[:, 1].max()]])
            return Segmentation(box.astype(np.int32), 0.9, 1.0, 1, array.astype(np.int32), 1.0)

    segmenter = Recording()
    car = {"id": "o1", "track_id": 1, "class": "car", "points": [[0, 60], [20, 30], [39, 60], [20, 89]],
           "polygon": [[0, 30], [39, 30], [39, 89], [0, 89]]}
    edited = {**car, "id": "o2", "track_id": 2, "edited": True}
    objects, failures = propagate([car, edited], frames[0], frames[1], segmenter)  # type: ignore[arg-type]
    assert not failures
    left, top, right, _ = segmenter.points[0]
    assert left[0] == 0 and right[0] > 39 and top[0] > 20  # the flow moved the car right; its left end stays
    carried = np.asarray(objects[1]["polygon"])
    assert carried[:, 0].min() == 0 and carried[:, 0].max() > 39


def test_two_exports_at_once_both_finish_and_leave_one_whole_tree(tmp_path: Path) -> None:
    """Two exports of one session at the same time (two tabs, an API client): each is complete and the published
    tree is whole, with nothing left beside it (they shared one staging folder, and one published half a tree)."""
    import threading

    from instseg_core.data.label_export import LabelledFrame, LabelledObject, write_label_tree

    rgb = np.random.default_rng(0).integers(0, 255, (96, 128, 3), np.uint8)
    polygon = np.array([[10, 10], [60, 10], [60, 50], [10, 50]])
    frames = [LabelledFrame(k, 10**9 * (k + 1), "cam", rgb, [LabelledObject("car", polygon, polygon, track_id=1)])
              for k in range(3)]
    out = tmp_path / "export"
    results: list[object] = []
    start = threading.Barrier(2)

    def export() -> None:
        start.wait()
        try:
            results.append(write_label_tree(out, frames, city="drive", overwrite=True))
        except Exception as exc:  # a failure is the defect this test is about: collect it, assert below
            results.append(exc)

    threads = [threading.Thread(target=export) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert all(isinstance(r, dict) and r["frames"] == 3 for r in results), results
    assert len(list((out / "leftImg8bit").rglob("*.png"))) == 3 and (out / "annotations_coco.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
