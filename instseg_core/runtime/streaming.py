"""The streaming node's core without ROS: a newest-frame slot, one worker thread, drop counting, statistics.

    stats = FrameStats()
    worker = LatestFrameWorker(process, stats)   # process(frame, received_at) -> {stage: ms}
    worker.start()
    worker.offer(frame)        # from the transport's callback: never blocks on the model
    ...
    worker.stop()              # the frame in flight is finished; a frame still waiting is dropped (counted)

Why a slot and not a queue: a camera at 15 Hz into a model at 2 Hz must not queue seconds of stale frames.
The transport callback only stores the newest frame (replacing, and counting as dropped, one that was still
waiting); the worker takes it, so the model always works on the newest frame and the latency stays one frame.

`process` raises `BadFrameError` for a frame it refuses (bad encoding, wrong size): counted as bad; any other
exception is counted as failed and reported to `on_error`, and the worker goes on with the next frame. After
`stop()` returns, every frame offered is accounted for exactly once:
received == processed + dropped + bad + failed.

Memory is judged between frames: after each processed frame `FrameStats` reads the process's resident set
(RSS, /proc/self/statm), when the frame's transient buffers are freed. Sampled at random moments, RSS is a
sawtooth (a 2 MP frame allocates hundreds of MB inside the network and gives them back), so only the
between-frame series says whether memory is steady; `peak_rss_mb` (VmHWM) is the high-water mark.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np

# Counter names, in the order they are reported: frames received, processed, dropped (a newer one replaced
# them), bad (refused by the processing), failed (the processing raised); received is their sum once the
# worker has stopped. Transport counters (not frames received): "lost" counts frames the transport reported
# as sent but never delivered; "silent" counts the input timeouts, periods in which a camera was connected
# but no frame arrived (how frames dropped without a report show).
COUNTERS = ("received", "processed", "dropped", "bad", "failed")
TRANSPORT_COUNTERS = ("lost", "silent")


PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
WARMUP_FRAMES = 3  # frames whose RSS is not part of the steady range (first runs allocate arenas and plans)


def resident_mb() -> float:
    """This process's resident set in MiB (Linux /proc/self/statm; NaN where there is none)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, IndexError, ValueError):
        return float("nan")
    return pages * PAGE_SIZE / 2**20


def peak_resident_mb() -> float:
    """The high-water mark of this process's resident set in MiB (VmHWM of /proc/self/status; NaN if unknown)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return float("nan")


class BadFrameError(ValueError):
    """A frame the processing refuses (not a failure of the processing itself); counted as bad."""


class FrameStats:
    """Counters (see COUNTERS) and sliding windows of per-frame latency, stage times and completion times.

    Thread-safe: every update and `snapshot` holds `lock`. Latencies are milliseconds from the frame's arrival
    (`received_at`, `clock()` seconds, time.monotonic by default) to the end of its processing. The counters
    are totals over the node's life; `recent` counts the bad and failed frames of the last seconds, which is
    what the node's health is judged on (one bad frame an hour ago is not a problem now).
    """

    def __init__(self, window: int = 300, clock: Callable[[], float] = time.monotonic) -> None:
        self.lock = threading.Lock()
        self.clock = clock
        self.counts = dict.fromkeys(COUNTERS + TRANSPORT_COUNTERS, 0)
        self.latencies_ms: deque[float] = deque(maxlen=window)
        self.stage_ms: deque[dict[str, float]] = deque(maxlen=window)
        self.done_times: deque[float] = deque(maxlen=window)
        self.problem_times: dict[str, deque[float]] = {name: deque(maxlen=10_000) for name in ("bad", "failed")}
        self.rss_mb: deque[float] = deque(maxlen=window)  # between frames, after the warm-up frames

    def count(self, name: str, n: int = 1) -> None:
        with self.lock:
            self.counts[name] += n
            if name in self.problem_times:
                self.problem_times[name].extend([self.clock()] * n)

    def recent(self, name: str, seconds: float) -> int:
        """How many `name` ('bad' or 'failed') frames were counted in the last `seconds`."""
        with self.lock:
            since = self.clock() - seconds
            return sum(1 for t in self.problem_times[name] if t >= since)

    def health(self, seconds: float) -> tuple[str, str]:
        """('OK' | 'WARN', message) judged on the last `seconds`: WARN while bad or failed frames are recent."""
        bad, failed = self.recent("bad", seconds), self.recent("failed", seconds)
        if bad or failed:
            return "WARN", f"{bad} bad frames and {failed} failures in the last {seconds:g} s"
        return "OK", f"no bad frames or failures in the last {seconds:g} s"

    def record_processed(self, received_at: float, stages: dict[str, float]) -> None:
        """One frame done now; `stages` maps stage names to milliseconds. Also samples the RSS (see the module
        docstring)."""
        done = self.clock()
        rss = resident_mb()
        with self.lock:
            self.counts["processed"] += 1
            self.latencies_ms.append((done - received_at) * 1e3)
            self.done_times.append(done)
            self.stage_ms.append(dict(stages))
            if self.counts["processed"] > WARMUP_FRAMES:
                self.rss_mb.append(rss)

    def snapshot(self, fps_window_s: float = 5.0) -> dict[str, float | int]:
        """The counters, fps over the last `fps_window_s` seconds, latency p50/p95 (ms; NaN before the first
        frame), the median of each stage (`<stage>_ms`), and memory in MiB: `rss_mb` now, `rss_range_mb`
        (max - min of the between-frame RSS over the window, after the warm-up; NaN before) and `peak_rss_mb`."""
        with self.lock:
            now = self.clock()
            recent = [t for t in self.done_times if now - t <= fps_window_s]
            latencies = np.array(self.latencies_ms) if self.latencies_ms else np.array([np.nan])
            span = recent[-1] - recent[0] if len(recent) > 1 else 0.0
            fps = (len(recent) - 1) / span if span > 0 else 0.0
            stages = {f"{name}_ms": float(np.median([d.get(name, np.nan) for d in self.stage_ms]))
                      for name in (self.stage_ms[-1] if self.stage_ms else {})}
            rss_range = max(self.rss_mb) - min(self.rss_mb) if self.rss_mb else float("nan")
            return {**stages, "fps": fps, "latency_p50_ms": float(np.percentile(latencies, 50)),
                    "latency_p95_ms": float(np.percentile(latencies, 95)), "rss_mb": resident_mb(),
                    "rss_range_mb": rss_range, "peak_rss_mb": peak_resident_mb(), **self.counts}


class LatestFrameWorker:
    """A newest-frame slot served by one worker thread; see the module docstring.

    process(frame, received_at) -> {stage: ms}: runs on the worker thread, one frame at a time.
    on_bad(exception) / on_error(exception): called on the worker thread for each bad / failed frame (to log it).
    shutting_down(): True while the host is going away (e.g. its ROS context is shut down by a signal): a frame
    that fails then is dropped rather than counted as failed, since its results could not be delivered anyway.
    """

    def __init__(self, process: Callable[[object, float], dict[str, float] | None], stats: FrameStats | None = None,
                 *, on_bad: Callable[[BadFrameError], None] | None = None,
                 on_error: Callable[[Exception], None] | None = None,
                 shutting_down: Callable[[], bool] | None = None, name: str = "frame-worker") -> None:
        self.process = process
        self.stats = stats or FrameStats()
        self.on_bad = on_bad
        self.on_error = on_error
        self.shutting_down = shutting_down or (lambda: False)
        self._slot = threading.Condition()
        self._pending: tuple[object, float] | None = None
        self._stopping = False
        self._in_flight = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def busy(self) -> bool:
        """True while a frame is being processed or waiting."""
        with self._slot:
            return self._in_flight or self._pending is not None

    def offer(self, frame: object) -> None:
        """Hand over the newest frame (never blocks on processing); a frame still waiting is replaced and counted
        as dropped. After stop(), frames are counted as received and dropped."""
        received_at = self.stats.clock()
        with self._slot:
            self.stats.count("received")
            if self._stopping:
                self.stats.count("dropped")
                return
            if self._pending is not None:
                self.stats.count("dropped")
            self._pending = (frame, received_at)
            self._slot.notify()

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop taking frames, let the frame in flight finish, drop (and count) a frame still waiting, and join
        the worker. True when the worker has ended within `timeout` seconds. Safe to call more than once."""
        with self._slot:
            self._stopping = True
            if self._pending is not None:
                self._pending = None
                self.stats.count("dropped")
            self._slot.notify_all()
        if self._thread.ident is None:  # never started
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while True:
            with self._slot:
                while self._pending is None and not self._stopping:
                    self._slot.wait()
                if self._stopping:
                    return
                frame, received_at = self._pending  # type: ignore[misc]
                self._pending = None
                self._in_flight = True
            try:
                self._handle(frame, received_at)
            finally:
                with self._slot:
                    self._in_flight = False
                    self._slot.notify_all()

    def _handle(self, frame: object, received_at: float) -> None:
        try:
            stages = self.process(frame, received_at)
        except BadFrameError as exc:
            self.stats.count("bad")
            if self.on_bad is not None:
                self.on_bad(exc)
            return
        except Exception as exc:  # never let the worker die: count and go on
            if self.shutting_down():
                self.stats.count("dropped")
                return
            self.stats.count("failed")
            if self.on_error is not None:
                self.on_error(exc)
            return
        self.stats.record_processed(received_at, stages or {})

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no frame is waiting or in flight (True), or until `timeout` seconds pass (False)."""
        with self._slot:
            return self._slot.wait_for(lambda: not self._in_flight and self._pending is None, timeout)

