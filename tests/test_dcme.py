"""DCME: the encoding round trip, the block classes with the priority list, the loss and its clipped gradients, the
decoding on NumPy and torch, the network and its ONNX graph, the training command (loss falls, resume, the paper's
ablations, the oracle experiments) and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch

from instseg_core.base.classes import INSTANCE_CLASSES
from instseg_core.base.model_files import ModelFileError
from instseg_core.data.cityscapes import CityscapesDataset
from instseg_core.data.instance_training import instance_targets, load_split, object_centered_crop
from instseg_core.losses.dcme import (
    IGNORE_BLOCK,
    DcmeLoss,
    block_classes,
    dcme_targets,
    translated_logistic,
    vector_loss,
)
from instseg_core.networks.dcme import Dcme, DcmeInference
from instseg_core.postprocess.dcme_voting import VotingParams, decode_dcme, decode_dcme_torch, join_fragments
from instseg_core.runtime import create_segmenter
from instseg_core.runtime.adapters import DcmeAdapter
from instseg_core.runtime.backends import TorchBackend
from instseg_core.runtime.segmenter import Segmenter
from instseg_core.testing.ideal_outputs import ideal_dcme_output
from training import dcme

CLASSES = tuple(INSTANCE_CLASSES)


def labelled(objects: list[tuple[str, list[tuple[int, int, int, int]]]], height: int = 256, width: int = 512
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(instances, labels, ignore) with object k + 1 made of the rectangles (x0, y0, x1, y1) given for it."""
    instances = np.zeros((height, width), np.int32)
    labels = np.zeros((height, width), np.int64)
    for k, (name, rectangles) in enumerate(objects):
        for x0, y0, x1, y1 in rectangles:
            instances[y0:y1, x0:x1] = k + 1
            labels[y0:y1, x0:x1] = CLASSES.index(name) + 1
    return instances, labels, np.zeros((height, width), bool)


def perfect_output(instances: np.ndarray, labels: np.ndarray, ignore: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What a perfect DCME network outputs: (dense (3, H, W), class probabilities (n + 1, H/16, W/16))."""
    del ignore  # the perfect output has no ignored pixels
    return ideal_dcme_output(instances, labels, CLASSES)


def test_a_perfect_vector_field_decodes_to_the_ground_truth() -> None:
    """Separate objects come back exactly; an object split in two by an occluder keeps one centre of mass and
    comes back as one instance (the encoding's point), with the class of the block holding its centre."""
    objects = [("car", [(20, 100, 140, 180)]), ("person", [(200, 60, 230, 200)]),
               ("bus", [(300, 40, 360, 220), (420, 40, 480, 220)]),  # split by the truck drawn between the parts
               ("truck", [(360, 150, 420, 220)])]
    instances, labels, ignore = labelled(objects)
    dense, probs = perfect_output(instances, labels, ignore)
    for decoded in (decode_dcme(dense, probs), decode_dcme_torch(torch.from_numpy(dense), torch.from_numpy(probs))):
        assert len(decoded) == 4
        for k in range(1, 5):
            mask = instances == k
            ids = np.unique(decoded.id_image[mask])
            assert len(ids) == 1 and ids[0] > 0, (k, ids)
            assert np.array_equal(decoded.id_image == ids[0], mask), k
            assert CLASSES[decoded.classes[ids[0] - 1]] == objects[k - 1][0]
        assert np.all(decoded.scores > 0.9)


def test_a_big_object_whose_votes_split_comes_back_whole() -> None:
    """Step 4b: a bus whose left half votes 12 px left of its centre of mass and right half 12 px right (two vote
    peaks, as a big object's scattered votes make) is two instances without fragment joining and one with it;
    the car touching it and the person stay whole and apart (whole objects have no offset), on NumPy and torch."""
    objects = [("bus", [(40, 60, 280, 160)]), ("car", [(280, 90, 400, 160)]), ("person", [(440, 40, 470, 140)])]
    instances, labels, ignore = labelled(objects)
    dense, probs = perfect_output(instances, labels, ignore)
    bus = instances == 1
    centre_x = 160.0  # the bus's centre of mass: x in [40, 280)
    cols = np.broadcast_to(np.arange(dense.shape[2]) + 0.5, bus.shape)
    dense[0][bus] = np.where(cols[bus] < centre_x, centre_x - 12, centre_x + 12) - cols[bus]
    split = decode_dcme(dense, probs, VotingParams(fragment_offset=0.0))
    assert len(np.unique(split.id_image[bus])) == 2
    params = VotingParams(fragment_offset=0.3)
    for decoded in (decode_dcme(dense, probs, params),
                    decode_dcme_torch(torch.from_numpy(dense), torch.from_numpy(probs), params)):
        assert len(decoded) == 3
        for k in range(1, 4):
            ids = np.unique(decoded.id_image[instances == k])
            assert len(ids) == 1 and ids[0] > 0, (k, ids)
            assert np.array_equal(decoded.id_image == ids[0], instances == k), k
            assert CLASSES[decoded.classes[ids[0] - 1]] == objects[k - 1][0]


def test_join_fragments_needs_an_offset_and_a_union_that_halves_it() -> None:
    """join_fragments on the sums of two halves of a 20 x 10 bar: halves that vote for the bar's centre join; the
    same halves voting for their own centres (two whole objects) do not; a fragment whose vote target has no group
    within reach stays alone; fragment_offset 0 joins nothing."""
    sizes = np.array([100.0, 100.0])
    pixel_sums = np.array([[5.0, 5.0], [15.0, 5.0]]) * 100  # left half centred at (5, 5), right at (15, 5)
    centre = np.array([[10.0, 5.0], [10.0, 5.0]]) * 100
    assert list(join_fragments(sizes, pixel_sums, centre, 0.3)) in ([1, 1], [0, 0])
    assert list(join_fragments(sizes, pixel_sums, pixel_sums, 0.3)) == [0, 1]
    far = np.array([[500.0, 500.0], [500.0, 500.0]]) * 100
    assert list(join_fragments(sizes, pixel_sums, far, 0.3)) == [0, 1]
    assert list(join_fragments(sizes, pixel_sums, centre, 0.0)) == [0, 1]


def test_block_classes_follow_the_priority_list() -> None:
    """A 16 x 16 block with pixels of several classes takes the rarest (train before car, rider before person);
    blocks with only ignored pixels are ignored; Eq. 2: pixel (x, y) is in block (x // 16, y // 16)."""
    labels = np.zeros((32, 48), np.int64)
    labels[0:16, 0:10] = CLASSES.index("car") + 1
    labels[5, 15] = CLASSES.index("train") + 1  # one train pixel in block (0, 0)
    labels[0:16, 16:32] = CLASSES.index("person") + 1
    labels[20, 20] = CLASSES.index("rider") + 1  # block (1, 1)
    ignore = np.zeros_like(labels, bool)
    ignore[16:32, 32:48] = True
    grid = block_classes(labels, ignore, CLASSES)
    assert grid.shape == (2, 3)
    assert grid[0, 0] == CLASSES.index("train") + 1
    assert grid[0, 1] == CLASSES.index("person") + 1
    assert grid[1, 1] == CLASSES.index("rider") + 1
    assert grid[1, 0] == 0 and grid[0, 2] == 0 and grid[1, 2] == IGNORE_BLOCK
    with pytest.raises(ValueError, match="multiple of the grid"):
        block_classes(labels[:20], ignore[:20], CLASSES)


def test_vector_loss_reports_the_raw_error_and_clips_the_gradient() -> None:
    """Eq. 4-6: the loss is sum(e^2) / (2N) over the supervised outputs, unclipped; each output's gradient is
    f(e) / N with f the translated logistic (|f| < A/2), its own error / N without clipping, and the mean error
    for all with the shared (Caffe) error."""
    prediction = torch.tensor([[[[0.0, 10.0], [-30.0, 5.0]], [[1.0, 0.5], [100.0, -2.0]]]], requires_grad=True)
    target = torch.zeros_like(prediction)
    mask = torch.tensor([[[[1.0, 1.0], [1.0, 0.0]]]])
    error = prediction.detach() * mask
    n = 6  # 3 supervised pixels x 2 channels
    loss = vector_loss(prediction, target, mask, amplitude=4.0, clip=True)
    assert loss.item() == pytest.approx(float((error ** 2).sum()) / (2 * n))
    loss.backward()
    expected = translated_logistic(error, 4.0) * mask / n
    assert torch.allclose(prediction.grad, expected)
    assert prediction.grad.abs().max() <= 2.0 / n and prediction.grad[0, 1, 1, 0] > 0  # 100 px error: bound
    assert prediction.grad[0, :, 1, 1].abs().sum() == 0  # unsupervised pixel
    prediction.grad = None
    vector_loss(prediction, target, mask, clip=False).backward()
    assert torch.allclose(prediction.grad, error / n)
    prediction.grad = None
    vector_loss(prediction, target, mask, clip=False, independent=False).backward()
    assert torch.allclose(prediction.grad, (error.sum() / n) * mask.expand_as(error) / n)
    assert translated_logistic(torch.tensor(0.01), 4.0).item() == pytest.approx(0.01, rel=1e-3)  # slope 1 at 0


def test_network_shapes_onnx_parity_and_segmenter(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Dcme().eval()
    x = torch.rand(1, 3, 128, 256)
    with torch.no_grad():
        dense, classes = model(x)
        deployed = DcmeInference(model)(x)
    assert dense.shape == (1, 3, 128, 256) and classes.shape == (1, len(CLASSES) + 1, 8, 16)
    assert torch.allclose(deployed[1].sum(1), torch.ones(1, 8, 16), atol=1e-5)
    assert deployed[0][:, 2].min() >= 0 and deployed[0][:, 2].max() <= 1
    path = dcme.export_onnx(model, tmp_path / "dcme.onnx", height=128, width=256)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for height, width in ((128, 256), (256, 384)):
        image = torch.rand(1, 3, height, width)
        with torch.no_grad():
            want = DcmeInference(model)(image)
        got = session.run(None, {"image": image.numpy()})
        for w, g in zip(want, got, strict=True):
            np.testing.assert_allclose(g, w.numpy(), atol=2e-3, rtol=1e-3)
    segmenter = Segmenter(DcmeAdapter(model.config.to_dict()), TorchBackend(DcmeInference(model), threads=1),
                          score_threshold=0.0)
    result = segmenter(np.zeros((100, 200, 3), np.uint8))  # rounded to multiples of 16 and back
    assert result.instances.id_image.shape == (100, 200)
    with pytest.raises(ValueError, match="multiples of 16"):
        Segmenter(DcmeAdapter(model.config.to_dict()), TorchBackend(DcmeInference(model)), input_size=(100, 64))
    with pytest.raises(ValueError, match="expected an"):
        segmenter(np.zeros((0, 0, 3), np.uint8))
    with pytest.raises(ModelFileError):
        create_segmenter("dcme", model_file=tmp_path / "missing.onnx")


def test_loss_falls_on_a_fixed_batch(synthetic_tree: Path) -> None:
    torch.manual_seed(0)
    samples = load_split(synthetic_tree, "train", CLASSES)
    rng = np.random.default_rng(0)
    images, targets = dcme.make_batch([object_centered_crop(samples[i % len(samples)], 128, 256, rng)
                                       for i in range(2)], CLASSES)
    model = Dcme()
    loss_fn = DcmeLoss(model.config.vector_scale)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    parts = []
    for _ in range(12):
        loss, part = loss_fn(model(images), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        parts.append(part)
    for name in ("vectors", "foreground", "classes"):
        first, last = np.mean([p[name] for p in parts[:3]]), np.mean([p[name] for p in parts[-3:]])
        assert last < 0.9 * first, (name, [p[name] for p in parts])


SMALL = ["--steps-per-epoch", "2", "--batch", "2", "--crop", "128", "256", "--progress-every", "0"]


@pytest.mark.slow
def test_training_resumes_ablations_train_and_oracles_evaluate(synthetic_tree: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    dcme.main(["train", "--data", str(synthetic_tree), "--out", str(run), *SMALL, "--keep-every", "1",
               "--epochs", "1"])
    dcme.main(["train", "--data", str(synthetic_tree), "--out", str(run), *SMALL, "--keep-every", "1",
               "--epochs", "2", "--resume"])
    assert "resumed" in capsys.readouterr().out
    history = json.loads((run / "history.json").read_text())
    assert [e["epoch"] for e in history["history"]] == [1, 2]
    assert set(history["history"][0]) >= {"vectors", "foreground", "classes"}
    for flags, key, value in ((["--no-clip"], "clip", False), (["--shared-error"], "independent", False),
                              (["--amplitude", "2"], "amplitude", 2.0)):
        out = tmp_path / flags[0].strip("-")
        dcme.main(["train", "--data", str(synthetic_tree), "--out", str(out), *SMALL, "--epochs", "1", *flags])
        checkpoint = torch.load(out / "last.pt", weights_only=False)
        assert checkpoint["loss_config"][key] == value and np.isfinite(checkpoint["state"]["history"][0]["loss"])
    result = dcme.main(["evaluate", "--data", str(synthetic_tree), "--run", str(run), "--limit", "2"])
    assert set(result["last.pt"]) >= {"ap", "ap50", "per_class"}
    instance_oracle = dcme.main(["evaluate", "--data", str(synthetic_tree), "--run", str(run), "--limit", "2",
                                 "--oracle", "instances"])
    class_oracle = dcme.main(["evaluate", "--data", str(synthetic_tree), "--run", str(run), "--limit", "2",
                              "--oracle", "classes"])
    # the instance oracle has perfect masks: its AP is bounded only by the untrained encoder's classes
    assert 0.0 <= class_oracle["ap"] <= 1.0 and 0.0 <= instance_oracle["ap"] <= 1.0
    assert (run / "oracle_instances_last.json").is_file() and (run / "oracle_classes_last.json").is_file()
    onnx_path = dcme.main(["export", "--run", str(run), "--out", str(tmp_path / "models" / "dcme.onnx")])
    manifest = json.loads(onnx_path.with_suffix(".json").read_text())
    assert manifest["model"] == "dcme" and set(manifest["oracles"]) == {"instances", "classes"}
    segmenter = create_segmenter("dcme", model_file=onnx_path, threads=1, score_threshold=0.0)
    assert segmenter(cv2.imread(str(next(synthetic_tree.rglob("*_leftImg8bit.png"))))[..., ::-1].copy()
                     ).instances.id_image.shape == (256, 512)
    # fine-tuning a shipped model (float16 weights, no optimizer state, no run folder): --init, and the export
    # carries the learning curve and training of the stages it continued from (a run folder or a manifest)
    finetune = tmp_path / "finetune"
    shipped = onnx_path.with_suffix(".pt")
    dcme.main(["train", "--data", str(synthetic_tree), "--out", str(finetune), *SMALL, "--epochs", "1",
               "--init", str(shipped)])
    assert f"initialised from {shipped}" in capsys.readouterr().out
    assert json.loads((finetune / "history.json").read_text())["initialised_from"]["epoch"] == 2
    dcme.main(["train", "--data", str(synthetic_tree), "--out", str(finetune), *SMALL, "--epochs", "2",
               "--init", str(shipped), "--resume"])
    assert "resumed" in capsys.readouterr().out  # --resume with a last.pt wins over --init
    onnx_path = dcme.main(["export", "--run", str(finetune), "--out", str(tmp_path / "ft" / "dcme.onnx"),
                           "--stages", str(run), str(onnx_path.with_suffix(".json"))])
    manifest = json.loads(onnx_path.with_suffix(".json").read_text())
    assert "run/last.pt" in manifest["learning_curve"] and "dcme/last.pt" in manifest["learning_curve"]
    assert manifest["earlier_stages"]["run/training"]["epochs"] == 2
    assert manifest["earlier_stages"]["dcme/training"]["epochs"] == 2
    with pytest.raises(SystemExit, match="not a checkpoint"):
        dcme.main(["train", "--data", str(synthetic_tree), "--out", str(tmp_path / "bad"), *SMALL, "--epochs", "1",
                   "--init", str(onnx_path.with_suffix(".json"))])


def test_instance_oracle_keeps_the_ground_truth_masks(synthetic_tree: Path) -> None:
    """The instance oracle (Table II) scores the ground-truth masks, each classified by the encoder's block holding
    its centre of mass (Eq. 2): fed the ground truth's own block classes, every mask is the truth's and every class
    is the class of that block (rarer classes win shared blocks, so it is not always the object's own)."""
    sample = next(iter(CityscapesDataset(synthetic_tree, "val")))
    instances, labels, ignore = instance_targets(sample.instance_ids, CLASSES)
    targets = dcme_targets(instances, labels.astype(np.int64), ignore, CLASSES)
    _, probs = perfect_output(instances, labels.astype(np.int64), ignore)
    oracle = dcme.oracle_instances("instances", None, probs, sample.instance_ids, CLASSES, (1.0, 1.0))
    truth, truth_classes, centres = dcme.ground_truth_instances(sample.instance_ids, CLASSES)
    assert len(oracle) == len(truth_classes) >= 3
    assert np.array_equal(oracle.id_image, truth.astype(np.uint16))
    block = targets.grid[(centres[:, 1] // 16).astype(int), (centres[:, 0] // 16).astype(int)]
    on_objects = (block > 0) & (block != IGNORE_BLOCK)
    assert on_objects.any()
    assert np.array_equal(oracle.classes[on_objects], block[on_objects] - 1)
    assert np.mean(oracle.classes == truth_classes) > 0.5
