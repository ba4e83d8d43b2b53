"""The work of pre-labelling, without Ray: plan the bags, scan one, segment its frames, write its outputs.

- `plan_bags`: bag folders or globs -> one `BagPlan` per bag: to do, done already (skipped), or failed with its
  reason (no such bag, unreadable, a foreign folder in the way); `plan` of a bag is read from its index only.
- `FrameWorker`: what one worker (a Ray actor, or the plain loop) holds: the streaming segmenter(s) and the bags it
  has open. `scan` chooses the candidate frames of a bag (instseg_fleet.mining), `segment` segments frames and
  measures their uncertainty, turning each instance into a studio proposal (instseg_studio.assist).
- `write_bag`: the chosen frames and their proposals as a studio session (instseg_studio.session, the studio's own
  code) + `predictions_coco.json` + `fleet_summary.json`, written into a staging folder beside the output and
  renamed into place when complete: `DIR/<bag>` is there complete or not at all. Its `fleet_summary.json` marks
  the bag done, so a rerun skips it.
- `run_plain`: the same work in a plain loop in this process (the benchmark's baseline).
"""

from __future__ import annotations

import glob
import json
import math
import os
import shutil
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from instseg_core.base.atomic_files import write_text_atomically
from instseg_core.base.classes import INSTANCE_CLASSES
from instseg_core.data.label_export import LabelledObject, coco_annotation
from instseg_fleet.mining import (
    DEFAULT_DUPLICATE_THRESHOLD,
    Candidate,
    Choice,
    FrameSpec,
    drop_near_duplicates,
    embedding,
    every_nth,
    farthest_points,
    instance_disagreement,
    margin_uncertainty,
    select_frames,
)
from instseg_studio.assist import proposals_from_result
from instseg_studio.bag_frames import BagFrames, BagFramesError
from instseg_studio.session import SESSION_FILE, Session

SUMMARY_FILE = "fleet_summary.json"
PREDICTIONS_FILE = "predictions_coco.json"
SUMMARY_FORMAT = "instseg-fleet-bag/1"
REPORTED_FLOOR = 0.1  # instances down to this score are decoded: the margin signal needs the doubtful ones
FAULTS_VARIABLE = "INSTSEG_FLEET_FAULTS"  # testing only: "BAG:COUNT[,BAG:always]" kills a worker mid-bag
FAULT_DIR_VARIABLE = "INSTSEG_FLEET_FAULT_DIR"


@dataclass(frozen=True)
class Settings:
    """Everything that decides a bag's outputs (recorded in its fleet_summary.json).

    model / model_file / int8 / input_size ((width, height) of the network input; None: the frame's size, capped)
    choose the streaming segmenter; `backend` 'onnxruntime' on 'cpu', or 'cuda' where a worker has a GPU.
    `score_threshold`: the lowest score of a proposal; `frames`: every:N or mine:K; `pool`, `temporal`,
    `second_model`, `duplicate_threshold`, `uncertainty_weight`, `diversity_weight`, `scan_stride`: the mining
    (instseg_fleet.mining); `chunk`: frames per unit of work; `tolerance`, `min_area`: the proposals' polygons
    (pixels) and smallest instance (pixels); `topic`: the image topic (None: the bag's only one)."""

    frames: str = "mine:20"
    model: str = "spatial_embeddings"
    model_file: str | None = None
    int8: bool = False
    input_size: tuple[int, int] | None = None
    backend: str = "onnxruntime"
    score_threshold: float = 0.3
    pool: float = 2.0
    temporal: bool = False
    second_model: str | None = None
    duplicate_threshold: float = DEFAULT_DUPLICATE_THRESHOLD
    uncertainty_weight: float = 0.5
    diversity_weight: float = 0.5
    scan_stride: int = 1
    chunk: int = 4
    tolerance: float = 1.0
    min_area: int = 64
    topic: str | None = None

    @property
    def spec(self) -> FrameSpec:
        return FrameSpec.parse(self.frames)

    def outputs_key(self) -> dict:
        """The settings a finished bag's outputs depend on (compared on a rerun, which warns when they differ)."""
        return {k: v for k, v in asdict(self).items() if k not in ("chunk",)}


@dataclass
class BagPlan:
    """One bag of a run: `name` (its output folder DIR/<name>), `path`, `state` 'todo' | 'done' | 'failed',
    `reason` (why failed or skipped), `topic` and `frame_count` (when the bag could be opened)."""

    name: str
    path: Path
    out_dir: Path
    state: str
    reason: str = ""
    topic: str = ""
    frame_count: int = 0
    failure_kind: str = ""  # 'input', 'machine' or 'internal' for a failed bag


def _bag_paths(patterns: Sequence[str]) -> tuple[list[Path], list[str]]:
    """(bag paths in the order given, patterns that match nothing)."""
    paths, unmatched = [], []
    for pattern in patterns:
        if Path(pattern).exists():
            paths.append(Path(pattern))
            continue
        matches = sorted(glob.glob(pattern))
        if not matches:
            unmatched.append(pattern)
        paths.extend(Path(m) for m in matches)
    return paths, unmatched


def bag_name(path: Path) -> str:
    """The output folder name of a bag: its folder's (or file's) name."""
    return path.resolve().name


def plan_bags(patterns: Sequence[str], out: Path, settings: Settings,
              warn: Callable[[str], None] = lambda _: None) -> list[BagPlan]:
    """One BagPlan per bag of `patterns` (folders, .mcap/.db3 files or globs), read from the bags' indexes only."""
    paths, unmatched = _bag_paths(patterns)
    plans = [BagPlan(pattern, Path(pattern), out / Path(pattern).name, "failed", f"no bag matches {pattern!r}",
                     failure_kind="input") for pattern in unmatched]
    seen: dict[str, Path] = {}
    for path in paths:
        name = bag_name(path)
        plan = BagPlan(name, path, out / name, "todo")
        plans.append(plan)
        if name in seen:
            if seen[name].resolve() == path.resolve():
                plan.state, plan.reason = "skipped", "given twice"
                continue
            plan.state, plan.failure_kind = "failed", "input"
            plan.reason = f"another bag ({seen[name]}) has the same name; its output folder would be {plan.out_dir}"
            continue
        seen[name] = path
        summary = plan.out_dir / SUMMARY_FILE
        if summary.exists():
            plan.state, plan.reason = "done", "finished by an earlier run"
            try:
                previous = json.loads(summary.read_text()).get("settings")
                if previous != json.loads(json.dumps(settings.outputs_key())):
                    warn(f"{name}: finished earlier with other settings; skipped (remove {plan.out_dir} to redo it)")
            except (OSError, ValueError, AttributeError):
                pass
            continue
        if plan.out_dir.exists():
            plan.state, plan.failure_kind = "failed", "input"
            plan.reason = (f"{plan.out_dir} exists but is no finished pre-labelling (a studio session?); move it "
                           "away or choose another --out")
            continue
        try:
            frames = BagFrames(path, settings.topic)
        except BagFramesError as exc:
            plan.state, plan.reason, plan.failure_kind = "failed", str(exc), "input"
            continue
        except OSError as exc:
            plan.state, plan.reason, plan.failure_kind = "failed", f"cannot read bag {path}: {exc}", "machine"
            continue
        plan.topic, plan.frame_count = frames.topic, len(frames)
        frames.close()
        if plan.frame_count == 0:
            plan.state, plan.reason, plan.failure_kind = "failed", f"{plan.topic} has no frames", "input"
    return plans


def planned_frames(plan: BagPlan, settings: Settings) -> int:
    """How many frames of `plan` will be segmented (the candidates; the chosen are fewer with mine:K)."""
    spec = settings.spec
    if spec.mode == "every":
        return len(every_nth(plan.frame_count, spec.count))
    return min(plan.frame_count, math.ceil(settings.pool * spec.count))


@dataclass
class ScanResult:
    """The candidates of one bag: frame indices (ascending), their (M, D) embeddings (None for every:N), how many
    frames each stands for; the bag's frame count, frames scanned, kept after dropping near-duplicates, and the
    frames that could not be read ([index, reason]). `error`: the whole bag could not be read (then nothing
    else counts)."""

    topic: str = ""
    frame_count: int = 0
    candidates: list[int] = field(default_factory=list)
    embeddings: np.ndarray | None = None
    stands_for: list[int] = field(default_factory=list)
    scanned: int = 0
    kept: int = 0
    bad_frames: list[list] = field(default_factory=list)
    error: str = ""
    seconds: float = 0.0


@dataclass
class FrameResult:
    """One segmented frame: its index, header stamp (ns), size (H, W), proposals (studio PROPOSAL dicts), how many
    instances the model reported (score >= 0.1), uncertainty signals, milliseconds, or `error` when the frame could
    not be read."""

    index: int
    stamp_ns: int = 0
    size: tuple[int, int] = (0, 0)
    proposals: list[dict] = field(default_factory=list)
    instances: int = 0
    signals: dict[str, float] = field(default_factory=dict)
    milliseconds: float = 0.0
    error: str = ""


def _inject_fault(bag: str) -> None:
    """Fault injection for the tests ($INSTSEG_FLEET_FAULTS = 'BAG:COUNT' or 'BAG:always', comma-separated; markers
    in $INSTSEG_FLEET_FAULT_DIR count across processes): kill this worker process (SIGKILL) when it starts
    segmenting frames of BAG, COUNT times in all (or every time). Unset, it does nothing."""
    spec = os.environ.get(FAULTS_VARIABLE, "")
    for item in filter(None, spec.split(",")):
        name, _, count = item.rpartition(":")
        if name != bag:
            continue
        if count != "always":
            directory = Path(os.environ.get(FAULT_DIR_VARIABLE, "."))
            for k in range(int(count)):
                try:
                    os.close(os.open(directory / f"{bag}.kill.{k}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                    break
                except FileExistsError:
                    continue
            else:
                return
        os.kill(os.getpid(), 9)


class FrameWorker:
    """The streaming segmenter(s) of one worker, with `threads` ONNX Runtime threads on `device` ('cpu' or 'cuda'),
    and up to two bags kept open."""

    def __init__(self, settings: Settings, threads: int = 1, device: str = "cpu") -> None:
        from instseg_core.runtime.segmenter import create_segmenter

        self.settings, self.threads, self.device = settings, threads, device

        def build(model: str, model_file: str | None) -> Any:
            return create_segmenter(model, model_file=model_file, backend=settings.backend, device=device,
                                    input_size=settings.input_size, threads=threads, int8=settings.int8,
                                    score_threshold=min(REPORTED_FLOOR, settings.score_threshold))

        self.segmenter = build(settings.model, settings.model_file)
        self.second = build(settings.second_model, None) if settings.second_model else None
        self._bags: OrderedDict[str, BagFrames] = OrderedDict()

    def bag(self, path: str, topic: str | None) -> BagFrames:
        """The open bag at `path` (opened on first use, the least recently used one closed beyond two)."""
        key = f"{path}\0{topic}"
        if key not in self._bags:
            self._bags[key] = BagFrames(path, topic)
            while len(self._bags) > 2:
                self._bags.popitem(last=False)[1].close()
        self._bags.move_to_end(key)
        return self._bags[key]

    def close(self) -> None:
        for frames in self._bags.values():
            frames.close()
        self._bags.clear()

    def scan(self, path: str, topic: str | None) -> ScanResult:
        """The candidate frames of the bag at `path` (module docstring of instseg_fleet.mining)."""
        start = time.perf_counter()
        try:
            frames = self.bag(path, topic)
        except BagFramesError as exc:
            return ScanResult(error=str(exc))
        spec = self.settings.spec
        result = ScanResult(topic=frames.topic, frame_count=len(frames))
        if spec.mode == "every":
            result.candidates = every_nth(len(frames), spec.count)
            result.stands_for = [min(spec.count, len(frames) - k) for k in result.candidates]
            result.scanned = result.kept = len(frames)
        else:
            indices, embeddings = [], []
            for index, frame, error in frames.iter_frames(self.settings.scan_stride):
                result.scanned += 1
                if frame is None:
                    result.bad_frames.append([index, error])
                    continue
                indices.append(index)
                embeddings.append(embedding(frame.rgb))
            if not indices:
                reason = result.bad_frames[0][1] if result.bad_frames else "no frames"
                return ScanResult(topic=frames.topic, frame_count=len(frames), scanned=result.scanned,
                                  bad_frames=result.bad_frames, error=f"no frame of {path} can be read ({reason})")
            stacked = np.stack(embeddings)
            kept, stands_for = drop_near_duplicates(stacked, self.settings.duplicate_threshold)
            pool = farthest_points(stacked[kept], math.ceil(self.settings.pool * spec.count))
            result.kept = len(kept)
            result.candidates = [indices[int(kept[p])] for p in pool]
            result.embeddings = stacked[kept[pool]]
            result.stands_for = [int(stands_for[p]) * self.settings.scan_stride for p in pool]
        result.seconds = time.perf_counter() - start
        return result

    def segment(self, path: str, topic: str | None, indices: Sequence[int]) -> list[FrameResult]:
        """Segment frames `indices` of the bag at `path`: proposals and uncertainty signals per frame."""
        _inject_fault(bag_name(Path(path)))
        frames = self.bag(path, topic)
        results = []
        for index in indices:
            start = time.perf_counter()
            try:
                frame = frames.frame(index)
            except BagFramesError as exc:
                results.append(FrameResult(index, error=str(exc)))
                continue
            result = self.segmenter(frame.rgb)
            scores = result.instances.scores
            proposals = proposals_from_result(result, tuple(INSTANCE_CLASSES), self.settings.tolerance,
                                              self.settings.min_area, self.settings.score_threshold)
            signals = {"margin": margin_uncertainty(scores, self.settings.score_threshold)}
            confident = self._confident(result)
            if self.settings.temporal and len(frames) > 1:
                neighbour = index + 1 if index + 1 < len(frames) else index - 1
                try:
                    other = self._confident(self.segmenter(frames.frame(neighbour).rgb))
                    signals["temporal"] = instance_disagreement(*confident, *other)
                except BagFramesError:
                    pass  # the neighbour is unreadable: no temporal signal for this frame
            if self.second is not None:
                signals["models"] = instance_disagreement(*confident, *self._confident(self.second(frame.rgb)))
            results.append(FrameResult(index, frame.stamp_ns, frame.rgb.shape[:2], proposals, len(scores), signals,
                                       (time.perf_counter() - start) * 1e3))
        return results

    def _confident(self, result: Any) -> tuple[np.ndarray, list[str]]:
        """(id image, class names) of the instances of `result` at or above the proposal threshold, renumbered."""
        keep = np.flatnonzero(result.instances.scores >= self.settings.score_threshold)
        lookup = np.zeros(len(result.instances.scores) + 1, np.uint16)
        lookup[keep + 1] = np.arange(1, len(keep) + 1)
        return lookup[result.instances.id_image], [result.class_names[k] for k in keep]


def chunks(indices: Sequence[int], size: int) -> list[list[int]]:
    """`indices` in pieces of at most `size`."""
    return [list(indices[k:k + size]) for k in range(0, len(indices), max(1, size))]


def choose(scan: ScanResult, results: dict[int, FrameResult], settings: Settings) -> list[Choice]:
    """The frames to write: every candidate for every:N; for mine:K, `mining.select_frames` over the candidates
    that could be segmented, in frame order."""
    spec = settings.spec
    if spec.mode == "every":
        return [Choice(k, {"reason": f"one frame in {spec.count} (every:{spec.count})",
                           "uncertainty": round(float(np.mean(list(results[k].signals.values()) or [0.0])), 4)})
                for k in scan.candidates if not results[k].error]
    assert scan.embeddings is not None
    candidates = [Candidate(k, scan.embeddings[j], scan.stands_for[j], results[k].signals)
                  for j, k in enumerate(scan.candidates) if not results[k].error]
    chosen = select_frames(candidates, spec.count, settings.duplicate_threshold, settings.uncertainty_weight,
                           settings.diversity_weight)
    return sorted(chosen, key=lambda c: c.index)


@dataclass
class BagOutcome:
    """How one bag ended: `state` 'done' | 'skipped' | 'failed', its reason, the frames written, proposals, frames
    segmented, unreadable frames, retries after a lost worker, seconds, and the mining's counts."""

    name: str
    state: str
    reason: str = ""
    failure_kind: str = ""
    frames: int = 0
    proposals: int = 0
    segmented: int = 0
    bad_frames: int = 0
    retries: int = 0
    seconds: float = 0.0
    frame_count: int = 0
    scanned: int = 0
    kept: int = 0
    candidates: int = 0
    mean_uncertainty: float = 0.0


def unreadable(plan: BagPlan, results: dict[int, FrameResult]) -> str:
    """Why no frame of a bag could be segmented (its data damaged), or '' when some could."""
    if results and all(r.error for r in results.values()):
        return f"no frame of {plan.path} can be read ({next(iter(results.values())).error})"
    return ""


def write_bag(plan: BagPlan, scan: ScanResult, results: dict[int, FrameResult], settings: Settings, *,
              retries: int = 0, seconds: float = 0.0) -> BagOutcome:
    """Choose the frames of a segmented bag and write its outputs into `plan.out_dir`, atomically (module
    docstring): the studio session with proposals and reasons, the COCO predictions, the summary."""
    chosen = choose(scan, results, settings)
    bad = [[k, r.error] for k, r in sorted(results.items()) if r.error] + scan.bad_frames
    staging = plan.out_dir.parent / f".{plan.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        session = Session(staging / SESSION_FILE, str(plan.path.resolve()), scan.topic, tuple(INSTANCE_CLASSES))
        session.set_proposals({c.index: {"stamp_ns": results[c.index].stamp_ns,
                                         "proposals": results[c.index].proposals, "mining": c.note}
                               for c in chosen}, base_version=0)
        images: list[dict] = []
        annotations: list[dict] = []
        categories: dict[int, str] = {}
        for choice in chosen:
            result = results[choice.index]
            image_id = len(images) + 1
            images.append({"id": image_id, "file_name": f"{plan.name}/frame_{choice.index:06d}",
                           "height": int(result.size[0]), "width": int(result.size[1]), "frame_index": choice.index,
                           "stamp_ns": result.stamp_ns, "bag": str(plan.path.resolve()), "topic": scan.topic})
            for proposal in result.proposals:
                polygon = np.rint(np.asarray(proposal["polygon"], np.float64)).astype(np.int32)
                obj = LabelledObject(proposal["class"], polygon, np.asarray(proposal["points"], float),
                                     proposal["score"], proposal["polygon_iou"], proposal.get("area"))
                annotations.append(coco_annotation(len(annotations) + 1, image_id, obj, polygon, result.size))
                categories[annotations[-1]["category_id"]] = proposal["class"]
        coco = {"info": {"description": f"instseg-fleet predictions of {settings.model} on {plan.path}"},
                "images": images, "annotations": annotations,
                "categories": [{"id": i, "name": n} for i, n in sorted(categories.items())]}
        write_text_atomically(staging / PREDICTIONS_FILE, json.dumps(coco))
        outcome = BagOutcome(plan.name, "done", frames=len(chosen), proposals=len(annotations),
                             segmented=len(results), bad_frames=len(bad), retries=retries, seconds=seconds,
                             frame_count=scan.frame_count, scanned=scan.scanned, kept=scan.kept,
                             candidates=len(scan.candidates),
                             mean_uncertainty=float(np.mean([c.note.get("uncertainty", 0.0) for c in chosen]))
                             if chosen else 0.0)
        if len(chosen) < settings.spec.count and settings.spec.mode == "mine":
            outcome.reason = f"only {len(chosen)} distinct frames worth labelling"
        summary = {"format": SUMMARY_FORMAT, "bag": str(plan.path.resolve()), "topic": scan.topic,
                   "settings": settings.outputs_key(), "outcome": asdict(outcome),
                   "chosen": [{"index": c.index, "stamp_ns": results[c.index].stamp_ns,
                               "proposals": len(results[c.index].proposals), **c.note} for c in chosen],
                   "bad_frames": bad, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        write_text_atomically(staging / SUMMARY_FILE, json.dumps(summary, indent=1))
        os.replace(staging, plan.out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return outcome


def remove_stale_staging(plan: BagPlan) -> None:
    """Remove staging folders of `plan` left by a run that was killed (only one run may use an --out folder)."""
    for stale in plan.out_dir.parent.glob(f".{glob.escape(plan.name)}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)


def run_plain(plans: Sequence[BagPlan], settings: Settings, worker: FrameWorker | None = None,
              on_results: Callable[[list[FrameResult]], None] = lambda _: None) -> list[BagOutcome]:
    """The whole work in a plain loop in this process, with one FrameWorker (`worker`, or one with one thread made
    here): the benchmark's baseline. `on_results` gets each chunk's FrameResults."""
    own = worker is None
    worker = worker or FrameWorker(settings, 1)
    outcomes = []
    try:
        for plan in plans:
            if plan.state != "todo":
                continue
            start = time.perf_counter()
            remove_stale_staging(plan)
            scan = worker.scan(str(plan.path), plan.topic)
            if scan.error:
                outcomes.append(BagOutcome(plan.name, "failed", scan.error, "input"))
                continue
            results: dict[int, FrameResult] = {}
            for piece in chunks(scan.candidates, settings.chunk):
                done = worker.segment(str(plan.path), plan.topic, piece)
                results.update((r.index, r) for r in done)
                on_results(done)
            if reason := unreadable(plan, results):
                outcomes.append(BagOutcome(plan.name, "failed", reason, "input"))
                continue
            outcomes.append(write_bag(plan, scan, results, settings, seconds=time.perf_counter() - start))
    finally:
        if own:
            worker.close()
    return outcomes
