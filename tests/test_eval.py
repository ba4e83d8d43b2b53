"""instseg_core.eval: the official Cityscapes evaluator, pycocotools mask AP, and the paper's IoU flavours."""

from __future__ import annotations

from pathlib import Path

import cityscapesscripts.evaluation
import cv2
import numpy as np
import pytest

from instseg_core.base.instances import masks_to_boxes
from instseg_core.data.cityscapes import CityscapesDataset, write_sample
from instseg_core.eval.binary_metrics import BinarySegmentationMetrics, border_distances, boundary, iou
from instseg_core.eval.cityscapes_instances import GT_CACHE_FILE, evaluate_instances, write_predictions
from instseg_core.eval.coco import ImagePredictions, coco_mask_ap

CAR, PERSON = 26, 24


def rect(height: int, width: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    mask = np.zeros((height, width), bool)
    mask[y0:y1, x0:x1] = True
    return mask


@pytest.fixture(scope="module")
def hand_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One 256x128 image: car A 40x20 px, car B 30x20 px, person 10x30 px on road, drawn as polygons."""
    root = tmp_path_factory.mktemp("hand")
    objects = [
        ("road", np.array([[0, 0], [255, 0], [255, 127], [0, 127]])),
        ("car", np.array([[20, 40], [59, 40], [59, 59], [20, 59]])),      # A: x 20..59, y 40..59 -> 40x20
        ("car", np.array([[100, 50], [129, 50], [129, 69], [100, 69]])),  # B: x 100..129, y 50..69 -> 30x20
        ("person", np.array([[200, 60], [209, 60], [209, 89], [200, 89]])),
    ]
    write_sample(root, "val", "handcity", "handcity_000000_000019", np.zeros((128, 256, 3), np.uint8), objects)
    return root


def hand_predictions() -> ImagePredictions:
    """Car A exact (0.9); car B shifted 6 px right: IoU 480/720 = 2/3 (0.8); a car false positive (0.95)."""
    masks = np.stack([rect(128, 256, 20, 40, 60, 60), rect(128, 256, 106, 50, 136, 70),
                      rect(128, 256, 150, 10, 170, 20)])
    return ImagePredictions(masks, [CAR, CAR, CAR], [0.9, 0.8, 0.95])


def test_hand_tree_is_what_the_case_assumes(hand_tree: Path) -> None:
    sample = CityscapesDataset(hand_tree, "val")[0]
    assert sample.instance_id_values.tolist() == [24000, 26000, 26001]
    assert [int(m.sum()) for m in sample.masks] == [300, 800, 600]
    assert iou(hand_predictions().masks[1], sample.masks[2]) == pytest.approx(2 / 3)


def test_official_evaluator_on_hand_case(hand_tree: Path, tmp_path: Path) -> None:
    """Values derived by hand from the evaluator's algorithm (see test docstrings above):

    overlap thresholds 0.50-0.65 (4 of 10): B matches (IoU 2/3 > t); scores sorted FP .95, A .9, B .8
    give (precision, recall) = (0, 0), (1/2, 1/2), (2/3, 1); the evaluator's step integration gives
    AP = 2/3 * 1/4 + 1/2 * 1/2 = 5/12. Thresholds 0.70-0.95 (6 of 10): B's prediction is a false positive
    and B a miss: AP = 1/2 * 1/4 = 1/8. Car AP = (4 * 5/12 + 6 * 1/8) / 10; person has no prediction: 0.
    """
    sample = CityscapesDataset(hand_tree, "val")[0]
    predictions = hand_predictions()
    write_predictions(tmp_path / "pred", sample.stem, predictions.masks, predictions.label_ids, predictions.scores)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / GT_CACHE_FILE).write_text("{}")  # a stale cache must not be used
    result = evaluate_instances([sample.paths["instance_ids"]], tmp_path / "pred", tmp_path / "out")
    car_ap = (4 * 5 / 12 + 6 * 1 / 8) / 10
    assert result.per_class["car"]["ap50"] == pytest.approx(5 / 12)
    assert result.per_class["car"]["ap"] == pytest.approx(car_ap)
    assert result.per_class["person"]["ap"] == 0.0
    assert np.isnan(result.per_class["truck"]["ap"])
    assert result.ap == pytest.approx(car_ap / 2)
    assert result.ap50 == pytest.approx(5 / 12 / 2)
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["evaluation_run.json", "gtInstances.json", "matches.json",
                       "resultInstanceLevelSemanticLabeling.json"]
    package_dir = Path(cityscapesscripts.evaluation.__file__).parent
    assert not (package_dir / GT_CACHE_FILE).exists(), "the evaluator wrote into site-packages"


def test_coco_ap_on_hand_case(hand_tree: Path) -> None:
    """pycocotools, by hand: t <= 0.65 -> precision envelope 2/3 at every recall -> AP 2/3;
    t >= 0.70 -> envelope 1/2 up to recall 1/2 (51 of 101 recall points) -> AP 51 * 0.5 / 101."""
    sample = CityscapesDataset(hand_tree, "val")[0]
    result = coco_mask_ap([sample], [hand_predictions()])
    car_ap = (4 * 2 / 3 + 6 * 51 * 0.5 / 101) / 10
    assert result.per_class_ap["car"] == pytest.approx(car_ap)
    assert result.per_class_ap["person"] == 0.0
    assert np.isnan(result.per_class_ap["bus"])
    assert result.ap == pytest.approx(car_ap / 2)
    assert result.ap50 == pytest.approx(2 / 3 / 2)


def test_ground_truth_as_prediction_scores_one(synthetic_tree: Path, tmp_path: Path) -> None:
    dataset = CityscapesDataset(synthetic_tree, "val")
    predictions = []
    for sample in dataset:
        predictions.append(ImagePredictions(sample.masks, sample.label_ids_per_instance, np.ones(len(sample.masks))))
        write_predictions(tmp_path / "pred", sample.stem, sample.masks, sample.label_ids_per_instance,
                          np.ones(len(sample.masks)))
    official = evaluate_instances([s.paths["instance_ids"] for s in dataset], tmp_path / "pred", tmp_path / "out")
    assert official.ap == 1.0 and official.ap50 == 1.0
    assert official.per_class["car"]["ap"] == 1.0
    coco = coco_mask_ap(list(dataset), predictions)
    assert coco.ap == pytest.approx(1.0) and coco.ap50 == pytest.approx(1.0)


def test_evaluator_reports_missing_prediction(hand_tree: Path, tmp_path: Path) -> None:
    sample = CityscapesDataset(hand_tree, "val")[0]
    (tmp_path / "pred").mkdir()
    with pytest.raises(RuntimeError, match="Found no prediction"):
        evaluate_instances([sample.paths["instance_ids"]], tmp_path / "pred", tmp_path / "out")


def test_iou_flavours_by_hand() -> None:
    """Two batches. Batch 1: crop a (car) I=4 U=8, crop b (car) I=6 U=6. Batch 2: crop c (person) I=1 U=4.
    aIoU = mean(10/14, 1/4); mIoU = mean(car 10/14, person 1/4); iIoU = mean(1/2, 1, 1/4)."""
    a_pred, a_gt = rect(4, 8, 0, 0, 6, 1), rect(4, 8, 2, 0, 8, 1)      # I 4, U 8
    b = rect(4, 8, 1, 1, 4, 3)                                           # I = U = 6
    c_pred, c_gt = rect(4, 8, 0, 0, 4, 1), rect(4, 8, 3, 0, 4, 1)      # I 1, U 4
    metrics = BinarySegmentationMetrics()
    metrics.add_batch(np.stack([a_pred, b]), np.stack([a_gt, b]), ["car", "car"])
    metrics.add_batch(c_pred[None], c_gt[None], ["person"])
    result = metrics.result()
    assert result["aIoU"] == pytest.approx((10 / 14 + 1 / 4) / 2)
    assert result["per_class_iou"] == pytest.approx({"car": 10 / 14, "person": 1 / 4})
    assert result["mIoU"] == pytest.approx((10 / 14 + 1 / 4) / 2)
    assert result["iIoU"] == pytest.approx((1 / 2 + 1 + 1 / 4) / 3)
    assert result["crops"] == 3


def test_border_error_concentric_squares() -> None:
    """Ground truth 20x20, prediction 16x16 centred inside: every predicted boundary pixel is 2 px away."""
    gt, pred = rect(40, 40, 10, 10, 30, 30), rect(40, 40, 12, 12, 28, 28)
    assert np.count_nonzero(boundary(pred)) == 4 * 16 - 4
    distances = border_distances(pred, gt)
    np.testing.assert_allclose(distances, 2.0)
    metrics = BinarySegmentationMetrics()
    metrics.add_batch(pred[None], gt[None])
    result = metrics.result()
    assert result["border_error"] == pytest.approx(2.0)
    assert result["border_histogram"]["counts"] == [0, 0, 60, 0, 0, 0, 0, 0]


def test_border_error_identical_and_empty() -> None:
    circle = np.zeros((32, 32), np.uint8)
    cv2.circle(circle, (16, 16), 9, 1, -1)
    assert border_distances(circle, circle).max() == 0.0
    assert border_distances(np.zeros_like(circle), circle).size == 0
    assert np.isinf(border_distances(circle, np.zeros_like(circle))).all()
    metrics = BinarySegmentationMetrics()
    metrics.add_batch(np.zeros((1, 32, 32)), circle[None])
    assert metrics.result()["empty_predictions"] == 1
    assert metrics.result()["iIoU"] == 0.0


def test_masks_to_boxes_exclusive() -> None:
    boxes = masks_to_boxes(np.stack([rect(10, 10, 2, 3, 5, 9), np.zeros((10, 10), bool)]))
    assert boxes.tolist() == [[2, 3, 5, 9], [0, 0, 0, 0]]


def test_official_evaluator_survives_a_class_whose_predictions_are_all_ignored(tmp_path: Path) -> None:
    """A person prediction that lies on a person too small to count (< 100 px, ignored) while the real
    person is missed: upstream evaluateMatches raises IndexError here; the class must score AP 0."""
    objects = [
        ("road", np.array([[0, 0], [255, 0], [255, 127], [0, 127]])),
        ("person", np.array([[200, 60], [209, 60], [209, 89], [200, 89]])),  # 10x30 = 300 px: counts
        ("person", np.array([[40, 40], [47, 40], [47, 47], [40, 47]])),      # 8x8 = 64 px: ignored
    ]
    write_sample(tmp_path / "tree", "val", "handcity", "handcity_000001_000019", np.zeros((128, 256, 3), np.uint8),
                 objects)
    sample = CityscapesDataset(tmp_path / "tree", "val")[0]
    write_predictions(tmp_path / "pred", sample.stem, rect(128, 256, 40, 40, 48, 48)[None], [24], [0.9])
    result = evaluate_instances([sample.paths["instance_ids"]], tmp_path / "pred", tmp_path / "out")
    assert result.per_class["person"]["ap"] == 0.0 and result.per_class["person"]["ap50"] == 0.0
    assert np.isnan(result.per_class["car"]["ap"])
