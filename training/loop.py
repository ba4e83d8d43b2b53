"""The training loop the three streaming models share (Spatial Embeddings, Box2Pix, DCME): device, mixed
precision, torch.distributed, data streamed from disk, observability. docs/training.md is the user's guide.

- Device: `--device auto|cpu|cuda` (auto: CUDA when torch sees one). `--amp`: autocast in bfloat16 where the
  device supports it (CPU, Ampere and newer GPUs), else float16 with a GradScaler; losses are computed in float32.
  `--channels-last` (default, as before), `--compile` (torch.compile of the network).
- Distributed: the same command runs as one process or under `torchrun --nproc_per_node N [--nnodes M ...]`
  (c10d rendezvous; the environment torchrun sets: RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT).
  DistributedDataParallel with NCCL on CUDA (one GPU per process, LOCAL_RANK) and gloo on CPU. `--batch` is the
  GLOBAL batch: each of the N processes takes B / N windows of each step (B must divide by N), so one step is the
  same optimisation step whatever N (the gradient is averaged over the B windows); the learning rate is for that
  global batch (rule: scale --lr linearly with --batch, docs/training.md). Window (epoch, step, position) is drawn
  from its own generator seeded by (--seed, epoch, step, position) (instseg_core.data.streamed_dataset), so the
  windows, and a run resumed with another world size, do not depend on N or on --workers. `--sync-bn`:
  SyncBatchNorm across processes (CUDA only: PyTorch has no CPU implementation). Only rank 0 writes checkpoints,
  history, run.json, TensorBoard events, evaluations and prints progress.
- Data: `--workers` DataLoader processes decode images and build targets (pinned memory and persistent workers on
  CUDA); the object index is cached next to the data (streamed_dataset.split_index). `--in-memory`: the old path
  (the whole split decoded first, load_split).
- Observability: a progress line (loss, images/s, ETA) every --progress-every steps, steps.jsonl (loss, lr,
  images/s per step), TensorBoard event files under RUN/tensorboard (losses, learning rate, per-class AP50, overlay
  images of val frames) when the tensorboard package is installed, `--eval-every N` epochs: the official evaluator
  on val (--eval-limit images), best.pt by AP50.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import functools
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from instseg_core.base.command_exit import InputError
from instseg_core.data.cityscapes import SampleError
from instseg_core.data.instance_training import CropSampler, load_split
from instseg_core.data.streamed_dataset import (
    GlobalBatchSampler,
    SplitIndex,
    WindowDataset,
    collate_checked,
    split_index,
    streamed_sampler,
    unpack_windows,
)
from instseg_core.losses.precision import to_float32

DEVICES = ("auto", "cpu", "cuda")
SEQUENTIAL_NEEDS_ONE_PROCESS = ("--window-seeds sequential draws every window from one generator in one process: it "
                                "needs one process and --workers 0 (use per-window, the default there)")


def add_scale_arguments(parser: argparse.ArgumentParser) -> None:
    """Device, precision, distributed, data-loading and observability arguments of every streaming model."""
    group = parser.add_argument_group("device, precision and scale (training/loop.py, docs/training.md)")
    group.add_argument("--device", choices=DEVICES, default="auto", help="auto: CUDA when available, else CPU")
    group.add_argument("--amp", action="store_true",
                       help="mixed precision: autocast in bfloat16 where supported (CPU, GPUs from Ampere), else "
                            "float16 with a GradScaler")
    group.add_argument("--compile", action="store_true", help="torch.compile the network (first steps are slow)")
    group.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                       help="NHWC memory format for network and batches (default: on)")
    group.add_argument("--workers", type=int, default=0,
                       help="DataLoader processes decoding images and building targets (0: in this process)")
    group.add_argument("--sync-bn", action="store_true",
                       help="synchronise batch-norm statistics across processes (CUDA; with torchrun)")
    group.add_argument("--window-seeds", choices=("auto", "sequential", "per-window"), default="auto",
                       help="per-window: each window from its own seed (independent of processes and workers); "
                            "sequential: one generator, as before issue 32; auto: sequential for one process "
                            "without workers")
    group.add_argument("--in-memory", action="store_true",
                       help="decode the whole split into memory first (the old path) instead of streaming it")
    group.add_argument("--eval-every", type=int, default=0,
                       help="evaluate on val with the official evaluator every N epochs (and after the last); "
                            "keeps best.pt by AP50")
    group.add_argument("--eval-limit", type=int, default=None, help="evaluate on the first N val images only")
    group.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=True,
                       help="TensorBoard event files in RUN/tensorboard (when the tensorboard package is installed)")
    group.add_argument("--dist-timeout", type=float, default=60.0,
                       help="minutes a process waits for the others (collectives, evaluation on rank 0)")


@dataclass
class Runtime:
    """Where and how this process trains: device, rank and world size (1 without torchrun), local rank (the GPU
    index on its node) and the autocast dtype (None: float32)."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    amp_dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None
    devices: list[str] = field(default_factory=list)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def describe(self) -> dict:
        return {"world_size": self.world_size, "devices": self.devices or [describe_device(self.device)],
                "amp": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else None,
                "grad_scaler": bool(self.scaler is not None and self.scaler.is_enabled()),
                "backend": dist.get_backend() if self.distributed else None}


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{socket.gethostname()} {device} {torch.cuda.get_device_name(device)}"
    return f"{socket.gethostname()} cpu ({torch.get_num_threads()} threads)"


def amp_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 where the device computes it (every CPU autocast; CUDA from compute capability 8), else float16."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def setup_runtime(args: argparse.Namespace) -> Runtime:
    """Device, process group (under torchrun), precision, threads and seed from the arguments; InputError for
    settings that cannot work (no CUDA for --device cuda, a global batch that does not divide by the world size,
    --sync-bn without CUDA). Non-zero ranks print nothing on stdout (their errors still reach stderr)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    want = getattr(args, "device", "auto")
    if want == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: torch sees no CUDA device (torch.cuda.is_available() is False; a CPU-only "
                         f"torch {torch.__version__}, or no GPU visible)")
    use_cuda = want == "cuda" or (want == "auto" and torch.cuda.is_available())
    if args.batch < 1 or args.batch % world_size:
        raise InputError(f"--batch {args.batch} is the global batch: it must be a positive multiple of the world "
                         f"size {world_size} (each process takes --batch / world size windows per step)")
    if getattr(args, "window_seeds", "auto") == "sequential" and (world_size > 1 or getattr(args, "workers", 0)):
        raise InputError(SEQUENTIAL_NEEDS_ONE_PROCESS)
    if getattr(args, "sync_bn", False) and not use_cuda:
        raise InputError("--sync-bn needs CUDA: PyTorch's SyncBatchNorm has no CPU implementation")
    if use_cuda and local_rank >= torch.cuda.device_count():
        raise InputError(f"LOCAL_RANK {local_rank}: this node has only {torch.cuda.device_count()} GPU(s); start "
                         "at most that many processes per node (--nproc_per_node)")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if getattr(args, "threads", None) is None:  # the processes of a node share its cores
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        args.threads = 2 if world_size == 1 else max(1, (os.cpu_count() or 2) // local)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    if world_size > 1:
        start_process_group(use_cuda, getattr(args, "dist_timeout", 60.0))
    dtype = amp_dtype(device) if getattr(args, "amp", False) else None
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16) if dtype is not None else None
    torch.manual_seed(args.seed)
    runtime = Runtime(device, rank, world_size, local_rank, dtype, scaler)
    if runtime.distributed:
        devices: list = [None] * world_size
        dist.all_gather_object(devices, describe_device(device))
        runtime.devices = devices
    if not runtime.main:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - rank 0 alone reports
    return runtime


def start_process_group(use_cuda: bool, timeout_minutes: float) -> None:
    """Join torchrun's process group, NCCL on CUDA (after torch.cuda.set_device) or gloo on the CPU, waiting at most
    `timeout_minutes` for the others in a collective; nothing when this process has joined one already (the
    studio fine-tune joins before the model's training does)."""
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=timeout_minutes))


def set_rank_seed(seed: int, epoch: int, rank: int) -> None:
    """torch's generator (dropout) for one epoch of one process: reproducible, different across ranks."""
    torch.manual_seed(int(np.random.SeedSequence([seed, epoch, rank, 7]).generate_state(1)[0]))


@dataclass
class RunStart:
    """What start_run prepared: run folder, classes, the crop sampler (streamed or in memory), the object index
    (None in memory), the runtime and the data summary for run.json."""

    out: Path
    classes: tuple[str, ...]
    sampler: CropSampler
    index: SplitIndex | None
    runtime: Runtime
    data: dict
    val_skipped: set[str] = field(default_factory=set)  # "city/stem" of bad val frames (--skip-bad)

    def prepare(self, network: torch.nn.Module, args: argparse.Namespace) -> torch.nn.Module:
        """The network on the device, channels-last if asked, with SyncBatchNorm under --sync-bn."""
        if getattr(args, "sync_bn", False) and self.runtime.distributed:
            network = torch.nn.SyncBatchNorm.convert_sync_batchnorm(network)
        network = network.to(self.runtime.device)
        if args.channels_last:
            network = network.to(memory_format=torch.channels_last)
        return network


def check_crop(crop: Sequence[int], multiple: int, network: str) -> None:
    """InputError unless the --crop height and width are positive multiples of the network's input multiple (its
    down-sampling: otherwise a tensor size mismatch deep inside the network)."""
    height, width = (int(v) for v in crop)
    if height < multiple or width < multiple or height % multiple or width % multiple:
        near = [max(multiple, round(v / multiple) * multiple) for v in (height, width)]
        raise InputError(f"--crop {height} {width}: the {network} network takes windows whose height and width are "
                         f"multiples of {multiple} (e.g. --crop {near[0]} {near[1]})")


def start_run(args: argparse.Namespace, crop_multiple: int = 1, network: str = "") -> RunStart:
    """check_crop (against `crop_multiple` of `network`), setup_runtime, the training split: streamed through its
    object index (or in memory with --in-memory) behind the --crops sampler, the val split (check_val_split), and
    the run folder (created last: a run that cannot start leaves none)."""
    check_crop(args.crop, crop_multiple, network)
    runtime = setup_runtime(args)
    out = Path(args.out)
    classes = tuple(args.classes)
    skip_bad = getattr(args, "skip_bad", False)
    if getattr(args, "in_memory", False):
        skipped: list[dict] = []
        samples = load_split(args.data, "train", classes, scale=args.scale, limit=args.limit, skip_bad=skip_bad,
                             skipped=skipped)
        sampler = CropSampler(samples, args.crops, args.anywhere_crops)
        index = None
        data = {"images": len(samples), "skipped": len(skipped), "in_memory": True}
    else:
        # rank 0 builds (or refreshes) the cached index first; the others then read it
        if runtime.main:
            index = split_index(args.data, "train", classes, scale=args.scale, limit=args.limit, skip_bad=skip_bad,
                                fallback_dir=out)
        runtime.barrier()
        if not runtime.main:
            index = split_index(args.data, "train", classes, scale=args.scale, limit=args.limit, skip_bad=skip_bad,
                                fallback_dir=out)
        skipped = index.skipped
        sampler = streamed_sampler(index, classes, args.crops, args.anywhere_crops, args.scale)
        data = {**index.summary(), "in_memory": False}
    if skipped:
        print(f"skipped {len(skipped)} bad training sample(s) of {len(sampler.samples) + len(skipped)} (--skip-bad; "
              "listed in history.json)", flush=True)
    val_skipped = check_val_split(args, classes, out) if runtime.main else []
    if runtime.main:  # only now: a run that cannot start leaves no empty folder behind
        out.mkdir(parents=True, exist_ok=True)
    runtime.barrier()
    args.skipped_samples = skipped + val_skipped  # run_epochs writes them into history.json
    data = {"root": str(Path(args.data).resolve()), "split": "train", "classes": list(classes), "scale": args.scale,
            **data, **({"val_skipped": len(val_skipped)} if val_skipped else {})}
    return RunStart(out, classes, sampler, index, runtime, data,
                    {entry["sample"] for entry in val_skipped})


def check_val_split(args: argparse.Namespace, classes: tuple[str, ...], out: Path) -> list[dict]:
    """--eval-every: the val frames the evaluations will use (the first --eval-limit), checked before training
    through their object index (cached like the training split's): InputError when --data has no annotated val
    split, SampleError naming the first bad frame, or with --skip-bad the bad ones ({"sample", "reason", "split":
    "val"}), which the evaluations leave out. [] without --eval-every."""
    if not getattr(args, "eval_every", 0):
        return []
    try:
        index = split_index(args.data, "val", classes, limit=args.eval_limit, skip_bad=getattr(args, "skip_bad", False),
                            fallback_dir=out)
    except FileNotFoundError as exc:
        raise InputError(f"--eval-every {args.eval_every} evaluates on the val split of --data {args.data}, which has "
                         f"no usable annotated frames ({exc}); add leftImg8bit/val + gtFine/val, or leave out "
                         "--eval-every") from None
    skipped = [{**entry, "split": "val"} for entry in index.skipped]
    if skipped:
        print(f"skipped {len(skipped)} bad val frame(s) of {len(index.samples) + len(skipped)} (--skip-bad; the "
              "evaluations leave them out; listed in history.json)", flush=True)
    return skipped


def to_device(batch: object, device: torch.device, channels_last: bool = False) -> object:
    """Tensors of a batch (nested tuples/lists) on `device`; 4-D float images channels-last if asked."""
    if isinstance(batch, torch.Tensor):
        batch = batch.to(device, non_blocking=True)
        if batch.dim() == 4 and batch.is_floating_point():
            batch = batch.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        return batch
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(b, device, channels_last) for b in batch)
    return batch


class StepModule(torch.nn.Module):
    """Network and loss as one module (what DDP wraps, so that the loss's own parameters, e.g. Box2Pix's
    uncertainty weights, are averaged too): forward(images, targets) -> (loss, parts), the network under
    autocast, the loss in float32."""

    def __init__(self, network: torch.nn.Module, loss: torch.nn.Module,
                 compute: Callable[[object, object], tuple[torch.Tensor, dict]], runtime: Runtime) -> None:
        super().__init__()
        self.network = network
        self.loss = loss
        self.compute = compute
        self.runtime = runtime

    def forward(self, images: torch.Tensor, targets: object) -> tuple[torch.Tensor, dict]:
        with self.runtime.autocast():
            output = self.network(images)
        return self.compute(to_float32(output), targets)


def make_loader(dataset: WindowDataset, batch_sampler: GlobalBatchSampler, collate: Callable,
                workers: int, device: torch.device) -> torch.utils.data.DataLoader:
    """The DataLoader of the training windows (pinned memory and persistent workers on CUDA)."""
    cuda = device.type == "cuda"
    return torch.utils.data.DataLoader(dataset, batch_sampler=batch_sampler, num_workers=workers,
                                       collate_fn=collate, pin_memory=cuda,
                                       persistent_workers=cuda and workers > 0,
                                       prefetch_factor=2 if workers else None,
                                       worker_init_fn=_single_threaded if workers else None)


def _single_threaded(worker: int) -> None:
    """A DataLoader worker decodes one window at a time: one torch thread (PyTorch sets it too). OpenCV's thread
    pool is left alone: cv2.setNumThreads in a forked worker deadlocks on the pool the parent left behind."""
    torch.set_num_threads(1)


def write_run_json(out: Path, args: argparse.Namespace, runtime: Runtime, data: dict, state: dict) -> None:
    """RUN/run.json: one entry per launch (command, world size, devices, AMP, commit, data summary, the epoch it
    started after); the latest launch's fields at the top level too."""
    from training.common import git_commit

    path = out / "run.json"
    launches = []
    if path.is_file():
        with contextlib.suppress(OSError, ValueError):
            launches = json.loads(path.read_text()).get("launches", [])
    torchrun = "TORCHELASTIC_RUN_ID" in os.environ
    launch = {"command": [os.path.basename(sys.executable), *sys.orig_argv[1:]], "argv": sys.argv,
              "launcher": {"torchrun": torchrun, "run_id": os.environ.get("TORCHELASTIC_RUN_ID"),
                           "processes_per_node": int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
                           "nodes": int(os.environ.get("GROUP_WORLD_SIZE", "1"))} if torchrun else None,
              "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
              **runtime.describe(), "global_batch": args.batch, "batch_per_process": args.batch // runtime.world_size,
              "workers": args.workers, "compile": args.compile, "channels_last": args.channels_last,
              "sync_bn": args.sync_bn, "commit": git_commit(), "torch": torch.__version__, "data": data,
              "after_epoch": state.get("epoch", 0), "seed": args.seed}
    launches.append(launch)
    from instseg_core.base.atomic_files import write_text_atomically

    write_text_atomically(path, json.dumps({**launch, "launches": launches}, indent=1))


def tensorboard_writer(args: argparse.Namespace, out: Path, runtime: Runtime) -> object | None:
    """A SummaryWriter on RUN/tensorboard for rank 0 (None elsewhere, with --no-tensorboard, or without the
    tensorboard package: then a note says so)."""
    if not runtime.main or not getattr(args, "tensorboard", False):
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print("note: no TensorBoard event files (the tensorboard package is not installed; pip install "
              "tensorboard==2.21.0, or --no-tensorboard)", flush=True)
        return None
    return SummaryWriter(str(out / "tensorboard"))


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


@dataclass
class Progress:
    """Images/s and ETA over the steps of the run (this launch's steps only)."""

    total_steps: int
    images_per_step: int
    done: int = 0
    seconds: float = 0.0

    def update(self, step_seconds: float) -> None:
        self.done += 1
        self.seconds += step_seconds

    @property
    def images_per_second(self) -> float:
        return self.done * self.images_per_step / self.seconds if self.seconds else 0.0

    @property
    def eta(self) -> float:
        return (self.total_steps - self.done) * self.seconds / self.done if self.done else 0.0


def trainer_epoch_hooks(run: RunStart, args: argparse.Namespace, network: torch.nn.Module,
                        loss: torch.nn.Module, compute: Callable[[object, object], tuple[torch.Tensor, dict]],
                        collate: Callable, optimizer: torch.optim.Optimizer, steps: int,
                        draw: Callable | None = None, rng: np.random.Generator | None = None
                        ) -> tuple[Callable[[int], None], Callable[[], tuple[float, dict]]]:
    """(on_epoch(epoch), train_step()) for run_epochs: this rank's windows, the step module (DDP-wrapped under
    torchrun, compiled with --compile) and one optimisation step with AMP; the loss and its parts returned are
    averaged over the processes.

    Windows (--window-seeds): 'per-window' draws window (epoch, step, position) with its own generator in a
    DataLoader (module docstring); 'sequential' draws every window in turn from the run's generator `rng` in this
    process, as the commands did before issue 32 (same seed, same windows and dropout as then; resumable exactly
    through last.pt's random states); 'auto' (default): sequential for one process without --workers, else
    per-window."""
    runtime = run.runtime
    mode = getattr(args, "window_seeds", "auto")
    if mode == "auto":
        one_generator = not runtime.distributed and not args.workers and rng is not None
        recorded = recorded_window_seeds(args, run.out)
        if recorded == "sequential" and not one_generator:
            print(f"note: {run.out} drew its windows sequentially; with {runtime.world_size} process(es) and "
                  f"{args.workers} worker(s) it goes on per-window (other windows than one process would draw)",
                  flush=True)
        mode = recorded if recorded == "per-window" or (recorded and one_generator) else \
            "sequential" if one_generator else "per-window"
    if mode == "sequential" and (runtime.distributed or args.workers or rng is None):
        raise InputError(SEQUENTIAL_NEEDS_ONE_PROCESS)
    args.window_seeds = mode  # recorded in the run's config
    forward_network = torch.compile(network) if args.compile else network
    module: torch.nn.Module = StepModule(forward_network, loss, compute, runtime)
    if runtime.distributed:
        module = torch.nn.parallel.DistributedDataParallel(
            module, device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None)
    skip_bad = getattr(args, "skip_bad", False)
    dataset = WindowDataset(run.sampler, tuple(args.crop), args.seed, draw, skip_bad)
    batch_sampler = GlobalBatchSampler(args.batch, steps, runtime.rank, runtime.world_size)
    loader = make_loader(dataset, batch_sampler, functools.partial(collate_checked, collate), args.workers,
                         runtime.device)
    reported: set[str] = set()

    def note_skipped(reasons: list[str]) -> None:
        """Bad images met while drawing (--skip-bad): named once on stderr, listed in history.json."""
        for reason in reasons:
            if reason not in reported:
                reported.add(reason)
                print(f"skipped a bad sample while drawing windows: {reason} (--skip-bad)", file=sys.stderr,
                      flush=True)
                if runtime.main:
                    args.skipped_samples = [*getattr(args, "skipped_samples", []),
                                            {"reason": reason, "split": "train", "while": "drawing windows"}]
    iterator: list = [None]
    scaler = runtime.scaler

    def on_epoch(epoch: int) -> None:
        if mode == "sequential":
            return  # the run's generators go on (restored from last.pt on --resume)
        batch_sampler.set_epoch(epoch)
        set_rank_seed(args.seed, epoch, runtime.rank)
        iterator[0] = iter(loader)

    def next_batch() -> object:
        if mode == "per-window":
            batch, skipped, bad = next(iterator[0])  # type: ignore[call-overload]
            if bad is not None:
                raise SampleError(bad)
        else:
            windows, skipped = unpack_windows([dataset.draw_window(rng) for _ in range(args.batch)])  # type: ignore[arg-type]
            batch = collate(windows)
        note_skipped(skipped)
        return batch

    def train_step() -> tuple[float, dict]:
        images, targets = to_device(next_batch(), runtime.device, args.channels_last)  # type: ignore[misc]
        value, parts = module(images, targets)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None and scaler.is_enabled():
            scaler.scale(value).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            value.backward()
            optimizer.step()
        names = sorted(parts)
        reported = torch.tensor([value.item(), *(float(parts[k]) for k in names)], dtype=torch.float64,
                                device=runtime.device)
        if runtime.distributed:
            dist.all_reduce(reported)
            reported /= runtime.world_size
        values = reported.tolist()
        return values[0], dict(zip(names, values[1:], strict=True))

    return on_epoch, train_step


def recorded_window_seeds(args: argparse.Namespace, out: Path) -> str | None:
    """The --window-seeds mode a run being resumed (--resume with a last.pt) drew its windows with (its
    history.json's config), so that `auto` keeps it whatever the number of processes now; None otherwise."""
    if not args.resume or not (out / "last.pt").is_file():
        return None
    try:
        mode = json.loads((out / "history.json").read_text())["config"].get("window_seeds")
    except (OSError, ValueError, KeyError, AttributeError):
        return None
    return mode if mode in ("sequential", "per-window") else None


def evaluation_hook(run: RunStart, args: argparse.Namespace, network: torch.nn.Module, model_config: dict,
                    segmenter_for: Callable[[dict, torch.nn.Module, str], object], multiple: int
                    ) -> Callable[[int], dict] | None:
    """With --eval-every: evaluate(epoch) -> the official evaluator's result on val for a copy of the network
    (rank 0 only; None otherwise)."""
    if not getattr(args, "eval_every", 0) or not run.runtime.main:
        return None
    from training.evaluation import evaluate_network

    def evaluate(epoch: int) -> dict:
        model = copy.deepcopy(network).float().eval()
        device = str(run.runtime.device) if run.runtime.device.type == "cuda" else "cpu"
        segmenter = segmenter_for(model_config, model, device)
        return evaluate_network(segmenter, args.data, run.out / "evaluation" / f"epoch_{epoch:03d}",
                                limit=args.eval_limit, multiple=multiple, skip=run.val_skipped, overlays=3)

    return evaluate


def window_draw(function: Callable, *args: object) -> Callable:
    """A picklable window function: function(sampler, height, width, rng, *args)."""
    return functools.partial(_draw_with, function, args)


def _draw_with(function: Callable, extra: Sequence[object], sampler: CropSampler, height: int, width: int,
               rng: np.random.Generator) -> object:
    return function(sampler, height, width, rng, *extra)


def stop_together(runtime: Runtime, stop: bool) -> bool:
    """Rank 0's decision for every process (their clocks differ)."""
    if not runtime.distributed:
        return stop
    flag = torch.tensor([1.0 if stop else 0.0], device=runtime.device)
    dist.broadcast(flag, 0)
    return bool(flag.item())


def elapsed(start: float) -> float:
    return time.perf_counter() - start
