"""The pre-labelling work on Ray: a local Ray on loopback (or a running cluster), one actor per worker, retries.

**Starting Ray** (`start_ray`). Without an address a local Ray starts with the command and stops with it. It is
kept on this machine: `_node_ip_address="127.0.0.1"` together with `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` (set
before ray is imported; without it Ray replaces 127.0.0.1 by the machine's outward address) makes the GCS, the
raylet, the object manager, the workers and the runtime-env agent listen on 127.0.0.1 only; the dashboard is off
unless asked for (then on 127.0.0.1); usage statistics are off (`RAY_USAGE_STATS_ENABLED=0`). `start_ray` checks
the GCS address it got and refuses to go on when it is not a loopback one. With `address` ('auto' or HOST:PORT)
it joins a running cluster (`ray start --head` / `ray start --address`, docs/fleet.md) and stops nothing.

**Workers** (`SegmentWorker`): one Ray actor per worker holds one `FrameWorker` (one model; ONNX Runtime threads =
the CPUs Ray grants the actor; `num_gpus` per actor where there are GPUs, then the CUDA provider). Each actor has
at most one call in flight: a bag's scan, or a chunk of its frames.

**Faults** (`run_on_ray`): an actor whose process dies (killed, out of memory) is restarted by Ray and the call it
had in flight is retried on it, at most `max_retries` times (Ray's `max_restarts` / `max_task_retries`); only that
call's work is redone. When Ray gives up, the bag of that call is reported failed with the reason and a fresh
actor takes the dead one's place for the other bags. Finished bags are written at once (instseg_fleet.work), so
nothing finished is lost whatever happens later.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import time
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from instseg_fleet.work import (
    BagOutcome,
    BagPlan,
    FrameResult,
    FrameWorker,
    ScanResult,
    Settings,
    chunks,
    remove_stale_staging,
    unreadable,
    write_bag,
)

log = logging.getLogger("instseg_fleet")
CLUSTER_VARIABLE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # '0': Ray keeps 127.0.0.1 as the node address


class RayStartError(RuntimeError):
    """Ray could not be started or joined, or would not stay on loopback; the message says why."""


@dataclass(frozen=True)
class RayOptions:
    """How to run Ray: `address` None (a local Ray on 127.0.0.1) or 'auto' / HOST:PORT (a running cluster);
    `num_cpus` of the local Ray (None: this machine's); `workers` actors (None: the cluster's CPUs divided by
    `cpus_per_worker`); `num_gpus` per actor; `max_retries` per lost worker; `dashboard` on 127.0.0.1;
    `object_store_mb` of the local Ray."""

    address: str | None = None
    num_cpus: int | None = None
    workers: int | None = None
    cpus_per_worker: float = 1.0
    num_gpus: float = 0.0
    max_retries: int = 2
    dashboard: bool = False
    object_store_mb: int = 256


def start_ray(options: RayOptions) -> Any:
    """Start (or join) Ray as `options` says; returns the ray module. RayStartError when it cannot."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    if options.address is None:
        os.environ[CLUSTER_VARIABLE] = "0"
    elif "RAY_AUTH_MODE" not in os.environ and (
            os.environ.get("RAY_AUTH_TOKEN") or Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or
                                                     Path.home() / ".ray" / "auth_token").exists()):
        # `ray start` turns token authentication on when a token exists, but a driver joining the cluster sends
        # the token only in token mode (Ray 2.60): without this it is refused ("InvalidAuthToken")
        os.environ["RAY_AUTH_MODE"] = "token"
    import ray
    from ray._private import ray_constants

    if options.address is None and ray_constants.ENABLE_RAY_CLUSTER:
        raise RayStartError("ray was imported before instseg_fleet could keep it on loopback; start the command "
                            "in a fresh process")
    common: dict[str, Any] = {"log_to_driver": True, "configure_logging": False, "include_dashboard": options.dashboard}
    if options.dashboard:
        common["dashboard_host"] = "127.0.0.1"
    try:
        if options.address is None:
            # 'local': always a new Ray of this command's own, never a cluster that `ray start` left running here
            ray.init(address="local", num_cpus=options.num_cpus, _node_ip_address="127.0.0.1",
                     object_store_memory=options.object_store_mb << 20, **common)
        else:
            ray.init(address=options.address, **common)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise RayStartError(f"cannot start Ray{' at ' + options.address if options.address else ''}: {exc}") from exc
    if options.address is None:
        host = ray.get_runtime_context().gcs_address.rsplit(":", 1)[0].strip("[]")
        if not ipaddress.ip_address(host).is_loopback:
            ray.shutdown()
            raise RayStartError(f"the local Ray listens on {host}, not on loopback; refusing to go on")
    return ray


def stop_ray(options: RayOptions) -> None:
    """Disconnect from Ray; a local Ray stops with it."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


class SegmentWorker:
    """The actor: one FrameWorker with as many ONNX Runtime threads as Ray granted CPUs (CUDA with a GPU)."""

    def __init__(self, settings: Settings) -> None:
        import ray

        context = ray.get_runtime_context()
        granted = context.get_assigned_resources()
        self.threads = max(1, round(granted.get("CPU", 1.0)))
        device = "cuda" if granted.get("GPU", 0.0) > 0 else "cpu"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            self.restarted = bool(context.was_current_actor_reconstructed)
        import cv2

        cv2.setNumThreads(self.threads)  # OpenCV's own pool (resizing) stays within the granted CPUs too
        self.worker = FrameWorker(settings, self.threads, device)

    def _meta(self) -> dict:
        meta = {"pid": os.getpid(), "threads": self.threads, "after_restart": self.restarted}
        self.restarted = False  # only the first call after a restart is the retried one (one call in flight)
        return meta

    def ready(self) -> dict:
        return self._meta()

    def scan(self, path: str, topic: str | None) -> tuple[ScanResult, dict]:
        return self.worker.scan(path, topic), self._meta()

    def segment(self, path: str, topic: str | None, indices: list[int]) -> tuple[list[FrameResult], dict]:
        return self.worker.segment(path, topic, indices), self._meta()


@dataclass
class _BagState:
    plan: BagPlan
    started: float = 0.0
    scan: ScanResult | None = None
    results: dict[int, FrameResult] = field(default_factory=dict)
    pending: int = 0
    retries: int = 0
    failed: bool = False


@dataclass
class Events:
    """Callbacks of a run: `frames(n)` after n frames were segmented, `planned(n)` when a scan added n frames to
    segment, `bag(outcome)` when a bag is done or failed."""

    frames: Callable[[int], None] = lambda _: None
    planned: Callable[[int], None] = lambda _: None
    bag: Callable[[BagOutcome], None] = lambda _: None


def _failure(exc: BaseException, max_retries: int) -> tuple[str, str]:
    """(reason, kind) of a call that Ray gave up on."""
    import ray.exceptions as rex

    if isinstance(exc, rex.RayActorError):
        return (f"its worker was lost and retried {max_retries} times, then Ray gave up "
                f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})", "machine")
    if isinstance(exc, rex.RayTaskError) and isinstance(exc.cause, OSError):
        return f"{exc.cause}", "machine"
    first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    return f"internal error in a worker: {first} (traceback on stderr)", "internal"


def run_on_ray(ray: Any, plans: Sequence[BagPlan], settings: Settings, options: RayOptions,
               events: Events | None = None) -> tuple[list[BagOutcome], dict]:
    """Pre-label the 'todo' bags of `plans` on Ray's actors; returns (one outcome per bag, run facts: workers,
    threads per worker, seconds to start the workers, seconds of work, milliseconds of each frame in a worker)."""
    events = events or Events()
    resources = ray.cluster_resources()
    cluster_cpus, cluster_gpus = float(resources.get("CPU", 0.0)), float(resources.get("GPU", 0.0))
    count = options.workers or max(1, int(cluster_cpus // options.cpus_per_worker))
    if count * options.cpus_per_worker > cluster_cpus or count * options.num_gpus > cluster_gpus:
        raise RayStartError(f"{count} workers of {options.cpus_per_worker:g} CPUs and {options.num_gpus:g} GPUs do "
                            f"not fit the cluster's {cluster_cpus:g} CPUs and {cluster_gpus:g} GPUs")
    actor_class = ray.remote(SegmentWorker).options(
        num_cpus=options.cpus_per_worker, num_gpus=options.num_gpus, max_restarts=options.max_retries,
        max_task_retries=options.max_retries)
    started = time.perf_counter()
    actors = [actor_class.remote(settings) for _ in range(count)]
    try:
        facts = ray.get([a.ready.remote() for a in actors])
    except ray.exceptions.RayError as exc:
        raise RayStartError(f"the workers could not start: {str(exc).splitlines()[-1]}") from exc
    run: dict[str, Any] = {"workers": count, "threads_per_worker": facts[0]["threads"],
                           "start_seconds": time.perf_counter() - started, "frame_ms": []}
    work_start = time.perf_counter()
    states = {p.name: _BagState(p) for p in plans if p.state == "todo"}
    queue: deque[tuple[str, str, list[int]]] = deque(("scan", name, []) for name in states)
    idle = list(actors)
    in_flight: dict[Any, tuple[Any, str, str, list[int]]] = {}
    outcomes: dict[str, BagOutcome] = {}
    replacements = 0

    def fail(state: _BagState, reason: str, kind: str) -> None:
        state.failed = True
        outcome = BagOutcome(state.plan.name, "failed", reason, kind, retries=state.retries,
                             seconds=time.perf_counter() - state.started)
        outcomes[state.plan.name] = outcome
        log.warning("%s: failed: %s", state.plan.name, reason)
        events.bag(outcome)

    while queue or in_flight:
        while idle and queue:
            kind, name, indices = queue.popleft()
            state = states[name]
            if state.failed:
                continue
            actor = idle.pop()
            if kind == "scan":
                state.started = time.perf_counter()
                remove_stale_staging(state.plan)
                ref = actor.scan.remote(str(state.plan.path), state.plan.topic)
            else:
                ref = actor.segment.remote(str(state.plan.path), state.plan.topic, indices)
            in_flight[ref] = (actor, kind, name, indices)
        if not in_flight:
            continue
        ready, _ = ray.wait(list(in_flight), num_returns=1)
        actor, kind, name, indices = in_flight.pop(ready[0])
        state = states[name]
        try:
            value, meta = ray.get(ready[0])
        except ray.exceptions.RayError as exc:
            reason, failure_kind = _failure(exc, options.max_retries)
            if failure_kind == "internal":
                log.error("%s: internal error in a worker:\n%s", name, exc)
            if isinstance(exc, ray.exceptions.RayActorError):
                state.retries += options.max_retries
                ray.kill(actor)
                if replacements < len(states) + count:  # each bag can cost one actor; never more
                    replacements += 1
                    actor = actor_class.remote(settings)
                else:
                    actor = None
            if not state.failed:
                fail(state, reason, failure_kind)
            if actor is not None:
                idle.append(actor)
            continue
        idle.append(actor)
        if meta["after_restart"]:
            state.retries += 1
            log.warning("%s: a worker was lost and Ray retried its work (%s)", name, kind)
        if state.failed:
            continue
        if kind == "scan":
            scan: ScanResult = value
            if scan.error:
                fail(state, scan.error, "input")
                continue
            state.scan = scan
            pieces = chunks(scan.candidates, settings.chunk)
            state.pending = len(pieces)
            events.planned(len(scan.candidates))
            queue.extendleft(("segment", name, piece) for piece in reversed(pieces))
        else:
            for result in value:
                state.results[result.index] = result
                if result.error:
                    log.warning("%s: %s", name, result.error)
                else:
                    run["frame_ms"].append(result.milliseconds)
            events.frames(len(indices))
            state.pending -= 1
        if state.pending == 0 and state.scan is not None:
            if reason := unreadable(state.plan, state.results):
                fail(state, reason, "input")
                continue
            try:
                outcome = write_bag(state.plan, state.scan, state.results, settings, retries=state.retries,
                                    seconds=time.perf_counter() - state.started)
            except OSError as exc:
                fail(state, f"cannot write {state.plan.out_dir}: {exc}", "machine")
                continue
            outcomes[name] = outcome
            events.bag(outcome)
    run["work_seconds"] = time.perf_counter() - work_start
    for actor in idle:
        ray.kill(actor)
    order = [p.name for p in plans if p.name in outcomes]
    return [outcomes[name] for name in order], run
