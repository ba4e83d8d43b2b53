"""Train, evaluate and export the Spatial Embeddings network on any Cityscapes-format tree.

    python -m training.spatial_embeddings train    --data ROOT --out RUN [--epochs 200 --steps-per-epoch N]
                                                   [--crop 256 256 --batch 8 --lr 5e-4] [--scale 0.5]
                                                   [--n-sigma 1|2] [--center centroid|learnable] [--fixed-sigma]
                                                   [--finetune-from RUN_A --freeze-bn] [--resume]
    python -m training.spatial_embeddings evaluate --data ROOT --run RUN [--checkpoint best.pt|epoch_010.pt|all]
    python -m training.spatial_embeddings export   --run RUN --out models/spatial_embeddings.onnx

Training follows the paper (§4.1): crops centred on an object (random jitter) and random horizontal
mirroring, Adam, polynomial decay lr * (1 - epoch / epochs)^0.9; then a fine-tune on larger crops with
the batch-norm statistics frozen (`--finetune-from RUN --freeze-bn`, lower lr). The ablations of the
paper's Table 2 are `--fixed-sigma`, `--n-sigma 1|2` and `--center centroid|learnable`.
A checkpoint is written every epoch (`last.pt`, resumable with `--resume`; `epoch_NNN.pt` every
`--keep-every` epochs for the learning curve). Evaluation runs the network on whole val images, clusters
(instseg_core.postprocess.seed_clustering) and scores with the official Cityscapes evaluator.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import cast

import numpy as np
import torch

from instseg_core.base.classes import label_ids
from instseg_core.data.instance_training import to_batch
from instseg_core.data.real_context import RealContextMix, mixed_window
from instseg_core.losses.spatial_embedding import SpatialEmbeddingLoss, SpatialEmbeddingLossConfig
from instseg_core.networks.espnetv2 import load_espnetv2_cityscapes
from instseg_core.networks.espnetv2_embeddings import ESPNetv2Embeddings
from instseg_core.networks.spatial_embeddings import (
    SpatialEmbeddings,
    SpatialEmbeddingsConfig,
    model_from_checkpoint,
)
from instseg_core.postprocess.seed_clustering import ClusteringParams
from instseg_core.runtime.adapters import SpatialEmbeddingsAdapter
from instseg_core.runtime.backends import TorchBackend
from instseg_core.runtime.segmenter import Segmenter
from training.common import (
    add_common_train_arguments,
    add_model_commands,
    batch_norms_to_eval,
    check_init,
    evaluate_checkpoints,
    export_graph,
    git_commit,
    load_checkpoint_file,
    resume_or_initialise,
    run_command_line,
    run_epochs,
    save_shipped_checkpoint,
    training_manifest,
)
from training.loop import evaluation_hook, start_run, trainer_epoch_hooks, window_draw


def _se_loss(loss_fn: SpatialEmbeddingLoss, raw: torch.Tensor, targets: tuple) -> tuple[torch.Tensor, dict]:
    return loss_fn(raw, *targets)


def _collate(crops: list) -> tuple[torch.Tensor, tuple]:
    images, instances, labels, ignore = to_batch(crops)
    return images, (instances, labels, ignore)


def training_segmenter(model_config: dict, model: torch.nn.Module, device: str) -> Segmenter:
    """The deployed pipeline with the paper's clustering defaults, for evaluation during training."""
    return Segmenter(SpatialEmbeddingsAdapter(model_config), TorchBackend(model, device=device, threads=0),
                     score_threshold=0.0, decode_params=asdict(ClusteringParams()))


def train(args: argparse.Namespace) -> dict:
    check_init(args, "spatial_embeddings")
    run = start_run(args, 16 if args.backbone == "espnetv2" else 8,
                    f"Spatial Embeddings ({args.backbone})")
    out, classes = run.out, run.classes
    loss_config = SpatialEmbeddingLossConfig(learn_sigma=not args.fixed_sigma, center=args.center,
                                             foreground_weight=args.foreground_weight)
    model_config = SpatialEmbeddingsConfig(classes=classes, n_sigma=args.n_sigma, dropout_low=args.dropout_low,
                                           dropout_high=args.dropout_high, backbone=args.backbone,
                                           train_semantic=args.train_semantic)
    model = SpatialEmbeddings(model_config)
    if args.backbone == "espnetv2":
        semantic = cast(ESPNetv2Embeddings, model.network).semantic
        try:
            semantic.load_state_dict(load_espnetv2_cityscapes(args.semantic_weights).state_dict())
        except (OSError, ValueError, RuntimeError) as error:
            raise SystemExit(f"--semantic-weights {args.semantic_weights}: {error}") from None
    mix = RealContextMix(args.negative_windows, args.real_backgrounds, args.photometric, tuple(args.zoom))
    if args.finetune_from:  # the pre-training run's last weights (the shared --init with a run folder)
        args.init = str(Path(args.finetune_from) / "last.pt")
    model = cast(SpatialEmbeddings, run.prepare(model, args))
    loss_fn = SpatialEmbeddingLoss(model_config.n_sigma, len(classes), loss_config)
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps = args.steps_per_epoch or max(1, len(run.sampler.samples) // args.batch)
    state = {"epoch": 0, "history": [], "train_seconds": 0.0}
    rng = np.random.default_rng(args.seed)
    state = resume_or_initialise(args, out, model, optimizer, state, rng)
    print(f"{len(run.sampler.samples)} training images, {steps} steps of {args.batch} crops {args.crop} per epoch "
          f"({args.crops} windows)", flush=True)

    def start_epoch() -> None:
        model.train()
        if args.freeze_bn:
            batch_norms_to_eval(model)

    on_epoch, train_step = trainer_epoch_hooks(run, args, model, loss_fn, functools.partial(_se_loss, loss_fn),
                                               _collate, optimizer, steps, draw=window_draw(mixed_window, mix),
                                               rng=rng)

    def checkpoint() -> dict:
        return {"model": model.state_dict(), "model_config": model_config.to_dict(), "loss_config": vars(loss_config)}

    evaluate_hook = evaluation_hook(run, args, model, model_config.to_dict(), training_segmenter, multiple=8)
    return run_epochs(args, out, optimizer, state, rng, steps, train_step, start_epoch, checkpoint,
                      runtime=run.runtime, on_epoch=on_epoch, evaluate=evaluate_hook, data=run.data)


def load_checkpoint(path: str | os.PathLike) -> tuple[SpatialEmbeddings, dict]:
    """The network of a checkpoint and the checkpoint; CheckpointError naming the file when it cannot be read."""
    checkpoint = load_checkpoint_file(path)
    return model_from_checkpoint(checkpoint), checkpoint


def evaluate(args: argparse.Namespace) -> dict:
    """Evaluate one checkpoint, or with --checkpoint all every kept epoch (the learning curve)."""
    params = ClusteringParams(seed_threshold=args.seed_threshold, foreground_threshold=args.foreground_threshold,
                              min_pixels=args.min_pixels, margin_scale=args.margin_scale)

    def segmenter_for(checkpoint: dict, model: object) -> Segmenter:
        return Segmenter(SpatialEmbeddingsAdapter(checkpoint["model_config"]),
                         TorchBackend(model, threads=args.threads), score_threshold=0.0,
                         decode_params=asdict(params))

    return evaluate_checkpoints(args, segmenter_for, load_checkpoint)


def export_onnx(model: SpatialEmbeddings, path: str | os.PathLike, height: int = 512, width: int = 1024) -> Path:
    """ONNX (opset 17) with input 'image' (1, 3, H, W) float32 in [0, 1] and output 'raw' (1, C, H, W),
    height and width dynamic (multiples of 8)."""
    return export_graph(model, path, {"raw": {2: "height", 3: "width"}}, torch.zeros(1, 3, height, width))


def export(args: argparse.Namespace) -> Path:
    """ONNX export of a checkpoint, its weights for the torch backend (.pt) and a JSON manifest (config, data,
    commit, training time, metrics) beside it."""
    run = Path(args.run)
    model, checkpoint = load_checkpoint(run / args.checkpoint)
    clustering = {"seed_threshold": args.seed_threshold, "foreground_threshold": args.foreground_threshold,
                  "min_pixels": args.min_pixels, "margin_scale": args.margin_scale}
    checkpoint["model_config"] = {**checkpoint["model_config"],
                                  "extra": {**checkpoint["model_config"].get("extra", {}), "clustering": clustering}}
    out = export_onnx(model, args.out)
    save_shipped_checkpoint(model, checkpoint["model_config"], checkpoint["epoch"], out.with_suffix(".pt"))
    manifest = {
        "model": "spatial_embeddings",
        "model_config": checkpoint["model_config"],
        "label_ids": label_ids(checkpoint["model_config"]["classes"]),
        "input": "image (1, 3, H, W) float32 RGB in [0, 1], H and W multiples of 8",
        "output": "raw (1, 2 + n_sigma + n_classes, H, W): tanh offsets, sigma raw, seed logits; "
                  "see instseg_core.networks.spatial_embeddings",
        "pixel_spacing": 1 / 1024,
        **training_manifest(run, args.checkpoint, checkpoint, args.stages),
        "data": args.data_note, "commit": git_commit(),
        "reproduce": "make train-se (see Makefile)",
    }
    out.with_suffix(".json").write_text(json.dumps(manifest, indent=1))
    print(f"wrote {out}, {out.with_suffix('.pt')} and {out.with_suffix('.json')}")
    return out


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_train_arguments(parser, crop=(256, 256), epochs=200, lr=5e-4, keep_every=2, progress_every=10)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--n-sigma", type=int, default=2, choices=(1, 2))
    parser.add_argument("--center", default="centroid", choices=("centroid", "learnable"))
    parser.add_argument("--fixed-sigma", action="store_true", help="ablation: fixed 20-pixel margin")
    parser.add_argument("--foreground-weight", type=float, default=10.0)
    parser.add_argument("--dropout-low", type=float, default=0.03)
    parser.add_argument("--dropout-high", type=float, default=0.3)
    parser.add_argument("--finetune-from", default="", help="start from RUN/last.pt (the pre-training run)")
    parser.add_argument("--freeze-bn", action="store_true", help="keep batch-norm statistics fixed")
    parser.add_argument("--backbone", choices=("erfnet", "espnetv2"), default="erfnet",
                        help="erfnet (the paper's network) or espnetv2 (real-Cityscapes semantic branch + instance "
                             "head; instseg_core.networks.espnetv2_embeddings)")
    parser.add_argument("--semantic-weights", default=str(ESPNETV2_WEIGHTS),
                        help="espnetv2: the Cityscapes ESPNetv2 state dict the semantic branch starts from")
    parser.add_argument("--train-semantic", action="store_true",
                        help="espnetv2: train the semantic branch too (default: frozen)")
    parser.add_argument("--negative-windows", type=float, default=0.0,
                        help="fraction of windows from real photographs without people or vehicles "
                             "(instseg_core.data.real_context)")
    parser.add_argument("--real-backgrounds", type=float, default=0.0,
                        help="fraction of synthetic windows whose background is replaced by a real photograph")
    parser.add_argument("--photometric", type=float, default=0.0,
                        help="fraction of windows given photometric jitter")
    parser.add_argument("--zoom", type=float, nargs=2, default=(1.0, 1.0), metavar=("LOW", "HIGH"),
                        help="see each synthetic window at a scale drawn log-uniformly from [LOW, HIGH] (> 1 zooms "
                             "in: objects as large as in close-up photographs)")


ESPNETV2_WEIGHTS = Path(__file__).resolve().parent.parent / "models" / "espnetv2_s2_cityscapes.fp16.pt"


def add_clustering_arguments(parser: argparse.ArgumentParser) -> None:
    """Clustering thresholds (paper defaults 0.5 / 0.5); export stores them as the model's defaults."""
    parser.add_argument("--seed-threshold", type=float, default=0.5)
    parser.add_argument("--foreground-threshold", type=float, default=0.5)
    parser.add_argument("--min-pixels", type=int, default=64)
    parser.add_argument("--margin-scale", type=float, default=1.0,
                        help="multiply the clustering margin (1: the paper's; see seed_clustering.ClusteringParams)")


def build_parser() -> argparse.ArgumentParser:
    """The command line: train / evaluate / export (and the model's own sub-commands)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    add_model_commands(commands, train=train, evaluate=evaluate, export=export,
                       add_train_arguments=add_train_arguments, add_decode_arguments=add_clustering_arguments)
    return parser


def main(argv: list[str] | None = None) -> object:
    """Run one command; returns its result (training state, evaluation results or the ONNX path)."""
    return run_command_line(build_parser, argv, __name__ == "__main__")


if __name__ == "__main__":
    main()
