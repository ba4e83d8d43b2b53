"""Spatial Embeddings: network shapes, the loss on perfect and wrong outputs, clustering, targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from instseg_core.data.instance_training import instance_targets
from instseg_core.losses.lovasz import lovasz_hinge_flat
from instseg_core.losses.spatial_embedding import SpatialEmbeddingLoss, SpatialEmbeddingLossConfig
from instseg_core.networks.embedding_coding import PIXEL_SPACING, margin_to_sigma_raw
from instseg_core.networks.spatial_embeddings import SpatialEmbeddings, SpatialEmbeddingsConfig, coordinate_map
from instseg_core.postprocess.seed_clustering import ClusteringParams, cluster_seeds, cluster_seeds_torch
from instseg_core.testing.ideal_outputs import ideal_spatial_embeddings_output as ideal_output

N_CLASSES = 3


def rectangles_scene(height: int = 96, width: int = 160) -> tuple[np.ndarray, np.ndarray, list]:
    """Five separated rectangles of classes 0, 1, 2, 0, 1: (instances, labels, [(slice, slice, class)])."""
    boxes = [(slice(10, 40), slice(8, 40), 0), (slice(50, 90), slice(10, 30), 1), (slice(20, 60), slice(60, 110), 2),
             (slice(70, 92), slice(70, 100), 0), (slice(8, 30), slice(120, 150), 1)]
    instances = np.zeros((height, width), np.int32)
    labels = np.zeros((height, width), np.uint8)
    for k, (rows, cols, class_index) in enumerate(boxes):
        instances[rows, cols] = k + 1
        labels[rows, cols] = class_index + 1
    return instances, labels, boxes


def as_batch(*arrays: np.ndarray) -> list[torch.Tensor]:
    return [torch.from_numpy(np.ascontiguousarray(a))[None] for a in arrays]


@pytest.mark.parametrize(("height", "width"), [(64, 128), (48, 80)])
def test_network_output_shape_and_initialisation(height: int, width: int) -> None:
    model = SpatialEmbeddings(SpatialEmbeddingsConfig(classes=("person", "car", "bicycle"), n_sigma=2)).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, height, width))
    assert out.shape == (2, 2 + 2 + 3, height, width)
    # reference initialisation: zero offsets, sigma raw 1 everywhere
    assert torch.allclose(out[:, 0:2], torch.zeros(()), atol=1e-6)
    assert torch.allclose(out[:, 2:4], torch.ones(()), atol=1e-6)
    assert out[:, 4:].std() > 0
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(2.1e6, rel=0.1)


def test_coordinate_map_has_fixed_spacing_for_any_size() -> None:
    for height, width in ((1024, 2048), (256, 512)):
        xy = coordinate_map(height, width)
        assert xy.shape == (2, height, width)
        assert float(xy[0, 0, 1] - xy[0, 0, 0]) == pytest.approx(PIXEL_SPACING)
        assert float(xy[1, 1, 0] - xy[1, 0, 0]) == pytest.approx(PIXEL_SPACING)
        assert float(xy[0, -1, -1]) == pytest.approx((width - 1) / 1024)
    # the reference grid (x in [0, 2] over 2048 columns) has the same spacing at 2048 x 1024, to 0.05 %
    assert abs(2 / 2047 - PIXEL_SPACING) < 5e-4 * PIXEL_SPACING
    # a margin converts back: phi = 0.5 at margin_px pixels
    s = margin_to_sigma_raw(20.0)
    assert np.exp(-((20 * PIXEL_SPACING) ** 2) * np.exp(10 * s)) == pytest.approx(0.5)


def test_lovasz_hinge_is_zero_when_right_and_positive_when_wrong() -> None:
    labels = torch.tensor([1, 1, 0, 0, 1])
    right = (labels.float() * 2 - 1) * 2
    assert float(lovasz_hinge_flat(right, labels)) == 0.0
    assert float(lovasz_hinge_flat(-right, labels)) > 1.0


@pytest.mark.parametrize("config", [
    SpatialEmbeddingLossConfig(),
    SpatialEmbeddingLossConfig(center="learnable"),
    SpatialEmbeddingLossConfig(learn_sigma=False, fixed_margin_px=6),
], ids=["sigma-centroid", "sigma-learnable-centre", "fixed-sigma"])
@pytest.mark.parametrize("n_sigma", [1, 2])
def test_perfect_embedding_gives_near_zero_loss(config: SpatialEmbeddingLossConfig, n_sigma: int) -> None:
    instances, labels, _ = rectangles_scene()
    ignore = np.zeros_like(instances, bool)
    loss_fn = SpatialEmbeddingLoss(n_sigma, N_CLASSES, config)
    perfect = torch.from_numpy(ideal_output(instances, labels, N_CLASSES, n_sigma, margin_px=6))[None]
    loss, parts = loss_fn(perfect, *as_batch(instances.astype(np.int64), labels.astype(np.int64), ignore))
    assert float(loss) < 0.02, parts
    untrained = SpatialEmbeddings(SpatialEmbeddingsConfig(("person", "car", "bus"), n_sigma=n_sigma)).eval()
    with torch.no_grad():
        raw = untrained(torch.rand(1, 3, *instances.shape))
    worse, _ = loss_fn(raw, *as_batch(instances.astype(np.int64), labels.astype(np.int64), ignore))
    assert float(worse) > 1.0


def test_gradients_reach_offsets_sigma_and_the_right_seed_channel() -> None:
    instances, labels, boxes = rectangles_scene()
    ignore = np.zeros_like(instances, bool)
    raw = torch.from_numpy(ideal_output(instances, labels, N_CLASSES, 2, margin_px=6, noise_px=1.5))[None]
    raw[:, 2:4] += 0.05  # a slightly wrong bandwidth
    raw[:, 4:] = 0.0  # seediness 0.5 everywhere
    raw.requires_grad_(True)
    loss, parts = SpatialEmbeddingLoss(2, N_CLASSES)(raw, *as_batch(instances.astype(np.int64),
                                                                    labels.astype(np.int64), ignore))
    loss.backward()
    grad = raw.grad[0]
    inside = torch.from_numpy(instances > 0)
    for channel in range(4):  # offset x, offset y, sigma x, sigma y
        assert grad[channel][inside].abs().sum() > 0, channel
    assert parts["instance"] > 0 and parts["smooth"] >= 0
    # on an instance, the seed of its own class is pulled up towards phi, the other classes' down to 0
    rows, cols, class_index = boxes[2]
    for c in range(N_CLASSES):
        mean_grad = float(grad[4 + c][rows, cols].mean())
        assert (mean_grad < 0) if c == class_index else (mean_grad > 0), c


def test_seed_in_the_wrong_class_channel_costs() -> None:
    instances, labels, _ = rectangles_scene()
    targets = as_batch(instances.astype(np.int64), labels.astype(np.int64), np.zeros_like(instances, bool))
    loss_fn = SpatialEmbeddingLoss(2, N_CLASSES)
    right = ideal_output(instances, labels, N_CLASSES, 2, margin_px=6)
    wrong = right.copy()
    wrong[4:] = np.roll(right[4:], 1, axis=0)  # seeds moved to the next class's channel
    _, parts_right = loss_fn(torch.from_numpy(right)[None], *targets)
    _, parts_wrong = loss_fn(torch.from_numpy(wrong)[None], *targets)
    assert parts_wrong["seed"] > 100 * max(parts_right["seed"], 1e-4)
    assert parts_wrong["instance"] == pytest.approx(parts_right["instance"], abs=1e-6)


def test_ignored_pixels_do_not_count_in_the_seed_loss() -> None:
    instances, labels, _ = rectangles_scene()
    raw = ideal_output(instances, labels, N_CLASSES, 2, margin_px=6)
    raw[4:, :5, :5] = 6.0  # confident seeds on a corner that is background...
    ignore = np.zeros_like(instances, bool)
    targets = [instances.astype(np.int64), labels.astype(np.int64)]
    _, counted = SpatialEmbeddingLoss(2, N_CLASSES)(torch.from_numpy(raw)[None], *as_batch(*targets, ignore))
    ignore[:5, :5] = True  # ...unless it is a group region
    _, ignored = SpatialEmbeddingLoss(2, N_CLASSES)(torch.from_numpy(raw)[None], *as_batch(*targets, ignore))
    expected = N_CLASSES * 25 * (1 / (1 + np.exp(-6.0))) ** 2 / instances.size  # 3 channels x 25 px, squared error
    assert counted["seed"] - ignored["seed"] == pytest.approx(expected, rel=1e-3)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.mark.parametrize("threads", [1, 2])
def test_clustering_recovers_instances_of_an_ideal_output(threads: int) -> None:
    instances, labels, boxes = rectangles_scene()
    raw = ideal_output(instances, labels, N_CLASSES, 2, margin_px=8, noise_px=1.5)
    result = cluster_seeds(raw, 2, ClusteringParams(min_pixels=20, threads=threads))
    assert len(result) == len(boxes)
    assert result.id_image.dtype == np.uint16 and result.id_image.shape == instances.shape
    for k, (rows, cols, class_index) in enumerate(boxes):
        truth = instances == k + 1
        found = np.bincount(result.id_image[truth], minlength=len(result) + 1)[1:].argmax()
        assert iou(result.id_image == found + 1, truth) > 0.97
        assert result.classes[found] == class_index
        assert tuple(result.boxes[found]) == (cols.start, rows.start, cols.stop, rows.stop)
        assert 0.5 < result.scores[found] <= 1.0
    assert np.all(np.diff(result.scores) <= 0)  # ids in decreasing score order
    assert np.array_equal(result.areas, np.bincount(result.id_image.ravel(), minlength=len(result) + 1)[1:])


def test_numpy_and_torch_clustering_agree() -> None:
    instances, labels, _ = rectangles_scene(128, 192)
    raw = ideal_output(instances, labels, N_CLASSES, 2, margin_px=8, noise_px=2.5, rng=np.random.default_rng(3))
    a = cluster_seeds(raw, 2, ClusteringParams(min_pixels=20))
    b = cluster_seeds_torch(torch.from_numpy(raw), 2, ClusteringParams(min_pixels=20))
    assert len(a) == len(b) == 5
    masks_a, masks_b = a.masks(), b.masks()
    for k in range(len(a)):  # the same masks; equal scores may be numbered in either order
        best = max(range(len(b)), key=lambda j: iou(masks_a[k], masks_b[j]))
        assert iou(masks_a[k], masks_b[best]) > 0.995
        assert a.classes[k] == b.classes[best]


def test_clustering_thresholds_and_bad_input() -> None:
    instances, labels, _ = rectangles_scene()
    raw = ideal_output(instances, labels, N_CLASSES, 2, margin_px=8)
    assert len(cluster_seeds(raw, 2, ClusteringParams(seed_threshold=0.999))) == 0
    # the two smallest rectangles have 22 x 30 = 660 pixels; min_pixels 700 drops them
    assert len(cluster_seeds(raw, 2, ClusteringParams(min_pixels=700))) == 3
    assert len(cluster_seeds(raw, 2, ClusteringParams(min_pixels=650))) == 5
    empty = cluster_seeds(np.zeros((7, 16, 24), np.float32) - 5, 2)
    assert len(empty) == 0 and empty.id_image.shape == (16, 24)
    with pytest.raises(ValueError):
        cluster_seeds(raw[:4], 2)
    with pytest.raises(ValueError):
        ClusteringParams(seed_threshold=1.5)


def test_instance_targets_from_cityscapes_ids() -> None:
    ids = np.zeros((4, 6), np.int32)
    ids[0, :2] = 26000   # car 0
    ids[1, :2] = 26001   # car 1
    ids[2, :2] = 24000   # person 0
    ids[3, :2] = 26      # cargroup
    ids[0, 4:] = 33002   # bicycle: not a chosen class -> background
    ids[3, 4:] = 7       # road
    instances, labels, ignore = instance_targets(ids, ("person", "car"))
    assert set(np.unique(instances[:3, :2])) == {1, 2, 3}
    assert len(np.unique(instances[:3, :2])) == 3 and (instances[:, 2:] == 0).all() and (instances[3] == 0).all()
    assert (labels[0, :2] == 2).all() and (labels[1, :2] == 2).all() and (labels[2, :2] == 1).all()
    assert labels[3].max() == 0 and labels[0, 4:].max() == 0
    assert ignore[3, :2].all() and ignore.sum() == 2


@pytest.mark.parametrize("implementation", ["numpy", "torch"])
def test_margin_scale_gathers_imprecise_embeddings(implementation: str) -> None:
    """Embeddings that miss their centre by ~2 margins, with seeds high all over each object (as a semantic
    probability gives them), split an object into fragments at the paper's margin; a margin three times wider
    gathers each object whole again."""
    instances, labels, boxes = rectangles_scene()
    raw = ideal_output(instances, labels, N_CLASSES, 2, margin_px=4, noise_px=8.0, rng=np.random.default_rng(1))
    for class_index in range(N_CLASSES):
        raw[4 + class_index][labels == class_index + 1] = 2.0  # seediness 0.88 on every pixel of the object

    def cluster(params: ClusteringParams) -> object:
        return (cluster_seeds(raw, 2, params) if implementation == "numpy"
                else cluster_seeds_torch(torch.from_numpy(raw), 2, params))

    fragmented = cluster(ClusteringParams(min_pixels=0))
    gathered = cluster(ClusteringParams(min_pixels=0, margin_scale=3.0))
    assert len(fragmented) > 3 * len(boxes)
    assert len(boxes) <= len(gathered) < len(fragmented) / 3
    with pytest.raises(ValueError):
        ClusteringParams(margin_scale=0.0)
