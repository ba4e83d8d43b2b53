"""Train, evaluate and export the extreme-point U-Net (and the paper's box-only baseline).

    python -m training.extreme_points prepare  --data ROOT --out CROPS_DIR
    python -m training.extreme_points train    --crops CROPS_DIR --variant extreme|box --out RUN_DIR [--epochs 12]
                                               [--loss average_distance|iou|iou_bce] [--resume]
    python -m training.extreme_points evaluate --run RUN_DIR --crops CROPS_DIR
    python -m training.extreme_points export   --run RUN_DIR --out models/extreme_unet.onnx
    python -m training.extreme_points ablation --runs RUN_A RUN_B ... --crops CROPS_DIR [--markdown FILE]

Training follows the paper: Adam, learning rate 1e-3, batch 32, average-distance loss, flip and rotation
augmentation (plus jitter of the extreme points), and the epoch with the best validation aIoU is kept.
Checkpoints are written every epoch (`last.pt`, `best.pt`), so `--resume` continues an interrupted run.
Metrics are computed at the network's 128 x 128, as in the paper.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Collection
from pathlib import Path

import numpy as np
import torch

from instseg_core.annotate.encoding import PRIOR_FOREGROUNDS, encode
from instseg_core.annotate.segmenter import (
    DEFAULT_RELAX_FRACTION,
    annotation_segmenter_from_module,
    create_annotation_segmenter,
)
from instseg_core.base.command_exit import add_debug_argument
from instseg_core.eval.binary_metrics import BinarySegmentationMetrics
from instseg_core.losses.binary_mask import LOSSES
from instseg_core.networks.extreme_unet import ExtremeUNet, SigmoidOutput, deployable
from training.common import (
    batch_norms_to_eval,
    ensure_malloc_tuning,
    export_graph,
    git_commit,
    guarded,
    load_checkpoint_file,
    resumable,
    resume,
    save_atomically,
)
from training.extreme_point_crops import (
    ANNOTATION_CLASSES,
    RANDOMISED_CLASS,
    CropSet,
    augment,
    build_crops,
    build_randomised_crops,
)

# input channels (instseg_core.annotate.encoding.CHANNEL_LAYOUTS)
VARIANTS = {"extreme": 4, "box": 3, "extreme_prior": 5, "extreme_prior_clicks": 7}  # 7: training.extreme_point_clicks
# the networks: the paper's U-Net from scratch, or EfficientNet-Lite0 (ImageNet weights) under a U-Net decoder
ARCHITECTURES = ("unet", "efficientnet_lite0", "unet_imagenet")
# the modules of a pretrained encoder (ExtremeEfficientNetUNet's); the U-Net has none
ENCODER_MODULES = ("stem", "blocks")
# what --frozen-encoder fixes: the pretrained blocks; the stem still trains, as it must learn to pass the point and
# colour-prior channels (zero at the start) into the features
FROZEN_ENCODER_MODULES = ("blocks",)


def build_network(architecture: str, channels: int, pretrained: bool = False) -> torch.nn.Module:
    """The network of `architecture` (ARCHITECTURES) for `channels` input channels; `pretrained` loads the
    ImageNet encoder weights where the architecture has them (training from scratch otherwise)."""
    if architecture == "unet":
        return ExtremeUNet(channels)
    if architecture == "efficientnet_lite0":
        from instseg_core.networks.extreme_efficientnet import ExtremeEfficientNetUNet

        return ExtremeEfficientNetUNet(channels, pretrained=pretrained)
    if architecture == "unet_imagenet":
        from instseg_core.networks.extreme_efficientnet import ExtremeUNetWithImageNetFeatures

        return ExtremeUNetWithImageNetFeatures(channels, pretrained=pretrained)
    raise ValueError(f"unknown architecture {architecture!r}; expected one of {ARCHITECTURES}")


def initialise_from(model: torch.nn.Module, path: str | Path) -> dict:
    """Loads the weights of another run's checkpoint into `model` (train --init) and returns where they came from.
    The checkpoint may lack only the modules `model`'s class declares as ADDED_MODULES (a U-Net's epoch into
    ExtremeUNetWithImageNetFeatures, whose added modules keep their own start); anything else missing or left
    over is an error."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        weights = checkpoint["model"]
    except Exception as error:  # any unreadable file is the same user error
        raise SystemExit(f"--init {path}: not a checkpoint with model weights ({error})") from None
    added = tuple(getattr(model, "ADDED_MODULES", ()))
    try:
        result = model.load_state_dict(weights, strict=False)
    except RuntimeError as error:  # a tensor of another shape
        raise SystemExit(f"--init {path}: its weights do not fit this network ({str(error)[:300]})") from None
    missing = [key for key in result.missing_keys if key.split(".")[0] not in added]
    if missing or result.unexpected_keys:
        raise SystemExit(f"--init {path}: its weights do not fit this network (missing {missing[:3]}, unexpected "
                         f"{result.unexpected_keys[:3]}); was it trained with another architecture or variant?")
    print(f"initialised from {path} (its epoch {checkpoint.get('epoch')})", flush=True)
    return {"path": str(path), "epoch": checkpoint.get("epoch"), "architecture": architecture_of(checkpoint)}


def architecture_of(checkpoint: dict) -> str:
    """The architecture a checkpoint was trained with ("unet" for runs from before the option)."""
    return str(checkpoint.get("config", {}).get("architecture", "unet"))


def freeze_encoder_batch_norm(model: torch.nn.Module) -> int:
    """Puts the batch norms of a pretrained encoder (ENCODER_MODULES) in eval mode, so that they
    normalise with their ImageNet running statistics instead of re-estimating them on synthetic crops (their scale
    and shift still train). Call after each `model.train()`; returns how many were frozen (0 without an encoder)."""
    return batch_norms_to_eval(model, ENCODER_MODULES)


def fix_modules(model: torch.nn.Module, modules: Collection[str]) -> int:
    """Fixes the top-level `modules` of `model`: no gradients for their parameters, and their batch norms in eval
    mode (batch_norms_to_eval). Call after each `model.train()`; returns how many parameters it fixed."""
    batch_norms_to_eval(model, modules)
    fixed = [parameter for name, parameter in model.named_parameters() if name.split(".")[0] in modules]
    for parameter in fixed:
        parameter.requires_grad_(False)
    return len(fixed)


def freeze_encoder(model: torch.nn.Module) -> int:
    """Fixes a pretrained encoder's blocks (FROZEN_ENCODER_MODULES, fix_modules): features trained on real
    photographs then stay what they were, and only the stem and the decoder learn from the synthetic crops
    (Hinterstoisser et al. 2018, "On pre-trained image features and synthetic images for deep learning"). Call after
    each `model.train()`; returns how many parameters it froze (0 without an encoder)."""
    return fix_modules(model, FROZEN_ENCODER_MODULES)


def train_only(model: torch.nn.Module, modules: list[str]) -> int:
    """Fixes every top-level module but `modules` (train --train-only, fix_modules), e.g. only the `injections` of
    ExtremeUNetWithImageNetFeatures learn while a shipped U-Net stays as it was. Call after each `model.train()`;
    returns how many parameters still train."""
    names = {name for name, _ in model.named_children()}
    if not set(modules) <= names:
        raise SystemExit(f"--train-only: this network has no module {sorted(set(modules) - names)}; it has "
                         f"{sorted(names)}")
    fix_modules(model, names - set(modules))
    return sum(1 for parameter in model.parameters() if parameter.requires_grad)


def parameter_groups(model: torch.nn.Module, lr: float, encoder_lr_scale: float) -> list[dict]:
    """Adam parameter groups: a pretrained encoder (ENCODER_MODULES) at `lr * encoder_lr_scale`,
    everything else at `lr`; one group for networks without one. Frozen parameters (freeze_encoder) are left out."""
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    encoder = [p for name, p in trainable if name.split(".")[0] in ENCODER_MODULES]
    if not encoder:
        return [{"params": [p for _, p in trainable], "lr": lr, "lr_scale": 1.0}]
    ids = {id(p) for p in encoder}
    rest = [p for _, p in trainable if id(p) not in ids]
    return [{"params": rest, "lr": lr, "lr_scale": 1.0},
            {"params": encoder, "lr": lr * encoder_lr_scale, "lr_scale": encoder_lr_scale}]


def variant_of(channels: int) -> str:
    """The variant whose network takes `channels` input channels."""
    return {c: v for v, c in VARIANTS.items()}[channels]


def class_name(index: int) -> str:
    return "randomised" if index == RANDOMISED_CLASS else ANNOTATION_CLASSES[index]


def trained_prior_foreground(checkpoint: dict) -> str:
    """The colour-prior foreground a checkpoint was trained with ("box" for runs from before the option)."""
    return str(checkpoint.get("config", {}).get("prior_foreground", "box"))


def batch_inputs(crops: CropSet, index: np.ndarray, variant: str, rng: np.random.Generator | None,
                 photometric: float = 0.0, prior_foreground: str = "box") -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, 128, 128) inputs and (B, 1, 128, 128) targets; augmented when `rng` is given (photometric
    jitter with that probability); the colour prior (5 channels) reads its foreground from `prior_foreground`
    (encoding.PRIOR_FOREGROUNDS)."""
    inputs, targets = [], []
    for i in index:
        image, mask, points = crops.images[i], crops.masks[i], crops.points[i]
        if rng is not None:
            image, mask, points = augment(image, mask, points, rng, photometric=photometric)
        inputs.append(encode(image, None if variant == "box" else points, channels=VARIANTS[variant],
                             prior_foreground=prior_foreground))
        targets.append(mask[None])
    x = torch.from_numpy(np.stack(inputs)).contiguous(memory_format=torch.channels_last)
    return x, torch.from_numpy(np.stack(targets).astype(np.float32))


def evaluate_model(model: torch.nn.Module, crops: CropSet, variant: str, batch_size: int = 32,
                   prior_foreground: str = "box") -> dict:
    """aIoU (batches of `batch_size`), mIoU, iIoU, border error at 128 x 128, with the model in eval mode."""
    return evaluate_network(annotation_segmenter_from_module(model).probabilities, crops, variant, batch_size,
                            prior_foreground)


def evaluate_network(probabilities: Callable[[np.ndarray], np.ndarray], crops: CropSet, variant: str,
                     batch_size: int = 32, prior_foreground: str = "box") -> dict:
    """The metrics of evaluate_model for any network: (N, C, 128, 128) inputs -> (N, 128, 128) probabilities
    (e.g. an ExtremePointSegmenter's `probabilities`)."""
    metrics = BinarySegmentationMetrics()
    for start in range(0, len(crops), batch_size):
        index = np.arange(start, min(start + batch_size, len(crops)))
        x, y = batch_inputs(crops, index, variant, None, prior_foreground=prior_foreground)
        prediction = probabilities(np.ascontiguousarray(x.numpy())) > 0.5
        metrics.add_batch(prediction, y.numpy()[:, 0] > 0.5, [class_name(c) for c in crops.classes[index]])
    return metrics.result()


def load_crop_sets(crops_dir: str | os.PathLike, extra_train: list, extra_val: list
                   ) -> tuple[CropSet, dict[str, CropSet]]:
    """(training crops: CROPS_DIR/train.npz and `extra_train` concatenated, {name: val crops}: "street" for
    CROPS_DIR/val.npz, then each of `extra_val` named by its folder)."""
    train_crops = CropSet.concatenate([CropSet.load(path) for path in [Path(crops_dir) / "train.npz", *extra_train]])
    val_sets = {"street": CropSet.load(Path(crops_dir) / "val.npz")}
    val_sets.update({Path(path).parent.name: CropSet.load(path) for path in extra_val})
    return train_crops, val_sets


def train(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train_crops, val_sets = load_crop_sets(args.crops, args.extra_train_crops, args.extra_val_crops)
    if args.limit:
        train_crops = train_crops.subset(np.random.default_rng(0).permutation(len(train_crops))[:args.limit])
        val_sets = {name: crops.subset(slice(args.limit)) for name, crops in val_sets.items()}
    architecture = getattr(args, "architecture", "unet")
    # pretrained weights always: --resume finds no last.pt on a run's first call, and resume() replaces them anyway
    model = build_network(architecture, VARIANTS[args.variant], pretrained=True).to(memory_format=torch.channels_last)

    def hold_fixed() -> None:
        """What the options keep from training: before the optimizer is built, and after each model.train()."""
        if getattr(args, "freeze_encoder_bn", False):
            freeze_encoder_batch_norm(model)
        if getattr(args, "frozen_encoder", False):
            freeze_encoder(model)
        if getattr(args, "train_only", None):
            train_only(model, args.train_only)

    hold_fixed()
    optimizer = torch.optim.Adam(parameter_groups(model, args.lr, getattr(args, "encoder_lr_scale", 1.0)))
    loss_fn = LOSSES[args.loss]
    state = {"epoch": 0, "best_aiou": -1.0, "best_epoch": -1, "history": [], "train_seconds": 0.0}
    rng = np.random.default_rng(args.seed)
    prior_foreground = getattr(args, "prior_foreground", "box")
    if getattr(args, "init", None) and not (args.resume and (out / "last.pt").exists()):
        state = {**state, "initialised_from": initialise_from(model, args.init)}
    if args.resume:
        state = resume(out, model, optimizer, state, rng)
        for group in optimizer.param_groups:  # --lr applies to the epochs run now (a lower rate to finish)
            group["lr"] = args.lr * group.get("lr_scale", 1.0)
    config = {k: v for k, v in vars(args).items() if k not in ("func", "resume", "debug")}
    for epoch in range(state["epoch"] + 1, args.epochs + 1):
        model.train()
        hold_fixed()
        start = time.perf_counter()
        order = rng.permutation(len(train_crops))
        losses = []
        batches = max(1, len(order) // args.batch_size)
        for b in range(batches):
            x, y = batch_inputs(train_crops, order[b * args.batch_size:(b + 1) * args.batch_size], args.variant, rng,
                                args.photometric, prior_foreground)
            loss = loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if args.progress_every and (b + 1) % args.progress_every == 0:
                print(f"  epoch {epoch} batch {b + 1}/{batches} loss {np.mean(losses[-args.progress_every:]):.4f}",
                      flush=True)
        all_metrics = {name: evaluate_model(model, crops, args.variant, prior_foreground=prior_foreground)
                       for name, crops in val_sets.items()}
        metrics = all_metrics["street"]
        selection = float(np.mean([m["aIoU"] for m in all_metrics.values()]))
        seconds = time.perf_counter() - start
        state["train_seconds"] += seconds
        state["epoch"] = epoch
        entry = {"epoch": epoch, "loss": float(np.mean(losses)), "val_aIoU": metrics["aIoU"],
                 "val_iIoU": metrics["iIoU"], "val_mIoU": metrics["mIoU"], "seconds": seconds,
                 **{f"val_aIoU_{name}": m["aIoU"] for name, m in all_metrics.items() if name != "street"}}
        state["history"].append(entry)
        improved = selection > state["best_aiou"]
        if improved:
            state["best_aiou"], state["best_epoch"] = selection, epoch
            save_atomically({"model": model.state_dict(), "variant": args.variant, "config": config,
                             "metrics": metrics, "epoch": epoch}, out / "best.pt")
        save_atomically({"model": model.state_dict(), "state": state, "variant": args.variant, "config": config,
                         **resumable(optimizer, rng)}, out / "last.pt")
        save_atomically({"model": model.state_dict(), "variant": args.variant, "config": config, "metrics": metrics,
                         "epoch": epoch}, out / f"epoch{epoch}.pt")  # for weight averaging
        (out / "history.json").write_text(json.dumps({"config": config, **state}, indent=1))
        others = "".join(f" {name} {m['aIoU']:.4f}" for name, m in all_metrics.items() if name != "street")
        print(f"epoch {epoch}/{args.epochs} loss {entry['loss']:.4f} val aIoU {metrics['aIoU']:.4f} "
              f"iIoU {metrics['iIoU']:.4f}{others} ({seconds:.0f} s){' best' if improved else ''}", flush=True)
    return state


def load_run(run: str | os.PathLike, which: str = "best.pt") -> tuple[torch.nn.Module, dict]:
    checkpoint = load_checkpoint_file(Path(run) / which, "--checkpoint")
    model = build_network(architecture_of(checkpoint), VARIANTS[checkpoint["variant"]])
    model.load_state_dict(checkpoint["model"])
    return model.eval(), checkpoint


def evaluate(args: argparse.Namespace) -> dict:
    model, checkpoint = load_run(args.run, args.checkpoint)
    crops = CropSet.load(Path(args.crops) / "val.npz")
    result = evaluate_model(model.to(memory_format=torch.channels_last), crops, checkpoint["variant"],
                            prior_foreground=trained_prior_foreground(checkpoint))
    print(json.dumps({k: v for k, v in result.items() if k != "border_histogram"}, indent=1))
    return result


def export_onnx(model: torch.nn.Module, path: str | os.PathLike) -> Path:
    """ONNX (opset 17): input 'input' (N, C, 128, 128) float32, output 'probability' (N, 1, 128, 128), N dynamic.

    The graph is that of `deployable(model)`: the same function with 1x1 convolutions + DepthToSpace in
    place of the transposed convolutions, so that int8 quantisation covers every convolution."""
    return export_graph(SigmoidOutput(deployable(model.eval())), path, {"probability": {0: "batch"}},
                        torch.zeros(1, model.in_channels, 128, 128), {"input": {0: "batch"}})


def export(args: argparse.Namespace) -> Path:
    """ONNX export of the run's best checkpoint, or of `--checkpoint` (see export_onnx), plus a JSON manifest
    beside it."""
    model, checkpoint = load_run(args.run, args.checkpoint)
    out = export_onnx(model, args.out)
    channels = VARIANTS[checkpoint["variant"]]
    history = json.loads((Path(args.run) / "history.json").read_text())
    prior_foreground = getattr(args, "prior_foreground", None) or trained_prior_foreground(checkpoint)
    manifest = {
        "model": "extreme_unet", "architecture": architecture_of(checkpoint), "variant": checkpoint["variant"],
        "input": [1, channels, 128, 128],
        "input_encoding": "RGB (v/255-0.5)/0.25" + (" + extreme-point circles r=4" if channels >= 4 else "")
                          + (f" + colour prior (16 bins per channel, foreground: {prior_foreground})"
                             if channels == 5 else ""),
        "output": "foreground probability (1, 1, 128, 128)",
        "crop_relax": getattr(args, "crop_relax", DEFAULT_RELAX_FRACTION),
        "colour_prior_foreground": prior_foreground,
        "best_epoch": checkpoint["epoch"],
        "averaged_epochs": checkpoint.get("averaged_epochs"),
        "val_metrics": {k: v for k, v in checkpoint["metrics"].items() if k != "border_histogram"},
        "training": {"config": history["config"], "epochs_run": history["epoch"],
                     "train_seconds": history["train_seconds"], "history": history["history"],
                     "machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}"},
        "data": getattr(args, "data_note", ""), "commit": git_commit(),
        "randomised_crops": [json.loads((Path(p).parent / "manifest.json").read_text())
                             for p in history["config"].get("extra_train_crops", [])
                             if (Path(p).parent / "manifest.json").is_file()],
        "reproduce": "make train-extreme (see Makefile: instseg-synth, python -m training.extreme_points "
                     "prepare/randomise/train/ship, python -m training.extreme_point_proxies)",
    }
    out.with_suffix(".json").write_text(json.dumps(manifest, indent=1))
    print(f"wrote {out} and {out.with_suffix('.json')}")
    return out


def average(args: argparse.Namespace) -> Path:
    """RUN/averaged.pt: the mean of the weights of the given epochs (RUN/epoch<N>.pt), with the batch-norm
    running statistics re-estimated on `bn_batches` batches of training crops (seeded, no augmentation); it is
    evaluated on the val sets like an epoch and stored in best.pt's format, with "averaged_epochs"."""
    torch.manual_seed(args.seed)
    run = Path(args.run)
    checkpoints = [load_checkpoint_file(run / f"epoch{epoch}.pt", "--epochs") for epoch in args.epochs]
    model = build_network(architecture_of(checkpoints[0]), VARIANTS[checkpoints[0]["variant"]])
    averaged = {}
    for name, value in checkpoints[0]["model"].items():
        if value.is_floating_point():
            averaged[name] = torch.stack([c["model"][name].float() for c in checkpoints]).mean(0).to(value.dtype)
        else:
            averaged[name] = value
    model.load_state_dict(averaged)
    train_crops, val_sets = load_crop_sets(args.crops, args.extra_train_crops, args.extra_val_crops)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average over the batches below
    model.train()
    order = np.random.default_rng(args.seed).permutation(len(train_crops))
    with torch.no_grad():
        for b in range(args.bn_batches):
            x, _ = batch_inputs(train_crops, order[b * 32:(b + 1) * 32], checkpoints[0]["variant"], None,
                                prior_foreground=trained_prior_foreground(checkpoints[0]))
            model(x)
    model.eval()
    all_metrics = {name: evaluate_model(model, crops, checkpoints[0]["variant"],
                                        prior_foreground=trained_prior_foreground(checkpoints[0]))
                   for name, crops in val_sets.items()}
    out = run / "averaged.pt"
    save_atomically({"model": model.state_dict(), "variant": checkpoints[0]["variant"],
                     "config": checkpoints[-1]["config"], "metrics": all_metrics["street"],
                     "epoch": max(args.epochs), "averaged_epochs": list(args.epochs),
                     "val_aIoU": {name: m["aIoU"] for name, m in all_metrics.items()}}, out)
    print(f"{out}: epochs {args.epochs} averaged; val aIoU " +
          ", ".join(f"{name} {m['aIoU']:.4f}" for name, m in all_metrics.items()), flush=True)
    return out


def ship(args: argparse.Namespace) -> None:
    """The run's best checkpoint into the models folder as the repository ships it: extreme_unet.fp16.onnx (float16
    weights) and extreme_unet.json; then extreme_unet.onnx and extreme_unet_int8.onnx are derived from it exactly
    as set-up derives them (training.derive_models)."""
    import tempfile

    from training.derive_models import derive, store_weights_as_float16

    models = Path(args.models)
    with tempfile.TemporaryDirectory() as scratch:
        fp32 = export(argparse.Namespace(run=args.run, out=Path(scratch) / "extreme_unet.onnx",
                                         data_note=args.data_note, checkpoint=args.checkpoint,
                                         crop_relax=args.crop_relax,
                                         prior_foreground=getattr(args, "prior_foreground", None)))
        store_weights_as_float16(fp32, models / "extreme_unet.fp16.onnx")
        manifest = json.loads(fp32.with_suffix(".json").read_text())
    earlier = models / "extreme_unet.json"
    if earlier.is_file():  # keep the figures recorded for this same network (proxies, int8)
        previous = json.loads(earlier.read_text())
        if previous.get("training", {}).get("history") == manifest["training"]["history"]:
            manifest.update({k: v for k, v in previous.items() if k in ("proxies", "int8")})
    (models / "extreme_unet.json").write_text(json.dumps(manifest, indent=1))
    made = derive(models, only=("extreme_unet.onnx", "extreme_unet_int8.onnx"))
    print(f"shipped {models / 'extreme_unet.fp16.onnx'}; derived {', '.join(made) or 'nothing new'}")


def quantize(args: argparse.Namespace) -> Path:
    """Static int8 quantisation (QDQ, per-channel weights) of an exported model, calibrated on training
    crops; writes <out>.onnx and a manifest with its held-out metrics next to the fp32 model's."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source, out = Path(args.model), Path(args.out)
    fp32_segmenter = create_annotation_segmenter(source)
    variant, prior_foreground = variant_of(fp32_segmenter.channels), fp32_segmenter.prior_foreground
    calibration = CropSet.load(Path(args.crops) / "train.npz")
    chosen = np.random.default_rng(0).permutation(len(calibration))[: args.calibration_crops]

    class Crops(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(range(0, len(chosen), 8))

        def get_next(self) -> dict | None:
            start = next(self.batches, None)
            if start is None:
                return None
            return {"input": batch_inputs(calibration, chosen[start:start + 8], variant, None,
                                          prior_foreground=prior_foreground)[0].numpy()}

    prepared = out.with_suffix(".prep.onnx")
    quant_pre_process(str(source), str(prepared))
    quantize_static(str(prepared), str(out), Crops(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    prepared.unlink()
    val = CropSet.load(Path(args.crops) / "val.npz")
    metrics = {name: evaluate_network(create_annotation_segmenter(path).probabilities, val, variant,
                                      prior_foreground=prior_foreground) for name, path in
               (("fp32", source), ("int8", out))}
    manifest = json.loads(source.with_suffix(".json").read_text())
    manifest.update({
        "quantisation": {"source": source.name, "format": "QDQ static, per-channel int8 weights, uint8 activations",
                         "calibration_crops": len(chosen), "commit": git_commit()},
        "val_metrics": {k: v for k, v in metrics["int8"].items() if k != "border_histogram"},
        "val_metrics_fp32": {k: v for k, v in metrics["fp32"].items() if k != "border_histogram"},
    })
    out.with_suffix(".json").write_text(json.dumps(manifest, indent=1))
    print(f"wrote {out}: val aIoU int8 {metrics['int8']['aIoU']:.4f} vs fp32 {metrics['fp32']['aIoU']:.4f}")
    return out


def ablation(args: argparse.Namespace) -> str:
    table = ablation_table(args.runs, args.crops)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    return table


def ablation_table(runs: list, crops_dir: str | os.PathLike) -> str:
    """Markdown table: each run's best checkpoint evaluated on the held-out val crops."""
    crops = CropSet.load(Path(crops_dir) / "val.npz")
    rows = []
    for run in runs:
        model, checkpoint = load_run(run)
        result = evaluate_model(model.to(memory_format=torch.channels_last), crops, checkpoint["variant"],
                            prior_foreground=trained_prior_foreground(checkpoint))
        history = json.loads((Path(run) / "history.json").read_text())
        per_class = " / ".join(f"{result['per_class_iou'].get(c, float('nan')):.3f}"
                               for c in ("car", "person", "bicycle", "traffic sign"))
        rows.append(f"| {checkpoint['variant']} ({checkpoint['config']['loss']}) | {result['aIoU']:.4f} | "
                    f"{result['mIoU']:.4f} | {result['iIoU']:.4f} | {result['border_error']:.2f} | {per_class} | "
                    f"{checkpoint['epoch']}/{history['epoch']} | {history['train_seconds'] / 60:.0f} |")
    table = "\n".join([
        f"Held-out synthetic val: {len(crops)} crops, 128 x 128.",
        "",
        "| input | aIoU | mIoU | iIoU | border error (px) | IoU car / person / bicycle / sign | best epoch | "
        "train min |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
    ])
    return table


def prepare(args: argparse.Namespace) -> None:
    out = Path(args.out)
    for split in ("train", "val"):
        start = time.perf_counter()
        crops = build_crops(args.data, split, min_area=args.min_area, relax=tuple(args.relax))
        crops.save(out / f"{split}.npz")
        counts = np.bincount(crops.classes, minlength=len(ANNOTATION_CLASSES))
        print(f"{split}: {len(crops)} crops in {time.perf_counter() - start:.0f} s; "
              + ", ".join(f"{c} {n}" for c, n in zip(ANNOTATION_CLASSES, counts, strict=True)), flush=True)


def randomise(args: argparse.Namespace) -> None:
    """Writes OUT/crops.npz: `count` domain-randomised object crops drawn with `seed`."""
    start = time.perf_counter()
    crops = build_randomised_crops(args.count, args.seed, args.jobs, args.truncate, args.neighbours,
                                   tuple(args.relax))
    crops.save(Path(args.out) / "crops.npz")
    (Path(args.out) / "manifest.json").write_text(json.dumps(
        {"generator": "instseg_core.data.randomised_objects", "count": args.count, "seed": args.seed,
         "truncate": args.truncate, "neighbours": args.neighbours, "relax": list(args.relax),
         "commit": git_commit()}, indent=1))
    print(f"{args.out}: {len(crops)} randomised crops (seed {args.seed}) in {time.perf_counter() - start:.0f} s",
          flush=True)


CROP_RELAX_HELP = ("the crop relaxation fraction the pipeline runs this network with, recorded in the manifest as "
                   "crop_relax (create_annotation_segmenter reads it)")
PRIOR_FOREGROUND_HELP = ("where the colour prior reads the foreground's colours (5-channel models; "
                         "instseg_core.annotate.encoding.colour_prior)")
RELAX_HELP = ("the crop box's relaxation margin, a fraction of the points' box drawn uniformly per object from "
              "[LOW, HIGH] (seeded); default 0.1 0.1, the pipeline's fixed 10 %%")


def add_manifest_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `export` and `ship` that the graph's manifest records for the pipeline: the crop margin and
    the colour prior's foreground."""
    parser.add_argument("--crop-relax", type=float, default=DEFAULT_RELAX_FRACTION, help=CROP_RELAX_HELP)
    parser.add_argument("--prior-foreground", choices=PRIOR_FOREGROUNDS, default=None,
                        help="recorded in the manifest as colour_prior_foreground (create_annotation_segmenter "
                             "reads it); default: what the run was trained with")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.extreme_points", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(required=True)
    p = sub.add_parser("prepare", help="build 128x128 object crops from a Cityscapes-format tree")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--min-area", type=int, default=150)
    p.add_argument("--relax", type=float, nargs=2, default=[0.1, 0.1], metavar=("LOW", "HIGH"), help=RELAX_HELP)
    p.set_defaults(func=prepare)
    p = sub.add_parser("randomise", help="render domain-randomised object crops (training data, or its own val)")
    p.add_argument("--out", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--truncate", type=float, default=0.0,
                   help="share of objects cut by the canvas border (objects at the edge of a camera image)")
    p.add_argument("--neighbours", type=float, default=0.0,
                   help="share of objects with 1-2 objects of the same family beside them (behind or in front)")
    p.add_argument("--relax", type=float, nargs=2, default=[0.1, 0.1], metavar=("LOW", "HIGH"), help=RELAX_HELP)
    p.set_defaults(func=randomise)
    p = sub.add_parser("train")
    p.add_argument("--crops", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--variant", choices=sorted(VARIANTS), default="extreme")
    p.add_argument("--loss", choices=sorted(LOSSES), default="average_distance")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--limit", type=int, default=0,
                   help="use only N training crops (a seeded random choice) and the first N of each val set "
                        "(smoke tests)")
    p.add_argument("--extra-train-crops", nargs="*", default=[], help="more CropSet .npz files to train on")
    p.add_argument("--extra-val-crops", nargs="*", default=[],
                   help="more CropSet .npz files to validate on; the best epoch has the best mean aIoU over all")
    p.add_argument("--photometric", type=float, default=0.0,
                   help="probability of colour/blur/noise/JPEG jitter per training crop")
    p.add_argument("--progress-every", type=int, default=20)
    p.add_argument("--prior-foreground", choices=PRIOR_FOREGROUNDS, default="box", help=PRIOR_FOREGROUND_HELP)
    p.add_argument("--architecture", choices=ARCHITECTURES, default="unet",
                   help="unet: the paper's U-Net from scratch; efficientnet_lite0: ImageNet-pretrained "
                        "EfficientNet-Lite0 encoder under a U-Net decoder; unet_imagenet: the U-Net fed the "
                        "features of a (frozen) ImageNet EfficientNet-Lite0 (instseg_core/networks/"
                        "extreme_efficientnet.py)")
    p.add_argument("--encoder-lr-scale", type=float, default=1.0,
                   help="the pretrained encoder's learning rate as a fraction of --lr")
    p.add_argument("--freeze-encoder-bn", action="store_true",
                   help="keep the pretrained encoder's batch-norm statistics (ImageNet's), not re-estimating them")
    p.add_argument("--frozen-encoder", action="store_true",
                   help="fix the pretrained encoder's blocks (weights and batch-norm statistics); the stem and the "
                        "decoder train")
    p.add_argument("--train-only", nargs="+", default=None, metavar="MODULE",
                   help="train only these top-level modules (e.g. injections); everything else keeps its weights "
                        "and batch-norm statistics")
    p.add_argument("--init", default=None, metavar="CHECKPOINT",
                   help="start from another run's weights (e.g. data/runs/extreme_prior/epoch8.pt for --architecture "
                        "unet_imagenet); ignored when --resume finds a last.pt")
    p.add_argument("--resume", action="store_true")
    p.set_defaults(func=train)
    p = sub.add_parser("evaluate")
    p.add_argument("--checkpoint", default="best.pt")
    p.add_argument("--run", required=True)
    p.add_argument("--crops", required=True)
    p.set_defaults(func=evaluate)
    p = sub.add_parser("export")
    p.add_argument("--run", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--data-note", default="")
    p.add_argument("--checkpoint", default="best.pt", help="a checkpoint file of the run (e.g. averaged.pt)")
    add_manifest_arguments(p)
    p.set_defaults(func=export)
    p = sub.add_parser("ship", help="the run's best checkpoint into models/ as shipped (float16 ONNX + manifest), "
                                    "then derive fp32 and int8 as set-up does")
    p.add_argument("--run", required=True)
    p.add_argument("--models", default="models")
    p.add_argument("--data-note", default="")
    p.add_argument("--checkpoint", default="best.pt", help="a checkpoint file of the run (e.g. averaged.pt)")
    add_manifest_arguments(p)
    p.set_defaults(func=ship)
    p = sub.add_parser("average", help="average the weights of some epochs of a run (batch-norm statistics "
                                       "re-estimated on training crops) into RUN/averaged.pt")
    p.add_argument("--run", required=True)
    p.add_argument("--epochs", type=int, nargs="+", required=True)
    p.add_argument("--crops", required=True, help="the folder with train.npz and val.npz (street crops)")
    p.add_argument("--extra-train-crops", nargs="*", default=[])
    p.add_argument("--extra-val-crops", nargs="*", default=[])
    p.add_argument("--bn-batches", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=average)
    p = sub.add_parser("quantize", help="static int8 (QDQ) quantisation of an exported ONNX model")
    p.add_argument("--model", required=True)
    p.add_argument("--crops", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--calibration-crops", type=int, default=256)
    p.set_defaults(func=quantize)
    p = sub.add_parser("ablation")
    p.add_argument("--runs", nargs="+", required=True)
    p.add_argument("--crops", required=True)
    p.add_argument("--markdown")
    p.set_defaults(func=ablation)
    add_debug_argument(parser)
    args = parser.parse_args(argv)
    guarded(args.func, argv_command(argv))(args)


def argv_command(argv: list[str] | None) -> str:
    """The sub-command named on the command line (for the one line of a failure)."""
    return next((word for word in (sys.argv[1:] if argv is None else argv) if not word.startswith("-")), "")


if __name__ == "__main__":
    if sys.argv[1:2] == ["train"]:
        ensure_malloc_tuning()  # only as a command: re-executing replaces the process
    main()
