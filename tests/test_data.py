"""instseg_core.data: Cityscapes reader and label table, synthetic generator, instseg-synth."""

from __future__ import annotations

import filecmp
import json
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from instseg_core.data import synth_cli
from instseg_core.data.cityscapes import (
    INSTANCE_CLASSES,
    CityscapesDataset,
    dataset_root,
    name2label,
    read_polygons,
    visible_masks,
    write_sample,
)
from instseg_core.data.synthetic import CLASS_FREQUENCY, clip_polygon, make_scene, render


def test_label_table_is_the_official_one() -> None:
    assert INSTANCE_CLASSES == ("person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")
    assert name2label["car"].id == 26 and name2label["car"].trainId == 13
    assert name2label["road"].trainId == 0 and name2label["license plate"].id == -1


def test_reader_on_hand_made_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Instance k=0, a group region, stuff, and an unannotated test image, read through CITYSCAPES_DATASET."""
    objects = [
        ("road", np.array([[0, 0], [99, 0], [99, 49], [0, 49]])),
        ("cargroup", np.array([[60, 5], [90, 5], [90, 20], [60, 20]])),
        ("car", np.array([[5, 10], [24, 10], [24, 29], [5, 29]])),
        ("car", np.array([[15, 20], [34, 20], [34, 39], [15, 39]])),  # occludes part of the first car
        ("traffic sign", np.array([[70, 30], [75, 30], [75, 35], [70, 35]])),
    ]
    rgb = np.full((50, 100, 3), 90, np.uint8)
    write_sample(tmp_path, "train", "town", "town_000000_000019", rgb, objects)
    cv2.imwrite(str(tmp_path / "leftImg8bit" / "train" / "town" / "town_000001_000019_leftImg8bit.png"), rgb)
    monkeypatch.setenv("CITYSCAPES_DATASET", str(tmp_path))
    dataset = CityscapesDataset(split="train")
    assert len(dataset) == 1, "an image without gtFine is skipped"
    assert len(CityscapesDataset(split="train", require_gt=False)) == 2
    sample = dataset[0]
    assert sample.image.shape == (50, 100, 3) and sample.image.dtype == np.uint8
    assert sample.instance_id_values.tolist() == [26000, 26001]
    assert sample.class_names == ["car", "car"]
    assert sample.masks[1].sum() == 20 * 20
    assert sample.masks[0].sum() == 20 * 20 - 10 * 10, "the second car occludes a 10x10 corner"
    assert sample.boxes.tolist() == [[5, 10, 25, 30], [15, 20, 35, 40]]
    assert sample.group_mask.sum() == 31 * 16
    assert sample.label_ids[32, 72] == name2label["traffic sign"].id
    assert [p.label for p in sample.polygons][-1] == "traffic sign"
    assert sample.polygons[1].is_group and sample.polygons[1].class_name == "car"


def test_dataset_root_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CITYSCAPES_DATASET", raising=False)
    with pytest.raises(FileNotFoundError, match="CITYSCAPES_DATASET"):
        dataset_root()
    with pytest.raises(FileNotFoundError, match="no leftImg8bit"):
        dataset_root(tmp_path)
    with pytest.raises(ValueError, match="split"):
        CityscapesDataset(tmp_path, "training")


def test_generator_round_trips_through_reader(synthetic_tree: Path) -> None:
    """Each instance mask read back equals its polygon's raster minus the later polygons (drawing order)."""
    for split in ("train", "val"):
        dataset = CityscapesDataset(synthetic_tree, split)
        assert len(dataset) == 3
        for sample in dataset:
            height, width, objects = read_polygons(sample.paths["polygons"])
            assert sample.image.shape == (height, width, 3)
            visible = visible_masks(height, width, objects)
            expected: dict[int, np.ndarray] = {}
            counters: Counter[str] = Counter()
            for obj, mask in zip(objects, visible, strict=True):
                if obj.label in INSTANCE_CLASSES:  # official numbering: k-th polygon of its class, drawing order
                    expected[name2label[obj.label].id * 1000 + counters[obj.label]] = mask
                    counters[obj.label] += 1
            expected = {k: v for k, v in expected.items() if v.any()}
            assert sorted(expected) == sample.instance_id_values.tolist()
            for instance_id, mask in zip(sample.instance_id_values, sample.masks, strict=True):
                np.testing.assert_array_equal(mask, expected[int(instance_id)])
                assert np.all(sample.label_ids[mask] == instance_id // 1000)


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    for name in ("a", "b"):
        synth_cli.generate_images(tmp_path / name, "val", 2, seed=11, width=320, height=160, progress=False)
    synth_cli.generate_images(tmp_path / "c", "val", 2, seed=12, width=320, height=160, progress=False)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 2 * 5
    for relative in files:
        assert filecmp.cmp(tmp_path / "a" / relative, tmp_path / "b" / relative, shallow=False), relative
    different = [f for f in files if not filecmp.cmp(tmp_path / "a" / f, tmp_path / "c" / f, shallow=False)]
    assert len(different) == len(files)


def test_splits_never_share_scenes() -> None:
    train = render(make_scene(synth_cli.image_seed(0, "train", 0), 160, 80)).rgb
    val = render(make_scene(synth_cli.image_seed(0, "val", 0), 160, 80)).rgb
    assert not np.array_equal(train, val)


def test_class_frequencies_are_skewed_like_cityscapes() -> None:
    counts: Counter[str] = Counter()
    for seed in range(300):
        counts.update(a.kind for a in make_scene(seed, 320, 160).actors)
    assert set(CLASS_FREQUENCY) <= set(counts), f"every instance class appears: {counts}"
    assert counts["car"] > counts["person"] > counts["bicycle"] > counts["truck"] > counts["train"]
    assert counts["car"] > 20 * counts["train"]


def test_scenes_are_not_flat_colour(synthetic_tree: Path) -> None:
    """Texture inside classes and colour variety between cars: no class is a flat colour."""
    car_colours = []
    for sample in CityscapesDataset(synthetic_tree, "train"):
        grey = cv2.cvtColor(sample.image, cv2.COLOR_RGB2GRAY).astype(float)
        for label in ("road", "building", "sky"):
            region = sample.label_ids == name2label[label].id
            if region.sum() > 500:
                assert grey[region].std() > 4.0, label
        for mask, name in zip(sample.masks, sample.class_names, strict=True):
            if name == "car" and mask.sum() > 200:
                car_colours.append(sample.image[mask].mean(axis=0))
    assert len(car_colours) >= 3
    assert np.std(np.array(car_colours), axis=0).max() > 15.0


def test_objects_shrink_with_depth() -> None:
    scene = make_scene(5, 640, 320)
    cam = scene.camera
    near_y = cam.project(0.0, 0.0, 10.0)[1] - cam.project(0.0, 1.5, 10.0)[1]
    far_y = cam.project(0.0, 0.0, 40.0)[1] - cam.project(0.0, 1.5, 40.0)[1]
    assert near_y == pytest.approx(4 * far_y)


def test_sequence_is_temporally_coherent() -> None:
    frames = [f.rgb.astype(float) for _, f in synth_cli.sequence_frames(3, "val", 0, 3, width=320, height=160,
                                                                          fps=15.0, ego_speed=6.0)]
    other = render(make_scene(4, 320, 160)).rgb.astype(float)
    step = np.abs(frames[1] - frames[0]).mean()
    assert 0.0 < step < 0.5 * np.abs(other - frames[0]).mean()


def test_clip_polygon() -> None:
    clipped = clip_polygon(np.array([[-10, 5], [20, 5], [20, 15], [-10, 15]]), 16, 12)
    assert clipped[:, 0].min() == 0 and clipped[:, 0].max() == 15 and clipped[:, 1].max() == 11


def test_cli_writes_cityscapes_names(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    synth_cli.main([str(tmp_path), "--splits", "train=2", "--width", "160", "--height", "80"])
    stems = sorted(p.name for p in (tmp_path / "leftImg8bit" / "train").rglob("*.png"))
    assert stems == ["renderstadt_000000_000019_leftImg8bit.png", "synthburg_000000_000019_leftImg8bit.png"]
    polygons = json.loads(next((tmp_path / "gtFine").rglob("*_polygons.json")).read_text())
    assert set(polygons) == {"imgHeight", "imgWidth", "objects"} and polygons["imgWidth"] == 160
    with pytest.raises(SystemExit):
        synth_cli.main([str(tmp_path), "--splits", "training=2"])


def test_a_full_disk_names_the_file_and_the_errno(tmp_path: Path) -> None:
    """instseg-synth into a 200 kB tmpfs (tests/small_filesystems.py): status 2 and one line naming ENOSPC and the
    file that did not fit (before: "[Errno 28 ENOSPC] No space left on device" and no file)."""
    import subprocess
    import sys

    from small_filesystems import SCRIPT as SMALL_FILESYSTEM
    from small_filesystems import small_filesystem_arguments

    disk = tmp_path / "disk"
    result = subprocess.run([sys.executable, str(SMALL_FILESYSTEM), *small_filesystem_arguments(disk, 200_000),
                             sys.executable, "-m", "instseg_core.data.synth_cli", str(disk / "out"), "--splits",
                             "train=3", "--width", "512", "--height", "256"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"instseg-synth: [Errno 28 ENOSPC] No space left on device: {disk / 'out'}/"), line
    assert line.endswith(".png") or line.endswith(".json"), line
