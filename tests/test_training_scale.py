"""Training at scale (issue 32): the streamed dataset and its object index, bad files, device and precision flags,
torchrun with two processes (gloo on loopback) against one process, resume after a change of world size, memory
over a large split, and the docs' commands."""

from __future__ import annotations

import functools
import json
import os
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from instseg_core.base.classes import INSTANCE_CLASSES
from instseg_core.data.cityscapes import SampleError, write_sample
from instseg_core.data.instance_training import CropSampler, load_split
from instseg_core.data.streamed_dataset import INDEX_DIR, split_index, streamed_sampler

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
TORCHRUN = [PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1",
            "--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:0"]
LOOPBACK = {"GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": "127.0.0.1", "OMP_NUM_THREADS": "1"}


@pytest.fixture()
def tree(synthetic_tree: Path, tmp_path: Path) -> Path:
    """A private copy of the session's synthetic tree (train 3, val 3 images at 512x256), without the object index
    that earlier tests' training runs on the shared tree have cached in it (the tests here count what is reused)."""
    return Path(shutil.copytree(synthetic_tree, tmp_path / "tree", ignore=shutil.ignore_patterns(INDEX_DIR)))


def _images(root: Path, kind: str = "image") -> list[Path]:
    pattern = "leftImg8bit/train/*/*_leftImg8bit.png" if kind == "image" else "gtFine/train/*/*_instanceIds.png"
    return sorted(root.glob(pattern))


@pytest.mark.parametrize(("mode", "anywhere", "scale"), [("objects", 0.0, 1.0), ("balanced", 0.3, 0.5)])
def test_streamed_windows_are_the_in_memory_windows(tree: Path, mode: str, anywhere: float, scale: float) -> None:
    """Same generator, same windows: the sampler over the split on disk (object index) and over the split in memory
    (load_split) draw the same images, objects, offsets and flips."""
    memory = CropSampler(load_split(tree, "train", INSTANCE_CLASSES, scale=scale), mode, anywhere)
    index = split_index(tree, "train", INSTANCE_CLASSES, scale=scale)
    streamed = streamed_sampler(index, INSTANCE_CLASSES, mode, anywhere, scale)
    assert len(streamed.samples) == len(memory.samples) == 3
    assert {k: v.tolist() for k, v in streamed.objects_by_class.items()} == \
           {k: v.tolist() for k, v in memory.objects_by_class.items()}
    rng_memory, rng_streamed = np.random.default_rng(5), np.random.default_rng(5)
    for _ in range(8):
        a, b = memory.crop(64, 96, rng_memory), streamed.crop(64, 96, rng_streamed)
        for x, y in zip(a, b, strict=True):
            assert x.dtype == y.dtype and np.array_equal(x, y)


def test_the_object_index_is_cached_and_follows_the_files(tree: Path, tmp_path: Path) -> None:
    first = split_index(tree, "train", INSTANCE_CLASSES)
    assert first.reused == 0 and first.path is not None and first.path.parent == tree / INDEX_DIR
    assert sorted(p.name for p in first.path.parent.iterdir()) == [first.path.name]  # no temporary file left
    again = split_index(tree, "train", INSTANCE_CLASSES)
    assert again.reused == 3 and [c.tolist() for c in again.centers] == [c.tolist() for c in first.centers]
    # a relabelled image: its instanceIds file changes, its entry alone is rebuilt
    labels = _images(tree, "labels")[1]
    ids = cv2.imread(str(labels), cv2.IMREAD_UNCHANGED)
    ids[:] = 0
    cv2.imwrite(str(labels), ids)
    changed = split_index(tree, "train", INSTANCE_CLASSES)
    assert changed.reused == 2 and len(changed.centers[1]) == 0 and len(first.centers[1]) > 0
    # a removed image leaves the index
    _images(tree)[2].unlink()
    removed = split_index(tree, "train", INSTANCE_CLASSES)
    assert removed.reused == 2 and len(json.loads(removed.path.read_text())["images"]) == 2
    # another class list or scale is another index; a tree that cannot be written keeps it in the run folder
    os.chmod(tree / INDEX_DIR, 0o555)
    try:
        other = split_index(tree, "train", ("car",), fallback_dir=tmp_path / "run")
    finally:
        os.chmod(tree / INDEX_DIR, 0o755)
    if os.geteuid() != 0:  # root writes anyway
        assert other.path is not None and other.path.parent == tmp_path / "run"


def test_bad_files_are_named_and_skip_bad_goes_on(tree: Path) -> None:
    image = _images(tree)[0]
    image.write_bytes(image.read_bytes()[:1000])
    labels = _images(tree, "labels")[2]
    cv2.imwrite(str(labels), cv2.imread(str(labels), cv2.IMREAD_UNCHANGED)[:100, :200])
    with pytest.raises(SampleError, match=f"cannot decode image {image}"):
        split_index(tree, "train", INSTANCE_CLASSES)
    index = split_index(tree, "train", INSTANCE_CLASSES, skip_bad=True)
    assert len(index.samples) == 1
    reasons = [s["reason"] for s in index.skipped]
    assert str(image) in reasons[0] and f"{labels} is 200x100" in reasons[1]
    # remembered in the cache until the file changes: the second pass decodes nothing and still names them
    assert [s["reason"] for s in split_index(tree, "train", INSTANCE_CLASSES, skip_bad=True).skipped] == reasons


def _train(module: str, argv: list[str]) -> dict:
    import importlib

    return importlib.import_module(f"training.{module}").main(["train", *argv])


def _fails(module: str, argv: list[str], capsys: pytest.CaptureFixture, env: dict | None = None,
           monkeypatch: pytest.MonkeyPatch | None = None) -> str:
    if env and monkeypatch:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
    with pytest.raises(SystemExit) as ended:
        _train(module, argv)
    assert ended.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines and lines[-1].startswith(f"training.{module} train: "), lines
    return lines[-1]


TINY = ["--steps-per-epoch", "2", "--crop", "32", "64", "--progress-every", "1", "--keep-every", "0"]


def test_impossible_settings_are_clear_errors(tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    common = ["--data", str(tree), "--out", str(tmp_path / "run"), *TINY]
    if not torch.cuda.is_available():
        assert "--device cuda: torch sees no CUDA device" in _fails("dcme", [*common, "--device", "cuda"], capsys)
        assert "--sync-bn needs CUDA" in _fails("dcme", [*common, "--sync-bn"], capsys)
    assert "--window-seeds sequential draws every window from one generator in one process" in _fails(
        "dcme", [*common, "--window-seeds", "sequential", "--workers", "1"], capsys)
    for module, crop, multiple in (("spatial_embeddings", "36", 8), ("box2pix", "64", 128), ("dcme", "40", 16)):
        line = _fails(module, [*common, "--crop", crop, "64"], capsys)
        assert f"--crop {crop} 64: the " in line and f"multiples of {multiple}" in line
    # --init of another network, or of this network built otherwise: what it is and the option to add
    line = _fails("spatial_embeddings", [*common, "--init", str(REPO / "models" / "spatial_embeddings.pt")], capsys)
    assert "this checkpoint is a spatial_embeddings network with backbone espnetv2" in line
    assert line.endswith("add --backbone espnetv2")
    line = _fails("dcme", [*common, "--init", str(REPO / "models" / "box2pix.pt")], capsys)
    assert "models/box2pix.pt is a box2pix checkpoint, not a dcme one" in line
    # --eval-every needs a val split: said at start-up, before training, and no empty run folder is left
    val = sorted((tree / "leftImg8bit" / "val").rglob("*.png"))
    val[0].write_bytes(val[0].read_bytes()[:1000])
    assert f"cannot decode image {val[0]}" in _fails("dcme", [*common, "--eval-every", "1"], capsys)
    shutil.rmtree(tree / "leftImg8bit" / "val")
    assert "--eval-every 1 evaluates on the val split" in _fails("dcme", [*common, "--eval-every", "1"], capsys)
    assert not (tmp_path / "run").exists()
    line = _fails("dcme", [*common, "--batch", "3"], capsys, {"WORLD_SIZE": "2", "RANK": "0"}, monkeypatch)
    assert "--batch 3 is the global batch: it must be a positive multiple of the world size 2" in line
    monkeypatch.setenv("RANK", "1")  # the other ranks of a torchrun group end with the same status, quietly
    with pytest.raises(SystemExit) as ended:
        _train("dcme", [*common, "--batch", "3"])
    assert ended.value.code == 2 and capsys.readouterr().err == ""


def test_amp_on_cpu_trains_in_bfloat16_and_evaluates(tree: Path, tmp_path: Path) -> None:
    """--amp on a CPU: bfloat16 autocast, finite losses, recorded in run.json (no GradScaler: bfloat16 has
    float32's range); --eval-every: the official evaluator on val, best.pt, TensorBoard scalars and overlays."""
    out = tmp_path / "run"
    bad = sorted((tree / "leftImg8bit" / "val").rglob("*.png"))[0]  # --skip-bad: left out of the evaluations
    bad.write_bytes(bad.read_bytes()[:1000])
    state = _train("dcme", ["--data", str(tree), "--out", str(out), "--batch", "2", "--epochs", "1", "--amp",
                            "--no-channels-last", "--eval-every", "1", "--eval-limit", "2", "--skip-bad", *TINY])
    skipped = json.loads((out / "history.json").read_text())["skipped_samples"]
    assert [(s["split"], str(bad) in s["reason"]) for s in skipped] == [("val", True)]
    assert np.isfinite(state["history"][0]["loss"])
    run = json.loads((out / "run.json").read_text())
    assert run["amp"] == "bfloat16" and run["grad_scaler"] is False and run["world_size"] == 1
    assert run["data"]["images"] == 3 and run["data"]["in_memory"] is False and run["commit"]
    assert json.loads((out / "history.json").read_text())["config"]["window_seeds"] == "sequential"  # as before
    assert state["best"]["epoch"] == 1 and (out / "best.pt").is_file()
    assert state["history"][0]["val"]["ap50"] == state["best"]["ap50"]
    result = json.loads((out / "evaluation_best.json").read_text())["best.pt"]
    assert result["images"] == 1 and (out / "evaluation" / "epoch_001" / "resultInstanceLevelSemanticLabeling.json"
                                      ).is_file()
    events = b"".join(p.read_bytes() for p in (out / "tensorboard").glob("events.out.tfevents.*"))
    for tag in (b"loss/total", b"lr", b"val/AP50", b"val_overlay/0"):
        assert tag in events, tag
    assert len((out / "steps.jsonl").read_text().splitlines()) == 2
    # last.pt is written after the epoch's evaluation: a resumed launch keeps epoch 1's score and best
    saved = torch.load(out / "last.pt", weights_only=False)["state"]
    assert saved["best"] == state["best"] and saved["history"][0]["val"] == state["history"][0]["val"]
    # (--resume loads this state: a worse later epoch no longer replaces best.pt, history keeps the score)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("module", ["spatial_embeddings", "box2pix", "dcme"])
def test_amp_on_cuda(module: str, tree: Path, tmp_path: Path) -> None:
    crop = ["--crop", "128", "256"]
    state = _train(module, ["--data", str(tree), "--out", str(tmp_path / "run"), "--batch", "2", "--epochs", "1",
                            "--device", "cuda", "--amp", "--steps-per-epoch", "2", *crop])
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert np.isfinite(state["history"][0]["loss"]) and run["amp"] in ("bfloat16", "float16")
    assert run["grad_scaler"] == (run["amp"] == "float16")


# One torchrun with two processes trains the three models in turn (one process group, one start-up).
DRIVER = textwrap.dedent("""
    import json, sys
    from training import box2pix, dcme, spatial_embeddings
    runs = json.loads(sys.argv[1])
    for module, argv in runs:
        {"spatial_embeddings": spatial_embeddings, "box2pix": box2pix, "dcme": dcme}[module].main(argv)
""")

# Spatial Embeddings with batch norm frozen and no dropout: its loss is a mean over images, so a 2-process step
# (2 windows each, gradients averaged) is the 1-process step over the 4 windows, to float precision.
SE_EQUAL = ["--batch", "4", "--crop", "32", "64", "--steps-per-epoch", "3", "--freeze-bn", "--dropout-low", "0",
            "--dropout-high", "0", "--progress-every", "0", "--keep-every", "0", "--threads", "1"]
MODELS = {
    "spatial_embeddings": SE_EQUAL,
    "box2pix": ["--batch", "4", "--crop", "128", "128", "--steps-per-epoch", "2", "--progress-every", "0",
                "--threads", "1"],
    "dcme": ["--batch", "4", "--crop", "32", "64", "--steps-per-epoch", "2", "--progress-every", "0", "--threads", "1",
             "--workers", "1"],
}


@pytest.fixture(scope="module")
def two_process_runs(synthetic_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`torchrun --nproc_per_node 2` (c10d rendezvous on 127.0.0.1, gloo on loopback): one epoch of each model."""
    base = tmp_path_factory.mktemp("torchrun")
    data = Path(shutil.copytree(synthetic_tree, base / "tree"))
    runs = {module: base / module for module in MODELS}
    plan = [(module, ["train", "--data", str(data), "--out", str(runs[module]), "--epochs", "1", *argv])
            for module, argv in MODELS.items()]
    driver = base / "driver.py"
    driver.write_text(DRIVER)
    result = subprocess.run([*TORCHRUN, str(driver), json.dumps(plan)], capture_output=True, text=True, timeout=300,
                            cwd=REPO, env={**os.environ, **LOOPBACK})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("training images") == 3, result.stdout  # rank 0 alone prints
    return {"data": data, **runs}


def test_two_processes_take_the_same_steps_as_one(two_process_runs: dict[str, Path], tmp_path: Path) -> None:
    _train("spatial_embeddings", ["--data", str(two_process_runs["data"]), "--out", str(tmp_path / "one"),
                                  "--epochs", "1", "--window-seeds", "per-window", *SE_EQUAL])
    configs = [json.loads((run / "history.json").read_text())["config"]
               for run in (two_process_runs["spatial_embeddings"], tmp_path / "one")]
    assert [c["window_seeds"] for c in configs] == ["per-window", "per-window"]
    steps = [[json.loads(line)["loss"] for line in (run / "steps.jsonl").read_text().splitlines()]
             for run in (two_process_runs["spatial_embeddings"], tmp_path / "one")]
    assert len(steps[0]) == len(steps[1]) == 3
    np.testing.assert_allclose(steps[0], steps[1], rtol=1e-4)
    assert len(set(steps[1])) == 3  # the steps differ: the network learns and the windows change


@pytest.mark.parametrize("module", list(MODELS))
def test_a_two_process_run_resumes_with_one_process(module: str, two_process_runs: dict[str, Path]) -> None:
    run = two_process_runs[module]
    first = json.loads((run / "run.json").read_text())
    assert first["world_size"] == 2 and first["backend"] == "gloo" and len(first["devices"]) == 2
    assert first["global_batch"] == 4 and first["batch_per_process"] == 2
    assert first["launcher"]["torchrun"] and first["launcher"]["processes_per_node"] == 2
    assert sorted(p.name for p in run.iterdir() if p.suffix == ".pt") == ["last.pt"]  # written by rank 0 alone
    state = _train(module, ["--data", str(two_process_runs["data"]), "--out", str(run), "--epochs", "2",
                            "--resume", *MODELS[module]])
    assert [e["epoch"] for e in state["history"]] == [1, 2]
    assert [e["world_size"] for e in state["history"]] == [2, 1]
    # --window-seeds auto keeps the run's per-window drawing (one process alone would draw sequentially)
    assert json.loads((run / "history.json").read_text())["config"]["window_seeds"] == "per-window"
    launches = json.loads((run / "run.json").read_text())["launches"]
    assert [(launch["world_size"], launch["after_epoch"]) for launch in launches] == [(2, 0), (1, 1)]
    assert launches[1]["launcher"] is None


def _write_split(root: Path, count: int, template: dict[str, Path]) -> None:
    """`count` annotated images: copies of one written sample under new names."""
    for k in range(count):
        stem = f"big_000000_{k:06d}"
        for kind, source in template.items():
            folder = "leftImg8bit" if kind == "image" else "gtFine"
            suffix = source.name.split("_", 3)[-1]
            target = root / folder / "train" / "big" / f"{stem}_{suffix}"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)


def test_memory_does_not_grow_with_the_number_of_images(tmp_path: Path) -> None:
    """Peak RSS of a training process over 400 images of 384x256 is within 150 MB of its peak over 40 (measured:
    441 and 441 MB; with --in-memory 475 and 910 MB). Caught the index keeping every decoded image once."""
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.integers(0, 256, (256, 384, 3), dtype=np.uint8), (0, 0), 8)
    objects = [("car", np.array([[40, 120], [200, 120], [200, 200], [40, 200]])),
               ("person", np.array([[300, 60], [340, 60], [340, 220], [300, 220]]))]
    template = write_sample(tmp_path / "template", "train", "big", "big_000000_999999", image, objects)
    template = {kind: template[kind] for kind in ("image", "instance_ids")}
    for count in (40, 400):
        _write_split(tmp_path / f"split{count}", count, template)
    # one process trains on 40 images, then on 400: the peak after the second run is the first's plus any growth
    code = textwrap.dedent("""
        import json, resource, sys
        from training import dcme
        for root in sys.argv[1:]:
            dcme.main(["train", "--data", root, "--out", root + "/run", "--epochs", "1", "--steps-per-epoch", "2",
                       "--batch", "2", "--crop", "32", "64", "--progress-every", "0", "--no-tensorboard"])
            print("peak", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)
    """)
    result = subprocess.run([PYTHON, "-c", code, str(tmp_path / "split40"), str(tmp_path / "split400")],
                            capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    peaks = dict(zip((40, 400), (int(line.split()[1]) / 1024 for line in result.stdout.splitlines()
                                 if line.startswith("peak")), strict=True))  # MB
    for count in (40, 400):
        assert json.loads((tmp_path / f"split{count}" / "run" / "run.json").read_text())["data"]["images"] == count
    assert peaks[400] - peaks[40] < 150, peaks


def _doc_commands() -> list[tuple[str, list[str]]]:
    """(module, argv) of every `python -m training.<model> ...` and `torchrun ... -m training.<model> ...` line of
    docs/training.md's bash blocks (continuation lines joined, environment placeholders kept as text)."""
    text = (REPO / "docs" / "training.md").read_text()
    blocks = [block.split("```", 1)[0] for block in text.split("```bash\n")[1:]]
    commands = []
    for line in "\n".join(blocks).replace("\\\n", " ").splitlines():
        words = shlex.split(line.strip(), comments=True) if "-m training." in line else []
        for i, word in enumerate(words[:-1]):
            if word == "-m" and words[i + 1].startswith("training."):
                module = words[i + 1].removeprefix("training.")
                commands.append((module, words[i + 2:]))
                break
    return commands


def test_the_docs_commands_parse() -> None:
    import importlib

    commands = _doc_commands()
    assert {"spatial_embeddings", "box2pix", "dcme", "studio_finetune"} <= {module for module, _ in commands}
    for module, argv in commands:
        if module == "studio_finetune":  # its own options, the rest goes to the model's train
            from training.studio_finetune import build_parser

            args, extra = build_parser().parse_known_args(argv)
            module, argv = Path(args.init).stem, ["train", "--data", args.export, "--out", args.out, *extra]
        args = importlib.import_module(f"training.{module}").build_parser().parse_args(argv)
        assert args.command == "train" and args.func is not None, (module, argv)


def _studio_export(root: Path, frames: int = 5) -> Path:
    """A studio export written by the studio's own writer (instseg_core.data.label_export.write_label_tree): frames
    of a street-grey scene with two cars (boxes) moving right."""
    from instseg_core.data.label_export import LabelledFrame, LabelledObject, write_label_tree

    rng = np.random.default_rng(3)
    labelled = []
    for index in range(frames):
        rgb = np.full((128, 256, 3), 110, np.uint8)
        rgb[:40] = (150, 180, 220)
        objects = []
        for k, (y0, y1, colour) in enumerate(((60, 100, (200, 30, 30)), (70, 120, (30, 30, 200)))):
            x0 = 20 + 100 * k + 8 * index
            rgb[y0:y1, x0:x0 + 60] = colour
            polygon = np.array([[x0, y0], [x0 + 59, y0], [x0 + 59, y1 - 1], [x0, y1 - 1]])
            extreme = np.array([[x0, y0 + 20], [x0 + 30, y0], [x0 + 59, y0 + 20], [x0 + 30, y1 - 1]], float)
            objects.append(LabelledObject("car", polygon, extreme))
        rgb = np.clip(rgb + rng.normal(0, 4, rgb.shape), 0, 255).astype(np.uint8)
        labelled.append(LabelledFrame(index, index * 100_000_000, "camera", rgb, objects))
    write_label_tree(root, labelled, city="drive-0001-camera")
    return root


def test_a_studio_export_becomes_a_model_the_node_loads(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """training.studio_finetune: hold-out split, fine-tune of the shipped DCME, official evaluation, ONNX + int8
    with manifests, the model_file:= line; then the runtime (what the node builds) segments a frame with it."""
    from instseg_core.runtime.segmenter import create_segmenter
    from training import studio_finetune

    export = _studio_export(tmp_path / "export")
    summary = studio_finetune.main(["--export", str(export), "--init", str(REPO / "models" / "dcme.pt"), "--out",
                                    str(tmp_path / "run"), "--epochs", "1", "--steps-per-epoch", "2", "--batch", "2",
                                    "--crop", "64", "128", "--lr", "1e-5", "--progress-every", "0",
                                    "--calibration-frames", "2", "--no-tensorboard"])
    assert summary["split"]["train"] == 4 and summary["split"]["val"] == 1  # the last frame is held out
    assert summary["split"]["held_out"] == ["drive-0001-camera/drive-0001-camera_000000_000004"]
    assert 0.0 <= summary["evaluation"]["ap50"] <= 1.0 and summary["evaluation"]["images"] == 1
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("model_file:=")]
    assert lines == [f"model_file:={summary['int8_onnx']}"]
    int8 = Path(summary["int8_onnx"])
    manifest = json.loads(int8.with_suffix(".json").read_text())
    assert manifest["precision"] == "int8" and manifest["quantisation"]["calibration"]["images"] == 2
    assert json.loads(Path(summary["onnx"]).with_suffix(".json").read_text())["training"]["config"]["init"] == \
           str(REPO / "models" / "dcme.pt")
    segmenter = create_segmenter("dcme", model_file=int8, score_threshold=0.0)
    frame = cv2.imread(str(next((export / "leftImg8bit").rglob("*_000004_leftImg8bit.png"))))[..., ::-1]
    result = segmenter(np.ascontiguousarray(frame))
    assert result.instances.id_image.shape == frame.shape[:2]
    assert set(segmenter.adapter.classes) == set(json.loads(int8.with_suffix(".json").read_text())
                                                 ["model_config"]["classes"])


def test_per_window_seeds_do_not_depend_on_workers_or_ranks(tree: Path) -> None:
    """The windows of a global batch are the same drawn by one process without workers, by a DataLoader worker,
    or split between two ranks (GlobalBatchSampler)."""
    from instseg_core.data.streamed_dataset import GlobalBatchSampler, WindowDataset
    from training.loop import make_loader
    from training.spatial_embeddings import _collate

    index = split_index(tree, "train", INSTANCE_CLASSES)
    dataset = WindowDataset(streamed_sampler(index, INSTANCE_CLASSES, "balanced", 0.2), (32, 64), seed=3)
    batches = {}
    for workers in (0, 1):
        sampler = GlobalBatchSampler(4, 2)
        sampler.set_epoch(2)
        batches[workers] = list(make_loader(dataset, sampler, _collate, workers, torch.device("cpu")))
    ranks = []
    for rank in (0, 1):
        sampler = GlobalBatchSampler(4, 2, rank, 2)
        sampler.set_epoch(2)
        ranks.append(list(make_loader(dataset, sampler, _collate, 0, torch.device("cpu"))))
    for step in range(2):
        images = [batches[0][step][0], batches[1][step][0], torch.cat([ranks[0][step][0], ranks[1][step][0]])]
        assert torch.equal(images[0], images[1]) and torch.equal(images[0], images[2])
    assert not torch.equal(batches[0][0][0], batches[0][1][0])


def test_studio_finetune_checks_the_export_frames_first(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A bad frame of the export stops the command before training, naming the export's own file (not RUN/data's
    link); with --skip-bad it is left out of RUN/data (training, held-out evaluation and int8 calibration never
    see it) and listed. A missing --init is 'no such file'."""
    from training import studio_finetune

    export = _studio_export(tmp_path / "export", frames=3)
    bad = sorted((export / "leftImg8bit" / "train").rglob("*.png"))[1]
    bad.write_bytes(bad.read_bytes()[:500])
    data = tmp_path / "run" / "data"
    with pytest.raises(SampleError, match=f"cannot decode image {bad}"):
        studio_finetune.hold_out(export, data, 0.2, ("car",))
    split = studio_finetune.hold_out(export, data, 0.2, ("car",), skip_bad=True)
    assert (split["train"], split["val"], split["own_val"]) == (1, 1, False)
    assert [str(bad) in s["reason"] for s in split["skipped"]] == [True]
    assert len(list((data / "leftImg8bit").rglob("*.png"))) == 2
    with pytest.raises(SystemExit) as ended:
        studio_finetune.main(["--export", str(export), "--init", str(tmp_path / "nope.pt"), "--out", str(tmp_path)])
    assert ended.value.code == 2 and "nope.pt: no such file" in capsys.readouterr().err


def test_a_bad_image_met_in_a_dataloader_worker_is_one_line(tree: Path) -> None:
    """An image damaged after it was indexed, met by a DataLoader worker: the batch carries its one-line reason
    (the training loop raises it as a SampleError naming the file) instead of the worker's whole traceback; with
    skip_bad the window is drawn again and the reason is handed back to be counted."""
    from instseg_core.data.streamed_dataset import GlobalBatchSampler, WindowDataset, collate_checked
    from training.loop import make_loader
    from training.spatial_embeddings import _collate

    index = split_index(tree, "train", INSTANCE_CLASSES)
    bad = _images(tree)[0]
    bad.write_bytes(bad.read_bytes()[:1000])
    results = {}
    for skip_bad in (False, True):
        dataset = WindowDataset(streamed_sampler(index, INSTANCE_CLASSES), (32, 64), seed=1, skip_bad=skip_bad)
        sampler = GlobalBatchSampler(6, 1)
        results[skip_bad] = next(iter(make_loader(dataset, sampler, functools.partial(collate_checked, _collate), 1,
                                                  torch.device("cpu"))))
    batch, skipped, reason = results[False]
    assert batch is None and reason.startswith(f"cannot decode image {bad}") and "\n" not in reason
    batch, skipped, reason = results[True]
    assert reason is None and batch[0].shape[0] == 6 and skipped and all(str(bad) in s for s in skipped)


def test_data_defaults_to_cityscapes_dataset(monkeypatch: pytest.MonkeyPatch) -> None:
    """--data is $CITYSCAPES_DATASET when set (README: 'a path or CITYSCAPES_DATASET'), required otherwise."""
    from training import dcme

    monkeypatch.setenv("CITYSCAPES_DATASET", "/data/cityscapes")
    assert dcme.build_parser().parse_args(["train", "--out", "run"]).data == "/data/cityscapes"
    monkeypatch.delenv("CITYSCAPES_DATASET")
    with pytest.raises(SystemExit):
        dcme.build_parser().parse_args(["train", "--out", "run"])
