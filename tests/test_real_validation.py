"""Real-photo validation: matching and AP50 on hand-built cases, the YOLO-seg and COCO readers, the command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from instseg_core.base.command_exit import CommandExit
from instseg_core.data.cityscapes import CityscapesDataset
from instseg_core.eval.real_photos import (
    GroundTruthObject,
    ImageInstances,
    RealDataError,
    RealSample,
    decode_rle,
    evaluate_predictions,
    match_image,
    read_coco_instances,
    read_yolo_seg,
    sweep_score_thresholds,
)
from instseg_core.eval.semantic_ceiling import CeilingReport, add_image
from instseg_core.postprocess.polygons import mask_to_polygon
from training.semantic_ceiling import main as semantic_ceiling_main

REPO_ROOT = Path(__file__).resolve().parents[1]
H, W = 60, 80


def rect(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """(H, W) bool, True in columns x0..x1-1 and rows y0..y1-1."""
    mask = np.zeros((H, W), bool)
    mask[y0:y1, x0:x1] = True
    return mask


def sample(*objects: tuple[str, np.ndarray]) -> RealSample:
    return RealSample("hand", Path("hand.png"), W, H, tuple(GroundTruthObject.from_mask(c, m) for c, m in objects))


def predict(*instances: tuple[str, np.ndarray, float]) -> ImageInstances:
    if not instances:
        return ImageInstances((), (), np.zeros(0, np.float32))
    return ImageInstances.from_masks(np.stack([m for _, m, _ in instances]), [c for c, _, _ in instances],
                                     [s for _, _, s in instances])


CAR = rect(10, 10, 30, 30)  # 400 px
SMALL = rect(50, 5, 55, 9)  # 20 px


def test_prediction_equal_to_ground_truth_scores_one() -> None:
    report = evaluate_predictions([predict(("car", CAR, 0.9))], [sample(("car", CAR))])
    assert (report.recall, report.precision, report.ap50) == (1.0, 1.0, pytest.approx(1.0))
    assert report.per_class["car"].recall == 1.0 and report.per_class["person"].ground_truth == 0
    assert report.predictions_per_image == 1.0 and report.ground_truth_per_image == 1.0


def test_wrong_class_matches_nothing_but_counts_class_agnostic() -> None:
    report = evaluate_predictions([predict(("truck", CAR, 0.9))], [sample(("car", CAR))])
    assert (report.recall, report.precision, report.ap50) == (0.0, 0.0, 0.0)
    assert report.per_class["truck"].predictions == 1 and report.per_class["truck"].precision == 0.0
    agnostic = report.class_agnostic
    assert (agnostic.recall, agnostic.precision, agnostic.ap50) == (1.0, 1.0, pytest.approx(1.0))


def test_predicted_rider_counts_as_person() -> None:
    report = evaluate_predictions([predict(("rider", CAR, 0.9))], [sample(("person", CAR))])
    assert (report.recall, report.precision, report.ap50) == (1.0, 1.0, pytest.approx(1.0))
    assert "rider" not in report.per_class and report.per_class["person"].matched_predictions == 1


@pytest.mark.parametrize(("pixels", "matched"), [(49, False), (50, True), (51, True)])
def test_iou_boundary_at_one_half(pixels: int, matched: bool) -> None:
    ground_truth = rect(0, 0, 10, 10)  # 100 px
    prediction = np.zeros((H, W), bool)
    prediction[np.nonzero(ground_truth)[0][:pixels], np.nonzero(ground_truth)[1][:pixels]] = True  # IoU pixels/100
    match = match_image(predict(("car", prediction, 0.9)), sample(("car", ground_truth)))
    assert match.gt_matched.tolist() == [matched] and match.pred_matched.tolist() == [matched]


def test_two_predictions_on_one_ground_truth_give_one_match_to_the_higher_score() -> None:
    predictions = predict(("car", rect(10, 10, 29, 30), 0.6), ("car", CAR, 0.8))
    match = match_image(predictions, sample(("car", CAR)))
    assert match.pred_matched.tolist() == [False, True]
    report = evaluate_predictions([predictions], [sample(("car", CAR))])
    assert (report.recall, report.precision) == (1.0, 0.5)


def test_min_gt_area_ignores_small_ground_truth() -> None:
    truth = sample(("car", CAR), ("car", SMALL))
    both = predict(("car", CAR, 0.9), ("car", SMALL, 0.8))
    counted = evaluate_predictions([both], [truth])
    assert (counted.overall.ground_truth, counted.ignored_ground_truth, counted.recall, counted.precision) == (
        2, 0, 1.0, 1.0)
    ignored = evaluate_predictions([both], [truth], min_gt_area=100)
    assert (ignored.overall.ground_truth, ignored.ignored_ground_truth) == (1, 1)
    assert (ignored.overall.predictions, ignored.overall.ignored_predictions, ignored.precision) == (1, 1, 1.0)
    assert ignored.predictions_per_image == 2.0  # every prediction kept, ignored ones too
    # a small object missed: a miss when it counts, nothing when ignored (COCOeval too)
    missed = predict(("car", CAR, 0.9))
    assert evaluate_predictions([missed], [truth]).recall == 0.5
    assert evaluate_predictions([missed], [truth]).ap50 == pytest.approx(51 / 101)
    assert evaluate_predictions([missed], [truth], min_gt_area=100).recall == 1.0
    assert evaluate_predictions([missed], [truth], min_gt_area=100).ap50 == pytest.approx(1.0)
    # a small unmatched prediction is still a false positive
    stray = predict(("car", CAR, 0.9), ("car", rect(60, 40, 64, 44), 0.8))
    assert evaluate_predictions([stray], [truth], min_gt_area=100).precision == 0.5


def test_ap50_from_pycocotools_on_a_hand_computed_case() -> None:
    """Two images, one car each; detections by score: hit (0.9), false positive (0.8), hit (0.7). Precision
    envelope 1 up to recall 0.5 (51 of COCO's 101 recall points) and 2/3 above (50 points)."""
    truths = [sample(("car", CAR)), sample(("car", CAR))]
    predictions = [predict(("car", CAR, 0.9)), predict(("car", rect(40, 30, 60, 50), 0.8), ("car", CAR, 0.7))]
    report = evaluate_predictions(predictions, truths)
    assert report.ap50 == pytest.approx((51 + 50 * 2 / 3) / 101)
    assert (report.recall, report.precision) == (1.0, pytest.approx(2 / 3))
    assert report.per_class["car"].ap50 == pytest.approx(report.ap50) and report.per_class["bus"].ap50 is None


def test_score_sweep_reuses_one_pass() -> None:
    truths = [sample(("car", CAR))]
    predictions = [predict(("car", CAR, 0.9), ("truck", rect(40, 30, 60, 50), 0.4))]
    low, high = sweep_score_thresholds(predictions, truths, [0.3, 0.5])
    assert (low.precision, high.precision) == (0.5, 1.0)
    assert (low.predictions_per_image, high.predictions_per_image) == (2.0, 1.0)
    assert high.to_dict() == evaluate_predictions([predictions[0].above(0.5)], truths, score_threshold=0.5).to_dict()
    with pytest.raises(ValueError, match=r"below the 0\.5"):
        predictions[0].above(0.5).above(0.3)


# --------------------------------------------------------------------------------------------------- readers


def write_image(path: Path, width: int = 40, height: int = 20) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((height, width, 3), 90, np.uint8))


def test_yolo_seg_reader(tmp_path: Path) -> None:
    write_image(tmp_path / "images" / "a.png")
    write_image(tmp_path / "images" / "b.jpg")
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_text(
        "2 0.1 0.1 0.5 0.1 0.5 0.9 0.1 0.9\n"  # car: x 4..20, y 2..18 in a 40x20 image
        "\n"
        "0 0.6 0.0 0.9 0.0 0.9 1.0\n"  # person
        "56 0.0 0.0 0.2 0.0 0.2 0.2\n")  # a chair: another object
    real_set = read_yolo_seg(tmp_path)
    a, b = real_set.samples
    assert (a.name, a.width, a.height, a.other_objects) == ("a", 40, 20, 1)
    assert [o.class_name for o in a.objects] == ["car", "person"]
    car = decode_rle(a.objects[0].rle)
    assert car.shape == (20, 40) and a.objects[0].area == int(car.sum())
    assert 0.9 * 16 * 16 <= a.objects[0].area <= 1.1 * 16 * 16 and car[10, 12] and not car[10, 30]
    assert b.objects == () and real_set.skipped == []


@pytest.mark.parametrize("line", ["2 0.1 0.1 0.5", "car 0.1 0.1 0.5 0.1 0.5 0.9", "2 0.1 0.1 0.5 0.1 1.7 0.9",
                                  "2 0.1 0.1 0.5 0.1 0.5", "2 0.1 0.1 0.5 0.1 0.5 nan"])
def test_yolo_seg_malformed_line_names_the_file_and_line(tmp_path: Path, line: str) -> None:
    write_image(tmp_path / "images" / "a.png")
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_text(f"0 0.1 0.1 0.5 0.1 0.5 0.9\n{line}\n")
    with pytest.raises(RealDataError, match=rf"^{tmp_path / 'labels' / 'a.txt'}:2: malformed label line"):
        read_yolo_seg(tmp_path)


def test_yolo_seg_bad_image_is_an_error_or_skipped(tmp_path: Path) -> None:
    write_image(tmp_path / "images" / "a.png")
    (tmp_path / "images" / "b.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(RealDataError, match=r"b\.jpg: not a decodable image"):
        read_yolo_seg(tmp_path)
    real_set = read_yolo_seg(tmp_path, skip_bad=True)
    assert [s.name for s in real_set.samples] == ["a"] and len(real_set.skipped) == 1
    with pytest.raises(RealDataError, match="no such directory"):
        read_yolo_seg(tmp_path / "missing")


def coco_file(tmp_path: Path, width: int = 40) -> Path:
    person = np.zeros((20, 40), np.uint8)
    person[5:15, 25:30] = 1
    uncompressed = {"size": [20, 40], "counts": _uncompressed_counts(person)}
    dataset = {
        "images": [{"id": 7, "file_name": "frames/x.png", "width": width, "height": 20}],
        "categories": [{"id": 24, "name": "person"}, {"id": 25, "name": "rider"}, {"id": 26, "name": "car"},
                       {"id": 19, "name": "traffic light"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 26, "iscrowd": 0, "segmentation": [[4, 2, 20, 2, 20, 18, 4, 18]]},
            {"id": 2, "image_id": 7, "category_id": 24, "iscrowd": 0, "segmentation": uncompressed},
            {"id": 3, "image_id": 7, "category_id": 25, "iscrowd": 0, "segmentation": [[30, 0, 39, 0, 39, 4]]},
            {"id": 4, "image_id": 7, "category_id": 26, "iscrowd": 1, "segmentation": [[0, 0, 3, 0, 3, 19, 0, 19]]},
            {"id": 5, "image_id": 7, "category_id": 19, "iscrowd": 0, "segmentation": [[0, 0, 2, 0, 2, 2]]},
        ]}
    write_image(tmp_path / "frames" / "x.png")
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(dataset))
    return path


def _uncompressed_counts(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE counts of an (H, W) 0/1 mask: run lengths in column-major order, from a 0 run."""
    flat = np.asarray(mask, np.uint8).ravel(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], changes, [flat.size]]))
    return ([0] if flat[0] else []) + runs.tolist()


def test_coco_reader(tmp_path: Path) -> None:
    real_set = read_coco_instances(coco_file(tmp_path), tmp_path)
    (x,) = real_set.samples
    assert (x.name, x.width, x.height, x.other_objects) == ("x", 40, 20, 1)
    assert [(o.class_name, o.crowd) for o in x.objects] == [("car", False), ("person", False), ("rider", False),
                                                             ("car", True)]
    assert x.objects[1].area == 50 and decode_rle(x.objects[1].rle)[10, 27]
    # the rider is ground truth of the person class; the crowd region is ignore
    predictions = predict_on(x, ("person", x.objects[2], 0.9), ("car", x.objects[3], 0.8))
    report = evaluate_predictions([predictions], [x])
    assert report.per_class["person"].matched_ground_truth == 1 and report.ignored_ground_truth == 1
    assert (report.overall.predictions, report.overall.ignored_predictions) == (1, 1)


def predict_on(target: RealSample, *instances: tuple[str, GroundTruthObject, float]) -> ImageInstances:
    return ImageInstances(tuple(o.rle for _, o, _ in instances), tuple(c for c, _, _ in instances),
                          np.array([s for _, _, s in instances], np.float32))


def test_coco_reader_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(RealDataError, match=r"x\.png: 40x20 pixels, but .*coco\.json says 41x20"):
        read_coco_instances(coco_file(tmp_path, width=41), tmp_path)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(RealDataError, match=rf"^{broken}: not a COCO instances file"):
        read_coco_instances(broken, tmp_path)
    path = coco_file(tmp_path)
    dataset = json.loads(path.read_text())
    dataset["annotations"][0]["segmentation"] = [[1, 2, 3, 4]]
    path.write_text(json.dumps(dataset))
    with pytest.raises(RealDataError, match=r"coco\.json: annotation 1 of frames/x\.png: polygons must"):
        read_coco_instances(path, tmp_path)


# ---------------------------------------------------------------------------------------------------- command

COCO80_IDS = {"person": 0, "rider": 0, "bicycle": 1, "car": 2, "motorcycle": 3, "bus": 5, "train": 6, "truck": 7}


@pytest.fixture(scope="module")
def synthetic_yolo_set(synthetic_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """Two synthetic street images in YOLO-seg layout (each instance's largest outer contour, riders labelled
    person as COCO does) and their number of objects."""
    root = tmp_path_factory.mktemp("yolo_seg")
    objects = 0
    for sample_ in list(CityscapesDataset(synthetic_tree, "val"))[:2]:
        (root / "images").mkdir(exist_ok=True)
        cv2.imwrite(str(root / "images" / f"{sample_.stem}.png"), cv2.cvtColor(sample_.image, cv2.COLOR_RGB2BGR))
        height, width = sample_.image.shape[:2]
        lines = []
        for name, mask in zip(sample_.class_names, sample_.masks, strict=True):
            polygon, _ = mask_to_polygon(mask, 1.0)
            coordinates = " ".join(f"{v:.6f}" for v in (polygon / (width, height)).ravel())
            lines.append(f"{COCO80_IDS[name]} {coordinates}")
        (root / "labels").mkdir(exist_ok=True)
        (root / "labels" / f"{sample_.stem}.txt").write_text("\n".join(lines) + "\n")
        objects += len(lines)
    assert objects > 0
    return root, objects


def run_command(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "training.real_validation", *map(str, args)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)


def test_command_end_to_end_with_the_shipped_model(synthetic_yolo_set: tuple[Path, int], tmp_path: Path) -> None:
    root, objects = synthetic_yolo_set
    manifest = tmp_path / "model.json"
    manifest.write_text(json.dumps({"model": "spatial_embeddings", "kept": 1}))
    result = run_command("--data", root, "--json", tmp_path / "report.json", "--markdown",
                         "--overlays", tmp_path / "overlays", "--record", manifest, "--record-name", "fixture")
    assert result.returncode == 0, result.stderr
    recorded = json.loads(manifest.read_text())
    assert recorded["kept"] == 1 and recorded["real_validation"]["fixture fp32 own"]["images"] == 2
    assert "input size own" in result.stdout and "| model | input |" in result.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert {"recall", "precision", "ap50", "predictions_per_image", "ground_truth_per_image", "per_class",
            "class_agnostic", "ignored_ground_truth", "skipped_images", "run"} <= set(report)
    assert (report["images"], report["ground_truth"], report["skipped_images"]) == (2, objects, 0)
    assert report["run"]["model"] == "spatial_embeddings" and report["run"]["backend"] == "onnxruntime"
    assert sum(c["ground_truth"] for c in report["per_class"].values()) == objects
    assert 0.0 <= report["recall"] <= 1.0 and report["predictions"] + report["ignored_predictions"] == round(
        report["predictions_per_image"] * 2)
    overlays = sorted((tmp_path / "overlays").glob("*.jpg"))
    assert len(overlays) == 2 and cv2.imread(str(overlays[0])).shape[:2] == (256, 512)


def test_command_missing_directory_exits_2_with_the_path(tmp_path: Path) -> None:
    result = run_command("--data", tmp_path / "nowhere")
    assert result.returncode == 2
    assert result.stderr.strip() == f"training.real_validation: {tmp_path / 'nowhere' / 'images'}: no such " \
                                    "directory (expected ROOT/images and ROOT/labels)"


@pytest.mark.parametrize("option", ["--json", "--overlays", "--record"])
def test_an_output_that_cannot_be_written_stops_the_command_before_the_evaluation(
        synthetic_yolo_set: tuple[Path, int], tmp_path: Path, option: str) -> None:
    """Status 2 and one line naming the path and the errno, before any image is read or the model loaded (before:
    a traceback and status 1 after the whole evaluation)."""
    root, _ = synthetic_yolo_set
    (tmp_path / "a file").write_text("")
    for folder in (Path("/proc/nope"), tmp_path / "a file"):  # not creatable; a file in the way
        target = folder if option == "--overlays" else folder / "x.json"
        result = run_command("--data", root, option, target)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.startswith("training.real_validation: [Errno ") and len(result.stderr.splitlines()) == 1
        assert result.stderr.strip().endswith(f": {folder}"), result.stderr
        assert "images;" not in result.stdout, "the evaluation did not start"


@pytest.mark.parametrize("content, words", [("{not json", "not a JSON manifest"), ("[1, 2]", "a list, not an object"),
                                            (None, "[Errno 2 ENOENT]")])
def test_a_record_manifest_that_cannot_be_read_stops_the_command_before_the_evaluation(
        synthetic_yolo_set: tuple[Path, int], tmp_path: Path, content: str | None, words: str) -> None:
    root, _ = synthetic_yolo_set
    manifest = tmp_path / "model.json"
    if content is not None:
        manifest.write_text(content)
    result = run_command("--data", root, "--record", manifest)
    assert result.returncode == 2 and words in result.stderr and str(manifest) in result.stderr, result.stderr
    assert "images;" not in result.stdout and len(result.stderr.splitlines()) == 1, result.stderr


def run_calibration(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "training.calibrate_streaming", *map(str, args)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)


def test_calibration_end_to_end_and_its_exit_status(synthetic_yolo_set: tuple[Path, int], tmp_path: Path) -> None:
    """training.calibrate_streaming on the shipped model: two grid points, the choice in --json. Bad arguments, a
    missing set and an output folder that cannot be written are status 2 with one line, before the network runs
    (before: a --grid without '=' ended with a bare message and status 1, an unwritable --json with a traceback
    after the whole calibration)."""
    root, _ = synthetic_yolo_set
    result = run_calibration("--real", root, "--grid", "seed_threshold=0.5,0.7", "--json", tmp_path / "c.json")
    assert result.returncode == 0, result.stderr
    saved = json.loads((tmp_path / "c.json").read_text())
    assert [r["params"] for r in saved["rows"]] == [{"seed_threshold": 0.5}, {"seed_threshold": 0.7}]
    assert saved["chosen"] in saved["rows"] and saved["real_images"] == 2 and saved["input_size"] == "own"
    for argv, words in ((["--real", root, "--json", "/proc/nope/c.json"], "[Errno 2 ENOENT] No such file or "
                                                                          "directory: /proc/nope"),
                        (["--real", tmp_path / "nowhere"], f"{tmp_path / 'nowhere' / 'images'}: no such directory "
                                                          "(expected ROOT/images and ROOT/labels)")):
        result = run_calibration(*argv)
        assert result.returncode == 2 and result.stderr == f"training.calibrate_streaming: {words}\n", result.stderr
        assert "chosen" not in result.stdout and not result.stdout.strip(), result.stdout
    for argv in (["--grid", "seed_threshold"], ["--grid", "x=a"], ["--input-size", "big"]):
        result = run_calibration("--real", root, *argv)
        assert result.returncode == 2 and "error: argument" in result.stderr and "Traceback" not in result.stderr


# ------------------------------------------------------------------------------- the semantic encoder's ceiling


def test_semantic_ceiling_on_a_hand_built_map() -> None:
    """Two people side by side, one blob in the class map (rider pixels count for a person), a car a quarter called car,
    and a false 'bus' region on the background: the oracle box separates the people, components do not."""
    left, right, car = rect(10, 10, 20, 40), rect(20, 10, 30, 40), rect(40, 30, 60, 50)
    class_map = np.zeros((H, W), np.uint8)  # 0 = road
    class_map[left | right] = 11
    class_map[10:40, 25:30] = 12  # part of the right person called rider: same group
    class_map[30:35, 40:60] = 13  # the top quarter of the car
    class_map[0:5, 60:80] = 15  # 100 background pixels called bus
    report = CeilingReport()
    add_image(report, class_map, sample(("person", left), ("person", right), ("car", car)))
    people = [o for o in report.objects if o.class_name == "person"]
    assert [round(o.box_iou, 3) for o in people] == [1.0, 1.0] and [o.component_iou for o in people] == [0.5, 0.5]
    (car_ceiling,) = [o for o in report.objects if o.class_name == "car"]
    assert car_ceiling.coverage == 0.25 and car_ceiling.box_iou == 0.25
    figures = report.to_dict()
    assert figures["objects"] == 3 and figures["recall_components"] == 2 / 3
    assert figures["recall_ceiling_box"] == 2 / 3 and figures["recall_ceiling_any"] == 2 / 3
    assert figures["background_called_thing"] == 100 / (H * W - 1000)
    assert figures["false_regions_per_image"] == 0  # the 100-pixel bus region is below the 128-pixel minimum
    add_image(report, class_map, sample(("person", left), ("person", right), ("car", car)), min_region_pixels=100)
    assert report.to_dict()["false_regions_per_image"] == 0.5  # the bus region, in one of the two images
    with pytest.raises(ValueError, match="class map"):
        add_image(report, class_map[:10], sample(("person", left)))


def test_semantic_ceiling_command_on_the_fixture(synthetic_yolo_set: tuple[Path, int], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    root, objects = synthetic_yolo_set
    out = tmp_path / "ceiling.json"
    assert semantic_ceiling_main(["--data", str(root), "--scales", "0.5", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert figures["images"] == 2 and figures["objects"] == objects
    # both IoUs are bounded by the coverage (their intersections lie in the object's class pixels, their unions
    # hold the object), so neither share can exceed the any-decoder ceiling
    assert max(figures["recall_components"], figures["recall_ceiling_box"]) <= figures["recall_ceiling_any"] <= 1.0
    assert "recall ceiling: any decoder" in capsys.readouterr().out
    with pytest.raises(CommandExit) as stopped:
        semantic_ceiling_main(["--data", str(tmp_path / "missing")])
    assert stopped.value.code == 2 and "missing" in str(stopped.value)
