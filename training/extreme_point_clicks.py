"""Correction clicks for the extreme-point U-Net: fine-tuning with simulated corrections, and shipping.

    python -m training.extreme_point_clicks train --init models/extreme_unet.onnx --crops A.npz B.npz ...
                                                  --val-crops V.npz ... --out RUN [--steps 1400] [--resume]
    python -m training.extreme_point_clicks ship --run RUN [--checkpoint best.pt] [--models models]

The network (encoding.CLICK_CHANNELS = 7 input channels) is the shipped 5-channel U-Net (RGB, extreme points,
colour prior) with two more input channels, the positive and the negative correction clicks as disks
(encoding.click_channel; RITM's encoding). It starts from the shipped graph's weights (unet_from_graph: the graph's
convolutions carry the batch norms folded in, so the batch norms start as identities and stay in eval mode), with
zero filters on the two new channels: without clicks it computes exactly the shipped function.

Training follows interactive segmentation's iterative sampling (Xu et al. 2016; RITM, "Reviving iterative training
with mask guidance for interactive segmentation", 2021): each training crop draws a number of clicks, 0-3; the clicks
are placed one after another where the model itself, given the clicks so far, errs most (the interior of its largest
error region, corrections.next_correction_click, the protocol's click), without gradients; the loss (the paper's
average-distance loss) is then taken on the prediction with all of them. The new filters learn at 20 x the rate of
the pretrained weights. Crops drawn without clicks (35 %) are trained towards the starting network's own mask
(--keep-zero-click), not the ground truth: trained towards the ground truth alone, the network learned to wait for
clicks and its masks from the points alone lost 0.035-0.046 mean IoU on the real sets within 500 steps.
Augmentation is the extreme-point training's (flip, rotation, point jitter, photometric jitter).

Steps, not epochs: `last.pt` every --save-every steps (resumable exactly: weights, optimizer and random states),
`stepN.pt` beside it, and a validation line (mean IoU after 0-3 automatic clicks at 128 x 128) every --eval-every
steps; best.pt has the best mean IoU after 2 clicks on the validation crops.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from instseg_core.annotate.corrections import next_correction_click
from instseg_core.annotate.encoding import CLICK_CHANNELS, click_channel, encode
from instseg_core.base.command_exit import add_debug_argument
from instseg_core.eval.binary_metrics import iou
from instseg_core.losses.binary_mask import LOSSES
from instseg_core.networks.extreme_unet import ExtremeUNet
from training.common import (
    batch_norms_to_eval,
    ensure_malloc_tuning,
    git_commit,
    guarded,
    load_checkpoint_file,
    resumable,
    save_atomically,
)
from training.extreme_point_crops import CropSet, augment

BASE_CHANNELS = 5  # the shipped network's input: RGB, extreme points, colour prior
CLICK_COUNT_WEIGHTS = (0.35, 0.25, 0.2, 0.2)  # P(0, 1, 2, 3 clicks) per training crop


def unet_from_graph(path: str | os.PathLike, channels: int = CLICK_CHANNELS) -> ExtremeUNet:
    """An ExtremeUNet with `channels` inputs computing the function of an exported 5-channel extreme-point graph
    (fp32 or fp16 weights; training.extreme_points.export_onnx's layout: the batch norms folded into the
    convolutions, the transposed convolutions as 1x1 convolution + DepthToSpace): its convolutions take the graph's
    weights, each batch norm becomes the identity plus the folded bias (mean 0, variance 1 - eps, scale 1), and the
    input filters of channels past the graph's are zero. Call .eval() on its batch norms while training (they hold
    no statistics of their own)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    values = {init.name: numpy_helper.to_array(init).astype(np.float32) for init in graph.initializer}
    for node in graph.node:  # the fp16 graph: Cast(initializer) -> float32 value
        if node.op_type == "Cast" and node.input[0] in values:
            values[node.output[0]] = values[node.input[0]]
    convs = [(values[node.input[1]], values[node.input[2]] if len(node.input) > 2 else None)
             for node in graph.node if node.op_type == "Conv"]
    model = ExtremeUNet(channels)
    encoder_convs = [m for encoder in model.encoders for m in encoder if isinstance(m, nn.Conv2d)]
    encoder_norms = [m for encoder in model.encoders for m in encoder if isinstance(m, nn.BatchNorm2d)]
    order: list[tuple[str, nn.Module, nn.Module | None]] = [
        ("conv", conv, norm) for conv, norm in zip(encoder_convs, encoder_norms, strict=True)]
    for upsampler, decoder in zip(model.upsamplers, model.decoders, strict=True):
        order.append(("up", upsampler, None))
        convs_d = [m for m in decoder if isinstance(m, nn.Conv2d)]
        norms_d = [m for m in decoder if isinstance(m, nn.BatchNorm2d)]
        order.extend(("conv", conv, norm) for conv, norm in zip(convs_d, norms_d, strict=True))
    order.append(("head", model.head, None))
    if len(order) != len(convs):
        raise ValueError(f"{path}: {len(convs)} convolutions, an ExtremeUNet has {len(order)}")
    with torch.no_grad():
        for (kind, module, norm), (weight, bias) in zip(order, convs, strict=True):
            w = torch.from_numpy(weight)
            b = torch.from_numpy(bias) if bias is not None else None
            if kind == "up":  # (4 * C_out, C_in, 1, 1) -> ConvTranspose (C_in, C_out, 2, 2); see PixelShuffleUpsample
                out_channels = module.out_channels
                module.weight.copy_(w.reshape(out_channels, 2, 2, -1).permute(3, 0, 1, 2))
                module.bias.copy_(b.reshape(out_channels, 4)[:, 0])
                continue
            if kind == "head":
                module.weight.copy_(w)
                module.bias.copy_(b)
                continue
            if module.weight.shape[1] != w.shape[1]:  # the first convolution: zero filters on the new channels
                if module.weight.shape[1] < w.shape[1]:
                    raise ValueError(f"{path}: the graph takes {w.shape[1]} channels, more than {channels}")
                module.weight.zero_()
                module.weight[:, :w.shape[1]] = w
            else:
                module.weight.copy_(w)
            norm.running_mean.zero_()
            norm.running_var.fill_(1.0 - norm.eps)
            norm.weight.fill_(1.0)
            norm.bias.copy_(b if b is not None else torch.zeros_like(norm.bias))
    return model


class ClickUNet(nn.Module):
    """Training form of the click network: `unet` (an ExtremeUNet(7)) whose first convolution's filters on the click
    channels are the separate parameter `click_filters` (so that they can learn at their own rate). `merged()`
    gives the ExtremeUNet(7) with them written back (for export). Forward: (B, 7, 128, 128) -> (B, 1, 128, 128)
    logits."""

    def __init__(self, unet: ExtremeUNet) -> None:
        super().__init__()
        self.unet = unet
        self.in_channels = unet.in_channels
        first = self._first()
        self.click_filters = nn.Parameter(first.weight[:, BASE_CHANNELS:].detach().clone())

    def _first(self) -> nn.Conv2d:
        return self.unet.encoders[0][0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = self._first()
        weight = torch.cat([first.weight[:, :BASE_CHANNELS], self.click_filters], dim=1)
        y = functional.conv2d(x, weight, first.bias, padding=1)
        for layer in list(self.unet.encoders[0])[1:]:
            y = layer(y)
        skips = [y]
        for encoder in list(self.unet.encoders)[1:]:
            y = encoder(self.unet.pool(y))
            skips.append(y)
        return self.unet.decode(skips)

    def merged(self) -> ExtremeUNet:
        with torch.no_grad():
            self._first().weight[:, BASE_CHANNELS:] = self.click_filters
        return self.unet


def add_click(inputs: np.ndarray, u: float, v: float, positive: bool) -> None:
    """Draw one click disk into a (7, 128, 128) encoded input (channel 5 positive, 6 negative), in place."""
    channel = 5 if positive else 6
    np.maximum(inputs[channel], click_channel(np.array([[u, v]])), out=inputs[channel])


def predict(model: nn.Module, inputs: np.ndarray) -> np.ndarray:
    """(N, 7, 128, 128) float32 -> (N, 128, 128) bool masks (probability > 0.5), without gradients."""
    with torch.no_grad():
        return (model(torch.from_numpy(inputs)) > 0).numpy()[:, 0]


def simulate_clicks(model: nn.Module, inputs: np.ndarray, masks: np.ndarray, counts: np.ndarray,
                    final: bool = True) -> list:
    """Places counts[i] clicks into inputs[i] (in place), one after another, each where the model given the clicks
    so far errs most (corrections.next_correction_click against masks[i]). Returns the predictions of every round,
    [(indices, (n, 128, 128) bool)] (the evaluation's IoU per click count); `final` False skips each sample's last
    prediction (after its last click: training takes that one with gradients)."""
    rounds = []
    for round_index in range(int(counts.max(initial=0)) + 1):
        active = np.flatnonzero(counts >= round_index) if final else np.flatnonzero(counts > round_index)
        if not len(active):
            break
        predictions = predict(model, inputs[active])
        rounds.append((active, predictions))
        for i, prediction in zip(active, predictions, strict=True):
            if counts[i] <= round_index:
                continue
            click = next_correction_click(prediction, masks[i])
            if click is not None:
                add_click(inputs[i], click.x, click.y, click.positive)
    return rounds


def encode_batch(crops: CropSet, index: np.ndarray, rng: np.random.Generator | None, photometric: float,
                 prior_foreground: str) -> tuple[np.ndarray, np.ndarray]:
    """(B, 7, 128, 128) float32 inputs without clicks and (B, 128, 128) bool targets; augmented when `rng`."""
    inputs, targets = [], []
    for i in index:
        image, mask, points = crops.images[i], crops.masks[i], crops.points[i]
        if rng is not None:
            image, mask, points = augment(image, mask, points, rng, photometric=photometric)
        inputs.append(encode(image, points, channels=CLICK_CHANNELS, prior_foreground=prior_foreground))
        targets.append(mask > 0)
    return np.stack(inputs), np.stack(targets)


def evaluate_clicks(model: nn.Module, crops: CropSet, prior_foreground: str, clicks: int = 3,
                    batch_size: int = 64) -> list[float]:
    """Mean IoU at 128 x 128 after 0..`clicks` automatic clicks on the crops (no augmentation)."""
    model.eval()
    totals = np.zeros(clicks + 1)
    for start in range(0, len(crops), batch_size):
        index = np.arange(start, min(start + batch_size, len(crops)))
        inputs, masks = encode_batch(crops, index, None, 0.0, prior_foreground)
        rounds = simulate_clicks(model, inputs, masks, np.full(len(index), clicks))
        for k, (active, predictions) in enumerate(rounds):
            totals[k] += sum(iou(p, masks[i]) for i, p in zip(active, predictions, strict=True))
    return [float(t / len(crops)) for t in totals]


def train(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    crops = CropSet.concatenate([CropSet.load(p) for p in args.crops])
    val = CropSet.concatenate([CropSet.load(p).subset(slice(args.val_per_set)) for p in args.val_crops])
    model = ClickUNet(unet_from_graph(args.init)).to(memory_format=torch.channels_last)
    # the network it starts from, fixed: without clicks the new one is trained to keep its masks (--keep-zero-click)
    teacher = unet_from_graph(args.init, BASE_CHANNELS).eval().requires_grad_(False)
    base = [p for name, p in model.named_parameters() if name != "click_filters"]
    optimizer = torch.optim.Adam([{"params": base, "lr": args.lr},
                                  {"params": [model.click_filters], "lr": args.lr * args.click_lr_scale}])
    loss_fn = LOSSES[args.loss]
    rng = np.random.default_rng(args.seed)
    config = {k: v for k, v in vars(args).items() if k not in ("func", "resume", "debug")}
    state: dict = {"step": 0, "train_seconds": 0.0, "history": [], "best": -1.0, "best_step": -1}
    if args.resume and (out / "last.pt").exists():
        checkpoint = load_checkpoint_file(out / "last.pt", "--resume")
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        rng.bit_generator.state = checkpoint["rng"]
        torch.set_rng_state(checkpoint["torch_rng"])
        state = checkpoint["state"]
        for group, lr in zip(optimizer.param_groups, (args.lr, args.lr * args.click_lr_scale), strict=True):
            group["lr"] = lr  # --lr applies to the steps run now (a stage at another rate, as make train-extreme has)
        print(f"resumed {out / 'last.pt'} after step {state['step']}", flush=True)
    elif state["step"] == 0:
        zero = evaluate_clicks(model, val, args.prior_foreground)
        state["history"].append({"step": 0, "val_iou_after_clicks": zero})
        print(f"step 0: val IoU after 0-3 clicks {' '.join(f'{v:.4f}' for v in zero)}", flush=True)
    weights = np.asarray(args.click_weights) / np.sum(args.click_weights)
    losses: list[float] = []
    started = time.perf_counter()
    while state["step"] < args.steps:
        model.train()
        batch_norms_to_eval(model)
        index = rng.integers(0, len(crops), args.batch_size)
        inputs, masks = encode_batch(crops, index, rng, args.photometric, args.prior_foreground)
        counts = rng.choice(len(weights), size=len(index), p=weights)
        model.eval()  # the simulated clicks see the model as it predicts (no batch norm changes either way)
        simulate_clicks(model, inputs, masks, counts, final=False)
        model.train()
        batch_norms_to_eval(model)
        x = torch.from_numpy(inputs).contiguous(memory_format=torch.channels_last)
        y = torch.from_numpy(masks[:, None].astype(np.float32))
        zero = np.flatnonzero(counts == 0)
        if args.keep_zero_click and len(zero):  # the target without clicks: the starting network's own mask
            with torch.no_grad():
                y[zero] = (teacher(torch.from_numpy(inputs[zero, :BASE_CHANNELS])) > 0).float()
        loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        state["step"] += 1
        step = state["step"]
        if args.progress_every and step % args.progress_every == 0:
            print(f"  step {step}/{args.steps} loss {np.mean(losses[-args.progress_every:]):.4f} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
        if step % args.save_every == 0 or step == args.steps:
            state["train_seconds"] += time.perf_counter() - started
            started = time.perf_counter()
            entry: dict = {"step": step, "loss": float(np.mean(losses)) if losses else None, "lr": args.lr,
                           "click_lr": args.lr * args.click_lr_scale}
            losses = []
            if step % args.eval_every == 0 or step == args.steps:
                entry["val_iou_after_clicks"] = evaluate_clicks(model, val, args.prior_foreground)
                score = entry["val_iou_after_clicks"][2]
                if score > state["best"]:
                    state["best"], state["best_step"] = score, step
                    save_atomically({"model": model.state_dict(), "config": config, "step": step}, out / "best.pt")
                print(f"step {step}: val IoU after 0-3 clicks "
                      f"{' '.join(f'{v:.4f}' for v in entry['val_iou_after_clicks'])}", flush=True)
                started = time.perf_counter()
            state["history"].append(entry)
            save_atomically({"model": model.state_dict(), "config": config, "step": step}, out / f"step{step}.pt")
            save_atomically({"model": model.state_dict(), "state": state, "config": config,
                             **resumable(optimizer, rng)}, out / "last.pt")
            (out / "history.json").write_text(json.dumps({"config": config, **state}, indent=1))
    return state


def average(args: argparse.Namespace) -> Path:
    """RUN/<out-name>: the mean of the weights of the given steps (RUN/stepN.pt), blended with the starting network's
    (--init) as (1 - start_weight) * mean + start_weight * start: weight averaging along the run (Izmailov et al. 2018)
    and, with a start weight, the weight-space ensemble of the fine-tuned and the starting network that keeps more
    of the latter's behaviour on data unlike the fine-tuning data (WiSE-FT, Wortsman et al. 2022); the batch norms
    hold no statistics to re-estimate (their statistics are fixed). Stored in the stepN.pt format."""
    run = Path(args.run)
    checkpoints = [load_checkpoint_file(run / f"step{step}.pt", "--steps") for step in args.steps]
    start = ClickUNet(unet_from_graph(args.init)).state_dict()
    blended = {}
    for name, value in checkpoints[0]["model"].items():
        if not value.is_floating_point():
            blended[name] = value
            continue
        mean = torch.stack([c["model"][name].float() for c in checkpoints]).mean(0)
        blended[name] = ((1 - args.start_weight) * mean + args.start_weight * start[name].float()).to(value.dtype)
    out = run / args.out_name
    save_atomically({"model": blended, "config": checkpoints[-1]["config"], "step": max(args.steps),
                     "averaged_steps": list(args.steps), "start_weight": args.start_weight}, out)
    print(f"{out}: steps {args.steps} averaged, start network weight {args.start_weight}")
    return out


def load_click_run(run: str | os.PathLike, which: str = "best.pt") -> tuple[ExtremeUNet, dict]:
    """The merged ExtremeUNet(7) (eval mode) of a run's checkpoint, and the checkpoint."""
    checkpoint = load_checkpoint_file(Path(run) / which, "--checkpoint")
    model = ClickUNet(ExtremeUNet(CLICK_CHANNELS))
    model.load_state_dict(checkpoint["model"])
    return model.merged().eval(), checkpoint


def ship(args: argparse.Namespace) -> None:
    """The run's checkpoint into the models folder as the repository ships it: extreme_unet.fp16.onnx (float16
    weights) and extreme_unet.json (the earlier manifest's fields kept: crop_relax, colour_prior_foreground, its
    training record under `base_training`; input and encoding updated; `correction_clicks` says how the click
    stage was trained); then extreme_unet.onnx and extreme_unet_int8.onnx derived as set-up derives them."""
    import tempfile

    from training.derive_models import derive, store_weights_as_float16
    from training.extreme_points import export_onnx

    models = Path(args.models)
    model, checkpoint = load_click_run(args.run, args.checkpoint)
    history = json.loads((Path(args.run) / "history.json").read_text())
    manifest = json.loads((models / "extreme_unet.json").read_text())
    if manifest.get("input", [0, 0])[1] != CLICK_CHANNELS:  # the 5-channel network's record, kept once
        manifest["base_training"] = {key: manifest.pop(key) for key in
                                     ("training", "val_metrics", "best_epoch", "averaged_epochs", "data", "commit",
                                      "randomised_crops", "proxies", "int8") if key in manifest}
    manifest.update({
        "variant": "extreme_prior_clicks", "input": [1, CLICK_CHANNELS, 128, 128],
        "input_encoding": "RGB (v/255-0.5)/0.25 + extreme-point circles r=4 + colour prior (16 bins per channel, "
                          f"foreground: {manifest.get('colour_prior_foreground', 'box')}) + positive clicks + "
                          "negative clicks (circles r=4)",
        "correction_clicks": {"run_config": history["config"], "step": checkpoint["step"],
                              "steps_run": history["step"], "train_seconds": history["train_seconds"],
                              "history": history["history"],
                              "machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}",
                              "commit": git_commit()},
        "commit": git_commit(),
        "reproduce": "make train-extreme (the click stage: python -m training.extreme_point_clicks train/ship; "
                     "figures: python -m training.extreme_point_clicks protocol)",
    })
    manifest.pop("proxies", None)
    manifest.pop("int8", None)
    with tempfile.TemporaryDirectory() as scratch:
        fp32 = export_onnx(model, Path(scratch) / "extreme_unet.onnx")
        store_weights_as_float16(fp32, models / "extreme_unet.fp16.onnx")
    (models / "extreme_unet.json").write_text(json.dumps(manifest, indent=1))
    made = derive(models, only=("extreme_unet.onnx", "extreme_unet_int8.onnx"))
    print(f"shipped {models / 'extreme_unet.fp16.onnx'} (step {checkpoint['step']}); derived "
          f"{', '.join(made) or 'nothing new'}")


def main(argv: list[str] | None = None) -> None:
    from instseg_core.annotate.encoding import PRIOR_FOREGROUNDS

    parser = argparse.ArgumentParser(prog="python -m training.extreme_point_clicks",
                                     description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(required=True)
    p = sub.add_parser("train", help="fine-tune the shipped network with simulated correction clicks")
    p.add_argument("--init", required=True, help="the shipped 5-channel graph (models/extreme_unet.onnx)")
    p.add_argument("--crops", nargs="+", required=True, help="CropSet .npz files to train on")
    p.add_argument("--val-crops", nargs="+", required=True, help="CropSet .npz files to validate on")
    p.add_argument("--val-per-set", type=int, default=200, help="the first N crops of each validation file")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=1400)
    p.add_argument("--batch-size", type=int, default=24)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--click-lr-scale", type=float, default=20.0,
                   help="the new click filters' learning rate as a multiple of --lr")
    p.add_argument("--loss", choices=sorted(LOSSES), default="average_distance")
    p.add_argument("--click-weights", type=float, nargs=4, default=list(CLICK_COUNT_WEIGHTS),
                   metavar=("P0", "P1", "P2", "P3"), help="how often a training crop gets 0, 1, 2 or 3 clicks")
    p.add_argument("--keep-zero-click", action=argparse.BooleanOptionalAction, default=True,
                   help="crops without clicks are trained towards the starting network's own mask (not the ground "
                        "truth), so that a request without clicks keeps its answer")
    p.add_argument("--photometric", type=float, default=0.5)
    p.add_argument("--prior-foreground", choices=PRIOR_FOREGROUNDS, default="box_and_hull",
                   help="the colour prior's foreground (the shipped network's: box_and_hull)")
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--eval-every", type=int, default=200)
    p.add_argument("--progress-every", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    p.set_defaults(func=train)
    p = sub.add_parser("average", help="average a run's step checkpoints, optionally blended with the starting "
                                       "network (WiSE-FT), into RUN/<out-name>")
    p.add_argument("--run", required=True)
    p.add_argument("--init", required=True, help="the starting graph (the run's --init)")
    p.add_argument("--steps", type=int, nargs="+", required=True)
    p.add_argument("--start-weight", type=float, default=0.0)
    p.add_argument("--out-name", default="averaged.pt")
    p.set_defaults(func=average)
    p = sub.add_parser("ship", help="a run's checkpoint into models/ (fp16 ONNX + manifest), then derive fp32/int8")
    p.add_argument("--run", required=True)
    p.add_argument("--checkpoint", default="best.pt")
    p.add_argument("--models", default="models")
    p.set_defaults(func=ship)
    add_debug_argument(parser)
    args = parser.parse_args(argv)
    guarded(args.func, next((w for w in (sys.argv[1:] if argv is None else argv) if not w.startswith("-")), ""))(args)


if __name__ == "__main__":
    if sys.argv[1:2] == ["train"]:
        ensure_malloc_tuning()
    main()
