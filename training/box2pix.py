"""Train, evaluate and export Box2Pix on any Cityscapes-format tree; report prior coverage.

    python -m training.box2pix train    --data ROOT --out RUN [--epochs 30 --steps-per-epoch 75]
                                        [--crop 256 512 --batch 8 --lr 5e-4] [--scale 0.5]
                                        [--matching change|iou] [--class-weighting focal|balanced --gamma 2]
                                        [--time-budget S] [--resume]
    python -m training.box2pix evaluate --data ROOT --run RUN [--checkpoint last.pt|all] [--scale 1]
    python -m training.box2pix export   --run RUN --out models/box2pix.onnx
    python -m training.box2pix coverage --data ROOT [--split train] [--scale 1]

Training follows the paper (§III-B, §IV): crops around objects at full scale, random mirroring, Adam with
polynomial decay, focal loss (gamma 2) for the SSD classes, change-based prior matching (d_change <= 0.7), L2
box corners, cross-entropy semantics, L2 centre offsets, Kendall uncertainty weighting. Table I's ablations
are `--matching iou` and `--class-weighting balanced`. The network is trained from scratch (no ImageNet
weights can be had here). Evaluation runs the whole deployed pipeline (instseg_core.runtime Segmenter:
network, NMS, pixel-to-box assignment) on val images and scores them with the official Cityscapes evaluator.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from instseg_core.base.classes import INSTANCE_CLASSES, label_ids
from instseg_core.base.command_exit import add_debug_argument
from instseg_core.data.instance_training import batch_images, load_split
from instseg_core.losses.box2pix import Box2PixLoss, Box2PixLossConfig, dense_targets, relative_change
from instseg_core.networks.box2pix import (
    INPUT_MULTIPLE,
    Box2Pix,
    Box2PixConfig,
    Box2PixInference,
    model_from_checkpoint,
)
from instseg_core.networks.box_priors import prior_boxes
from instseg_core.postprocess.box_assignment import AssignmentParams
from instseg_core.runtime.adapters import Box2PixAdapter
from instseg_core.runtime.backends import TorchBackend
from instseg_core.runtime.segmenter import Segmenter
from training.common import (
    add_common_train_arguments,
    add_model_commands,
    check_init,
    evaluate_checkpoints,
    export_graph,
    git_commit,
    guarded,
    load_checkpoint_file,
    resume_or_initialise,
    run_command_line,
    run_epochs,
    save_shipped_checkpoint,
    training_manifest,
)
from training.loop import evaluation_hook, start_run, trainer_epoch_hooks


def make_batch(crops: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]) -> tuple[torch.Tensor, list]:
    """Images (B, 3, H, W) float32 in [0, 1] (channels_last) and the DenseTargets of each crop."""
    return batch_images(crops), [dense_targets(instances, labels, ignore) for _, instances, labels, ignore in crops]


def _box2pix_loss(loss_fn: Box2PixLoss, priors: np.ndarray, output: object, targets: list
                  ) -> tuple[torch.Tensor, dict]:
    return loss_fn(output, targets, priors)


def training_segmenter(model_config: dict, model: Box2Pix, device: str) -> Segmenter:
    """The deployed pipeline with the default assignment parameters, for evaluation during training."""
    return Segmenter(Box2PixAdapter(model_config), TorchBackend(Box2PixInference(model), device=device, threads=0),
                     score_threshold=0.0, decode_params=asdict(AssignmentParams()))


def train(args: argparse.Namespace) -> dict:
    check_init(args, "box2pix")
    run = start_run(args, INPUT_MULTIPLE, "Box2Pix")
    out = run.out
    model_config = Box2PixConfig(classes=run.classes)
    model = run.prepare(Box2Pix(model_config), args)
    loss_config = Box2PixLossConfig(matching=args.matching, class_weighting=args.class_weighting, gamma=args.gamma,
                                    uncertainty_weighting=not args.no_uncertainty_weighting)
    loss_fn = Box2PixLoss(loss_config).to(run.runtime.device)
    if args.no_uncertainty_weighting:  # unused: DDP must not wait for its gradient (Adam skipped it anyway)
        loss_fn.log_variance.requires_grad_(False)
    optimizer = torch.optim.Adam([*model.parameters(), *loss_fn.parameters()], lr=args.lr)
    priors = prior_boxes(args.crop[0], args.crop[1], model.priors_per_layer)
    steps = args.steps_per_epoch or max(1, len(run.sampler.samples) // args.batch)
    state = {"epoch": 0, "history": [], "train_seconds": 0.0}
    rng = np.random.default_rng(args.seed)
    state = resume_or_initialise(args, out, model, optimizer, state, rng,
                                 restore=lambda checkpoint: loss_fn.load_state_dict(checkpoint["loss_state"]))
    print(f"{len(run.sampler.samples)} training images, {steps} steps of {args.batch} crops {args.crop} per epoch, "
          f"{len(priors)} priors per crop", flush=True)
    on_epoch, train_step = trainer_epoch_hooks(run, args, model, loss_fn,
                                               functools.partial(_box2pix_loss, loss_fn, priors), make_batch,
                                               optimizer, steps, rng=rng)

    def checkpoint() -> dict:
        return {"model": model.state_dict(), "loss_state": loss_fn.state_dict(), "model_config": model_config.to_dict(),
                "loss_config": vars(loss_config)}

    def log_variance() -> dict:
        return {"log_variance": dict(zip(Box2PixLoss.TASKS, loss_fn.log_variance.detach().tolist(), strict=True))}

    evaluate_hook = evaluation_hook(run, args, model, model_config.to_dict(), training_segmenter,
                                    multiple=Box2PixAdapter.input_multiple)
    return run_epochs(args, out, optimizer, state, rng, steps, train_step, model.train, checkpoint, log_variance,
                      runtime=run.runtime, on_epoch=on_epoch, evaluate=evaluate_hook, data=run.data)


def load_checkpoint(path: str | os.PathLike) -> tuple[Box2Pix, dict]:
    checkpoint = load_checkpoint_file(path)
    return model_from_checkpoint(checkpoint), checkpoint


def _assignment_params(args: argparse.Namespace) -> AssignmentParams:
    return AssignmentParams(detection_threshold=args.detection_threshold, nms_iou=args.nms_iou,
                            min_pixels=args.min_pixels, score_penalty=args.score_penalty,
                            assign_mismatched=args.assign_mismatched)


def evaluate(args: argparse.Namespace) -> dict:
    """Evaluate one checkpoint, or with --checkpoint all every kept epoch (the learning curve)."""
    params = _assignment_params(args)

    def segmenter_for(checkpoint: dict, model: Box2Pix) -> Segmenter:
        return Segmenter(Box2PixAdapter(checkpoint["model_config"]),
                         TorchBackend(Box2PixInference(model), threads=args.threads), score_threshold=0.0,
                         decode_params=asdict(params))

    return evaluate_checkpoints(args, segmenter_for, load_checkpoint, multiple=Box2PixAdapter.input_multiple)


def export_onnx(model: Box2Pix, path: str | os.PathLike, height: int = 512, width: int = 1024) -> Path:
    """ONNX (opset 17) of Box2PixInference: input 'image' (1, 3, H, W) float32 in [0, 1]; outputs 'detections'
    (1, P, 4 + n + 1), 'semantic' (1, H, W) uint8, 'offsets' (1, 2, H, W); H and W dynamic (multiples of 128)."""
    outputs = {"detections": {1: "priors"}, "semantic": {1: "height", 2: "width"},
               "offsets": {2: "height", 3: "width"}}
    return export_graph(Box2PixInference(model), path, outputs, torch.zeros(1, 3, height, width))


def export(args: argparse.Namespace) -> Path:
    """ONNX export of a checkpoint, its weights for the torch backend (.pt) and a JSON manifest (config, data,
    commit, training time, metrics, decoding defaults) beside it."""
    run = Path(args.run)
    model, checkpoint = load_checkpoint(run / args.checkpoint)
    assignment = {"detection_threshold": args.detection_threshold, "nms_iou": args.nms_iou,
                  "min_pixels": args.min_pixels, "score_penalty": args.score_penalty,
                  "assign_mismatched": args.assign_mismatched}
    model_config = {**checkpoint["model_config"],
                    "extra": {**checkpoint["model_config"].get("extra", {}), "assignment": assignment}}
    out = export_onnx(model, args.out)
    save_shipped_checkpoint(model, model_config, checkpoint["epoch"], out.with_suffix(".pt"))
    manifest = {
        "model": "box2pix",
        "model_config": model_config,
        "label_ids": label_ids(model_config["classes"]),
        "input": "image (1, 3, H, W) float32 RGB in [0, 1], H and W multiples of 128",
        "output": "detections (1, P, 4 + n + 1): corner regressions + class probabilities per prior; semantic "
                  "(1, H, W) uint8 argmax class; offsets (1, 2, H, W) pixels to the box centre; see "
                  "instseg_core.networks.box2pix",
        "priors_per_layer": model.priors_per_layer,
        **training_manifest(run, args.checkpoint, checkpoint, args.stages),
        "data": args.data_note, "commit": git_commit(),
        "reproduce": "make train-box2pix (see Makefile)",
    }
    out.with_suffix(".json").write_text(json.dumps(manifest, indent=1))
    print(f"wrote {out}, {out.with_suffix('.pt')} and {out.with_suffix('.json')}")
    return out


def coverage(args: argparse.Namespace) -> dict:
    """Share of a split's object boxes with a prior of similar size (d_change <= threshold, priors centred on
    the object: the paper's Fig. 4) and with a prior on the grid (what matching actually finds), per class."""
    classes = tuple(args.classes)
    config = Box2PixConfig(classes=classes)
    sizes = np.asarray(config.prior_sizes, np.float32)
    samples = load_split(args.data, args.split, classes, scale=args.scale, limit=args.limit)
    rows = []
    for sample in samples:
        target = dense_targets(sample.instances, sample.labels, sample.ignore)
        if not len(target.boxes):
            continue
        height, width = sample.instances.shape
        grid = prior_boxes(height - height % 128, width - width % 128, config.priors_per_layer())
        centre = (target.boxes[:, :2] + target.boxes[:, 2:]) / 2
        for box, c, cls in zip(target.boxes, centre, target.classes, strict=True):
            centred = np.concatenate([c - sizes / 2, c + sizes / 2], 1)
            rows.append((cls, relative_change(box[None], centred).min(), relative_change(box[None], grid).min(),
                         relative_change(box[None], centred, literal=True).min()))
    table = np.array(rows, np.float64)
    report = {"boxes": len(rows), "threshold": args.threshold, "per_class": {}}
    for name, column in (("size", 1), ("grid", 2), ("size_literal_eq2", 3)):
        report[name] = float((table[:, column] <= args.threshold).mean()) if rows else 0.0
    for k, name in enumerate(classes, 1):
        rows_k = table[table[:, 0] == k] if rows else table
        if len(rows_k):
            report["per_class"][name] = {"boxes": len(rows_k), "size": float((rows_k[:, 1] <= args.threshold).mean()),
                                         "grid": float((rows_k[:, 2] <= args.threshold).mean())}
    print(f"{report['boxes']} boxes; covered at d_change <= {args.threshold}: by size {report['size']:.1%}, "
          f"on the prior grid {report['grid']:.1%} (Eq. 2 as printed, by size: {report['size_literal_eq2']:.1%})")
    for name, r in report["per_class"].items():
        print(f"  {name:12s} {r['boxes']:6d} boxes  size {r['size']:.1%}  grid {r['grid']:.1%}")
    return report


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_train_arguments(parser, crop=(256, 512), epochs=30, lr=5e-4, keep_every=5, progress_every=25)
    parser.add_argument("--matching", default="change", choices=("change", "iou"))
    parser.add_argument("--class-weighting", default="focal", choices=("focal", "balanced"))
    parser.add_argument("--gamma", type=float, default=2.0, help="focal loss gamma")
    parser.add_argument("--no-uncertainty-weighting", action="store_true", help="sum the four losses instead")


def add_assignment_arguments(parser: argparse.ArgumentParser) -> None:
    """Decoding parameters (instseg_core.postprocess.box_assignment); export stores them as the model's defaults."""
    defaults = AssignmentParams()
    parser.add_argument("--detection-threshold", type=float, default=defaults.detection_threshold)
    parser.add_argument("--nms-iou", type=float, default=defaults.nms_iou)
    parser.add_argument("--min-pixels", type=int, default=defaults.min_pixels)
    parser.add_argument("--score-penalty", type=float, default=defaults.score_penalty)
    parser.add_argument("--assign-mismatched", action="store_true",
                        help="the paper's behaviour: pixels whose class has no box still go to the nearest box")


def build_parser() -> argparse.ArgumentParser:
    """The command line: train / evaluate / export (and the model's own sub-commands)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    add_model_commands(commands, train=train, evaluate=evaluate, export=export,
                       add_train_arguments=add_train_arguments, add_decode_arguments=add_assignment_arguments)
    coverage_parser = commands.add_parser("coverage", help="how many boxes the priors cover (paper's Fig. 4)")
    coverage_parser.add_argument("--data", required=True)
    coverage_parser.add_argument("--split", default="train")
    coverage_parser.add_argument("--classes", nargs="+", default=list(INSTANCE_CLASSES))
    coverage_parser.add_argument("--scale", type=float, default=1.0)
    coverage_parser.add_argument("--threshold", type=float, default=0.7)
    coverage_parser.add_argument("--limit", type=int, default=None)
    add_debug_argument(coverage_parser)
    coverage_parser.set_defaults(func=guarded(coverage, "coverage"))
    return parser


def main(argv: list[str] | None = None) -> object:
    """Run one command; returns its result (training state, evaluation results, ONNX path or coverage)."""
    return run_command_line(build_parser, argv, __name__ == "__main__")


if __name__ == "__main__":
    main()

