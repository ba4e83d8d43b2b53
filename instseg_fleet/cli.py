"""`instseg-fleet`: pre-label many recorded bags on Ray and choose the frames worth labelling.

    instseg-fleet prelabel BAGS... --out DIR [--frames every:N | mine:K] [--address auto | HOST:PORT]
                  [--workers N] [--cpus-per-worker C] [--num-gpus G] [--num-cpus C] [--max-retries R]
                  [--model spatial_embeddings] [--input-size 512x256] [--temporal] [--second-model box2pix]
                  [--dry-run] [--dashboard] [--no-progress]

BAGS are rosbag2 folders, .mcap / .db3 files or globs ('/data/2026-12-0*/*'). For every bag, the chosen frames
(`every:N`: one in N; `mine:K`: at most K frames worth labelling, see instseg_fleet.mining and docs/fleet.md) are
segmented in parallel by Ray actors, and DIR/<bag>/ gets a studio session whose frames carry the model's
instances as proposals and the reason each frame was chosen (`instseg-studio BAG --out DIR/<bag>` opens it; P shows
a frame's proposals), `predictions_coco.json` and `fleet_summary.json`. DIR/fleet_summary.md sums the run up.

Each bag's outputs appear at once when it is finished (a staging folder renamed into place); a rerun skips the
bags already finished. A bag that cannot be read is reported with its reason and skipped; a worker that dies is
restarted and its call retried by Ray (--max-retries), then its bag is reported failed. Without --address a local
Ray starts on 127.0.0.1 with the command and stops with it (dashboard off unless --dashboard, usage statistics
off). Exit status: 0 when every bag was done (or done before), 2 when a bag or frame could not be read or the
machine failed, 1 for an internal error.
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from instseg_core.base.atomic_files import write_text_atomically
from instseg_core.base.command_exit import InputError, add_debug_argument, debug_requested, run_command
from instseg_fleet.mining import DEFAULT_DUPLICATE_THRESHOLD, FrameSpec, FrameSpecError
from instseg_fleet.work import BagOutcome, BagPlan, Settings, plan_bags, planned_frames

COMMAND = "instseg-fleet"
LOCK_FILE = ".instseg-fleet.lock"
log = logging.getLogger("instseg_fleet")


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None
    return width, height


def _frames(text: str) -> str:
    try:
        return str(FrameSpec.parse(text))
    except FrameSpecError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    pre = commands.add_parser("prelabel", help="pre-label bags into studio sessions (with frame mining)",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    pre.add_argument("bags", nargs="+", help="rosbag2 folders, .mcap/.db3 files or globs")
    pre.add_argument("--out", required=True, help="output folder: DIR/<bag>/ per bag")
    pre.add_argument("--topic", default=None, help="image topic (absent: each bag's only one)")
    pre.add_argument("--frames", type=_frames, default="mine:20", help="every:N or mine:K")
    pre.add_argument("--address", default=None,
                     help="join a running Ray cluster ('auto' or HOST:PORT); absent: a local Ray on 127.0.0.1")
    pre.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (absent: this machine's)")
    pre.add_argument("--workers", type=int, default=None,
                     help="actors, one model each (absent: the cluster's CPUs / --cpus-per-worker)")
    pre.add_argument("--cpus-per-worker", type=float, default=1.0,
                     help="CPUs Ray grants each actor = its ONNX Runtime threads")
    pre.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per actor (> 0: ONNX Runtime on CUDA)")
    pre.add_argument("--max-retries", type=int, default=2, help="restarts of a lost worker and retries of its call")
    pre.add_argument("--model", default="spatial_embeddings", choices=("spatial_embeddings", "box2pix", "dcme"))
    pre.add_argument("--model-file", default=None, help="the model's file (default: the shipped one)")
    pre.add_argument("--int8", action="store_true", help="the model's int8 graph")
    pre.add_argument("--input-size", type=_size, default=None, help="network input WxH (absent: the frame's, capped)")
    pre.add_argument("--score-threshold", type=float, default=0.3, help="lowest score of a proposal")
    pre.add_argument("--pool", type=float, default=2.0, help="mine:K segments pool x K diverse candidates")
    pre.add_argument("--temporal", action="store_true",
                     help="mine: also segment each candidate's next frame; disagreement = uncertainty")
    pre.add_argument("--second-model", default=None, choices=("spatial_embeddings", "box2pix", "dcme"),
                     help="mine: disagreement with a second model = uncertainty")
    pre.add_argument("--duplicate-threshold", type=float, default=DEFAULT_DUPLICATE_THRESHOLD,
                     help="RMS thumbnail distance below which two frames are near-duplicates")
    pre.add_argument("--uncertainty-weight", type=float, default=0.5)
    pre.add_argument("--diversity-weight", type=float, default=0.5)
    pre.add_argument("--scan-stride", type=int, default=1, help="mine: embed every n-th frame")
    pre.add_argument("--chunk", type=int, default=4, help="frames per call to a worker")
    pre.add_argument("--dry-run", action="store_true", help="list the planned work and exit")
    pre.add_argument("--dashboard", action="store_true", help="start Ray's dashboard (on 127.0.0.1)")
    pre.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_debug_argument(pre)
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    for name in ("pool", "chunk", "scan_stride"):
        if getattr(args, name) <= 0:
            raise InputError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if not 0.0 <= args.score_threshold <= 1.0:
        raise InputError(f"--score-threshold must be in [0, 1], got {args.score_threshold}")
    return Settings(frames=args.frames, model=args.model, model_file=args.model_file, int8=args.int8,
                    input_size=args.input_size, score_threshold=args.score_threshold, pool=args.pool,
                    temporal=args.temporal, second_model=args.second_model,
                    duplicate_threshold=args.duplicate_threshold, uncertainty_weight=args.uncertainty_weight,
                    diversity_weight=args.diversity_weight, scan_stride=args.scan_stride, chunk=args.chunk,
                    topic=args.topic)


def check_models(settings: Settings) -> None:
    """The model names and files exist (before any worker starts); InputError naming what is missing."""
    from instseg_core.base.model_files import ModelFileError, find_model
    from instseg_core.runtime.segmenter import default_model_file

    for model, model_file in ((settings.model, settings.model_file), (settings.second_model, None)):
        if model is None:
            continue
        try:
            find_model(model_file or default_model_file(model, settings.backend, settings.int8))
        except (ModelFileError, ValueError) as exc:
            raise InputError(str(exc)) from exc


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[f"{c:.2f}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in cells]
    return "\n".join(lines)


def plan_table(plans: Sequence[BagPlan], settings: Settings) -> str:
    rows = []
    for plan in plans:
        action = {"todo": f"pre-label: {settings.frames}, {planned_frames(plan, settings) if plan.frame_count else 0}"
                          " frames to segment", "done": "skip: done", "skipped": f"skip: {plan.reason}",
                  "failed": f"fail: {plan.reason}"}[plan.state]
        rows.append([plan.name, plan.topic or "-", plan.frame_count, action, plan.out_dir])
    return markdown_table(["bag", "topic", "frames", "planned", "output"], rows)


def outcome_table(outcomes: Sequence[BagOutcome]) -> str:
    rows = [[o.name, o.state, o.frame_count, o.scanned, o.kept, o.candidates, o.frames, o.proposals,
             o.mean_uncertainty, o.bad_frames, o.retries, o.seconds, o.reason or "-"] for o in outcomes]
    return markdown_table(["bag", "state", "frames in bag", "scanned", "distinct", "segmented", "chosen",
                           "proposals", "mean uncertainty", "bad frames", "retries", "seconds", "note"], rows)


def totals_table(outcomes: Sequence[BagOutcome], seconds: float, work_seconds: float) -> str:
    count = {state: sum(o.state == state for o in outcomes) for state in ("done", "skipped", "failed")}
    segmented = sum(o.segmented for o in outcomes if o.state == "done")
    rate = segmented / work_seconds if work_seconds > 0 else 0.0
    return markdown_table(["bags done", "skipped", "failed", "frames chosen", "frames segmented", "proposals",
                           "seconds", "frames/s"],
                          [[count["done"], count["skipped"], count["failed"],
                            sum(o.frames for o in outcomes), segmented, sum(o.proposals for o in outcomes),
                            seconds, rate]])


class Progress:
    """A tqdm bar over the frames to segment, made when the first bag is scanned (so its rate and ETA leave Ray's
    start out) and growing as further bags are: frames/s, ETA, bags done and failed."""

    def __init__(self, bags: int, enabled: bool) -> None:
        self.bags, self.enabled, self.done, self.failed = bags, enabled, 0, 0
        self.bar: Any = None

    def _postfix(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"bags {self.done}/{self.bags} done, {self.failed} failed")

    def planned(self, frames: int) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=0, unit="frame", desc="prelabel", file=sys.stderr, disable=not self.enabled,
                            dynamic_ncols=True)
            self._postfix()
        self.bar.total += frames
        self.bar.refresh()

    def frames(self, count: int) -> None:
        if self.bar is not None:
            self.bar.update(count)

    def bag(self, outcome: BagOutcome) -> None:
        self.done += outcome.state == "done"
        self.failed += outcome.state == "failed"
        self._postfix()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def prelabel(args: argparse.Namespace) -> dict:
    """The `prelabel` command; returns the run's summary, raises InputError / RuntimeError when not all was done."""
    settings = settings_from(args)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is not a folder")
    plans = plan_bags(args.bags, out, settings, warn=log.warning)
    if args.dry_run:
        print(plan_table(plans, settings), flush=True)
        return {"plans": [asdict(p) | {"path": str(p.path), "out_dir": str(p.out_dir)} for p in plans]}
    check_models(settings)
    out.mkdir(parents=True, exist_ok=True)
    lock = (out / LOCK_FILE).open("w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise InputError(f"another instseg-fleet run is writing into {out}; wait for it to finish") from None
    try:
        start = time.perf_counter()
        outcomes = {p.name: BagOutcome(p.name, "skipped" if p.state in ("done", "skipped") else "failed", p.reason,
                                       p.failure_kind, frame_count=p.frame_count) for p in plans if p.state != "todo"}
        for plan in plans:
            if plan.state == "failed":
                log.warning("%s: failed: %s", plan.name, plan.reason)
        todo = [p for p in plans if p.state == "todo"]
        run: dict = {"workers": 0, "work_seconds": 0.0, "start_seconds": 0.0}
        if todo:
            from instseg_fleet.cluster import Events, RayOptions, RayStartError, run_on_ray, start_ray, stop_ray

            options = RayOptions(address=args.address, num_cpus=args.num_cpus, workers=args.workers,
                                 cpus_per_worker=args.cpus_per_worker, num_gpus=args.num_gpus,
                                 max_retries=args.max_retries, dashboard=args.dashboard)
            ray_start = time.perf_counter()
            try:
                ray = start_ray(options)
            except RayStartError as exc:
                raise InputError(str(exc)) from exc
            progress = Progress(len(todo), not args.no_progress)
            try:
                done, run = run_on_ray(ray, plans, settings, options,
                                       Events(frames=progress.frames, planned=progress.planned, bag=progress.bag))
            except RayStartError as exc:
                raise InputError(str(exc)) from exc
            finally:
                progress.close()
                stop_ray(options)
            run["ray_seconds"] = time.perf_counter() - ray_start - run.get("work_seconds", 0.0)
            outcomes.update({o.name: o for o in done})
        else:
            print(f"{COMMAND}: nothing to do: {sum(p.state == 'done' for p in plans)} bags done before, "
                  f"{sum(p.state == 'failed' for p in plans)} cannot be done", file=sys.stderr, flush=True)
        ordered = [outcomes[p.name] for p in plans if p.name in outcomes]
        seconds = time.perf_counter() - start
        report = (f"{outcome_table(ordered)}\n\n{totals_table(ordered, seconds, run['work_seconds'])}\n\n"
                  f"workers: {run['workers']}; Ray and its workers started and stopped in "
                  f"{run.get('ray_seconds', 0.0):.1f} s, work {run['work_seconds']:.1f} s\n")
        print(report, flush=True)
        write_text_atomically(out / "fleet_summary.md", f"# instseg-fleet prelabel, {time.strftime('%Y-%m-%d %H:%M')}"
                                                        f"\n\n{report}")
    finally:
        lock.close()  # unlocks
    failed = [o for o in ordered if o.state == "failed"]
    internal = [o for o in failed if o.failure_kind == "internal"]
    bad_frames = sum(o.bad_frames for o in ordered if o.state == "done")
    if internal:
        raise RuntimeError(f"{len(internal)} of {len(ordered)} bags failed with an internal error: "
                           + "; ".join(f"{o.name}: {o.reason}" for o in internal))
    if failed or bad_frames:
        parts = [f"{len(failed)} of {len(ordered)} bags failed ("
                 + "; ".join(f"{o.name}: {o.reason}" for o in failed) + ")"] if failed else []
        if bad_frames:
            parts.append(f"{bad_frames} frames could not be read and were left out")
        raise InputError("; ".join(parts))
    return {"outcomes": [asdict(o) for o in ordered], "run": run}


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"{COMMAND}: %(message)s")
    run_command(COMMAND, lambda: prelabel(args), debug=debug_requested(args))


if __name__ == "__main__":
    main()
