"""Training inputs are checked before use (issue 33): a checkpoint that cannot be read stops --resume, --init and
evaluation with one line naming the file (status 2); a training sample whose image does not decode, or whose label
image is not the image's size, is named, or with --skip-bad left out and listed. Each case failed before: a 24-line
torch traceback naming no file, a FileNotFoundError for a file that exists, a misaligned label trained on silently."""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path

import cv2
import pytest
import torch

SMALL = ["--steps-per-epoch", "1", "--batch", "2", "--crop", "128", "256", "--progress-every", "0"]
MODELS = ("spatial_embeddings", "box2pix", "dcme")


@pytest.fixture
def tree(synthetic_tree: Path, tmp_path: Path) -> Path:
    """A copy of the session's synthetic tree (3 train images) that a test may damage."""
    return Path(shutil.copytree(synthetic_tree, tmp_path / "tree"))


def _train_files(tree: Path, kind: str) -> list[Path]:
    folder, suffix = ("leftImg8bit", "_leftImg8bit.png") if kind == "image" else ("gtFine", "_gtFine_instanceIds.png")
    return sorted((tree / folder / "train").glob(f"*/*{suffix}"))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _fails(model: str, argv: list[str], capsys: pytest.CaptureFixture) -> str:
    """Run `python -m training.<model> argv` in this process; it must end with status 2 and one line on stderr,
    which is returned."""
    with pytest.raises(SystemExit) as ended:
        importlib.import_module(f"training.{model}").main(argv)
    stderr = capsys.readouterr().err
    assert ended.value.code == 2, (ended.value.code, stderr)
    lines = [line for line in stderr.splitlines() if line.startswith(f"training.{model} {argv[0]}: ")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


@pytest.mark.parametrize("model", MODELS)
def test_a_truncated_checkpoint_is_named_by_resume_init_and_evaluation(model: str, tree: Path, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    run.mkdir()
    checkpoint = run / "last.pt"
    torch.save({"model": {"weight": torch.zeros(256, 256)}, "epoch": 1}, checkpoint)
    _truncate(checkpoint)
    train = ["train", "--data", str(tree), *SMALL, "--epochs", "1"]
    for argv, argument in ((["--out", str(run), "--resume"], "--resume"),
                           (["--out", str(tmp_path / "fresh"), "--init", str(checkpoint)], "--init")):
        line = _fails(model, [*train, *argv], capsys)
        assert f"{argument} {checkpoint}" in line and "truncated or damaged" in line, line
    line = _fails(model, ["evaluate", "--data", str(tree), "--run", str(run), "--checkpoint", "last.pt"], capsys)
    assert str(checkpoint) in line and "truncated or damaged" in line, line


def test_a_truncated_image_stops_training_naming_the_file(tree: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    image = _train_files(tree, "image")[1]
    _truncate(image)
    line = _fails("box2pix", ["train", "--data", str(tree), "--out", str(tmp_path / "run"), *SMALL], capsys)
    assert f"cannot decode image {image}" in line and "--skip-bad" in line, line


def test_a_label_image_of_another_size_stops_training_naming_both_files(tree: Path, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture) -> None:
    labels = _train_files(tree, "label")[0]
    ids = cv2.imread(str(labels), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(labels), cv2.resize(ids, (256, 128), interpolation=cv2.INTER_NEAREST))
    line = _fails("box2pix", ["train", "--data", str(tree), "--out", str(tmp_path / "run"), *SMALL], capsys)
    image = _train_files(tree, "image")[0]
    assert f"{labels} is 256x128, but its image {image} is 512x256" in line, line


def test_skip_bad_leaves_the_bad_samples_out_and_counts_them(tree: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    """The shared start of every training command (start_training) and its epoch loop (run_epochs, here with a
    one-parameter model: what is checked is the data and the summary, not a network)."""
    import argparse

    import numpy as np

    from training.common import add_common_train_arguments, run_epochs, start_training

    bad_image = _train_files(tree, "image")[1]
    _truncate(bad_image)
    labels = _train_files(tree, "label")[0]
    cv2.imwrite(str(labels), cv2.resize(cv2.imread(str(labels), cv2.IMREAD_UNCHANGED), (256, 128),
                                        interpolation=cv2.INTER_NEAREST))
    parser = argparse.ArgumentParser()
    add_common_train_arguments(parser, crop=(64, 64), epochs=1, lr=1e-3, keep_every=0, progress_every=0)
    args = parser.parse_args(["--data", str(tree), "--out", str(tmp_path / "run"), "--skip-bad"])
    out, _, sampler = start_training(args)
    assert len(sampler.samples) == 1
    output = capsys.readouterr()
    assert "skipped 2 bad training sample(s) of 3" in output.out
    assert output.err.count("skipped a bad sample:") == 2
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    state = {"epoch": 0, "history": [], "train_seconds": 0.0}
    run_epochs(args, out, optimizer, state, np.random.default_rng(0), 1, lambda: (0.0, {}), lambda: None,
               lambda: {"model": {"weight": weight}})
    skipped = json.loads((out / "history.json").read_text())["skipped_samples"]
    assert [s["sample"] for s in skipped] == [f"{p.parent.name}/{p.name.split('_gtFine')[0].split('_leftImg8bit')[0]}"
                                              for p in (labels, bad_image)]
    assert str(labels) in skipped[0]["reason"] and str(bad_image) in skipped[1]["reason"]


def test_a_full_disk_stops_training_naming_the_checkpoint_and_the_errno(tree: Path, tmp_path: Path) -> None:
    """A checkpoint that does not fit on the disk (an 8 MB tmpfs, tests/small_filesystems.py; last.pt is ~20 MB):
    one line naming last.pt and ENOSPC, status 2, no temporary file left. Before: torch's writer raised
    RuntimeError "unexpected pos ..." naming neither, and the command called it an internal error (status 1)."""
    import subprocess
    import sys

    from small_filesystems import SCRIPT as SMALL_FILESYSTEM
    from small_filesystems import small_filesystem_arguments

    disk, kept = tmp_path / "disk", tmp_path / "kept"
    result = subprocess.run([sys.executable, str(SMALL_FILESYSTEM), *small_filesystem_arguments(disk, 8 << 20, kept),
                             sys.executable, "-m", "training.spatial_embeddings", "train", "--data", str(tree),
                             "--out", str(disk / "run"), *SMALL, "--epochs", "1"],
                            capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("training.spatial_embeddings train: ")]
    assert lines == [f"training.spatial_embeddings train: [Errno 28 ENOSPC] No space left on device: "
                     f"{disk / 'run' / 'last.pt'}"], result.stderr
    left = sorted(p.name for p in (kept / "run").iterdir())  # run.json and TensorBoard's folder are written first
    assert "Traceback" not in result.stderr and [name for name in left if name not in ("run.json", "tensorboard")] == []


def test_images_without_instance_ids_are_left_out_with_a_warning(tree: Path, capsys: pytest.CaptureFixture) -> None:
    """An image whose instanceIds file is missing is no sample (as in Cityscapes' test split); loading the split
    for training says how many were left out and names the first (before: left out without a word)."""
    from instseg_core.base.classes import INSTANCE_CLASSES
    from instseg_core.data.instance_training import load_split

    for labels in _train_files(tree, "label")[:2]:
        labels.unlink()
    samples = load_split(tree, "train", INSTANCE_CLASSES)
    assert len(samples) == 1
    err = capsys.readouterr().err
    assert f"warning: 2 image(s) of split 'train' in {tree} have no gtFine instanceIds file and are left out " \
           f"(the first: {_train_files(tree, 'image')[0]})" in err, err
