"""Spinning an executor until shutdown without depending on a single wake-up.

rclpy handles SIGINT/SIGTERM on a helper thread: it triggers every executor's signal guard condition, and the
context is shut down at the C level (which runs no Python `on_shutdown` callback, so the executor's own wake-up
is never triggered). An executor woken by the guard condition can re-check `context.ok()` before the shutdown
has happened, find it still valid and wait again, with nothing left to wake it: `executor.spin()` then sleeps
until some unrelated event (a request, a timer) arrives. A node without timers (the annotation service) hung
like this in about one start in ten to twenty on SIGTERM. `spin_until_shutdown` waits in slices of `poll_s`
seconds instead, so a shutdown is noticed within one slice whatever the order of events.

`finish_process` bounds what follows: destroying the node and the context (deleting the DDS participant),
which in loaded test runs took from 1.5 s to more than 30 s, and the interpreter's finalisation.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import NoReturn

import rclpy
from rclpy.executors import Executor
from rclpy.node import Node

from instseg_core.base.command_exit import EXIT_DONE, EXIT_INTERNAL_ERROR

POLL_S = 0.1


def init_node_process(argv: list[str] | None) -> None:
    """rclpy.init for a node's process, with SIGINT handled like SIGTERM. rclpy chains SIGINT to Python's
    handler, which raises KeyboardInterrupt at whatever line runs next, besides shutting the context down: one
    Ctrl-C during start-up could surface twice (an RCLError from the dead context, then the KeyboardInterrupt
    inside the clean-up, a traceback and exit -2). With Python's handler set to ignore SIGINT before
    rclpy.init, rclpy's handler only shuts the context down, and every stop takes the one path that
    `spin_until_shutdown` and the node's clean-up expect."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    rclpy.init(args=argv)


def spin_until_shutdown(executor: Executor, poll_s: float = POLL_S) -> None:
    """Run the executor's callbacks until its context is shut down (or the executor is); returns within
    `poll_s` seconds of a shutdown. KeyboardInterrupt and ExternalShutdownException pass through."""
    context = executor.context
    while context.ok() and not executor._is_shutdown:
        executor.spin_once(timeout_sec=poll_s)


TEARDOWN_GRACE_S = 1.5


def finish_process(teardown: Callable[[], None], name: str, status: int = 0,
                   grace_s: float = TEARDOWN_GRACE_S) -> NoReturn:
    """End a process that has decided to stop: run `teardown` (destroying executors, nodes and the context) on
    a helper thread, wait for it at most `grace_s` seconds, flush, and end the process with `status`,
    skipping interpreter finalisation. Deleting a DDS participant (rcl's node fini, reached from
    `node.destroy_node()` or `rclpy.try_shutdown()`) was seen to take from 1.5 s to over 30 s in loaded test
    runs; everything the process owns is written by then, so it does not wait longer (other participants
    then notice it gone by its lease instead of a goodbye message)."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            teardown()
        except BaseException as exc:
            errors.append(exc)

    # The deletion was also seen to block while holding the GIL, when no Python code (this join included) can
    # run: faulthandler's watchdog is a C thread that needs no GIL; it prints the stacks and ends the process
    # (status 1) if even the join below cannot return.
    faulthandler.dump_traceback_later(grace_s + 0.4, exit=True, file=sys.stderr)
    worker = threading.Thread(target=run, name="ros-teardown", daemon=True)
    worker.start()
    worker.join(grace_s)
    if worker.is_alive():
        print(f"{name}: the ROS teardown did not finish within {grace_s:g} s; exiting without waiting for it",
              file=sys.stderr, flush=True)
    elif errors:
        print(f"{name}: teardown failed: {errors[0]!r}", file=sys.stderr, flush=True)
    exit_now(status)


def exit_now(status: int = 0) -> NoReturn:
    """Flush stdout and stderr and end the process at once with `status`, skipping interpreter finalisation
    (and so the deletion of any DDS participant still alive)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def end_node_process(executor: Executor | None, node: Node | None, name: str, clean: bool,
                     status: int = 0) -> None:
    """The end of a node's main(), from its `finally`. When no exception propagates (`clean`), the process ends at
    once with `status` (0: a clean stop; the node has printed why otherwise), without deleting its DDS participant:
    that deletion blocked, holding the GIL, for seconds in about 1 start in 30 under a loaded test suite, and other
    participants notice the node gone by its lease instead. While an exception propagates (the exit status 2 of a
    failed start), the executor, node and context are destroyed in place and the exception goes on."""

    def teardown() -> None:
        if executor is not None:
            executor.shutdown()
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()

    if clean:  # everything is written: end without deleting the DDS participant (see finish_process)
        exit_now(status)
    teardown()


def failures_status(name: str, failures: int, what: str) -> int:
    """The exit status of a node that stopped cleanly: 0, or with `failures` internal errors (frames that failed,
    requests answered INTERNAL_ERROR) one line saying so and 1: the summary alone must not look like a success."""
    if not failures:
        return EXIT_DONE
    print(f"{name}: {failures} {what} failed with an internal error (logged above); exit status 1", file=sys.stderr,
          flush=True)
    return EXIT_INTERNAL_ERROR
