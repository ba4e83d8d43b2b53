"""Spinning an executor until shutdown without depending on a single wake-up.

rclpy handles SIGINT/SIGTERM on a helper thread: it triggers every executor's signal guard condition, and the
context is shut down at the C level (which runs no Python `on_shutdown` callback, so the executor's own wake-up
is never triggered). An executor woken by the guard condition can re-check `context.ok()` before the shutdown
has happened, find it still valid and wait again, with nothing left to wake it: `executor.spin()` then sleeps
until some unrelated event (a request, a timer) arrives. A node without timers (the annotation service) hung
like this in about one start in ten to twenty on SIGTERM. `spin_until_shutdown` waits in slices of `poll_s`
seconds instead, so a shutdown is noticed within one slice whatever the order of events.
"""

from __future__ import annotations

from rclpy.executors import Executor

POLL_S = 0.1


def spin_until_shutdown(executor: Executor, poll_s: float = POLL_S) -> None:
    """Run the executor's callbacks until its context is shut down (or the executor is); returns within
    `poll_s` seconds of a shutdown. KeyboardInterrupt and ExternalShutdownException pass through."""
    context = executor.context
    while context.ok() and not executor._is_shutdown:
        executor.spin_once(timeout_sec=poll_s)
