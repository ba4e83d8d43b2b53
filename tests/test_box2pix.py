"""Box2Pix: network shapes, receptive fields and priors, change matching, targets, losses and the pixel-to-box
assignment (exactness, NumPy vs torch, the deployed decode on a perfect network output)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from instseg_core.base.classes import INSTANCE_CLASSES
from instseg_core.data.instance_training import load_split
from instseg_core.losses.box2pix import (
    Box2PixLoss,
    Box2PixLossConfig,
    box_iou,
    dense_targets,
    match_priors,
    relative_change,
)
from instseg_core.networks.box2pix import Box2Pix, Box2PixConfig, Box2PixInference
from instseg_core.networks.box_priors import (
    LAYERS,
    OFFSET_SCALE,
    PRIOR_SIZES,
    SSD_LAYERS,
    assign_priors,
    decode_boxes,
    encode_boxes,
    prior_boxes,
    receptive_field,
)
from instseg_core.postprocess.box_assignment import (
    AssignmentParams,
    Detections,
    assign_pixels,
    assign_pixels_torch,
    decode_box2pix,
    decode_detections,
)
from instseg_core.runtime.adapters import Box2PixAdapter
from instseg_core.runtime.backends import TorchBackend
from instseg_core.runtime.segmenter import Segmenter
from instseg_core.testing.ideal_outputs import ideal_box2pix_output


def test_receptive_fields_match_the_paper() -> None:
    assert [receptive_field(LAYERS, name) for name in SSD_LAYERS] == [427, 715, 1291, 2443]


def test_priors_go_to_the_first_layer_with_twice_their_size_as_receptive_field() -> None:
    per_layer = assign_priors()
    assert sum(len(sizes) for sizes in per_layer) == len(PRIOR_SIZES) == 21
    fields = [receptive_field(LAYERS, name) for name in SSD_LAYERS]
    for layer, sizes in enumerate(per_layer):
        for w, h in sizes:
            assert fields[layer] >= 2 * max(w, h)
            assert layer == 0 or fields[layer - 1] < 2 * max(w, h)
    assert all(per_layer), "every SSD head has priors"


def test_network_output_shapes_and_prior_layout() -> None:
    model = Box2Pix().eval()
    height, width = 256, 384
    with torch.no_grad():
        boxes, logits, dense = model(torch.rand(1, 3, height, width))
    priors = prior_boxes(height, width, model.priors_per_layer)
    n = len(INSTANCE_CLASSES)
    assert boxes.shape == (1, len(priors), 4) and logits.shape == (1, len(priors), n + 1)
    assert dense.shape == (1, n + 3, height // 8, width // 8)
    # the first prior is the first size centred on the first 4e cell (stride 16)
    w, h = PRIOR_SIZES[0]
    assert np.allclose(priors[0], [8 - w / 2, 8 - h / 2, 8 + w / 2, 8 + h / 2])
    # background is the initial guess everywhere (focal-loss prior)
    assert (logits.softmax(-1)[..., 0] > 0.95).all()
    with torch.no_grad():
        detections, semantic, offsets = Box2PixInference(model)(torch.rand(1, 3, height, width))
    assert detections.shape == (1, len(priors), 4 + n + 1) and semantic.dtype == torch.uint8
    assert semantic.shape == (1, height, width) and offsets.shape == (1, 2, height, width)
    assert np.allclose(detections[0, :, 4:].sum(-1).numpy(), 1, atol=1e-5)


def test_relative_change_is_dimensionless_and_zero_for_equal_boxes() -> None:
    gt = np.array([[10, 20, 30, 60]], np.float32)
    prior = np.array([[12, 18, 31, 66]], np.float32)
    d = relative_change(gt, prior)[0, 0]
    assert relative_change(gt, gt)[0, 0] == 0
    assert np.isclose(relative_change(gt * 10, prior * 10)[0, 0], d)
    expected = np.sqrt((2 / 40) ** 2 + (2 / 20) ** 2 + (6 / 40) ** 2 + (1 / 20) ** 2)
    assert np.isclose(d, expected)
    assert not np.isclose(relative_change(gt * 10, prior * 10, literal=True)[0, 0],
                          relative_change(gt, prior, literal=True)[0, 0])


def test_change_matching_finds_priors_for_small_objects_where_iou_does_not() -> None:
    priors = prior_boxes(256, 512, assign_priors())
    small = np.array([[101, 37, 109, 52]], np.float32)  # 8 x 15 px, off the 16-px grid
    by_change = match_priors(small, priors, "change")
    by_iou = match_priors(small, priors, "iou")
    assert (by_change == 0).sum() > (by_iou == 0).sum() >= 1  # IoU keeps only the forced best prior
    matched = priors[by_change == 0]
    assert (relative_change(small, matched) <= 0.7 + 1e-6).sum() >= len(matched) - 1
    assert np.all(match_priors(np.zeros((0, 4), np.float32), priors) == -1)
    with pytest.raises(ValueError, match="matching"):
        match_priors(small, priors, "overlap")


def test_every_object_gets_its_closest_prior() -> None:
    priors = prior_boxes(256, 512, assign_priors())
    gt = np.array([[0, 0, 500, 250], [200, 100, 203, 104]], np.float32)  # huge and tiny
    matched = match_priors(gt, priors)
    assert {0, 1} <= set(matched.tolist())


def test_box_encoding_round_trips() -> None:
    rng = np.random.default_rng(0)
    priors = prior_boxes(128, 256, assign_priors())[:50]
    gt = priors + rng.normal(0, 5, priors.shape).astype(np.float32)
    assert np.allclose(decode_boxes(encode_boxes(gt, priors), priors), gt, atol=1e-4)


def test_dense_targets_point_each_pixel_at_its_box_centre() -> None:
    instances = np.zeros((40, 60), np.int32)
    instances[5:15, 10:30] = 1
    instances[20:38, 40:44] = 2
    instances[12:14, 28:33] = 2  # a second piece of object 2, far away: its box spans both
    labels = np.where(instances == 1, 3, np.where(instances == 2, 1, 0)).astype(np.uint8)
    ignore = np.zeros_like(instances, bool)
    ignore[0:2, 0:5] = True
    targets = dense_targets(instances, labels, ignore)
    assert targets.boxes.tolist() == [[10, 5, 30, 15], [28, 12, 44, 38]]
    assert targets.classes.tolist() == [3, 1]
    rows, cols = np.nonzero(instances)
    centres = (targets.boxes[:, :2] + targets.boxes[:, 2:]) / 2
    k = instances[rows, cols] - 1
    assert np.allclose(cols + 0.5 + targets.offsets[0, rows, cols] * OFFSET_SCALE, centres[k, 0], atol=1e-4)
    assert np.allclose(rows + 0.5 + targets.offsets[1, rows, cols] * OFFSET_SCALE, centres[k, 1], atol=1e-4)
    assert (targets.offsets[:, instances == 0] == 0).all()
    assert (targets.semantic[0:2, 0:5] == 255).all() and targets.semantic[6, 12] == 3
    assert np.array_equal(targets.offset_valid, instances > 0)


def test_focal_loss_reduces_to_cross_entropy_at_gamma_zero_and_down_weights_easy_priors() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 30, 9)
    labels = torch.zeros(2, 30, dtype=torch.int64)
    labels[0, 3], labels[1, 7] = 2, 5
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, 9), labels.reshape(-1), reduction="sum") / 2
    gamma0 = Box2PixLoss(Box2PixLossConfig(gamma=0.0)).class_loss(logits, labels)
    assert torch.isclose(gamma0, ce, rtol=1e-5)
    focal = Box2PixLoss(Box2PixLossConfig(gamma=2.0)).class_loss(logits, labels)
    assert focal < gamma0
    balanced = Box2PixLoss(Box2PixLossConfig(class_weighting="balanced")).class_loss(logits, labels)
    log_p = logits.log_softmax(-1).gather(-1, labels[..., None])[..., 0]
    assert torch.isclose(balanced, -0.5 * log_p[labels > 0].mean() - 0.5 * log_p[labels == 0].mean())


def test_loss_trains_the_task_uncertainties(synthetic_tree: Path) -> None:
    sample = load_split(synthetic_tree, "train", INSTANCE_CLASSES, limit=1)[0]
    crop = [a[:256, :512] for a in (sample.image, sample.instances, sample.labels, sample.ignore)]
    targets = [dense_targets(*crop[1:])]
    model = Box2Pix()
    loss_fn = Box2PixLoss()
    image = torch.from_numpy(crop[0]).permute(2, 0, 1)[None].float() / 255
    total, parts = loss_fn(model(image), targets, prior_boxes(256, 512, model.priors_per_layer))
    assert set(parts) >= {"semantics", "offsets", "box", "class"} and parts["positives_per_image"] > 0
    total.backward()
    assert loss_fn.log_variance.grad is not None and (loss_fn.log_variance.grad != 0).all()
    # with all log-variances 0, Eq. 1 is L_sem + L_off / 2 + L_box / 2 + L_class
    expected = parts["semantics"] + parts["offsets"] / 2 + parts["box"] / 2 + parts["class"]
    assert np.isclose(float(total.detach()), expected, rtol=1e-4)


def _scene(synthetic_tree: Path, index: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    sample = load_split(synthetic_tree, "val", INSTANCE_CLASSES)[index]
    return sample.image, sample.instances, sample.labels


def _mean_best_iou(instances: np.ndarray, id_image: np.ndarray, min_pixels: int = 64) -> float:
    ious = []
    for k in range(1, int(instances.max()) + 1):
        mask = instances == k
        if mask.sum() < min_pixels:
            continue
        ids, counts = np.unique(id_image[mask], return_counts=True)
        best = ids[np.argmax(counts)]
        predicted = id_image == best
        ious.append(0.0 if best == 0 else (mask & predicted).sum() / (mask | predicted).sum())
    return float(np.mean(ious))


def test_decoding_a_perfect_output_recovers_the_instances(synthetic_tree: Path) -> None:
    _, instances, labels = _scene(synthetic_tree)
    assert instances.max() >= 3
    detections, semantic, offsets = ideal_box2pix_output(instances, labels, len(INSTANCE_CLASSES), noise_px=1.0)
    priors = prior_boxes(*instances.shape, assign_priors())
    result = decode_box2pix(detections, semantic, offsets, priors, AssignmentParams(min_pixels=8))
    assert _mean_best_iou(instances, result.id_image) > 0.9
    assert np.allclose(result.scores, 0.9)
    for k in range(len(result)):  # boxes are the masks' extents, areas their pixel counts
        rows, cols = np.nonzero(result.id_image == k + 1)
        assert result.boxes[k].tolist() == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
        assert result.areas[k] == rows.size


def _brute_force(semantic: np.ndarray, offsets: np.ndarray, detections: Detections, params: AssignmentParams
                 ) -> np.ndarray:
    """The paper's pixels x boxes cost matrix and argmin, literally."""
    height, width = semantic.shape
    rows, cols = np.nonzero(semantic)
    px, py = cols + 0.5, rows + 0.5
    cx, cy = px + offsets[0, rows, cols], py + offsets[1, rows, cols]
    b = detections.boxes.astype(np.float64)
    centre = (b[:, :2] + b[:, 2:]) / 2
    d_off = np.hypot(cx[None] - centre[:, 0, None], cy[None] - centre[:, 1, None])
    out_x = np.maximum(np.maximum(b[:, 0, None] - px[None], px[None] - b[:, 2, None]), 0)
    out_y = np.maximum(np.maximum(b[:, 1, None] - py[None], py[None] - b[:, 3, None]), 0)
    mismatch = detections.classes[:, None] != semantic[rows, cols][None].astype(np.int64) - 1
    cost = (d_off + np.hypot(out_x, out_y) + params.class_mismatch_penalty * mismatch
            + (params.score_penalty * (1 - detections.scores) * np.hypot(height, width))[:, None])
    best = cost.argmin(0)
    if not params.assign_mismatched:
        best = np.where(mismatch[best, np.arange(best.size)], -1, best)
    assignment = np.full((height, width), -1)
    assignment[rows, cols] = best
    return assignment


@pytest.mark.parametrize("assign_mismatched", [False, True])
def test_pruned_assignment_equals_the_full_cost_matrix_and_torch(assign_mismatched: bool) -> None:
    rng = np.random.default_rng(1)
    height, width = 192, 320
    semantic = rng.choice([0, 1, 2, 3, 5], (height, width), p=[0.4, 0.2, 0.2, 0.1, 0.1]).astype(np.uint8)
    offsets = rng.normal(0, 30, (2, height, width)).astype(np.float32)
    x0, y0 = rng.uniform(0, width - 40, 25), rng.uniform(0, height - 40, 25)
    boxes = np.stack([x0, y0, x0 + rng.uniform(5, 80, 25), y0 + rng.uniform(5, 80, 25)], 1).astype(np.float32)
    classes = rng.choice([0, 1, 2, 3], 25)  # no box of class index 4 (semantic 5)
    scores = np.sort(rng.uniform(0.1, 1, 25))[::-1].astype(np.float32)
    detections = Detections(boxes, classes.astype(np.int64), scores)
    params = AssignmentParams(assign_mismatched=assign_mismatched, tile=48)
    expected = _brute_force(semantic, offsets, detections, params)
    got = assign_pixels(semantic, offsets, detections, params)
    assert np.array_equal(got, expected)
    assert np.array_equal(assign_pixels(semantic, offsets, detections, AssignmentParams(
        assign_mismatched=assign_mismatched, threads=2, tile=32)), expected)
    torch_result = assign_pixels_torch(torch.from_numpy(semantic), torch.from_numpy(offsets), detections, params)
    assert np.array_equal(torch_result.numpy(), expected)
    unassigned = (semantic == 5) & (got == -1)
    assert unassigned.any() != assign_mismatched


def test_nms_keeps_one_box_per_object_and_the_best_class() -> None:
    priors = np.array([[0, 0, 20, 20], [1, 1, 21, 21], [50, 50, 70, 90], [0, 0, 1, 1]], np.float32)
    detections = np.zeros((4, 4 + 4), np.float32)
    detections[:, 4] = 1
    detections[0, 4:] = [0.2, 0.1, 0.7, 0.0]  # class index 1, score 0.7
    detections[1, 4:] = [0.4, 0.6, 0.0, 0.0]  # overlaps prior 0 (IoU 0.8), lower score: suppressed
    detections[2, 4:] = [0.5, 0.0, 0.1, 0.4]
    result = decode_detections(detections, priors, 100, 100, AssignmentParams(detection_threshold=0.3))
    assert result.classes.tolist() == [1, 2] and np.allclose(result.scores, [0.7, 0.4])
    assert np.allclose(result.boxes, priors[[0, 2]])
    assert box_iou(priors[:1], priors[1:2])[0, 0] > 0.5


def test_segmenter_runs_box2pix_through_the_runtime(synthetic_tree: Path) -> None:
    image, instances, _ = _scene(synthetic_tree)
    model = Box2Pix(Box2PixConfig())
    segmenter = Segmenter(Box2PixAdapter(model.config.to_dict()), TorchBackend(Box2PixInference(model)),
                          score_threshold=0.0, decode_params={"detection_threshold": 0.0})
    result = segmenter(image)
    assert result.instances.id_image.shape == instances.shape
    assert set(result.timing_ms) == {"preprocess", "inference", "postprocess", "total"}
    with pytest.raises(ValueError, match="multiples of 128"):
        Segmenter(Box2PixAdapter(model.config.to_dict()), TorchBackend(Box2PixInference(model)),
                  input_size=(520, 256))


def test_adapter_decodes_numpy_and_torch_outputs_alike(synthetic_tree: Path) -> None:
    """The GPU backends hand the adapter torch tensors; the result must not depend on it."""
    _, instances, labels = _scene(synthetic_tree, 1)
    detections, semantic, offsets = ideal_box2pix_output(instances, labels, len(INSTANCE_CLASSES), noise_px=3.0)
    adapter = Box2PixAdapter(Box2PixConfig(extra={"assignment": {"min_pixels": 8}}).to_dict())
    raw = (detections[None], semantic[None], offsets[None])
    from_numpy = adapter.decode(raw, {})
    from_torch = adapter.decode(tuple(torch.from_numpy(a) for a in raw), {})
    assert len(from_numpy) >= 3
    assert np.array_equal(from_numpy.id_image, from_torch.id_image)
    assert np.array_equal(from_numpy.boxes, from_torch.boxes) and np.array_equal(from_numpy.classes, from_torch.classes)
    assert len(adapter.decode(raw, {"min_pixels": 10**6})) == 0  # call parameters override the model's defaults
