"""Smoke tests of the Box2Pix training command: loss falls, checkpoints resume (with the learned task
uncertainties), the Table I ablations train, the official evaluator scores a run, the coverage report, and the
ONNX export matches PyTorch on two input sizes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from instseg_core.base.classes import INSTANCE_CLASSES
from instseg_core.data.instance_training import load_split, object_centered_crop
from instseg_core.losses.box2pix import Box2PixLoss
from instseg_core.networks.box2pix import Box2Pix, Box2PixInference
from instseg_core.networks.box_priors import prior_boxes
from training import box2pix

pytestmark = pytest.mark.slow

SMALL = ["--steps-per-epoch", "2", "--batch", "2", "--crop", "128", "256", "--progress-every", "0"]


def test_loss_falls_on_a_fixed_batch(synthetic_tree: Path) -> None:
    torch.manual_seed(0)
    samples = load_split(synthetic_tree, "train", INSTANCE_CLASSES)
    rng = np.random.default_rng(0)
    images, targets = box2pix.make_batch([object_centered_crop(samples[i % len(samples)], 128, 256, rng)
                                          for i in range(2)])
    assert all(len(t.boxes) for t in targets), "crops are centred on objects"
    model = Box2Pix()
    loss_fn = Box2PixLoss()
    optimizer = torch.optim.Adam([*model.parameters(), *loss_fn.parameters()], lr=1e-3)
    priors = prior_boxes(128, 256, model.priors_per_layer)
    losses = []
    for _ in range(10):
        loss, _ = loss_fn(model(images), targets, priors)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3]), losses


@pytest.fixture(scope="module")
def run_dir(synthetic_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("b2p_run")
    box2pix.main(["train", "--data", str(synthetic_tree), "--out", str(run), *SMALL, "--keep-every", "1",
                  "--epochs", "2"])
    return run


def test_training_writes_checkpoints_and_resumes(run_dir: Path, synthetic_tree: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    assert (run_dir / "epoch_001.pt").is_file() and (run_dir / "epoch_002.pt").is_file()
    before = torch.load(run_dir / "last.pt", weights_only=False)
    assert not torch.equal(before["loss_state"]["log_variance"], torch.zeros(4)), "task uncertainties are trained"
    box2pix.main(["train", "--data", str(synthetic_tree), "--out", str(run_dir), *SMALL, "--keep-every", "1",
                  "--epochs", "3", "--resume"])
    assert "resumed" in capsys.readouterr().out
    history = json.loads((run_dir / "history.json").read_text())
    assert [e["epoch"] for e in history["history"]] == [1, 2, 3]
    assert set(history["history"][0]["log_variance"]) == {"semantics", "offsets", "box", "class"}
    after = torch.load(run_dir / "last.pt", weights_only=False)
    assert after["epoch"] == 3
    assert any(not torch.equal(after["model"][k], before["model"][k]) for k in before["model"])


def test_table_one_ablations_train(synthetic_tree: Path, tmp_path: Path) -> None:
    for flags in (["--matching", "iou"], ["--class-weighting", "balanced"], ["--gamma", "5"]):
        out = tmp_path / "_".join(flags)
        box2pix.main(["train", "--data", str(synthetic_tree), "--out", str(out), "--epochs", "1",
                      "--steps-per-epoch", "1", "--batch", "1", "--crop", "256", "256", "--progress-every", "0",
                      *flags])
        checkpoint = torch.load(out / "last.pt", weights_only=False)
        assert np.isfinite(checkpoint["state"]["history"][0]["loss"])
        config = checkpoint["loss_config"]
        assert (config["matching"], config["class_weighting"], config["gamma"]) == (
            "iou" if "iou" in flags else "change", "balanced" if "balanced" in flags else "focal",
            5.0 if "5" in flags else 2.0)


def test_evaluation_runs_the_official_evaluator(run_dir: Path, synthetic_tree: Path) -> None:
    results = box2pix.main(["evaluate", "--data", str(synthetic_tree), "--run", str(run_dir), "--checkpoint",
                            "epoch_001.pt,last.pt", "--limit", "2", "--detection-threshold", "0.01"])
    assert set(results) == {"epoch_001.pt", "last.pt"}
    for result in results.values():
        assert 0.0 <= result["ap"] <= 1.0 and 0.0 <= result["ap50"] <= 1.0 and result["images"] == 2
        assert result["postprocess_ms"] > 0
    assert (run_dir / "evaluation" / "last" / "resultInstanceLevelSemanticLabeling.json").is_file()


def test_coverage_report(synthetic_tree: Path, capsys: pytest.CaptureFixture) -> None:
    report = box2pix.main(["coverage", "--data", str(synthetic_tree), "--split", "val"])
    assert report["boxes"] > 5
    assert 0.5 < report["size"] <= 1.0 and report["grid"] <= report["size"] + 1e-9
    assert report["size_literal_eq2"] < report["size"]
    assert "covered at d_change <= 0.7" in capsys.readouterr().out


def test_onnx_export_matches_pytorch_on_two_sizes(run_dir: Path, tmp_path: Path) -> None:
    onnx_path = box2pix.main(["export", "--run", str(run_dir), "--out", str(tmp_path / "b2p.onnx"),
                              "--data-note", "test", "--min-pixels", "16"])
    manifest = json.loads(onnx_path.with_suffix(".json").read_text())
    assert manifest["model"] == "box2pix" and manifest["label_ids"][:3] == [24, 25, 26]
    assert manifest["model_config"]["extra"]["assignment"]["min_pixels"] == 16
    model, _ = box2pix.load_checkpoint(run_dir / "last.pt")
    deployed = Box2PixInference(model).eval()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for height, width in ((128, 256), (256, 384)):
        image = rng.random((1, 3, height, width), dtype=np.float32)
        with torch.no_grad():
            expected = [t.numpy() for t in deployed(torch.from_numpy(image))]
        got = session.run(["detections", "semantic", "offsets"], {"image": image})
        assert [g.shape for g in got] == [e.shape for e in expected]
        assert got[1].dtype == np.uint8 and got[1].shape == (1, height, width)
        assert np.abs(got[0] - expected[0]).max() < 1e-3
        assert (got[1] != expected[1]).mean() < 1e-3  # argmax ties may flip on float noise
        assert np.abs(got[2] - expected[2]).max() < 1e-2
