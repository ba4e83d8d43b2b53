"""Helpers shared by the training commands.

Every sub-command runs under `guarded` (instseg_core.base.command_exit): exit status 0 only when it did everything
asked; a checkpoint that cannot be used (`CheckpointError`: missing, truncated, not a checkpoint, weights of another
network), a bad sample (`SampleError`) or an OSError is one line naming the file and status 2; anything else is
"internal error" and status 1, its traceback in a log file (or on stderr with --debug).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Collection
from pathlib import Path

import numpy as np
import torch

from instseg_core.base.atomic_files import write_bytes_atomically
from instseg_core.base.classes import INSTANCE_CLASSES
from instseg_core.base.command_exit import (
    CommandExit,
    InputError,
    add_debug_argument,
    debug_requested,
    run_command,
)
from instseg_core.data.instance_training import CROP_MODES, CropSampler

MALLOC_TUNING = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "68719476736"}


class CheckpointError(InputError):
    """A checkpoint that cannot be used (missing, truncated or damaged, not a checkpoint, weights that do not fit);
    the message names the file."""


def command_name(command: Callable, subcommand: str) -> str:
    """'training.box2pix train': the module that defines `command` (also under `python -m`) and the sub-command."""
    module = command.__module__
    if module == "__main__":
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        module = spec.name if spec is not None else Path(sys.argv[0]).stem
    return f"{module} {subcommand}"


def guarded(command: Callable[[argparse.Namespace], object], subcommand: str) -> Callable[[argparse.Namespace], object]:
    """`command(args)` under the exit rule (module docstring): its result, or one line on stderr starting with
    `command_name` and CommandExit (status 2 for input errors, 1 for internal errors)."""
    name = command_name(command, subcommand)

    def run(args: argparse.Namespace) -> object:
        return run_on_rank(name, lambda: command(args), debug=debug_requested(args))
    return run


def run_on_rank(name: str, body: Callable[[], object], debug: bool = False) -> object:
    """run_command(name, body), except that under torchrun a rank other than 0 ends a failed command with the
    same status without printing its line (rank 0 prints it; with `debug` every rank prints)."""
    if not quiet_rank() or debug:
        return run_command(name, body, debug=debug)
    try:
        return body()
    except CommandExit:
        raise
    except (Exception, KeyboardInterrupt, SystemExit) as exc:
        with contextlib.redirect_stderr(io.StringIO()):
            return run_command(name, functools.partial(_raise, exc))


def quiet_rank() -> bool:
    """A process of a torchrun group other than rank 0: it leaves a failed command's line to rank 0 (--debug:
    every rank prints)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and int(os.environ.get("RANK", "0")) != 0


def _raise(exc: BaseException) -> object:
    raise exc


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (torch's run over many lines), or its type."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def load_checkpoint_file(path: str | os.PathLike, what: str = "checkpoint") -> dict:
    """torch.load of a checkpoint with model weights, or CheckpointError naming the file (`what` says which
    argument gave it): missing, unreadable (truncated, damaged: torch's own message does not name the file), or
    not a dict with "model"."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path}: no such file")
    try:
        checkpoint = torch.load(path, weights_only=False, map_location="cpu")
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"{what} {path} ({path.stat().st_size} bytes) is not a checkpoint torch can read: "
                              f"{first_line(exc)} (truncated or damaged?)") from exc
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise CheckpointError(f"{what} {path}: not a checkpoint with model weights")
    return checkpoint


def load_weights(model: torch.nn.Module, checkpoint: dict, path: str | os.PathLike, what: str = "checkpoint") -> None:
    """model.load_state_dict(checkpoint["model"]), or CheckpointError naming the file when the weights do not fit."""
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"{what} {path}: its weights do not fit this network ({str(exc)[:300]})") from exc


def ensure_malloc_tuning() -> None:
    """Re-run this process with glibc's mmap threshold off: PyTorch eager on CPU is ~1.4x faster here."""
    if any(os.environ.get(k) != v for k, v in MALLOC_TUNING.items()) and not os.environ.get("INSTSEG_NO_REEXEC"):
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, **MALLOC_TUNING})


def batch_norms_to_eval(model: torch.nn.Module, modules: Collection[str] | None = None) -> int:
    """Puts the batch norms of `model` (only those inside its top-level `modules` when given) in eval mode: they
    normalise with their running statistics and stop updating them. Call after each `model.train()`; returns how
    many."""
    norms = [module for name, module in model.named_modules()
             if (modules is None or name.split(".")[0] in modules) and isinstance(module, torch.nn.BatchNorm2d)]
    for norm in norms:
        norm.eval()
    return len(norms)


def run_command_line(build_parser: Callable[[], argparse.ArgumentParser], argv: list[str] | None,
                     as_script: bool) -> object:
    """A model module's main(): parse `argv` with its parser and run the chosen command (its `func`), returning its
    result; `train` run as a script (`as_script`: the module's __name__ is "__main__") first re-runs the process
    with the malloc tuning (ensure_malloc_tuning)."""
    args = build_parser().parse_args(argv)
    if args.command == "train" and as_script:
        ensure_malloc_tuning()
    return args.func(args)


def git_commit() -> str:
    """The repository's HEAD commit, or 'unknown'."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def save_atomically(obj: object, path: str | os.PathLike) -> None:
    """torch.save into memory, then write the bytes to a temporary file next to `path` and rename (a crash never
    leaves half a checkpoint). Serialising first keeps a full disk an OSError naming `path` and the errno (torch's
    own file writer turns ENOSPC into a RuntimeError "unexpected pos ..." that names neither)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes_atomically(path, buffer.getbuffer())


def save_shipped_checkpoint(model: torch.nn.Module, model_config: dict, epoch: int, path: str | os.PathLike) -> Path:
    """The checkpoint the repository ships (models/<name>.pt): float16 weights (half the size; load_state_dict
    copies them into the float32 network), the model config, the epoch and the commit; written atomically. The
    ONNX graphs are derived from it at set-up (training/derive_models.py)."""
    weights = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    save_atomically({"model": weights, "model_config": model_config, "epoch": epoch, "weights_dtype": "float16",
                     "commit": git_commit()}, path)
    return Path(path)


def start_training(args: argparse.Namespace) -> tuple[Path, tuple[str, ...], CropSampler]:
    """What every training command does first (training.loop.start_run): device, process group, threads and seed
    from the arguments, the run folder (created), the class names and the training split behind the --crops
    sampler (streamed from disk through its cached object index; --in-memory: decoded first). Returns (out,
    classes, crop sampler); the models' train() use start_run itself for the runtime."""
    from training.loop import start_run

    run = start_run(args)
    return run.out, run.classes, run.sampler


def resume(out: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict,
           rng: object, restore: Callable[[dict], None] | None = None) -> dict:
    """Load out/last.pt (if any) into model, optimizer and the NumPy/torch random states, and hand the loaded
    checkpoint to `restore` for what else a model keeps there (Box2Pix: its loss state); returns the saved
    training state, or `state` when there is no checkpoint."""
    path = Path(out) / "last.pt"
    if not path.exists():
        return state
    checkpoint = load_checkpoint_file(path, "--resume")
    missing = [key for key in ("optimizer", "rng", "torch_rng", "state") if key not in checkpoint]
    if missing:
        raise CheckpointError(f"--resume {path}: not a resumable checkpoint (it lacks {', '.join(missing)})")
    load_weights(model, checkpoint, path, "--resume")
    optimizer.load_state_dict(checkpoint["optimizer"])
    rng.bit_generator.state = checkpoint["rng"]
    torch.set_rng_state(checkpoint["torch_rng"])
    if restore is not None:
        restore(checkpoint)
    print(f"resumed {path} after epoch {checkpoint['state']['epoch']}", flush=True)
    return checkpoint["state"]


def resume_or_initialise(args: argparse.Namespace, out: Path, model: torch.nn.Module,
                         optimizer: torch.optim.Optimizer, state: dict, rng: object,
                         restore: Callable[[dict], None] | None = None) -> dict:
    """How a training command starts: with --resume and a last.pt in `out`, exactly where that run stopped
    (`resume`, which passes the checkpoint to `restore`); otherwise, with --init CHECKPOINT, from that
    checkpoint's weights (a run's or a shipped float16 .pt; a fresh optimizer and a learning-rate schedule of
    --epochs new epochs, so fine-tuning a shipped model needs neither its optimizer state nor its run folder);
    otherwise from scratch. Returns the training state."""
    if args.resume and (Path(out) / "last.pt").exists():
        return resume(out, model, optimizer, state, rng, restore)
    if getattr(args, "init", None):
        checkpoint = load_checkpoint_file(args.init, "--init")
        load_weights(model, checkpoint, args.init, "--init")  # float16 weights are copied into the float32 parameters
        print(f"initialised from {args.init} (its epoch {checkpoint.get('epoch')})", flush=True)
        return {**state, "initialised_from": {"path": str(args.init), "epoch": checkpoint.get("epoch"),
                                              "commit": checkpoint.get("commit")}}
    return state


# What tells the networks' checkpoints apart: a key of their model_config only one of them has.
NETWORK_KEYS = {"spatial_embeddings": "n_sigma", "box2pix": "prior_sizes", "dcme": "vector_scale"}
# model_config entries that change the weights' shapes, and the train option that sets each
STRUCTURAL_OPTIONS = {"backbone": "--backbone", "n_sigma": "--n-sigma", "classes": "--classes"}


def checkpoint_network(model_config: object) -> str | None:
    """Which network ('spatial_embeddings', 'box2pix', 'dcme') a checkpoint's model_config describes, or None."""
    if not isinstance(model_config, dict):
        return None
    return next((name for name, key in NETWORK_KEYS.items() if key in model_config), None)


def check_init(args: argparse.Namespace, network: str) -> None:
    """Before anything long: an --init checkpoint (unless --resume finds a last.pt) must be one of `network`'s with
    the options that shape its weights (--backbone, --n-sigma, --classes) as in its model_config; otherwise
    CheckpointError naming the file, what it is and the option to add."""
    init = getattr(args, "init", None)
    if not init or (args.resume and (Path(args.out) / "last.pt").exists()):
        return
    config = load_checkpoint_file(init, "--init").get("model_config")
    kind = checkpoint_network(config)
    if kind is not None and kind != network:
        raise CheckpointError(f"--init {init} is a {kind} checkpoint, not a {network} one (fine-tune it with "
                              f"python -m training.{kind} train)")
    if not isinstance(config, dict):
        return
    for key, option in STRUCTURAL_OPTIONS.items():
        if key in config and hasattr(args, key):
            wanted = list(getattr(args, key)) if key == "classes" else getattr(args, key)
            if config[key] != wanted:
                value = " ".join(config[key]) if key == "classes" else config[key]
                raise CheckpointError(f"--init {init}: this checkpoint is a {network} network with {key} {value} "
                                      f"(this command would build {key} "
                                      f"{' '.join(wanted) if key == 'classes' else wanted}): add {option} {value}")


def resumable(optimizer: torch.optim.Optimizer, rng: object) -> dict:
    """What last.pt needs beyond the model to continue exactly: optimizer and random states."""
    return {"optimizer": optimizer.state_dict(), "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state()}


def add_data_argument(parser: argparse.ArgumentParser) -> None:
    """--data ROOT, by default $CITYSCAPES_DATASET (the variable cityscapesScripts reads); required without it."""
    default = os.environ.get("CITYSCAPES_DATASET") or None
    parser.add_argument("--data", required=default is None, default=default,
                        help="Cityscapes-format root (default: $CITYSCAPES_DATASET when set)")


def add_common_train_arguments(parser: argparse.ArgumentParser, *, crop: tuple[int, int], epochs: int,
                               lr: float, keep_every: int, progress_every: int) -> None:
    """The arguments every training command shares (data, schedule, checkpoints); defaults per model."""
    add_data_argument(parser)
    parser.add_argument("--out", required=True, help="run directory")
    parser.add_argument("--classes", nargs="+", default=list(INSTANCE_CLASSES))
    parser.add_argument("--scale", type=float, default=1.0, help="resize images first (0.5: Cityscapes at 1024x512)")
    parser.add_argument("--crop", type=int, nargs=2, default=crop, metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=8,
                        help="global batch: windows per optimisation step over all processes (torchrun)")
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--steps-per-epoch", type=int, default=0, help="default: images / batch")
    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument("--time-budget", type=float, default=0.0, help="stop after this many training seconds")
    parser.add_argument("--keep-every", type=int, default=keep_every,
                        help="keep epoch_NNN.pt every N epochs (0: never)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N training images")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads per process (default 2; under torchrun on a CPU: cores / processes per node)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--progress-every", type=int, default=progress_every)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--init", default=None, metavar="CHECKPOINT",
                        help="start from these weights (e.g. the shipped models/<name>.pt) with a fresh optimizer; "
                             "ignored when --resume finds a last.pt")
    parser.add_argument("--crops", choices=CROP_MODES, default="objects",
                        help="windows around random objects, or class-balanced (see data.instance_training)")
    parser.add_argument("--anywhere-crops", type=float, default=0.0,
                        help="fraction of windows placed anywhere in an image instead of around an object")
    parser.add_argument("--skip-bad", action="store_true",
                        help="leave out training samples whose image or labels do not decode or differ in size "
                             "(each named on stderr, listed in history.json) instead of stopping at the first")
    from training.loop import add_scale_arguments

    add_scale_arguments(parser)
    add_debug_argument(parser)


def run_epochs(args: argparse.Namespace, out: Path, optimizer: torch.optim.Optimizer, state: dict, rng: object,
               steps: int, train_step: Callable[[], tuple[float, dict]], start_epoch: Callable[[], None],
               checkpoint: Callable[[], dict], extra_entry: Callable[[], dict] | None = None, *,
               runtime: object | None = None, on_epoch: Callable[[int], None] | None = None,
               evaluate: Callable[[int], dict] | None = None, data: dict | None = None) -> dict:
    """The epoch loop shared by the training commands.

    Per epoch: polynomial decay lr * (1 - (epoch - 1) / epochs)^0.9, `on_epoch(epoch)` (the data loader's epoch),
    `start_epoch()` (train mode, frozen batch norm, ...), `steps` x `train_step()` -> (loss, parts) with a progress
    line every --progress-every steps (loss, images/s, ETA), then a history entry (mean loss, mean parts,
    `extra_entry()`), `epoch_NNN.pt` every --keep-every epochs and a resumable `last.pt` (both `checkpoint()` plus
    epoch, state, config and commit), history.json, steps.jsonl (one line per step); with `evaluate` (--eval-every)
    the official evaluator's result every --eval-every epochs and after the last, best.pt (by AP50). TensorBoard
    events when the package is there. `runtime` (training.loop.Runtime): only rank 0 writes or prints; every
    process stops at the same epoch. Stops early when --time-budget training seconds are spent. Returns the
    training state."""
    from training.loop import Progress, Runtime, format_seconds, stop_together, tensorboard_writer, write_run_json

    runtime = runtime if runtime is not None else Runtime(torch.device("cpu"))
    assert isinstance(runtime, Runtime)
    main = runtime.main
    config = {k: v for k, v in vars(args).items() if k not in ("func", "resume", "skipped_samples", "debug")}
    if main:
        write_run_json(out, args, runtime, data or {}, state)
    writer = tensorboard_writer(args, out, runtime)
    eval_every = getattr(args, "eval_every", 0)
    progress = Progress(max(0, args.epochs - state["epoch"]) * steps, args.batch)
    for epoch in range(state["epoch"] + 1, args.epochs + 1):
        if stop_together(runtime, bool(args.time_budget and state["train_seconds"] >= args.time_budget)):
            print(f"time budget of {args.time_budget} s spent after epoch {state['epoch']}", flush=True)
            break
        lr = args.lr * (1 - (epoch - 1) / args.epochs) ** 0.9
        for group in optimizer.param_groups:
            group["lr"] = lr
        if on_epoch is not None:
            on_epoch(epoch)
        start_epoch()
        start = time.perf_counter()
        losses: list[float] = []
        parts_sum: dict[str, float] = {}
        step_lines = []
        bar = _progress_bar(args, runtime, epoch, steps)
        for step in range(steps):
            step_start = time.perf_counter()
            loss, parts = train_step()
            step_seconds = time.perf_counter() - step_start
            progress.update(step_seconds)
            losses.append(loss)
            for key, value in parts.items():
                parts_sum[key] = parts_sum.get(key, 0.0) + value / steps
            global_step = (epoch - 1) * steps + step + 1
            step_lines.append(json.dumps({"epoch": epoch, "step": step + 1, "global_step": global_step, "loss": loss,
                                          "lr": lr, "images_per_s": args.batch / step_seconds, **parts}))
            if writer is not None:
                writer.add_scalar("loss/total", loss, global_step)
                for key, value in parts.items():
                    writer.add_scalar(f"loss/{key}", value, global_step)
                writer.add_scalar("lr", lr, global_step)
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(f"loss {loss:.4f} {progress.images_per_second:.1f} img/s run ETA "
                                    f"{format_seconds(progress.eta)}", refresh=False)
            elif args.progress_every and (step + 1) % args.progress_every == 0:
                print(f"  epoch {epoch} step {step + 1}/{steps} loss {np.mean(losses[-args.progress_every:]):.4f} "
                      f"{progress.images_per_second:.1f} img/s ETA {format_seconds(progress.eta)}", flush=True)
        if bar is not None:
            bar.close()
        seconds = time.perf_counter() - start
        state["train_seconds"] += seconds
        state["epoch"] = epoch
        entry = {"epoch": epoch, "lr": lr, "loss": float(np.mean(losses)), **parts_sum,
                 **(extra_entry() if extra_entry else {}), "seconds": seconds, "train_seconds": state["train_seconds"],
                 "world_size": runtime.world_size, "images_per_s": steps * args.batch / seconds if seconds else 0.0}
        state["history"].append(entry)
        if main:
            saved = {**checkpoint(), "config": config, "epoch": epoch, "state": state, "commit": git_commit()}
            # evaluate first: the epoch's checkpoints then hold its val scores and best (a resumed run keeps them)
            if evaluate is not None and (epoch % eval_every == 0 or epoch == args.epochs):
                _evaluate_during_training(evaluate, epoch, state, saved, out, writer, epoch * steps)
            if args.keep_every and epoch % args.keep_every == 0:
                save_atomically(saved, out / f"epoch_{epoch:03d}.pt")
            save_atomically({**saved, **resumable(optimizer, rng)}, out / "last.pt")
            with open(out / "steps.jsonl", "a") as stream:
                stream.write("".join(line + "\n" for line in step_lines))
            skipped = getattr(args, "skipped_samples", None)  # grows when --skip-bad meets bad images while drawing
            (out / "history.json").write_text(json.dumps({"config": config, **state,
                                                          **({"skipped_samples": skipped} if skipped else {})},
                                                         indent=1))
        print(f"epoch {epoch}/{args.epochs} lr {lr:.2e} loss {entry['loss']:.4f} ("
              + " ".join(f"{k} {v:.4f}" for k, v in parts_sum.items()) + f") {seconds:.0f} s "
              f"{entry['images_per_s']:.1f} img/s", flush=True)
        runtime.barrier()
    if writer is not None:
        writer.close()  # type: ignore[attr-defined]
    return state


def _progress_bar(args: argparse.Namespace, runtime: object, epoch: int, steps: int) -> object | None:
    """A tqdm bar over the epoch's steps (loss, images/s, the run's ETA) on rank 0 when stdout is a terminal and
    --progress-every is not 0; None otherwise (logs get a line every --progress-every steps instead)."""
    if not args.progress_every or not getattr(runtime, "main", True) or not sys.stdout.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=steps, desc=f"epoch {epoch}/{args.epochs}", unit="step", leave=False, dynamic_ncols=True)


def _evaluate_during_training(evaluate: Callable[[int], dict], epoch: int, state: dict, saved: dict, out: Path,
                              writer: object | None, global_step: int) -> None:
    """--eval-every: evaluate, record (history entry, evaluation_epoch_NNN.json, TensorBoard at the epoch's last
    global step, the axis of loss/*), keep best.pt. Runs before the epoch's last.pt is written, so that it holds
    the scores and best too."""
    result = evaluate(epoch)
    overlays = result.pop("overlays", [])
    result["epoch"], result["train_seconds"] = epoch, state["train_seconds"]
    state["history"][-1]["val"] = {"ap": result["ap"], "ap50": result["ap50"]}
    (out / f"evaluation_epoch_{epoch:03d}.json").write_text(json.dumps({f"epoch_{epoch:03d}": result}, indent=1))
    best = state.get("best")
    improved = best is None or result["ap50"] > best["ap50"]
    print(f"  val epoch {epoch}: AP {result['ap']:.3f} AP50 {result['ap50']:.3f}"
          + (" (best so far: best.pt)" if improved else f" (best: epoch {best['epoch']}, AP50 {best['ap50']:.3f})"),
          flush=True)
    if improved:
        state["best"] = {"epoch": epoch, "ap": result["ap"], "ap50": result["ap50"]}
        save_atomically({**saved, "state": state}, out / "best.pt")
        (out / "evaluation_best.json").write_text(json.dumps({"best.pt": result}, indent=1))
    if writer is not None:
        writer.add_scalar("val/AP", result["ap"], global_step)  # type: ignore[attr-defined]
        writer.add_scalar("val/AP50", result["ap50"], global_step)  # type: ignore[attr-defined]
        for name, values in result.get("per_class", {}).items():
            writer.add_scalar(f"val_AP50/{name}", values["ap50"], global_step)  # type: ignore[attr-defined]
        for k, image in enumerate(overlays):
            writer.add_image(f"val_overlay/{k}", image, global_step, dataformats="HWC")  # type: ignore[attr-defined]


def checkpoint_names(run: Path, which: str) -> list[str]:
    """'all' -> every kept epoch_*.pt and last.pt; else a comma-separated list of file names."""
    if which == "all":
        return [*sorted(p.name for p in run.glob("epoch_*.pt")), "last.pt"]
    return which.split(",")


def evaluate_checkpoints(args: argparse.Namespace, segmenter_for: Callable[[dict, object], object],
                         load: Callable[[Path], tuple[object, dict]], multiple: int = 8) -> dict:
    """Evaluate --checkpoint (see checkpoint_names) of --run on --data val with the official evaluator; prints
    AP/AP50 per checkpoint and class and writes RUN/evaluation_<name>.json. `load(path)` -> (model,
    checkpoint); `segmenter_for(checkpoint, model)` -> the runtime Segmenter to evaluate."""
    from training.evaluation import evaluate_network

    run = Path(args.run)
    results: dict = {}
    by_epoch: dict[int, str] = {}  # epoch -> checkpoint evaluated: last.pt and epoch_NNN.pt of one epoch are equal
    for name in checkpoint_names(run, args.checkpoint):
        path = run / name
        if not path.is_file():
            raise CheckpointError(f"--checkpoint {path}: no such file")
        try:
            model, checkpoint = load(path)
        except CheckpointError:
            raise
        except Exception as exc:  # torch's message for a truncated file names no file
            raise CheckpointError(f"--checkpoint {path} cannot be loaded: {first_line(exc)} (truncated or "
                                  "damaged?)") from exc
        out_dir = run / "evaluation" / Path(name).stem
        same = by_epoch.get(checkpoint["epoch"])
        if same is not None:
            result = dict(results[same])
            out_dir.mkdir(parents=True, exist_ok=True)
            for file in (run / "evaluation" / Path(same).stem).glob("*.json"):
                shutil.copy2(file, out_dir / file.name)
            print(f"{name}: the weights of {same} (epoch {checkpoint['epoch']}), not evaluated again", flush=True)
        else:
            result = evaluate_network(segmenter_for(checkpoint, model), args.data, out_dir, limit=args.limit,
                                      scale=args.scale, multiple=multiple)
            by_epoch[checkpoint["epoch"]] = name
        result["epoch"] = checkpoint["epoch"]
        result["train_seconds"] = checkpoint["state"]["train_seconds"]
        results[name] = result
        print(f"{name}: epoch {result['epoch']} AP {result['ap']:.3f} AP50 {result['ap50']:.3f} "
              f"({result['train_seconds'] / 60:.0f} min of training)", flush=True)
        print("  " + "  ".join(f"{c} {v['ap']:.3f}/{v['ap50']:.3f}" for c, v in result["per_class"].items()),
              flush=True)
        (run / f"evaluation_{name.replace('.pt', '')}.json").write_text(json.dumps({name: result}, indent=1))
    return results


def run_metrics(run: Path) -> dict:
    """Every evaluation_*.json of a run merged: {checkpoint name: result}."""
    metrics: dict = {}
    for file in sorted(Path(run).glob("evaluation_*.json")):
        metrics.update(json.loads(file.read_text()))
    return metrics


def add_model_commands(commands: argparse._SubParsersAction, *, train: Callable, evaluate: Callable,
                       export: Callable, add_train_arguments: Callable[[argparse.ArgumentParser], None],
                       add_decode_arguments: Callable[[argparse.ArgumentParser], None]
                       ) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser, argparse.ArgumentParser]:
    """The train / evaluate / export sub-commands every dense model's training module has; returns their parsers
    for model-specific additions."""
    train_parser = commands.add_parser("train", help="train (or fine-tune) a network")
    add_train_arguments(train_parser)
    train_parser.set_defaults(func=guarded(train, "train"))
    evaluate_parser = commands.add_parser("evaluate", help="official Cityscapes AP/AP50 of a run on a split")
    add_data_argument(evaluate_parser)
    evaluate_parser.add_argument("--run", required=True)
    evaluate_parser.add_argument("--checkpoint", default="last.pt",
                                 help="file(s) in the run, comma-separated, or 'all' (epoch_*.pt and last.pt)")
    evaluate_parser.add_argument("--scale", type=float, default=1.0, help="network input size / image size")
    add_decode_arguments(evaluate_parser)
    evaluate_parser.add_argument("--limit", type=int, default=None)
    evaluate_parser.add_argument("--threads", type=int, default=2)
    add_debug_argument(evaluate_parser)
    evaluate_parser.set_defaults(func=guarded(evaluate, "evaluate"))
    export_parser = commands.add_parser("export", help="ONNX + .pt + JSON manifest")
    export_parser.add_argument("--run", required=True)
    export_parser.add_argument("--checkpoint", default="last.pt")
    export_parser.add_argument("--out", required=True)
    export_parser.add_argument("--data-note", default="")
    export_parser.add_argument("--stages", nargs="*", default=[],
                               help="the runs (folders, or manifests of models exported from them) this one continued "
                                    "from, oldest first: their learning curves and training go into the manifest")
    add_decode_arguments(export_parser)
    add_debug_argument(export_parser)
    export_parser.set_defaults(func=guarded(export, "export"))
    return train_parser, evaluate_parser, export_parser


def export_graph(module: torch.nn.Module, path: str | os.PathLike, outputs: dict[str, dict[int, str]],
                 example: torch.Tensor, inputs: dict[str, dict[int, str]] | None = None) -> Path:
    """ONNX (opset 17, TorchScript exporter) of `module` in eval mode, traced on `example`. `inputs` maps the
    input name to its dynamic axes (default: 'image', (1, 3, H, W) with dynamic height and width); `outputs`
    maps each output name, in order, to its dynamic axes."""
    inputs = inputs or {"image": {2: "height", 3: "width"}}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated; the dynamo one needs onnxscript
        torch.onnx.export(module.eval(), example, str(path), input_names=list(inputs),
                          output_names=list(outputs), opset_version=17, dynamo=False,
                          dynamic_axes={**inputs, **outputs})
    return path


def earlier_stages(stages: list[str]) -> dict:
    """What a run continued from (an exported model's --stages): for each stage, a run folder (its evaluation_*.json
    and history.json) or the JSON manifest of a model exported from it (its learning curve and training), the
    learning-curve entries as '<stage>/<checkpoint>' and a '<stage>/training' summary (epochs, seconds, config)."""
    earlier: dict = {}
    for stage in stages:
        path = Path(stage)
        if path.is_file():  # a manifest: the run folder itself may be gone
            manifest = json.loads(path.read_text())
            earlier.update({f"{path.stem}/{k}": v for k, v in manifest.get("learning_curve", {}).items()})
            training = manifest.get("training", {})
            earlier[f"{path.stem}/training"] = {"epochs": training.get("epochs_run"),
                                                "train_seconds": training.get("train_seconds"),
                                                "config": training.get("config"), "manifest": path.name}
            continue
        for file in sorted(path.glob("evaluation_*.json")):
            earlier.update({f"{path.name}/{k}": v for k, v in json.loads(file.read_text()).items()})
        history_file = path / "history.json"
        if history_file.is_file():
            stage_history = json.loads(history_file.read_text())
            earlier[f"{path.name}/training"] = {"epochs": stage_history["epoch"],
                                               "train_seconds": stage_history["train_seconds"],
                                               "config": stage_history["config"]}
    return earlier


def training_manifest(run: Path, checkpoint_name: str, checkpoint: dict, stages: list[str] | None = None) -> dict:
    """The manifest entries every exported model has about its training: the checkpoint and epoch, the run's
    config, loss config, history and time, the machine, the checkpoint's evaluation, the earlier `stages` the run
    continued from (`earlier_stages`) and the learning curve (theirs, then the run's evaluation_*.json)."""
    history = json.loads((Path(run) / "history.json").read_text())
    metrics = run_metrics(run)
    earlier = earlier_stages(list(stages or []))
    curve = {**earlier, **metrics}
    return {
        "checkpoint": checkpoint_name, "epoch": checkpoint["epoch"],
        "training": {"config": history["config"], "loss_config": checkpoint["loss_config"],
                     "epochs_run": history["epoch"], "train_seconds": history["train_seconds"],
                     "history": history["history"], "stages": list(stages or []),
                     "machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}"},
        "evaluation": metrics.get(checkpoint_name, {}),
        "learning_curve": {name: {k: r[k] for k in ("epoch", "ap", "ap50", "train_seconds")}
                           for name, r in curve.items() if "ap" in r},
        "earlier_stages": {name: r for name, r in earlier.items() if "ap" not in r},
    }
