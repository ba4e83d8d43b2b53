"""Mask guidance (issue 36): the 8-channel extreme-point network that also sees the mask its newest correction click
corrects. The encoding, the segmenter's click chain (pure, memoised, the same as passing the chain's mask), and the
training side (simulated clicks write the mask they correct; corrupted starting masks; a few training steps from a
7-channel graph)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from instseg_core.annotate.encoding import (
    CLICK_CHANNELS,
    PREVIOUS_MASK_CHANNEL,
    PREVIOUS_MASK_CHANNELS,
    crop,
    crop_box,
    encode,
)
from instseg_core.annotate.segmenter import AnnotationError, ErrorCode, annotation_segmenter_from_module
from instseg_core.networks.extreme_unet import ExtremeUNet

POINTS = [[40, 60], [100, 20], [160, 60], [100, 110]]


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """A grey ellipse on noise, 200 x 140."""
    import cv2

    rgb = np.random.default_rng(0).integers(0, 90, (140, 200, 3), np.uint8)
    cv2.ellipse(rgb, (100, 65), (60, 45), 0, 0, 360, (200, 200, 200), -1)
    return rgb


class CountingNetwork(torch.nn.Module):
    """A hand-made 8-channel network with smooth outputs, counting its calls: the bright ellipse (red channel), grown
    by positive and cut by negative click disks, and, when it is given a previous mask, mostly that mask."""

    in_channels = PREVIOUS_MASK_CHANNELS

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        previous = x[:, PREVIOUS_MASK_CHANNEL:PREVIOUS_MASK_CHANNEL + 1]
        given = previous.flatten(1).amax(1).view(-1, 1, 1, 1) > 0
        own = 4 * x[:, 0:1] + 6 * x[:, 5:6] - 8 * x[:, 6:7]
        return torch.where(given, 0.5 * own + 6 * (previous - 0.5), own)


def test_the_previous_mask_channel_is_zero_without_a_mask_and_refused_by_other_networks() -> None:
    rgb = np.zeros((128, 128, 3), np.uint8)
    points = np.array([[10, 60], [60, 10], [110, 60], [60, 110]], np.float32)
    plain = encode(rgb, points, channels=PREVIOUS_MASK_CHANNELS)
    assert plain.shape == (8, 128, 128) and not plain[5:].any()
    previous = np.zeros((128, 128), bool)
    previous[20:40, 30:50] = True
    guided = encode(rgb, points, channels=PREVIOUS_MASK_CHANNELS, crop_previous=previous)
    assert np.array_equal(guided[PREVIOUS_MASK_CHANNEL] > 0, previous) and np.array_equal(guided[:7], plain[:7])
    click = np.array([[60.0, 60]])
    assert np.array_equal(encode(rgb, points, channels=PREVIOUS_MASK_CHANNELS, crop_positive=click)[:7],
                          encode(rgb, points, channels=CLICK_CHANNELS, crop_positive=click))
    with pytest.raises(ValueError, match="no previous-mask channel"):
        encode(rgb, points, channels=CLICK_CHANNELS, crop_previous=previous)


def test_the_click_chain_is_pure_memoised_and_the_same_as_passing_its_masks(image: np.ndarray) -> None:
    network = CountingNetwork()
    segmenter = annotation_segmenter_from_module(network, threads=1, relax_fraction=0.25, flip="none",
                                                 paint_clicks=False)
    assert segmenter.takes_clicks and segmenter.takes_previous
    first = segmenter.segment(image, POINTS, positive=[[100, 65]])
    assert network.calls == 2  # the points alone, then the click given that mask
    both = segmenter.segment(image, POINTS, positive=[[100, 65]], negative=[[45, 60]])
    assert network.calls == 3  # one more click: one more step, the rest is memoised
    fresh = annotation_segmenter_from_module(CountingNetwork(), threads=1, relax_fraction=0.25, flip="none",
                                             paint_clicks=False)
    assert np.array_equal(fresh.segment(image, POINTS, positive=[[100, 65]], negative=[[45, 60]]).mask, both.mask)
    # the chain's step is the network given the mask before the click: pass that mask and get the same answer
    # (the mask is passed at image size, so it comes back through the crop's resampling: equal within a pixel rim)
    passed = segmenter.segment(image, POINTS, positive=[[100, 65]], negative=[[45, 60]], previous=first.mask)
    assert np.count_nonzero(passed.mask & both.mask) / np.count_nonzero(passed.mask | both.mask) > 0.97
    # the mask reaches the network: a full mask and an empty one give different answers
    full = segmenter.segment(image, POINTS, negative=[[45, 60]], previous=np.ones(image.shape[:2], bool))
    empty = segmenter.segment(image, POINTS, negative=[[45, 60]], previous=np.zeros(image.shape[:2], bool))
    assert full.area != empty.area
    with pytest.raises(AnnotationError, match="previous mask must be 140x200") as caught:
        segmenter.segment(image, POINTS, positive=[[100, 65]], previous=np.ones((10, 10), bool))
    assert caught.value.code == ErrorCode.BAD_POINTS


def test_a_network_without_the_channel_ignores_a_previous_mask(image: np.ndarray) -> None:
    torch.manual_seed(0)
    segmenter = annotation_segmenter_from_module(ExtremeUNet(CLICK_CHANNELS).eval(), threads=1)
    assert segmenter.takes_clicks and not segmenter.takes_previous
    plain = segmenter.segment(image, POINTS, positive=[[100, 65]])
    given = segmenter.segment(image, POINTS, positive=[[100, 65]], previous=np.ones(image.shape[:2], bool))
    assert np.array_equal(plain.mask, given.mask)


def test_simulated_clicks_write_the_mask_they_correct_and_start_from_corrupted_masks() -> None:
    from training.extreme_point_clicks import corrupted_mask, simulate_clicks

    class Nothing(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full((x.shape[0], 1, 128, 128), -5.0)

    masks = np.zeros((2, 128, 128), bool)
    masks[:, 30:90, 40:70] = True
    inputs = np.zeros((2, 8, 128, 128), np.float32)
    start = {1: masks[1] & (np.arange(128)[None, :] < 55)}  # sample 1 starts with its right part missing
    simulate_clicks(Nothing(), inputs, masks, np.array([1, 1]), final=False, start=start)
    assert not inputs[0, PREVIOUS_MASK_CHANNEL].any()  # the model's own (empty) mask
    assert np.array_equal(inputs[1, PREVIOUS_MASK_CHANNEL] > 0, start[1])
    clicked = np.nonzero(inputs[1, 5])
    assert clicked[1].min() >= 55  # the click corrects the corrupted start: in the missing part
    rng = np.random.default_rng(0)
    changed = [np.count_nonzero(corrupted_mask(masks[0], rng) != masks[0]) for _ in range(40)]
    assert min(changed) > 0 and np.median(changed) >= 100  # every corruption is an error, most of them large
    assert not corrupted_mask(np.zeros((128, 128), bool), rng).any()


def test_training_with_the_previous_mask_from_a_click_graph(tmp_path) -> None:
    """A few steps of `train --previous-mask` from an exported 7-channel graph: the 8-channel network starts as the
    graph (the new filters are zero), its step checkpoint loads as an ExtremeUNet(8), and a step resumes."""
    from training.extreme_point_clicks import load_click_run, main
    from training.extreme_point_crops import CropSet
    from training.extreme_points import export_onnx

    torch.manual_seed(0)
    graph = export_onnx(ExtremeUNet(CLICK_CHANNELS).eval(), tmp_path / "seven.onnx")
    rng = np.random.default_rng(0)
    count = 6
    images = rng.integers(0, 255, (count, 128, 128, 3), np.uint8)
    masks = np.zeros((count, 128, 128), np.uint8)
    masks[:, 30:100, 40:90] = 1
    points = np.tile(np.array([[40, 64], [64, 30], [89, 64], [64, 99]], np.float32), (count, 1, 1))
    CropSet(images, masks, points, np.zeros(count, np.int16), np.zeros(count, np.int32)).save(tmp_path / "c.npz")
    common = ["train", "--init", str(graph), "--previous-mask", "--out", str(tmp_path / "run"), "--crops",
              str(tmp_path / "c.npz"), "--val-crops", str(tmp_path / "c.npz"), "--batch-size", "3",
              "--save-every", "1", "--eval-every", "2", "--threads", "1", "--progress-every", "0"]
    main([*common, "--steps", "1"])
    model, checkpoint = load_click_run(tmp_path / "run", "step1.pt")
    assert model.in_channels == PREVIOUS_MASK_CHANNELS and checkpoint["step"] == 1
    main([*common, "--steps", "2", "--resume"])
    _, resumed = load_click_run(tmp_path / "run", "step2.pt")
    assert resumed["step"] == 2
    box = crop_box(np.array(POINTS, np.float64))
    assert crop(np.zeros((140, 200), np.float32), box).shape == (128, 128)
