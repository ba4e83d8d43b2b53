"""ESPNetv2 (instseg_core.networks.espnetv2) and the Spatial Embeddings network on it
(instseg_core.networks.espnetv2_embeddings): the shipped Cityscapes weights load strictly, the exportable adaptive
pooling equals PyTorch's, the ONNX graph keeps dynamic sizes, the semantic branch stays frozen, and the real-context
training windows are reproducible from a seed."""

from __future__ import annotations

import glob
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch.nn import functional

from instseg_core.base.classes import INSTANCE_CLASSES
from instseg_core.data.instance_training import CropSampler, load_split
from instseg_core.data.real_context import RealContextMix, mixed_window, negative_window
from instseg_core.networks.espnetv2 import (
    ESPNetv2Segmentation,
    adaptive_average_pool,
    load_espnetv2_cityscapes,
    normalise_unit_rgb,
)
from instseg_core.networks.espnetv2_embeddings import ESPNetv2Embeddings
from instseg_core.networks.spatial_embeddings import SpatialEmbeddings, SpatialEmbeddingsConfig
from training.common import export_graph

REPO = Path(__file__).resolve().parent.parent
SHIPPED_WEIGHTS = REPO / "models" / "espnetv2_s2_cityscapes.fp16.pt"
CITYSCAPES_FRAME = REPO.parent / "shared" / "real" / "cityscapes_frames"  # ../shared beside the checkout


def test_shipped_weights_load_strictly() -> None:
    network = load_espnetv2_cityscapes(SHIPPED_WEIGHTS)
    state = torch.load(SHIPPED_WEIGHTS, weights_only=True)
    assert set(state) == set(network.state_dict())  # strict=True held: no missing or unexpected key
    assert sum(p.numel() for p in network.parameters()) == pytest.approx(0.79e6, rel=0.02)  # the zoo's s = 2.0
    with torch.no_grad():
        logits = network(normalise_unit_rgb(torch.rand(1, 3, 64, 128)))
    assert logits.shape == (1, 20, 64, 128) and torch.isfinite(logits).all()


def test_wrong_weights_are_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save(ESPNetv2Segmentation(1.0).state_dict(), path)
    with pytest.raises(ValueError, match=r"not an ESPNetv2 s=2\.0"):
        load_espnetv2_cityscapes(path, 2.0)
    assert load_espnetv2_cityscapes(path, 1.0) is not None


@pytest.mark.skipif(not CITYSCAPES_FRAME.is_dir(), reason="needs ../shared/real/cityscapes_frames")
def test_labelled_cityscapes_frame() -> None:
    """The README of the weights measured pixel accuracy 0.94 at 1024x512; the float16 copy keeps it."""
    image = glob.glob(str(CITYSCAPES_FRAME / "leftImg8bit/**/*.png"), recursive=True)[0]
    labels = glob.glob(str(CITYSCAPES_FRAME / "gtFine/**/*labelTrainIds.png"), recursive=True)[0]
    rgb = cv2.cvtColor(cv2.imread(image), cv2.COLOR_BGR2RGB)
    truth = cv2.imread(labels, cv2.IMREAD_UNCHANGED)
    network = load_espnetv2_cityscapes(SHIPPED_WEIGHTS)
    x = torch.from_numpy(cv2.resize(rgb, (1024, 512))).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        predicted = network(normalise_unit_rgb(x))[0, :19].argmax(0).numpy().astype(np.uint8)
    predicted = cv2.resize(predicted, truth.shape[::-1], interpolation=cv2.INTER_NEAREST)
    valid = truth != 255
    assert (predicted[valid] == truth[valid]).mean() > 0.93


@pytest.mark.parametrize(("size_in", "size_out"), [((16, 32), (5, 5)), ((13, 21), (7, 11)), ((24, 36), (36, 54)),
                                                   ((8, 8), (8, 8)), ((31, 17), (4, 2))])
def test_adaptive_average_pool_equals_pytorch(size_in: tuple[int, int], size_out: tuple[int, int]) -> None:
    x = torch.randn(2, 3, *size_in, dtype=torch.float64)
    expected = functional.adaptive_avg_pool2d(x, size_out)
    assert torch.allclose(adaptive_average_pool(x, *size_out), expected, atol=1e-10)


def test_onnx_graph_keeps_dynamic_sizes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = SpatialEmbeddings(SpatialEmbeddingsConfig(backbone="espnetv2")).eval()
    path = export_graph(model, tmp_path / "se.onnx", {"raw": {2: "height", 3: "width"}}, torch.zeros(1, 3, 64, 128))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for height, width in ((64, 128), (96, 80)):
        x = torch.rand(1, 3, height, width)
        with torch.no_grad():
            expected = model(x).numpy()
        got = session.run(None, {"image": x.numpy()})[0]
        assert got.shape == (1, 2 + 2 + len(INSTANCE_CLASSES), height, width)
        np.testing.assert_allclose(got, expected, atol=2e-3)


def test_semantic_branch_frozen_and_seeds_bounded_by_it() -> None:
    torch.manual_seed(0)
    network = ESPNetv2Embeddings(INSTANCE_CLASSES)
    network.semantic.load_state_dict(load_espnetv2_cityscapes(SHIPPED_WEIGHTS).state_dict())
    network.train()
    assert not network.semantic.training and network.reduce_8.training
    assert not any(p.requires_grad for p in network.semantic.parameters())
    before = {k: v.clone() for k, v in network.semantic.state_dict().items()}
    optimizer = torch.optim.Adam([p for p in network.parameters() if p.requires_grad], lr=1e-2)
    x = torch.rand(2, 3, 64, 64)
    raw = network(x)
    raw[:, 4:].sigmoid().mean().backward()
    optimizer.step()
    after = network.semantic.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and batch-norm statistics
    network.eval()
    with torch.no_grad():
        seeds = torch.sigmoid(network(x)[:, 4:])
        probabilities = torch.softmax(network.semantic(normalise_unit_rgb(x))[:, :19], 1)[:, 11:19]
    assert (seeds <= probabilities + 1e-4).all()  # a seed never exceeds the semantic branch's probability


def test_real_context_windows_are_reproducible(synthetic_tree: Path) -> None:
    sampler = CropSampler(load_split(synthetic_tree, "train", INSTANCE_CLASSES))
    mix = RealContextMix(negative_fraction=0.3, background_fraction=0.5, photometric=0.5)

    def draw(seed: int) -> list:
        rng = np.random.default_rng(seed)
        return [mixed_window(sampler, 64, 96, rng, mix) for _ in range(12)]

    first, again, other = draw(3), draw(3), draw(4)
    assert all(np.array_equal(a, b) for wa, wb in zip(first, again, strict=True) for a, b in zip(wa, wb, strict=True))
    assert not all(np.array_equal(wa[0], wb[0]) for wa, wb in zip(first, other, strict=True))
    assert any(w[1].max() == 0 for w in first) and any(w[1].max() > 0 for w in first)
    image, instances, labels, ignore = negative_window(np.random.default_rng(0), 40, 50)
    assert image.shape == (40, 50, 3) and image.dtype == np.uint8 and image.std() > 0
    assert not instances.any() and not labels.any() and not ignore.any()
    with pytest.raises(ValueError, match="not in"):
        RealContextMix(negative_fraction=1.5)


def test_training_command_with_the_espnetv2_backbone(synthetic_tree: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    """Loss falls over a few steps, the semantic branch keeps the shipped weights, and a run resumes."""
    from training import spatial_embeddings

    args = ["train", "--data", str(synthetic_tree), "--out", str(tmp_path), "--backbone", "espnetv2",
            "--steps-per-epoch", "6", "--batch", "2", "--crop", "64", "128", "--lr", "2e-3", "--keep-every", "0",
            "--progress-every", "0", "--negative-windows", "0.25", "--real-backgrounds", "0.25",
            "--photometric", "0.5", "--resume"]
    state = spatial_embeddings.main([*args, "--epochs", "2"])
    losses = [entry["loss"] for entry in state["history"]]
    assert losses[1] < losses[0], losses
    checkpoint = torch.load(tmp_path / "last.pt", weights_only=False)
    assert checkpoint["model_config"]["backbone"] == "espnetv2"
    shipped = torch.load(SHIPPED_WEIGHTS, weights_only=True)
    for key, value in shipped.items():
        assert torch.equal(checkpoint["model"][f"network.semantic.{key}"], value.to(checkpoint["model"][
            f"network.semantic.{key}"].dtype)), key
    spatial_embeddings.main([*args, "--epochs", "3"])
    assert "resumed" in capsys.readouterr().out
    assert torch.load(tmp_path / "last.pt", weights_only=False)["epoch"] == 3


def test_zoomed_windows_show_larger_objects(synthetic_tree: Path) -> None:
    from instseg_core.data.real_context import scaled_window

    sampler = CropSampler(load_split(synthetic_tree, "train", INSTANCE_CLASSES))

    def objects_seen(scale: float) -> tuple[float, int]:
        """(mean object area in pixels, number of objects) over 8 windows."""
        rng = np.random.default_rng(5)
        areas = []
        for _ in range(8):
            image, instances, labels, ignore = scaled_window(sampler, 64, 128, rng, (scale, scale))
            assert image.shape == (64, 128, 3) and instances.shape == labels.shape == ignore.shape == (64, 128)
            assert set(np.unique(labels[instances > 0])) <= set(range(1, len(INSTANCE_CLASSES) + 1))
            areas += [np.count_nonzero(instances == k) for k in np.unique(instances) if k > 0]
        return float(np.mean(areas)), len(areas)

    (zoomed_area, zoomed_count), (plain_area, plain_count) = objects_seen(2.5), objects_seen(1.0)
    assert zoomed_area > 1.3 * plain_area and zoomed_count < plain_count  # larger, fewer (clipped by the window)
