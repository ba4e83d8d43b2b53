"""Spinning an executor until shutdown without depending on a single wake-up.

rclpy handles SIGINT/SIGTERM on a helper thread: it triggers every executor's signal guard condition, and the
context is shut down at the C level (which runs no Python `on_shutdown` callback, so the executor's own wake-up
is never triggered). An executor woken by the guard condition can re-check `context.ok()` before the shutdown
has happened, find it still valid and wait again, with nothing left to wake it: `executor.spin()` then sleeps
until some unrelated event (a request, a timer) arrives. A node without timers (the annotation service) hung
like this in about one start in ten to twenty on SIGTERM. `spin_until_shutdown` waits in slices of `poll_s`
seconds instead, so a shutdown is noticed within one slice whatever the order of events.

`exit_if_teardown_hangs` and `end_process` bound what follows: destroying the node and the context, and the
interpreter's finalisation, which in rare test runs did not return (a process that had printed its summary
stayed alive for more than 30 s).
"""

from __future__ import annotations

import faulthandler
import os
import sys

from rclpy.executors import Executor

POLL_S = 0.1


def spin_until_shutdown(executor: Executor, poll_s: float = POLL_S) -> None:
    """Run the executor's callbacks until its context is shut down (or the executor is); returns within
    `poll_s` seconds of a shutdown. KeyboardInterrupt and ExternalShutdownException pass through."""
    context = executor.context
    while context.ok() and not executor._is_shutdown:
        executor.spin_once(timeout_sec=poll_s)


TEARDOWN_GRACE_S = 1.5


def exit_if_teardown_hangs(grace_s: float = TEARDOWN_GRACE_S) -> None:
    """Arm a watchdog for a process that is shutting down: if it has not ended `grace_s` seconds later (the DDS
    participant's teardown in `node.destroy_node()` / `rclpy.shutdown()`, or the interpreter's finalisation,
    was seen to hang in rare test runs), every thread's stack is printed to stderr and the process ends with
    status 1. The watchdog is faulthandler's, a C thread that needs neither the GIL nor a live interpreter.
    Call it once the process has decided to stop, before destroying nodes and contexts."""
    faulthandler.dump_traceback_later(grace_s, exit=True, file=sys.stderr)


def end_process(status: int = 0) -> None:
    """After a clean teardown: flush and end the process now, skipping interpreter finalisation (whose
    destructors of DDS entities are what can still hang; nothing is left to write)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
