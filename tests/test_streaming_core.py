"""The streaming node's ROS-free core (instseg_core.runtime.streaming): newest-frame slot, worker, counting.

Every wait is on an event; the processing function is held inside a frame by an Event the test releases, so
the races (a frame arriving while one is in flight, shutdown with a frame in flight) are set up exactly.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from instseg_core.runtime.streaming import COUNTERS, BadFrameError, FrameStats, LatestFrameWorker

TIMEOUT = 10.0


class HeldProcessor:
    """process() records each frame, then blocks on a per-frame gate until the test opens it."""

    def __init__(self) -> None:
        self.seen: list[object] = []
        self.started = threading.Semaphore(0)
        self.gates: dict[object, threading.Event] = {}
        self.lock = threading.Lock()

    def gate(self, frame: object) -> threading.Event:
        with self.lock:
            return self.gates.setdefault(frame, threading.Event())

    def __call__(self, frame: object, received_at: float) -> dict[str, float]:
        self.seen.append(frame)
        self.started.release()
        assert self.gate(frame).wait(TIMEOUT), f"frame {frame} was never released"
        if frame == "bad":
            raise BadFrameError("unsupported encoding")
        if frame == "boom":
            raise RuntimeError("backend exploded")
        return {"inference": 1.0}

    def wait_started(self) -> None:
        assert self.started.acquire(timeout=TIMEOUT), "the worker never started a frame"


def accounted(stats: FrameStats) -> bool:
    c = stats.counts
    return c["received"] == c["processed"] + c["dropped"] + c["bad"] + c["failed"]


@pytest.fixture
def held() -> HeldProcessor:
    return HeldProcessor()


def test_frame_arriving_while_one_is_in_flight_is_processed_next(held: HeldProcessor) -> None:
    worker = LatestFrameWorker(held)
    worker.start()
    worker.offer(1)
    held.wait_started()  # frame 1 in flight
    worker.offer(2)  # waits in the slot
    assert worker.busy
    held.gate(1).set()
    held.wait_started()  # frame 2 taken next
    held.gate(2).set()
    assert worker.wait_idle(TIMEOUT)
    assert held.seen == [1, 2]
    assert worker.stats.counts == {"received": 2, "processed": 2, "dropped": 0, "bad": 0, "failed": 0, "lost": 0,
                                  "silent": 0}
    assert worker.stop(TIMEOUT)


def test_newest_frame_wins_and_replaced_frames_are_counted_as_dropped(held: HeldProcessor) -> None:
    worker = LatestFrameWorker(held)
    worker.start()
    worker.offer(1)
    held.wait_started()
    for frame in (2, 3, 4):  # 2 and 3 are replaced before the worker is free
        worker.offer(frame)
    held.gate(1).set()
    held.wait_started()
    held.gate(4).set()
    assert worker.wait_idle(TIMEOUT)
    assert held.seen == [1, 4]
    assert worker.stats.counts["dropped"] == 2 and worker.stats.counts["processed"] == 2
    assert worker.stop(TIMEOUT) and accounted(worker.stats)


def test_shutdown_finishes_the_frame_in_flight_and_drops_the_waiting_one(held: HeldProcessor) -> None:
    worker = LatestFrameWorker(held)
    worker.start()
    worker.offer(1)
    held.wait_started()
    worker.offer(2)
    stopped = threading.Event()
    stopper = threading.Thread(target=lambda: worker.stop(TIMEOUT) and stopped.set())
    stopper.start()
    # stop() cannot return while frame 1 is held: it joins the worker, which is inside process()
    assert not stopped.wait(0.2)
    held.gate(1).set()
    assert stopped.wait(TIMEOUT)
    stopper.join(TIMEOUT)
    assert held.seen == [1]  # frame 2 never started
    assert worker.stats.counts == {"received": 2, "processed": 1, "dropped": 1, "bad": 0, "failed": 0, "lost": 0,
                                  "silent": 0}
    worker.offer(3)  # after stop: received and dropped, never processed
    assert held.seen == [1] and accounted(worker.stats)
    assert worker.stop(TIMEOUT)  # a second stop is harmless


def test_bad_and_failed_frames_are_counted_and_the_worker_goes_on(held: HeldProcessor) -> None:
    bad, errors = [], []
    worker = LatestFrameWorker(held, on_bad=bad.append, on_error=errors.append)
    worker.start()
    for frame in ("bad", "boom", "good"):
        held.gate(frame).set()
        worker.offer(frame)
        held.wait_started()
        assert worker.wait_idle(TIMEOUT)
    assert held.seen == ["bad", "boom", "good"]
    assert worker.stats.counts == {"received": 3, "processed": 1, "dropped": 0, "bad": 1, "failed": 1, "lost": 0,
                                  "silent": 0}
    assert [str(e) for e in bad] == ["unsupported encoding"] and [str(e) for e in errors] == ["backend exploded"]
    assert worker.stop(TIMEOUT) and accounted(worker.stats)


def test_a_failure_while_shutting_down_is_a_drop_not_a_failure(held: HeldProcessor) -> None:
    shutting_down = threading.Event()
    errors: list[Exception] = []
    worker = LatestFrameWorker(held, on_error=errors.append, shutting_down=shutting_down.is_set)
    worker.start()
    worker.offer("boom")
    held.wait_started()
    shutting_down.set()  # e.g. SIGINT shut the ROS context down: the results could not be published
    held.gate("boom").set()
    assert worker.wait_idle(TIMEOUT)
    assert worker.stats.counts["failed"] == 0 and worker.stats.counts["dropped"] == 1 and errors == []
    assert worker.stop(TIMEOUT)


def test_stop_before_start_and_statistics() -> None:
    assert LatestFrameWorker(lambda frame, t: None).stop(TIMEOUT)
    stats = FrameStats()
    empty = stats.snapshot()
    assert empty["fps"] == 0.0 and empty["latency_p50_ms"] != empty["latency_p50_ms"]  # NaN before any frame
    worker = LatestFrameWorker(lambda frame, t: {"inference": float(frame)}, stats)
    worker.start()
    for frame in range(5):
        worker.offer(frame)
        assert worker.wait_idle(TIMEOUT)
    assert worker.stop(TIMEOUT)
    snapshot = stats.snapshot()
    assert set(COUNTERS) <= set(snapshot) and snapshot["processed"] == 5
    assert snapshot["inference_ms"] == 2.0  # the median of 0..4
    assert 0.0 <= snapshot["latency_p50_ms"] <= snapshot["latency_p95_ms"] < TIMEOUT * 1e3


def test_health_is_judged_on_recent_frames_and_totals_stay() -> None:
    """One bad frame makes the node WARN for the window's length, not for the rest of its life."""
    now = [1000.0]
    stats = FrameStats(clock=lambda: now[0])
    assert stats.health(10.0)[0] == "OK"
    stats.count("received")
    stats.count("bad")
    level, message = stats.health(10.0)
    assert level == "WARN" and "1 bad frames" in message
    now[0] += 9.0
    stats.count("failed")
    assert stats.recent("bad", 10.0) == 1 and stats.recent("failed", 10.0) == 1
    now[0] += 1.5  # the bad frame is 10.5 s old, the failure 1.5 s
    assert stats.recent("bad", 10.0) == 0 and stats.health(10.0)[0] == "WARN"
    now[0] += 10.0
    assert stats.health(10.0) == ("OK", "no bad frames or failures in the last 10 s")
    assert stats.snapshot()["bad"] == 1 and stats.snapshot()["failed"] == 1  # totals are kept


def test_overlay_blends_in_uint8_with_bounded_memory() -> None:
    """The overlay equals the float blend (to rounding), keeps the background, and needs no float copies: a
    full-foreground 9 MP frame stays under 16 bytes per pixel of temporary memory (was ~60 with float64)."""
    import tracemalloc

    from instseg_core.postprocess.overlay import instance_palette, render_overlay

    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    ids = np.zeros((300, 400), np.uint16)
    ids[20:120, 30:200], ids[150:280, 100:390] = 1, 2
    out = render_overlay(rgb, ids, 0.4, outline=False)
    expected = rgb * 0.6 + instance_palette(2)[ids] * 0.4
    foreground = ids > 0
    assert np.abs(out[foreground].astype(float) - expected[foreground]).max() <= 1.0
    assert np.array_equal(out[~foreground], rgb[~foreground])
    outlined = render_overlay(rgb, ids, 0.4)
    assert np.array_equal(outlined[20, 100], instance_palette(2)[1])  # the object's top row is its outline
    assert np.array_equal(outlined[60, 100], out[60, 100])  # inside: blended
    bgr = render_overlay(np.ascontiguousarray(rgb[..., ::-1]), ids, 0.4, bgr=True)
    assert np.array_equal(bgr[..., ::-1], outlined)
    big = np.ones((3000, 3000), np.uint16)
    big[:, 1500:] = 2
    frame = np.zeros((3000, 3000, 3), np.uint8)
    tracemalloc.start()
    try:
        render_overlay(frame, big, 0.5)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * big.size, f"{peak / big.size:.1f} bytes per pixel"
