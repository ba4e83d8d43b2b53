"""Train, evaluate and export DCME on any Cityscapes-format tree.

    python -m training.dcme train    --data ROOT --out RUN [--epochs 30 --steps-per-epoch 70]
                                     [--crop 256 512 --batch 8 --lr 1e-3] [--amplitude 4] [--no-clip]
                                     [--shared-error] [--time-budget S] [--resume] [--init CHECKPOINT]
    python -m training.dcme evaluate --data ROOT --run RUN [--checkpoint last.pt|all] [--oracle instances|classes]
    python -m training.dcme tune     --data ROOT --run RUN [--limit 20]
    python -m training.dcme export   --run RUN --out models/dcme.onnx

Training (Watanabe and Wolf §IV): crops around objects, random mirroring, Adam with polynomial decay; the loss is
instseg_core.losses.dcme: independent per-pixel vector errors clipped by the translated logistic (Eq. 5, 6; A = 4
as in the paper's experiments), the foreground channel's cross-entropy and the class grid's cross-entropy (blocks
labelled with the rare-classes-first priority list). The paper's ablations are `--shared-error` (one mean error
for every output, the Caffe Euclidean loss) and `--no-clip`. From scratch: no ImageNet weights can be had here.

Evaluation runs the deployed pipeline (instseg_core.runtime Segmenter: network, voting, block classes) on val
images with the official Cityscapes evaluator; `--oracle instances` scores ground-truth instances classified by
the encoder (the paper's instance oracle, Table II), `--oracle classes` the decoder's instances with ground-truth
classes (the class oracle, Table IV).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
from dataclasses import asdict, fields
from pathlib import Path

import cv2
import numpy as np
import torch

from instseg_core.base.classes import label_ids
from instseg_core.base.command_exit import add_debug_argument
from instseg_core.base.instances import Instances, instances_from_labels, resize_instances
from instseg_core.data.cityscapes import CityscapesDataset
from instseg_core.data.instance_training import batch_images, instance_targets
from instseg_core.eval.cityscapes_instances import evaluate_instances, write_predictions
from instseg_core.losses.dcme import DcmeLoss, DcmeLossConfig, centres_of_mass, dcme_targets
from instseg_core.networks.dcme import INPUT_MULTIPLE, Dcme, DcmeConfig, DcmeInference, model_from_checkpoint
from instseg_core.postprocess.dcme_voting import VotingParams
from instseg_core.runtime.adapters import DcmeAdapter
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


def make_batch(crops: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]], classes: tuple[str, ...]
               ) -> tuple[torch.Tensor, list]:
    """Images (B, 3, H, W) float32 in [0, 1] (channels_last) and the DcmeTargets of each crop."""
    return batch_images(crops), [dcme_targets(instances, labels, ignore, classes)
                                 for _, instances, labels, ignore in crops]


def _dcme_loss(loss_fn: DcmeLoss, output: object, targets: list) -> tuple[torch.Tensor, dict]:
    return loss_fn(output, targets)


def training_segmenter(model_config: dict, model: Dcme, device: str) -> Segmenter:
    """The deployed pipeline with the default voting parameters, for evaluation during training."""
    return Segmenter(DcmeAdapter(model_config), TorchBackend(DcmeInference(model), device=device, threads=0),
                     score_threshold=0.0, decode_params=asdict(VotingParams()))


def train(args: argparse.Namespace) -> dict:
    check_init(args, "dcme")
    run = start_run(args, INPUT_MULTIPLE, "DCME")
    out, classes = run.out, run.classes
    model_config = DcmeConfig(classes=classes)
    model = run.prepare(Dcme(model_config), args)
    loss_config = DcmeLossConfig(amplitude=args.amplitude, clip=not args.no_clip, independent=not args.shared_error)
    loss_fn = DcmeLoss(model_config.vector_scale, loss_config)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps = args.steps_per_epoch or max(1, len(run.sampler.samples) // args.batch)
    state = {"epoch": 0, "history": [], "train_seconds": 0.0}
    rng = np.random.default_rng(args.seed)
    state = resume_or_initialise(args, out, model, optimizer, state, rng)
    print(f"{len(run.sampler.samples)} training images, {steps} steps of {args.batch} crops {args.crop} per epoch "
          f"({args.crops} windows)", flush=True)
    on_epoch, train_step = trainer_epoch_hooks(run, args, model, loss_fn, functools.partial(_dcme_loss, loss_fn),
                                               functools.partial(make_batch, classes=classes), optimizer, steps,
                                               rng=rng)

    def checkpoint() -> dict:
        return {"model": model.state_dict(), "model_config": model_config.to_dict(), "loss_config": asdict(loss_config)}

    evaluate_hook = evaluation_hook(run, args, model, model_config.to_dict(), training_segmenter,
                                    multiple=INPUT_MULTIPLE)
    return run_epochs(args, out, optimizer, state, rng, steps, train_step, model.train, checkpoint,
                      runtime=run.runtime, on_epoch=on_epoch, evaluate=evaluate_hook, data=run.data)


def load_checkpoint(path: str | os.PathLike) -> tuple[Dcme, dict]:
    checkpoint = load_checkpoint_file(path)
    return model_from_checkpoint(checkpoint), checkpoint


def _voting_params(args: argparse.Namespace) -> VotingParams:
    return VotingParams(**{f.name: getattr(args, f.name) for f in fields(VotingParams)})


def ground_truth_instances(instance_ids: np.ndarray, classes: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray,
                                                                                      np.ndarray]:
    """(instances (H, W) int32, class index per instance (K,) int64, centres of mass (K, 2)) of a gtFine
    instanceIds map, for the oracle experiments."""
    instances, labels, _ = instance_targets(instance_ids, classes)
    count = int(instances.max())
    class_of = np.zeros(count + 1, np.int64)
    class_of[instances[instances > 0]] = labels[instances > 0].astype(np.int64) - 1
    return instances, class_of[1:], centres_of_mass(instances)[1:]


def oracle_instances(mode: str, predicted: Instances | None, dense_classes: np.ndarray, instance_ids: np.ndarray,
                     classes: tuple[str, ...], scale: tuple[float, float]) -> Instances:
    """The paper's oracle experiments at the ground truth's resolution.

    'instances' (Table II): the ground-truth instances, each classified by the encoder's block holding its centre
    of mass (Eq. 2), scored by that class's probability; `dense_classes` (n + 1, h, w) is the class grid of the
    network input, `scale` (sx, sy) maps ground-truth pixels to network pixels.
    'classes' (Table IV): the predicted instances (already at the ground truth's resolution), each given the
    class of the ground-truth instance it overlaps most (background-only instances keep theirs)."""
    if mode == "instances":
        instances, _, centres = ground_truth_instances(instance_ids, classes)
        height, width = instances.shape
        if not len(centres):
            return Instances.empty(height, width)
        _, rows, cols = dense_classes.shape
        gx = np.clip((centres[:, 0] * scale[0] // 16).astype(np.int64), 0, cols - 1)
        gy = np.clip((centres[:, 1] * scale[1] // 16).astype(np.int64), 0, rows - 1)
        objects = dense_classes[1:, gy, gx]
        foreground = np.flatnonzero(instances.ravel())
        return instances_from_labels(foreground, instances.ravel()[foreground] - 1, height, width,
                                     objects.argmax(0), objects.max(0).astype(np.float32))
    if predicted is None:
        raise ValueError("the class oracle needs the predicted instances")
    instances, truth_classes, _ = ground_truth_instances(instance_ids, classes)
    classes_out = predicted.classes.copy()
    for k in range(len(predicted)):
        overlap = instances[predicted.id_image == k + 1]
        overlap = overlap[overlap > 0]
        if overlap.size:
            classes_out[k] = truth_classes[np.bincount(overlap).argmax() - 1]
    return Instances(predicted.id_image, classes_out, predicted.scores, predicted.boxes, predicted.areas)


def evaluate_oracle(args: argparse.Namespace, segmenter: Segmenter, out_dir: Path) -> dict:
    """AP/AP50 of the oracle experiment `args.oracle` on --data val (see oracle_instances)."""
    dataset = CityscapesDataset(args.data, "val")
    samples = list(dataset)[:args.limit]
    pred_dir = out_dir / "predictions"
    if pred_dir.exists():
        shutil.rmtree(pred_dir)
    classes = segmenter.classes
    for sample in samples:
        height, width = sample.image.shape[:2]
        net_w, net_h = segmenter.network_size(width, height)
        image = sample.image if (net_w, net_h) == (width, height) else cv2.resize(
            sample.image, (net_w, net_h), interpolation=cv2.INTER_AREA)
        network_input = segmenter.adapter.preprocess(image)
        dense, class_grid = segmenter.backend.run(network_input)
        predicted = resize_instances(segmenter.adapter.decode((dense, class_grid), segmenter.decode_params),
                                     width, height)
        result = oracle_instances(args.oracle, predicted, class_grid[0], sample.instance_ids, classes,
                                  (net_w / width, net_h / height))
        write_predictions(pred_dir, sample.stem, result.masks(), segmenter.adapter.label_ids[result.classes],
                          result.scores)
    evaluation = evaluate_instances([s.paths["instance_ids"] for s in samples], pred_dir, out_dir)
    return {"oracle": args.oracle, "ap": evaluation.ap, "ap50": evaluation.ap50, "per_class": evaluation.per_class,
            "images": len(samples)}


def evaluate(args: argparse.Namespace) -> dict:
    """Evaluate one checkpoint, or with --checkpoint all every kept epoch (the learning curve); with --oracle, the
    paper's oracle experiment on --checkpoint."""
    params = _voting_params(args)

    def segmenter_for(checkpoint: dict, model: Dcme) -> Segmenter:
        return Segmenter(DcmeAdapter(checkpoint["model_config"]), TorchBackend(DcmeInference(model),
                                                                               threads=args.threads),
                         score_threshold=0.0, decode_params=asdict(params))

    if not args.oracle:
        return evaluate_checkpoints(args, segmenter_for, load_checkpoint, multiple=INPUT_MULTIPLE)
    run = Path(args.run)
    model, checkpoint = load_checkpoint(run / args.checkpoint)
    result = evaluate_oracle(args, segmenter_for(checkpoint, model), run / "evaluation" / f"oracle_{args.oracle}")
    print(f"{args.checkpoint} {args.oracle} oracle: AP {result['ap']:.3f} AP50 {result['ap50']:.3f}", flush=True)
    print("  " + "  ".join(f"{c} {v['ap']:.3f}/{v['ap50']:.3f}" for c, v in result["per_class"].items()), flush=True)
    (run / f"oracle_{args.oracle}_{Path(args.checkpoint).stem}.json").write_text(json.dumps(result, indent=1))
    return result


# The first grid (foreground_threshold 0.5/0.7, min_votes 40-500, max_distance_px 32/64/128) chose 0.5 and 64 px on
# both shipped runs; they are held, and the grid searches the peaks and the fragment joining instead.
TUNING_GRID = {"foreground_threshold": (0.5,), "max_distance_px": (64.0,), "min_votes": (120.0, 250.0, 500.0),
               "peak_window": (5, 9), "fragment_offset": (0.0, 0.25, 0.35, 0.5)}


def tune(args: argparse.Namespace) -> dict:
    """Grid search of the decoding parameters (TUNING_GRID) on the first --limit val images: the network runs once
    per image, each combination is decoded and scored with the official evaluator; prints the table and writes
    RUN/tuning.json. The best AP50 goes to `export` by hand (its --foreground-threshold ... arguments)."""
    import itertools

    run = Path(args.run)
    model, checkpoint = load_checkpoint(run / args.checkpoint)
    adapter = DcmeAdapter(checkpoint["model_config"])
    backend = TorchBackend(DcmeInference(model), threads=args.threads)
    samples = list(CityscapesDataset(args.data, "val"))[:args.limit]
    outputs = [backend.run(adapter.preprocess(sample.image)) for sample in samples]
    results = []
    for values in itertools.product(*TUNING_GRID.values()):
        params = {**asdict(VotingParams()), **dict(zip(TUNING_GRID, values, strict=True))}
        pred_dir = run / "tuning" / "predictions"
        if pred_dir.exists():
            shutil.rmtree(pred_dir)
        for sample, raw in zip(samples, outputs, strict=True):
            instances = adapter.decode(raw, params)
            write_predictions(pred_dir, sample.stem, instances.masks(), adapter.label_ids[instances.classes],
                              instances.scores)
        evaluation = evaluate_instances([s.paths["instance_ids"] for s in samples], pred_dir, run / "tuning")
        results.append({**dict(zip(TUNING_GRID, values, strict=True)), "ap": evaluation.ap, "ap50": evaluation.ap50})
        print(" ".join(f"{k} {v}" for k, v in results[-1].items()), flush=True)
    results.sort(key=lambda r: -r["ap50"])
    (run / "tuning.json").write_text(json.dumps({"images": len(samples), "results": results}, indent=1))
    print(f"best: {results[0]}")
    return results[0]


def export_onnx(model: Dcme, path: str | os.PathLike, height: int = 512, width: int = 1024) -> Path:
    """ONNX (opset 17) of DcmeInference: input 'image' (1, 3, H, W) float32 in [0, 1]; outputs 'dense' (1, 3, H, W)
    (dx, dy pixels, foreground probability) and 'classes' (1, n + 1, H/16, W/16); H and W dynamic (multiples of
    16)."""
    outputs = {"dense": {2: "height", 3: "width"}, "classes": {2: "grid_height", 3: "grid_width"}}
    return export_graph(DcmeInference(model), path, outputs, torch.zeros(1, 3, height, width))


def export(args: argparse.Namespace) -> Path:
    """The float16 checkpoint the repository ships (models/dcme.pt), its float32 ONNX graph and a JSON manifest
    (config, data, commit, training time, metrics, decoding defaults) beside it."""
    run = Path(args.run)
    model, checkpoint = load_checkpoint(run / args.checkpoint)
    model_config = {**checkpoint["model_config"],
                    "extra": {**checkpoint["model_config"].get("extra", {}), "voting": asdict(_voting_params(args))}}
    out = export_onnx(model, args.out)
    save_shipped_checkpoint(model, model_config, checkpoint["epoch"], out.with_suffix(".pt"))
    oracles = {}
    for mode in ("instances", "classes"):
        path = run / f"oracle_{mode}_{Path(args.checkpoint).stem}.json"
        if path.exists():
            oracles[mode] = json.loads(path.read_text())
    manifest = {
        "model": "dcme",
        "model_config": model_config,
        "label_ids": label_ids(model_config["classes"]),
        "input": "image (1, 3, H, W) float32 RGB in [0, 1], H and W multiples of 16",
        "output": "dense (1, 3, H, W): dx, dy pixels to the centre of mass, foreground probability; classes "
                  "(1, n + 1, H/16, W/16) block class probabilities; see instseg_core.networks.dcme",
        **training_manifest(run, args.checkpoint, checkpoint, args.stages),
        "oracles": oracles,
        "data": args.data_note, "commit": git_commit(),
        "reproduce": "make train-dcme (see Makefile)",
    }
    out.with_suffix(".json").write_text(json.dumps(manifest, indent=1))
    print(f"wrote {out}, {out.with_suffix('.pt')} and {out.with_suffix('.json')}")
    return out


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_train_arguments(parser, crop=(256, 512), epochs=30, lr=1e-3, keep_every=5, progress_every=25)
    parser.add_argument("--amplitude", type=float, default=4.0, help="A of Eq. 6 (the clip bound is A / 2)")
    parser.add_argument("--no-clip", action="store_true", help="ablation: back-propagate the raw errors")
    parser.add_argument("--shared-error", action="store_true",
                        help="ablation: every output gets the mean error (the Caffe Euclidean loss)")


def add_voting_arguments(parser: argparse.ArgumentParser) -> None:
    """Decoding parameters (instseg_core.postprocess.dcme_voting); export stores them as the model's defaults."""
    for f in fields(VotingParams):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)


def build_parser() -> argparse.ArgumentParser:
    """The command line: train / evaluate / export (and the model's own sub-commands)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    _, evaluate_parser, _ = add_model_commands(commands, train=train, evaluate=evaluate, export=export,
                                               add_train_arguments=add_train_arguments,
                                               add_decode_arguments=add_voting_arguments)
    evaluate_parser.add_argument("--oracle", choices=("instances", "classes"), default=None,
                                 help="the paper's oracle experiments (Tables II and IV)")
    tune_parser = commands.add_parser("tune", help="grid search of the decoding parameters on val images")
    tune_parser.add_argument("--data", required=True)
    tune_parser.add_argument("--run", required=True)
    tune_parser.add_argument("--checkpoint", default="last.pt")
    tune_parser.add_argument("--limit", type=int, default=20)
    tune_parser.add_argument("--threads", type=int, default=2)
    add_debug_argument(tune_parser)
    tune_parser.set_defaults(func=guarded(tune, "tune"))
    return parser


def main(argv: list[str] | None = None) -> object:
    """Run one command; returns its result (training state, evaluation results or ONNX path)."""
    return run_command_line(build_parser, argv, __name__ == "__main__")


if __name__ == "__main__":
    main()
