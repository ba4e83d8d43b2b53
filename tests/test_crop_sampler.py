"""The training-window sampler shared by the dense instance networks (instseg_core.data.instance_training)."""

from __future__ import annotations

import numpy as np
import pytest

from instseg_core.data.instance_training import CropSampler, InstanceSample, object_classes


def _sample(boxes: list[tuple[int, int, int, int, int]], size: tuple[int, int] = (128, 256)) -> InstanceSample:
    """An image whose objects are rectangles (x0, y0, x1, y1, class index); the image encodes instance ids."""
    instances = np.zeros(size, np.int32)
    labels = np.zeros(size, np.uint8)
    centers = []
    for k, (x0, y0, x1, y1, label) in enumerate(boxes, start=1):
        instances[y0:y1, x0:x1] = k
        labels[y0:y1, x0:x1] = label + 1
        centers.append(((x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2))
    image = np.repeat(instances[..., None].astype(np.uint8), 3, axis=2)
    return InstanceSample("s", image, instances, labels, np.zeros(size, bool), np.array(centers, np.float32))


def _split() -> list[InstanceSample]:
    """Nine images with four 'car' objects (class 0) each, one image with a single 'bus' (class 1)."""
    cars = [(x, 50, x + 20, 70, 0) for x in (10, 70, 130, 190)]
    return [_sample(cars) for _ in range(9)] + [_sample([(100, 40, 140, 90, 1)])]


def _bus_fraction(sampler: CropSampler, rng: np.random.Generator, count: int = 400) -> float:
    crops = [sampler.crop(64, 64, rng) for _ in range(count)]
    return float(np.mean([np.any(labels == 2) for _, _, labels, _ in crops]))


def test_object_classes_are_read_from_the_label_map() -> None:
    sample = _sample([(0, 0, 10, 10, 3), (20, 20, 30, 30, 1)])
    assert object_classes(sample).tolist() == [3, 1]


def test_balanced_windows_give_a_rare_class_its_share() -> None:
    split = _split()
    rng = np.random.default_rng(0)
    # 1 object of 37 is a bus; drawn by image then object, about 1 window in 10 shows it, balanced about 1 in 2.
    assert _bus_fraction(CropSampler(split, "objects"), rng) < 0.2
    assert 0.4 < _bus_fraction(CropSampler(split, "balanced"), rng) < 0.6


def test_windows_anywhere_leave_the_objects() -> None:
    split = [_sample([(0, 0, 16, 16, 0)], size=(256, 512))]
    rng = np.random.default_rng(1)
    around = [CropSampler(split, "objects").crop(64, 64, rng)[1].any() for _ in range(100)]
    anywhere = [CropSampler(split, "objects", anywhere_fraction=1.0).crop(64, 64, rng)[1].any() for _ in range(100)]
    assert all(around)
    assert np.mean(anywhere) < 0.2


def test_the_sampler_is_deterministic_for_a_seed() -> None:
    sampler = CropSampler(_split(), "balanced", anywhere_fraction=0.3)
    first = [sampler.crop(32, 48, np.random.default_rng(7))[1] for _ in range(3)]
    again = [sampler.crop(32, 48, np.random.default_rng(7))[1] for _ in range(3)]
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))


@pytest.mark.parametrize("mode, fraction", [("nearest", 0.0), ("objects", 1.5)])
def test_bad_sampler_settings_are_refused(mode: str, fraction: float) -> None:
    with pytest.raises(ValueError):
        CropSampler(_split(), mode, fraction)
