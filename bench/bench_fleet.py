"""instseg-fleet on this machine: frames/s with 1 and 2 Ray workers, and Ray's overhead against a plain loop.

    .venv/bin/python bench/bench_fleet.py [--bags 4] [--frames 24] [--size 1024x512] [--input 512x256]
                                          [--repeats 3] [--model spatial_embeddings]

Writes --bags synthetic camera bags (--frames frames each, --size, moving street sequences) and pre-labels every
frame of them (`every:1`) --repeats times in each of three ways, interleaved (so that a change of load on the
machine hits all three alike):

- plain loop (baseline): the same work (instseg_fleet.work: read, segment, proposals, write the outputs) in this
  process, one FrameWorker, ONNX Runtime and OpenCV with 1 thread;
- Ray, 1 worker: one actor granted 1 CPU (so 1 ONNX Runtime thread), on a local Ray with 2 CPUs;
- Ray, 2 workers: two such actors.

frames/s = frames segmented / seconds of work (from the first call to the last bag written; the model load and
Ray's start are not in it, they are reported apart). Each run also measures, from /proc, the cores this benchmark's
processes (Ray's included) got and the cores other processes used meanwhile: the machine is shared, and the tables
are printed over all runs and over the quiet ones (others below 0.15 cores). Per case: median and p95 of the
milliseconds each frame took inside its worker. Ratios: frames/s against the plain loop, and 2 workers against 1
(scaling). Goals on 2 cores: 2 workers >= 1.6 x 1 worker; 1 worker within 15 % of the plain loop. The process
isolates itself in a loopback-only network namespace first (instseg_ros.isolation), on top of Ray binding
127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from benchlib import print_table, summarize

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
QUIET_CORES = 0.15  # a run during which other processes used less CPU than this counts as a quiet one


def busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all cores, /proc/stat)."""
    first = Path("/proc/stat").read_text().splitlines()[0]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in first.split()[1:9])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def processes() -> dict[int, tuple[bool, float]]:
    """pid -> (whether it is this benchmark's: a descendant of this process or one of Ray's, CPU seconds it and
    its reaped children used)."""
    parents, times, ray = {}, {}, set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            name, rest = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)
        except OSError:
            continue
        fields = rest.split()
        pid = int(entry)
        parents[pid] = int(fields[1])
        times[pid] = sum(int(v) for v in fields[11:15]) / CLOCK_TICKS
        command = name.split("(", 1)[1]
        if command.startswith(("ray::", "raylet", "gcs_server")):
            ray.add(pid)
    mine, frontier = {os.getpid(), *ray}, [os.getpid(), *ray]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in mine]
        mine.update(children)
        frontier += children
    return {pid: (pid in mine, seconds) for pid, seconds in times.items()}


def others_seconds(before: dict[int, tuple[bool, float]], after: dict[int, tuple[bool, float]]) -> float:
    """CPU seconds other processes used between two `processes()` snapshots (processes that ended in between are
    counted through their parents, which reaped them)."""
    return sum(seconds - before.get(pid, (False, 0.0))[1] for pid, (ours, seconds) in after.items()
               if not ours and not before.get(pid, (False, 0.0))[0])


def make_bags(root: Path, bags: int, frames: int, size: tuple[int, int]) -> list[Path]:
    from instseg_core.data.bags import write_image_bag
    from instseg_core.data.synth_cli import sequence_frames

    paths = []
    for k in range(bags):
        images = [f.rgb for _, f in sequence_frames(100 + k, "val", 0, frames, width=size[0], height=size[1],
                                                    fps=10.0, ego_speed=6.0)]
        paths.append(write_image_bag(root / f"drive_{k:02d}", images, rate_hz=10.0).path)
    return paths


def report(cases: dict[str, list[float]], frame_ms: dict[str, list[float]], foreign: dict[str, list[float]],
           own_cores: dict[str, list[float]], total_frames: int, ray_start: float, title: str) -> None:
    """The table over every run, then the same over the quiet runs (other processes below QUIET_CORES)."""
    for label, keep in (("all runs", lambda f: True), (f"quiet runs (other processes < {QUIET_CORES} cores)",
                                                      lambda f: f < QUIET_CORES)):
        picked = {name: [r for r, f in zip(rates, foreign[name], strict=True) if keep(f)]
                  for name, rates in cases.items()}
        if not all(picked.values()):
            print(f"\n{label}: not every case has one; no table")
            continue
        baseline = float(np.median(picked["plain loop, 1 thread (baseline)"]))
        rows = []
        for name, rates in picked.items():
            median_ms, p95_ms = summarize(frame_ms[name])
            rows.append([name, len(rates), total_frames, float(np.median(rates)), float(np.percentile(rates, 5)),
                         median_ms, p95_ms, float(np.median(rates)) / baseline,
                         float(np.median([c for c, f in zip(own_cores[name], foreign[name], strict=True) if keep(f)])),
                         float(np.median([f for f in foreign[name] if keep(f)]))])
        print_table(["case", "runs", "frames per run", "frames/s median", "frames/s p5", "ms per frame median (all)",
                     "ms per frame p95 (all)", "ratio to plain loop", "cores it got", "cores others used"], rows,
                    title=f"{title}; {label}")
        one, two = float(np.median(picked["Ray, 1 worker"])), float(np.median(picked["Ray, 2 workers"]))
        print(f"\nscaling 2 workers / 1 worker: {two / one:.2f} (goal >= 1.6)")
        print(f"Ray's overhead at 1 worker against the plain loop: {100 * (1 - one / baseline):.1f} % (goal <= 15 %)")
    print(f"local Ray start (ray.init, 2 CPUs): {ray_start:.1f} s; workers ready (median): 1 worker "
          f"{np.median(START['Ray, 1 worker']):.1f} s, 2 workers {np.median(START['Ray, 2 workers']):.1f} s")


START: dict[str, list[float]] = {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bags", type=int, default=4)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--size", default="1024x512")
    parser.add_argument("--input", default="512x256")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="spatial_embeddings")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    input_size = tuple(int(v) for v in args.input.split("x"))

    from instseg_ros import isolation

    isolation.ensure_isolated()

    from instseg_fleet.cluster import RayOptions, run_on_ray, start_ray, stop_ray
    from instseg_fleet.work import FrameWorker, Settings, plan_bags, run_plain

    settings = Settings(frames="every:1", model=args.model, input_size=input_size)  # type: ignore[arg-type]
    root = Path(tempfile.mkdtemp(prefix="bench_fleet_"))
    try:
        bags = make_bags(root / "bags", args.bags, args.frames, size)  # type: ignore[arg-type]
        total_frames = args.bags * args.frames
        cases = {"plain loop, 1 thread (baseline)": [], "Ray, 1 worker": [], "Ray, 2 workers": []}
        frame_ms: dict[str, list[float]] = {name: [] for name in cases}
        foreign: dict[str, list[float]] = {name: [] for name in cases}
        own_cores: dict[str, list[float]] = {name: [] for name in cases}
        start_seconds: dict[str, list[float]] = START
        start_seconds.update({name: [] for name in cases})
        began = time.perf_counter()
        options = RayOptions(num_cpus=2, max_retries=0)
        ray = start_ray(options)
        ray_start = time.perf_counter() - began
        import cv2

        cv2.setNumThreads(1)  # as in each Ray worker granted 1 CPU (instseg_fleet.cluster.SegmentWorker)
        worker = FrameWorker(settings, 1)
        try:
            for repeat in range(args.repeats):
                for name in cases:
                    out = root / f"out_{repeat}_{len(cases[name])}_{name.split(',')[0].replace(' ', '_')}"
                    plans = plan_bags([str(b) for b in bags], out, settings)
                    machine, snapshot, wall = busy_seconds(), processes(), time.perf_counter()
                    if name.startswith("plain"):
                        collected = frame_ms[name]
                        started = time.perf_counter()
                        outcomes = run_plain(plans, settings, worker, on_results=lambda rs, into=collected: into.extend(
                            r.milliseconds for r in rs))
                        seconds = time.perf_counter() - started
                        start_seconds[name].append(0.0)
                    else:
                        workers = 1 if "1 worker" in name else 2
                        outcomes, run = run_on_ray(ray, plans, settings,
                                                   RayOptions(num_cpus=2, workers=workers, max_retries=0))
                        seconds = run["work_seconds"]
                        frame_ms[name] += run["frame_ms"]
                        start_seconds[name].append(run["start_seconds"])
                    wall = time.perf_counter() - wall
                    busy = busy_seconds() - machine
                    others = min(busy, max(0.0, others_seconds(snapshot, processes())))
                    foreign_cores = others / wall
                    own_cores[name].append((busy - others) / wall)
                    segmented = sum(o.segmented for o in outcomes if o.state == "done")
                    assert segmented == total_frames, (name, [o.reason for o in outcomes])
                    cases[name].append(segmented / seconds)
                    foreign[name].append(foreign_cores)
                    print(f"repeat {repeat + 1}/{args.repeats} {name}: {segmented / seconds:.2f} frames/s "
                          f"({seconds:.1f} s; this benchmark's processes used {own_cores[name][-1]:.2f} cores, others "
                          f"{foreign_cores:.2f})", flush=True)
                    shutil.rmtree(out, ignore_errors=True)
        finally:
            worker.close()
            stop_ray(options)
        report(cases, frame_ms, foreign, own_cores, total_frames, ray_start,
               f"{args.bags} bags x {args.frames} frames {args.size} -> {args.input} input, {args.model}, every:1, "
               f"{os.cpu_count()} CPUs")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
