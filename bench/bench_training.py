"""Training throughput and memory on this machine (issue 32): per streaming model, one process against
`torchrun --nproc_per_node 2` (gloo, loopback) at the same global batch, and the data loader alone with 0, 1 and 2
DataLoader workers.

    .venv/bin/python bench/bench_training.py [--data data/synthetic] [--steps 8] [--batch 4] [--crop 256 512]

Each training case is a fresh process (or two) running one epoch of --steps steps, as one process with 2 torch
threads (the demo recipes; the baseline), one process with 1 thread, and torchrun's 2 processes of 1 thread each
(this machine has 2 cores). The step times come from the run's steps.jsonl (rank 0's view of the global step:
every process waits for the gradient all-reduce), the first step (warm-up) left out: median and p95 of the step
time, images/s = global batch / median step, and the peak RSS of each training process (ru_maxrss; with torchrun
the sum over both processes, the launcher apart). Ratios are against the baseline measured in the same run.
Without --data (or when it does not exist) a 24-image synthetic tree at 1024x512 is generated first. Prints the
machine's load (uptime) before and after: other processes on the machine slow every case.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import print_table, summarize  # noqa: E402

MODELS = {"spatial_embeddings": [], "box2pix": [], "dcme": []}
# (processes, torch threads each): the demo recipes' one process with 2 threads (the baseline), one thread, and
# torchrun's two processes of one thread on this 2-core machine
CASES = ((1, 2), (1, 1), (2, 1))
DRIVER = """
import importlib, resource, sys
module = importlib.import_module("training." + sys.argv[1])
module.main(sys.argv[2:])
import os
print("peak_rss_kb", os.environ.get("RANK", "0"), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
"""


def uptime() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def ensure_data(path: str | None, scratch: Path) -> Path:
    if path and Path(path).is_dir():
        return Path(path)
    from instseg_core.data.synth_cli import generate_images

    root = scratch / "synthetic"
    generate_images(root, "train", 24, seed=0, width=1024, height=512, progress=False)
    return root


def train_case(model: str, data: Path, out: Path, processes: int, threads: int, args: argparse.Namespace) -> dict:
    """One epoch of `args.steps` steps with `processes` processes of `threads` torch threads; step times (ms, first
    left out), images/s and peak RSS (MB)."""
    driver = out.parent / "driver.py"
    driver.write_text(DRIVER)
    argv = [model, "train", "--data", str(data), "--out", str(out), "--epochs", "1", "--steps-per-epoch",
            str(args.steps), "--batch", str(args.batch), "--crop", *map(str, args.crop), "--threads", str(threads),
            "--progress-every", "0", "--keep-every", "0", "--no-tensorboard"]
    if processes == 1:
        command = [sys.executable, str(driver), *argv]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--nnodes", "1",
                   "--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:0", str(driver), *argv]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": str(threads),
           "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "68719476736"}
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=3600)
    wall = time.perf_counter() - start
    if result.returncode:
        raise SystemExit(f"{model} x{processes} failed:\n{result.stderr[-3000:]}")
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    step_ms = [args.batch / s["images_per_s"] * 1e3 for s in steps[1:]]
    rss = [int(line.split()[2]) / 1024 for line in result.stderr.splitlines() if line.startswith("peak_rss_kb")]
    median, p95 = summarize(step_ms)
    return {"median_ms": median, "p95_ms": p95, "images_per_s": args.batch * 1e3 / median, "rss_mb": sum(rss),
            "processes": len(rss), "wall_s": wall}


def loader_case(data: Path, workers: int, args: argparse.Namespace) -> dict:
    """The DataLoader alone (Spatial Embeddings' collate): ms per global batch of windows, first batches apart."""
    import torch

    from instseg_core.base.classes import INSTANCE_CLASSES
    from instseg_core.data.streamed_dataset import GlobalBatchSampler, WindowDataset, split_index, streamed_sampler
    from training.loop import make_loader
    from training.spatial_embeddings import _collate

    torch.set_num_threads(1)
    index = split_index(data, "train", INSTANCE_CLASSES)
    sampler = streamed_sampler(index, INSTANCE_CLASSES)
    batches = args.loader_batches + 2
    loader = make_loader(WindowDataset(sampler, tuple(args.crop), 0), GlobalBatchSampler(args.batch, batches),
                         _collate, workers, torch.device("cpu"))
    times = []
    last = time.perf_counter()
    for _ in loader:
        now = time.perf_counter()
        times.append((now - last) * 1e3)
        last = now
    median, p95 = summarize(times[2:])
    return {"median_ms": median, "p95_ms": p95, "images_per_s": args.batch * 1e3 / median}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/synthetic")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4, help="global batch")
    parser.add_argument("--crop", type=int, nargs=2, default=(256, 512))
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--loader-batches", type=int, default=20)
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    print(f"load before: {uptime()}", flush=True)
    figures: dict = {"training": {}, "loader": {}}
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        data = ensure_data(args.data, scratch)
        print(f"data: {data}; global batch {args.batch}, crop {args.crop[0]}x{args.crop[1]}, {args.steps} steps",
              flush=True)
        rows = []
        for model in args.models:
            for processes, threads in CASES:
                name = f"{model} {processes}x{threads}"
                figures["training"][name] = case = train_case(
                    model, data, scratch / f"{model}_{processes}_{threads}", processes, threads, args)
                base = figures["training"][f"{model} 1x2"]
                rows.append([model, f"{processes} process{'es' if processes > 1 else ''} x {threads} thread"
                             f"{'s' if threads > 1 else ''}" + (" (torchrun, gloo)" if processes > 1 else ""),
                             case["median_ms"], case["p95_ms"], case["images_per_s"],
                             f"{case['images_per_s'] / base['images_per_s']:.2f}x", f"{case['rss_mb']:.0f}",
                             f"{case['rss_mb'] / base['rss_mb']:.2f}x"])
                print(f"  {rows[-1]}", flush=True)
        print_table(["model", "case", "step median ms", "step p95 ms", "images/s", "vs 1x2",
                     "peak RSS MB (sum)", "RSS vs 1x2"], rows,
                    title="Training steps (1 epoch, first step left out; global batch the same in every case)")
        rows = []
        for workers in (0, 1, 2):
            figures["loader"][workers] = case = loader_case(data, workers, args)
            base = figures["loader"][0]
            rows.append([workers, case["median_ms"], case["p95_ms"], case["images_per_s"],
                         f"{case['images_per_s'] / base['images_per_s']:.2f}x"])
        print_table(["workers", "batch median ms", "batch p95 ms", "windows/s", "vs 0 workers"], rows,
                    title=f"Data loader alone (Spatial Embeddings windows {args.crop[0]}x{args.crop[1]}, "
                          f"batch {args.batch}, decoded from PNG each time)")
    figures["load_after"] = uptime()
    print(f"\nload after: {figures['load_after']}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
