"""Smoke tests of the extreme-point training command: loss falls, checkpoints resume, export and ablation run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from instseg_core.annotate.encoding import extreme_points_from_mask
from instseg_core.losses.binary_mask import LOSSES, average_distance_loss
from instseg_core.networks.extreme_unet import ExtremeUNet
from training import derive_models, extreme_points
from training.extreme_point_crops import RANDOMISED_CLASS, CropSet, build_crops, crops_of_labelled_objects

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def crops_dir(synthetic_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("crops")
    extreme_points.main(["prepare", "--data", str(synthetic_tree), "--out", str(out)])
    assert len(CropSet.load(out / "train.npz")) >= 16
    return out


def test_losses_on_perfect_and_wrong_predictions() -> None:
    target = torch.zeros(2, 1, 16, 16)
    target[:, :, 4:12, 4:12] = 1
    perfect = (target * 2 - 1) * 50  # logits: certain and right
    wrong = -perfect
    for name, loss in LOSSES.items():
        assert loss(perfect, target) < 0.02, name
        assert loss(wrong, target) > loss(perfect, target) + 0.5, name
    # Δd of a certain prediction equals (|union| - |intersection|) / sqrt(area): 64 px off, area 64
    half = perfect.clone()
    half[:, :, 4:12, 4:8] = -50
    assert float(average_distance_loss(half, target)) == pytest.approx(32 / 8 / 1.0, rel=0.01)


def test_training_reduces_the_loss_and_resumes(crops_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    common = ["train", "--crops", str(crops_dir), "--out", str(run), "--batch-size", "8", "--limit", "16",
              "--progress-every", "1", "--threads", "2"]
    extreme_points.main([*common, "--epochs", "4"])
    history = json.loads((run / "history.json").read_text())
    losses = [entry["loss"] for entry in history["history"]]
    assert len(losses) == 4 and losses[-1] < losses[0]
    best = torch.load(run / "best.pt", weights_only=False)
    assert best["epoch"] == history["best_epoch"] and best["variant"] == "extreme"
    extreme_points.main([*common, "--epochs", "5", "--resume"])
    resumed = json.loads((run / "history.json").read_text())
    assert [e["epoch"] for e in resumed["history"]] == [1, 2, 3, 4, 5]
    assert resumed["history"][:4] == history["history"], "resuming keeps the earlier epochs as they were"


def test_resume_reproduces_an_uninterrupted_run(crops_dir: Path, tmp_path: Path) -> None:
    common = ["train", "--crops", str(crops_dir), "--batch-size", "8", "--limit", "16", "--progress-every", "0",
              "--threads", "1"]
    extreme_points.main([*common, "--out", str(tmp_path / "straight"), "--epochs", "2"])
    extreme_points.main([*common, "--out", str(tmp_path / "split"), "--epochs", "1"])
    extreme_points.main([*common, "--out", str(tmp_path / "split"), "--epochs", "2", "--resume"])
    straight = json.loads((tmp_path / "straight" / "history.json").read_text())["history"]
    split = json.loads((tmp_path / "split" / "history.json").read_text())["history"]
    assert split[1]["loss"] == pytest.approx(straight[1]["loss"], rel=1e-4)


def test_export_manifest_and_ablation(crops_dir: Path, tmp_path: Path) -> None:
    for variant in ("extreme", "box", "extreme_prior"):
        prior = ["--prior-foreground", "box_and_hull"] if variant == "extreme_prior" else []
        extreme_points.main(["train", "--crops", str(crops_dir), "--out", str(tmp_path / variant), "--variant",
                             variant, "--epochs", "1", "--batch-size", "8", "--limit", "8", "--progress-every", "0",
                             *prior])
    model_path = tmp_path / "model.onnx"
    extreme_points.main(["export", "--run", str(tmp_path / "extreme"), "--out", str(model_path)])
    manifest = json.loads(model_path.with_suffix(".json").read_text())
    assert manifest["variant"] == "extreme" and manifest["input"] == [1, 4, 128, 128]
    assert {"aIoU", "mIoU", "iIoU", "border_error"} <= set(manifest["val_metrics"])
    assert manifest["training"]["config"]["lr"] == 1e-3 and len(manifest["commit"]) >= 7
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    output = session.run(None, {"input": np.zeros((3, 4, 128, 128), np.float32)})[0]
    assert output.shape == (3, 1, 128, 128) and output.min() >= 0 and output.max() <= 1
    int8_path = tmp_path / "model_int8.onnx"
    extreme_points.main(["quantize", "--model", str(model_path), "--crops", str(crops_dir), "--out", str(int8_path),
                         "--calibration-crops", "16"])
    int8 = json.loads(int8_path.with_suffix(".json").read_text())
    assert int8["quantisation"]["calibration_crops"] == 16 and "aIoU" in int8["val_metrics_fp32"]
    assert int8_path.stat().st_size < model_path.stat().st_size / 2, "int8 weights"
    table = extreme_points.ablation_table([tmp_path / "extreme", tmp_path / "box"], crops_dir)
    assert "| extreme (average_distance) |" in table and "| box (average_distance) |" in table
    extreme_points.main(["export", "--run", str(tmp_path / "extreme_prior"), "--out", str(tmp_path / "prior.onnx")])
    prior_manifest = json.loads((tmp_path / "prior.json").read_text())
    assert prior_manifest["input"] == [1, 5, 128, 128] and "colour prior" in prior_manifest["input_encoding"]
    # the colour prior's foreground is recorded as the run trained it, or as `--prior-foreground` says
    assert prior_manifest["colour_prior_foreground"] == "box_and_hull"
    assert "foreground: box_and_hull" in prior_manifest["input_encoding"]
    assert manifest["colour_prior_foreground"] == "box"  # runs from before the option, and 4-channel ones
    extreme_points.main(["export", "--run", str(tmp_path / "extreme_prior"), "--out", str(tmp_path / "hull.onnx"),
                         "--prior-foreground", "hull"])
    assert json.loads((tmp_path / "hull.json").read_text())["colour_prior_foreground"] == "hull"


def test_box_only_model_takes_rgb_only() -> None:
    assert ExtremeUNet(3).encoders[0][0].in_channels == 3
    with torch.no_grad():
        assert ExtremeUNet(3).eval()(torch.zeros(1, 3, 128, 128)).shape == (1, 1, 128, 128)


def test_build_crops_limit(synthetic_tree: Path) -> None:
    assert len(build_crops(synthetic_tree, "train", limit=1)) < len(build_crops(synthetic_tree, "train"))


def test_build_crops_relaxation_range(synthetic_tree: Path) -> None:
    """A relaxation range cuts the same objects with margins drawn from it (seeded); the default is the fixed 10 %."""
    fixed = build_crops(synthetic_tree, "val")
    assert all(np.array_equal(getattr(fixed, k), getattr(build_crops(synthetic_tree, "val", relax=(0.1, 0.1)), k))
               for k in ("images", "masks", "points"))
    wide = build_crops(synthetic_tree, "val", relax=(0.1, 0.3))
    again = build_crops(synthetic_tree, "val", relax=(0.1, 0.3))
    assert np.array_equal(wide.images, again.images) and np.array_equal(wide.classes, fixed.classes)
    # a wider margin shows the object smaller in the 128 x 128 crop, never larger
    wide_span, fixed_span = ((p.max(axis=1) - p.min(axis=1)).max(axis=1) for p in (wide.points, fixed.points))
    assert np.all(wide_span <= fixed_span + 0.5) and np.mean(wide_span < fixed_span - 2) > 0.5
    with pytest.raises(ValueError, match="relaxation range"):
        build_crops(synthetic_tree, "val", relax=(0.3, 0.1))


def test_randomised_crops_train_and_ship(crops_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue-15 path in small: randomised crops (with truncation) rendered by the command, training on them
    beside the street crops with photometric jitter and an extra validation set, then `ship`: float16 ONNX and
    manifest, with the fp32 and int8 graphs derived as set-up derives them."""
    randomised = tmp_path / "randomised"
    extreme_points.main(["randomise", "--out", str(randomised), "--count", "24", "--seed", "3", "--jobs", "1",
                         "--truncate", "0.5"])
    assert json.loads((randomised / "manifest.json").read_text())["truncate"] == 0.5
    assert len(CropSet.load(randomised / "crops.npz")) == 24
    run = tmp_path / "run"
    extreme_points.main(["train", "--crops", str(crops_dir), "--out", str(run), "--epochs", "2", "--batch-size",
                         "8", "--limit", "32", "--progress-every", "0", "--photometric", "1.0",
                         "--extra-train-crops", str(randomised / "crops.npz"),
                         "--extra-val-crops", str(randomised / "crops.npz")])
    history = json.loads((run / "history.json").read_text())
    assert all("val_aIoU_randomised" in entry for entry in history["history"])
    extreme_points.main(["average", "--run", str(run), "--epochs", "1", "2", "--crops", str(crops_dir),
                         "--extra-train-crops", str(randomised / "crops.npz"), "--bn-batches", "2"])
    averaged = torch.load(run / "averaged.pt", weights_only=False)
    first, second = (torch.load(run / f"epoch{e}.pt", weights_only=False)["model"] for e in (1, 2))
    name = "encoders.0.0.weight"
    assert torch.allclose(averaged["model"][name], (first[name] + second[name]) / 2)
    assert averaged["averaged_epochs"] == [1, 2]
    models = tmp_path / "models"
    models.mkdir()
    # set-up calibrates on 256 crops; 16 keep the test short
    monkeypatch.setattr(derive_models, "EXTREME_CALIBRATION", {"randomised_crops": 16, "seed": 7})
    extreme_points.main(["ship", "--run", str(run), "--models", str(models), "--checkpoint", "averaged.pt"])
    manifest = json.loads((models / "extreme_unet.json").read_text())
    assert manifest["randomised_crops"][0]["count"] == 24 and manifest["averaged_epochs"] == [1, 2]
    for name in ("extreme_unet.fp16.onnx", "extreme_unet.onnx", "extreme_unet_int8.onnx", "extreme_unet_int8.json"):
        assert (models / name).is_file(), name
    assert json.loads((models / "extreme_unet_int8.json").read_text())["precision"] == "int8"


def test_crops_of_labelled_objects_follow_their_masks_and_mirror_every_second() -> None:
    """Crops of objects labelled in full images (the real fine-tuning experiment): the points are the crop mask's
    extreme points, the margins vary, odd crops show the object mirrored, and a seed gives the same crops."""
    image = np.zeros((200, 300, 3), np.uint8)
    image[..., 0] = np.arange(300, dtype=np.uint8)[None, :] // 2  # a horizontal ramp: mirroring shows in the pixels
    mask = np.zeros((200, 300), bool)
    mask[40:160, 60:90] = True  # an L: the long bar on the left, the foot to the right
    mask[130:160, 60:200] = True
    crops = crops_of_labelled_objects([(image, mask)], 6, (0.1, 0.3), seed=5)
    assert len(crops) == 6 and set(crops.classes.tolist()) == {RANDOMISED_CLASS}
    for k in range(6):
        assert np.abs(extreme_points_from_mask(crops.masks[k] > 0) - crops.points[k]).max() <= 1.5
        left_heavy = crops.masks[k][:, :64].sum() > crops.masks[k][:, 64:].sum()
        assert left_heavy == (k % 2 == 0), k
        ramp_rises = crops.images[k][64, 120, 0] > crops.images[k][64, 8, 0]
        assert ramp_rises == (k % 2 == 0), k
    widths = {round(float(np.ptp(crops.points[k][:, 0])), 1) for k in range(6)}
    assert len(widths) > 1, "each crop draws its own margin"
    again = crops_of_labelled_objects([(image, mask)], 6, (0.1, 0.3), seed=5)
    assert np.array_equal(again.images, crops.images) and np.array_equal(again.points, crops.points)
