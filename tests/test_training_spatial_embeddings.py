"""Smoke tests of the Spatial Embeddings training command: loss falls, checkpoints resume, the official
evaluator scores a run, and the ONNX export matches PyTorch on two input sizes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from instseg_core.base.classes import INSTANCE_CLASSES
from instseg_core.data.instance_training import load_split, object_centered_crop, to_batch
from instseg_core.losses.spatial_embedding import SpatialEmbeddingLoss
from instseg_core.networks.spatial_embeddings import SpatialEmbeddings
from instseg_core.postprocess.seed_clustering import ClusteringParams, cluster_seeds
from training import spatial_embeddings

pytestmark = pytest.mark.slow


def test_loss_falls_on_a_fixed_batch(synthetic_tree: Path) -> None:
    torch.manual_seed(0)
    samples = load_split(synthetic_tree, "train", INSTANCE_CLASSES)
    rng = np.random.default_rng(0)
    batch = to_batch([object_centered_crop(samples[i % len(samples)], 64, 128, rng) for i in range(2)])
    assert batch[1].max() > 0, "crops are centred on objects"
    model = SpatialEmbeddings()
    loss_fn = SpatialEmbeddingLoss(model.n_sigma, model.n_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(20):
        loss, _ = loss_fn(model(batch[0]), *batch[1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses


@pytest.fixture(scope="module")
def run_dir(synthetic_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("se_run")
    common = ["train", "--data", str(synthetic_tree), "--out", str(run), "--steps-per-epoch", "2", "--batch", "2",
              "--crop", "64", "128", "--keep-every", "1", "--progress-every", "0", "--resume"]
    spatial_embeddings.main([*common, "--epochs", "2"])
    return run


def test_training_writes_checkpoints_and_resumes(run_dir: Path, synthetic_tree: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    assert (run_dir / "epoch_001.pt").is_file() and (run_dir / "epoch_002.pt").is_file()
    before = torch.load(run_dir / "last.pt", weights_only=False)
    spatial_embeddings.main(["train", "--data", str(synthetic_tree), "--out", str(run_dir), "--steps-per-epoch", "2",
                             "--batch", "2", "--crop", "64", "128", "--keep-every", "1", "--progress-every", "0",
                             "--resume", "--epochs", "3"])
    assert "resumed" in capsys.readouterr().out
    history = json.loads((run_dir / "history.json").read_text())
    assert [e["epoch"] for e in history["history"]] == [1, 2, 3]
    assert history["history"][0]["lr"] > history["history"][2]["lr"]  # polynomial decay
    after = torch.load(run_dir / "last.pt", weights_only=False)
    assert after["epoch"] == 3 and before["epoch"] == 2
    changed = [not torch.equal(after["model"][k], before["model"][k]) for k in before["model"]]
    assert any(changed)


def test_evaluation_runs_the_official_evaluator(run_dir: Path, synthetic_tree: Path) -> None:
    results = spatial_embeddings.main(["evaluate", "--data", str(synthetic_tree), "--run", str(run_dir),
                                       "--checkpoint", "all", "--limit", "2"])
    assert {"epoch_001.pt", "epoch_002.pt", "last.pt"} <= set(results)
    for result in results.values():
        assert 0.0 <= result["ap"] <= 1.0 and 0.0 <= result["ap50"] <= 1.0 and result["images"] == 2
    assert (run_dir / "evaluation" / "last" / "resultInstanceLevelSemanticLabeling.json").is_file()
    for name in results:
        assert name in json.loads((run_dir / f"evaluation_{name[:-3]}.json").read_text())


def test_fixed_sigma_and_learnable_centre_ablations_train(synthetic_tree: Path, tmp_path: Path) -> None:
    for flags in (["--fixed-sigma"], ["--center", "learnable", "--n-sigma", "1"]):
        out = tmp_path / "_".join(flags)
        spatial_embeddings.main(["train", "--data", str(synthetic_tree), "--out", str(out), "--epochs", "1",
                                 "--steps-per-epoch", "1", "--batch", "1", "--crop", "64", "64",
                                 "--progress-every", "0", *flags])
        checkpoint = torch.load(out / "last.pt", weights_only=False)
        assert np.isfinite(checkpoint["state"]["history"][0]["loss"])
        assert checkpoint["loss_config"]["learn_sigma"] == ("--fixed-sigma" not in flags)


def test_onnx_export_matches_pytorch_on_two_sizes(run_dir: Path, tmp_path: Path) -> None:
    onnx_path = spatial_embeddings.main(["export", "--run", str(run_dir), "--out", str(tmp_path / "se.onnx"),
                                         "--data-note", "test"])
    manifest = json.loads(onnx_path.with_suffix(".json").read_text())
    assert manifest["model"] == "spatial_embeddings" and manifest["label_ids"][:3] == [24, 25, 26]
    model, _ = spatial_embeddings.load_checkpoint(run_dir / "last.pt")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for height, width in ((64, 128), (96, 160)):
        image = rng.random((1, 3, height, width), dtype=np.float32)
        with torch.no_grad():
            expected = model(torch.from_numpy(image)).numpy()
        got = session.run(["raw"], {"image": image})[0]
        assert got.shape == expected.shape == (1, 12, height, width)
        assert np.abs(got - expected).max() < 1e-3 * max(1.0, np.abs(expected).max())
        params = ClusteringParams(seed_threshold=0.3, foreground_threshold=0.3, min_pixels=4)
        a, b = cluster_seeds(got[0], 2, params), cluster_seeds(expected[0], 2, params)
        assert len(a) == len(b)


def test_finetune_keeps_batch_norm_statistics(run_dir: Path, synthetic_tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "finetune"
    spatial_embeddings.main(["train", "--data", str(synthetic_tree), "--out", str(out), "--finetune-from", str(run_dir),
                             "--freeze-bn", "--epochs", "1", "--steps-per-epoch", "2", "--batch", "1", "--crop", "128",
                             "256", "--lr", "5e-5", "--progress-every", "0"])
    source = torch.load(run_dir / "last.pt", weights_only=False)["model"]
    tuned = torch.load(out / "last.pt", weights_only=False)["model"]
    statistics = [k for k in source if k.endswith(("running_mean", "running_var"))]
    weights = [k for k in source if k.endswith("weight") and "bn" not in k]
    assert statistics and all(torch.equal(source[k], tuned[k]) for k in statistics)
    assert any(not torch.equal(source[k], tuned[k]) for k in weights)
