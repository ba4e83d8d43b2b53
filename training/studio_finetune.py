"""From a studio export to a model the segmentation node loads, in one command.

    python -m training.studio_finetune --export EXPORT --init models/spatial_embeddings.pt --out RUN
                                       [--model spatial_embeddings|box2pix|dcme] [--val-fraction 0.2]
                                       [--epochs 10 --steps-per-epoch 50 --batch 8 --crop 256 512 --lr 1e-4]
                                       [--device auto|cpu|cuda --amp --workers 2 ...] [--calibration-frames 16]

EXPORT is a Cityscapes-format tree written by the labelling studio or `instseg-label`
(instseg_core.data.label_export: leftImg8bit/ + gtFine/ of split train, frames of one or more cities). The command
1. holds out the last --val-fraction of each city's frames (consecutive frames look alike, so the held-out ones are
   a block at the end, not every fifth) as split val of RUN/data (links to the export's files; an export that has
   a val split keeps it);
2. fine-tunes the network of --init (a shipped models/<name>.pt or a run's checkpoint; its architecture and classes
   come from the checkpoint) with the shared training loop (training/loop.py: every train option, torchrun too);
3. evaluates last.pt on the held-out frames with the official evaluator, using the --init model's decoding
   parameters;
4. exports ONNX + .pt + JSON manifest (the model's `export`) into RUN/model/, derives the static int8 graph
   calibrated on the export's own training frames (training.derive_models.quantize_streaming_model) and scores
   it on the held-out frames too;
5. prints the line to give the node: `model_file:=RUN/model/<name>_int8.onnx` (the float graph on another line).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from instseg_core.base.atomic_files import write_text_atomically
from instseg_core.base.command_exit import InputError, add_debug_argument, debug_requested
from instseg_core.data.cityscapes import GT_SUFFIXES, IMAGE_SUFFIX, CityscapesDataset, SampleError
from training.common import load_checkpoint_file, run_on_rank

MODELS = ("spatial_embeddings", "box2pix", "dcme")
DECODING_KEY = {"spatial_embeddings": "clustering", "box2pix": "assignment", "dcme": "voting"}


def _link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() or target.is_symlink():
        target.unlink()
    try:
        os.symlink(source.resolve(), target)
    except OSError:  # a file system without symbolic links
        shutil.copyfile(source, target)


def usable_frames(export: Path, split: str, classes: tuple[str, ...], skip_bad: bool, index_dir: Path
                  ) -> tuple[list, list[dict]]:
    """The annotated frames of the export's `split` that decode and whose labels fit (checked through the object
    index the training builds anyway, cached in the export or in `index_dir`), and the bad ones ({"sample",
    "reason", "split"}): SampleError naming the export's own file for the first bad frame unless `skip_bad`."""
    from instseg_core.data.streamed_dataset import split_index

    try:
        index = split_index(export, split, classes, skip_bad=skip_bad, fallback_dir=index_dir)
    except SampleError as exc:
        raise SampleError(f"--export {export}: {exc}") from None
    except FileNotFoundError as exc:
        raise InputError(f"--export {export}: {exc}") from None
    return index.samples, [{**entry, "split": split} for entry in index.skipped]


def hold_out(export: Path, data: Path, fraction: float, classes: tuple[str, ...] | None = None,
             skip_bad: bool = False) -> dict:
    """RUN/data: the export's train frames split into train and val (the last `fraction` of each city's frames,
    at least one, leaving at least one for training); an export with its own val split keeps it. With `classes`,
    every frame is checked first (usable_frames: a bad one stops here, before training, naming the export's file;
    with `skip_bad` it is left out of RUN/data, so training, evaluation and int8 calibration never see it).
    Returns {"train": n, "val": m, "held_out": [names], "own_val": bool, "skipped": [bad frames]}."""
    if not list(CityscapesDataset(export, "train")):
        raise InputError(f"--export {export}: no annotated frames in split train")
    has_val = bool((export / "leftImg8bit" / "val").is_dir() and len(CityscapesDataset(export, "val")))
    skipped: list[dict] = []
    if classes is None:
        train = list(CityscapesDataset(export, "train"))
        val = list(CityscapesDataset(export, "val")) if has_val else []
    else:
        train, skipped = usable_frames(export, "train", classes, skip_bad, data.parent)
        val = []
        if has_val:
            val, bad_val = usable_frames(export, "val", classes, skip_bad, data.parent)
            skipped += bad_val
    cities: dict[str, list] = {}
    for sample in train:
        cities.setdefault(sample.city, []).append(sample)
    splits: dict[str, list] = {"train": [], "val": val}
    for samples in cities.values():
        count = 0 if has_val else min(len(samples) - 1, max(1, round(len(samples) * fraction)))
        splits["train"] += samples[:len(samples) - count]
        splits["val"] += samples[len(samples) - count:]
    if not splits["val"]:
        raise InputError(f"--export {export}: {len(train)} frame(s) leave none to hold out for validation; label at "
                         "least two frames")
    if data.exists():
        shutil.rmtree(data)
    for split, samples in splits.items():
        for sample in samples:
            _link(sample.paths["image"], data / "leftImg8bit" / split / sample.city / f"{sample.stem}{IMAGE_SUFFIX}")
            for kind, suffix in GT_SUFFIXES.items():
                if sample.paths[kind].is_file():
                    _link(sample.paths[kind], data / "gtFine" / split / sample.city / f"{sample.stem}{suffix}")
    return {"train": len(splits["train"]), "val": len(splits["val"]),
            "held_out": [f"{s.city}/{s.stem}" for s in splits["val"]], "own_val": has_val, "skipped": skipped}


def model_arguments(model: str, config: dict) -> list[str]:
    """Train arguments that rebuild the --init checkpoint's network: its classes (and for Spatial Embeddings its
    backbone, sigma channels, dropout and semantic-branch training)."""
    argv = ["--classes", *config["classes"]]
    if model == "spatial_embeddings":
        argv += ["--backbone", config.get("backbone", "erfnet"), "--n-sigma", str(config.get("n_sigma", 2)),
                 "--dropout-low", str(config.get("dropout_low", 0.03)),
                 "--dropout-high", str(config.get("dropout_high", 0.3))]
        if config.get("train_semantic"):
            argv.append("--train-semantic")
    return argv


def decoding_arguments(model: str, config: dict) -> list[str]:
    """The --init model's tuned decoding parameters (model_config.extra) as evaluate/export arguments."""
    argv: list[str] = []
    for key, value in config.get("extra", {}).get(DECODING_KEY[model], {}).items():
        flag = f"--{key.replace('_', '-')}"
        if isinstance(value, bool):
            argv += [flag] if value else []
        else:
            argv += [flag, str(value)]
    return argv


def finetune(args: argparse.Namespace, extra: list[str]) -> dict:
    """The whole command (module docstring); returns a summary (also written to RUN/finetune.json)."""
    from instseg_core.runtime.segmenter import create_segmenter
    from training.derive_models import quantize_streaming_model
    from training.evaluation import evaluate_network

    init = Path(args.init)
    if not init.is_file():
        raise InputError(f"--init {init}: no such file")
    model = args.model or (init.stem if init.stem in MODELS else "")
    if model not in MODELS:
        raise InputError(f"--init {init}: say which network it is with --model ({', '.join(MODELS)})")
    config = load_checkpoint_file(init, "--init").get("model_config")
    if not isinstance(config, dict) or "classes" not in config:
        raise InputError(f"--init {init}: a checkpoint without model_config (not a shipped or run checkpoint)")
    module = importlib.import_module(f"training.{model}")
    out = Path(args.out)
    data, run, model_dir = out / "data", out / "train", out / "model"
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:  # rank 0 makes the split, the others wait for it (the process group serves training too)
        import torch
        import torch.distributed as dist

        from training.loop import add_scale_arguments, start_process_group

        scale = argparse.ArgumentParser(add_help=False)
        add_scale_arguments(scale)  # the --device and --dist-timeout the model's train will get
        wanted, _ = scale.parse_known_args(extra)
        cuda = wanted.device == "cuda" or (wanted.device == "auto" and torch.cuda.is_available())
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        start_process_group(cuda, wanted.dist_timeout)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    failed: BaseException | None = None
    if main_rank:
        try:
            split = hold_out(Path(args.export), data, args.val_fraction, tuple(config["classes"]),
                             "--skip-bad" in extra)
        except Exception as exc:  # the other ranks must not wait for a split that never comes
            failed = exc
    if distributed:
        ready = [failed is None]
        dist.broadcast_object_list(ready, 0)
        if not ready[0] and not main_rank:
            raise InputError("rank 0 could not prepare RUN/data (its line says why)")
    if failed is not None:
        raise failed
    if not main_rank:
        split = {"train": len(CityscapesDataset(data, "train")), "val": len(CityscapesDataset(data, "val"))}
    else:
        if split["skipped"]:
            print(f"skipped {len(split['skipped'])} bad frame(s) of the export (--skip-bad; listed in "
                  "finetune.json)", flush=True)
        where = "the export's own val split" if split["own_val"] else \
            f"{args.val_fraction:.0%} of each city's last frames"
        print(f"{split['train']} training frames, {split['val']} held out for validation ({where})", flush=True)
    train_argv = ["train", "--data", str(data), "--out", str(run), "--init", str(init),
                  *model_arguments(model, config), *extra]
    module.main(train_argv)
    if int(os.environ.get("RANK", "0")) != 0:
        return {}  # under torchrun, rank 0 evaluates and exports
    decoding = decoding_arguments(model, config)
    evaluation = module.main(["evaluate", "--data", str(data), "--run", str(run), "--checkpoint", "last.pt",
                              "--threads", str(args.threads), *decoding])["last.pt"]
    onnx = module.main(["export", "--run", str(run), "--checkpoint", "last.pt", "--out",
                        str(model_dir / f"{model}.onnx"), *decoding, "--stages",
                        *([str(init.with_suffix(".json"))] if init.with_suffix(".json").is_file() else []),
                        "--data-note", f"studio export {Path(args.export).resolve()}: {split['train']} frames "
                                       f"trained, {split['val']} held out; fine-tuned from {init}"])
    # decode only the frames calibration takes (an export may hold thousands)
    train_frames = [s.image for s in list(CityscapesDataset(data, "train"))[:args.calibration_frames]]
    adapter = importlib.import_module("instseg_core.runtime.adapters").model_adapter(model)
    multiple = adapter.input_multiple
    frames = [_fit(frame, multiple) for frame in train_frames]
    int8 = model_dir / f"{model}_int8.onnx"
    quantize_streaming_model(model, Path(onnx), int8, frames=frames)
    segmenter = create_segmenter(model, model_file=int8, threads=args.threads, score_threshold=0.0)
    int8_evaluation = evaluate_network(segmenter, data, out / "evaluation_int8", multiple=multiple)
    summary = {"model": model, "init": str(init), "split": split, "evaluation": _scores(evaluation),
               "evaluation_int8": _scores(int8_evaluation), "onnx": str(Path(onnx).resolve()),
               "int8_onnx": str(int8.resolve()), "run": str(run.resolve())}
    write_text_atomically(out / "finetune.json", json.dumps(summary, indent=1))
    print(f"held-out frames: float AP50 {evaluation['ap50']:.3f}, int8 AP50 {int8_evaluation['ap50']:.3f}")
    print(f"float graph: model_file:={Path(onnx).resolve()}")
    print(f"model_file:={int8.resolve()}")
    print(f"  e.g. segmentation_node --ros-args -r image:=/camera/image_raw -p model:={model} "
          f"-p model_file:={int8.resolve()}  (docs/ros.md)")
    return summary


def _scores(result: dict) -> dict:
    return {k: result[k] for k in ("ap", "ap50", "per_class", "images")}


def _fit(rgb: np.ndarray, multiple: int) -> np.ndarray:
    """The frame cropped to multiples of the network's input multiple (calibration input)."""
    height, width = rgb.shape[:2]
    height, width = max(multiple, height - height % multiple), max(multiple, width - width % multiple)
    if rgb.shape[0] < height or rgb.shape[1] < width:
        import cv2

        return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(rgb[:height, :width])


def build_parser() -> argparse.ArgumentParser:
    """The command line; every argument it does not know goes to the model's `train` (training/loop.py options,
    --epochs, --crop, --lr, ...)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", required=True, help="the studio's Cityscapes-format export")
    parser.add_argument("--init", required=True, help="the checkpoint to fine-tune (e.g. models/dcme.pt)")
    parser.add_argument("--out", required=True, help="run folder: data/, train/, model/, finetune.json")
    parser.add_argument("--model", choices=MODELS, default=None, help="default: --init's file name")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="held-out share of each city's frames")
    parser.add_argument("--calibration-frames", type=int, default=16, help="training frames calibrating int8")
    parser.add_argument("--threads", type=int, default=2)
    add_debug_argument(parser)
    parser.set_defaults(func=None)
    return parser


def main(argv: list[str] | None = None) -> object:
    parser = build_parser()
    args, extra = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if "--threads" in extra:
        raise SystemExit("--threads is this command's own option")
    return run_on_rank("training.studio_finetune", lambda: finetune(args, [*extra, "--threads", str(args.threads)]),
                       debug=debug_requested(args))


if __name__ == "__main__":
    main()
