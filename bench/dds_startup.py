"""DDS start-up: how long after two peers start does the first message (or service response) arrive?

    .venv/bin/python bench/dds_startup.py [--count 50] [--kinds pubsub,oneshot,service] [--json]

Each round starts fresh DDS participants on both sides at the same moment, in two long-lived processes (so
no Python start-up is timed). Side B (a child process) creates
- pubsub: a publisher that sends a message every 100 ms, like a 10 Hz sensor;
- oneshot: a publisher that sends one message as soon as it sees a subscriber (what a bag player or a
  one-off command does): this message can reach the reader before the reader has matched the writer, and is
  then repaired only at the writer's next heartbeat;
- service: a service server.
Side A (this process) creates the subscriber, or a client that waits for the service and calls it once.
The time is from side A's node creation to the first message or response. Rounds run in a row, each on
its own topic/service name; both sides' participants are destroyed after each round. A round that gets
nothing in --timeout seconds counts as a stall. For oneshot rounds side B also times its publish until
every subscriber acknowledged it (what `instseg-bag play` waits for before it exits).

--fresh-processes measures what the test peers do instead: every round starts two new processes (a publisher
at 10 Hz or a service server, and a subscriber or client that reports when the first message or response
arrived, counted from its node creation) and ends by killing side B with SIGKILL, as a test's clean-up may;
the shared-memory files the two leave behind are then removed (instseg_ros.fastdds_shm), as the test harness
does between tests.

The script isolates itself (loopback-only network namespace with a private /dev/shm, its own
ROS_DOMAIN_ID); --shared-shm leaves /dev/shm shared with the host (the isolation before, the baseline).
--json prints one JSON line instead of the table (used by tests/test_isolation.py).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from instseg_ros import fastdds_shm, isolation


def _participant(name: str) -> tuple[object, object, object]:
    """(context, node, executor) of a fresh participant."""
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node

    context = Context()
    rclpy.init(context=context)
    node = Node(name, context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    return context, node, executor


def _close(context: object, node: object, executor: object) -> None:
    import rclpy

    executor.shutdown()  # type: ignore[attr-defined]
    node.destroy_node()  # type: ignore[attr-defined]
    rclpy.shutdown(context=context)  # type: ignore[arg-type]


def _reliable() -> object:
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    return QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


def side_b(payload_bytes: int) -> None:
    """Child: per line 'go INDEX KIND' on stdin, serve a round until 'stop' arrives; then say 'done'."""
    from std_msgs.msg import String
    from std_srvs.srv import Trigger

    for line in sys.stdin:
        _go, index, kind = line.split()
        context, node, executor = _participant(f"startup_b_{index}")
        name = f"startup_{kind}_{index}"
        if kind in ("pubsub", "oneshot"):
            publisher = node.create_publisher(String, name, _reliable())  # type: ignore[attr-defined]
            sent_once = False
        else:
            node.create_service(Trigger, name,  # type: ignore[attr-defined]
                                lambda request, response: setattr(response, "success", True) or response)
        next_publish = time.monotonic()
        while not select.select([sys.stdin], [], [], 0)[0]:
            if kind == "pubsub" and time.monotonic() >= next_publish:
                publisher.publish(String(data=f"{index}".ljust(payload_bytes)))
                next_publish += 0.1
            if kind == "oneshot" and not sent_once and publisher.get_subscription_count() > 0:
                publisher.publish(String(data=f"{index}".ljust(payload_bytes)))
                sent_once = True
                published = time.monotonic()
                from rclpy.duration import Duration

                acked = publisher.wait_for_all_acked(Duration(seconds=10))
                acked_s = time.monotonic() - published if acked else -1.0
            executor.spin_once(timeout_sec=0.01)  # type: ignore[attr-defined]
        sys.stdin.readline()  # 'stop'
        _close(context, node, executor)
        print(f"done {acked_s if kind == 'oneshot' else 0.0}", flush=True)


def round_a(index: int, kind: str, timeout: float) -> float | None:
    """Side A of one round: seconds to the first message / response, or None for a stall."""

    context, node, executor = _participant(f"startup_a_{index}")
    start = time.monotonic()
    took = _first_arrival(node, executor, kind, f"startup_{kind}_{index}", start, timeout)
    _close(context, node, executor)
    return took


def _first_arrival(node: object, executor: object, kind: str, name: str, start: float,
                   timeout: float) -> float | None:
    """Side A's wait: subscribe to `name` (pubsub, oneshot) or call the service `name` once it is ready; seconds
    from `start` (monotonic) to the first message or response, None after `timeout`."""
    from std_msgs.msg import String
    from std_srvs.srv import Trigger

    received: list = []
    future = None
    if kind in ("pubsub", "oneshot"):
        node.create_subscription(String, name, received.append, _reliable())  # type: ignore[attr-defined]
    else:
        client = node.create_client(Trigger, name)  # type: ignore[attr-defined]
    while time.monotonic() - start < timeout and not received:
        if kind == "service":
            if future is None and client.service_is_ready():
                future = client.call_async(Trigger.Request())
            if future is not None and future.done():
                received.append(future.result())
        executor.spin_once(timeout_sec=0.01)  # type: ignore[attr-defined]
    return time.monotonic() - start if received else None


def fresh_side(role: str, kind: str, name: str, timeout: float) -> None:
    """One side of a --fresh-processes round, in its own process: 'b' serves until killed; 'a' prints the
    seconds from its node's creation to the first message / response ('null' after `timeout`) and exits."""
    from std_msgs.msg import String
    from std_srvs.srv import Trigger

    _context, node, executor = _participant(f"fresh_{role}_{os.getpid()}")
    start = time.monotonic()
    if role == "b":
        publisher = None
        if kind == "pubsub":
            publisher = node.create_publisher(String, name, _reliable())  # type: ignore[attr-defined]
        else:
            node.create_service(Trigger, name,  # type: ignore[attr-defined]
                                lambda request, response: setattr(response, "success", True) or response)
        while True:
            if publisher is not None:
                publisher.publish(String(data="x"))
            executor.spin_once(timeout_sec=0.1)  # type: ignore[attr-defined]
    took = _first_arrival(node, executor, kind, name, start, timeout)
    if took is None:  # what this participant discovered: other nodes (participants), and the topic's endpoints
        peers = node.get_node_names_and_namespaces()  # type: ignore[attr-defined]
        topics = dict(node.get_topic_names_and_types())  # type: ignore[attr-defined]
        print(f"stalled side a: nodes {peers}; topics {sorted(topics)}", file=sys.stderr, flush=True)
    print(json.dumps(took), flush=True)
    os._exit(0)


def fresh_rounds(count: int, timeout: float, stall_dumps: Path | None = None,
                 clean_shm: bool = True) -> dict[str, list[float | None]]:
    """--fresh-processes: `count` rounds per kind, two new processes each (see the module docstring). With
    `stall_dumps`, a round whose side A has not answered within half its timeout (a round takes well under 1 s)
    gets both sides' sockets, shared-memory files and native stacks written there (dump_stall) while they are
    still stuck."""
    results: dict[str, list[float | None]] = {"pubsub (fresh processes)": [], "service (fresh processes)": []}
    for index in range(count):
        for kind in ("pubsub", "service"):
            name = f"fresh_{kind}_{index}"
            command = [sys.executable, __file__, "--fresh-side"]
            side_b = subprocess.Popen([*command, "b", kind, name, "0"], stdout=subprocess.DEVNULL)
            side_a = subprocess.Popen([*command, "a", kind, name, str(timeout)], stdout=subprocess.PIPE, text=True)
            try:
                output, _ = side_a.communicate(timeout=timeout / 2 if stall_dumps else timeout + 60)
            except subprocess.TimeoutExpired:
                if stall_dumps is not None:
                    dump_stall(stall_dumps / f"{kind}_{index}", {"a": side_a.pid, "b": side_b.pid})
                output, _ = side_a.communicate(timeout=60)
            side_b.kill()
            side_b.wait()
            if clean_shm:  # side A exited without DDS clean-up and side B was killed: their shared-memory
                fastdds_shm.remove_dead_files()  # files stay (~17 MB each) unless removed
            lines = output.strip().splitlines()
            results[f"{kind} (fresh processes)"].append(json.loads(lines[-1]) if lines else None)
    return results


def dump_stall(directory: Path, processes: dict[str, int]) -> None:
    """What a stalled round's processes are doing: the namespace's sockets (/proc/net tables) and each process's
    file descriptors (socket inodes, shared-memory files), the files in /dev/shm (Fast DDS's shared-memory
    segments and port locks), then each process's threads' native stacks (gdb, slower, so last)."""
    directory.mkdir(parents=True, exist_ok=True)
    tables = {name: Path(f"/proc/net/{name}").read_text() for name in ("udp", "tcp", "unix")}
    (directory / "net.txt").write_text("".join(f"== {name}\n{text}" for name, text in tables.items()))
    shm = sorted(os.listdir("/dev/shm"))
    (directory / "dev_shm.txt").write_text("\n".join(f"{n} {os.stat('/dev/shm/' + n).st_size}" for n in shm) + "\n")
    descriptors = {}
    for role, pid in processes.items():
        lines = []
        for fd in sorted(os.listdir(f"/proc/{pid}/fd"), key=int):
            try:
                lines.append(f"{fd} -> {os.readlink(f'/proc/{pid}/fd/{fd}')}")
            except OSError:
                continue
        descriptors[role] = "\n".join(lines)
    for role, pid in processes.items():
        stacks = subprocess.run(["gdb", "-p", str(pid), "-batch", "-nx", "-ex", "set pagination off",
                                 "-ex", "thread apply all bt"], capture_output=True, text=True, timeout=120)
        (directory / f"side_{role}_{pid}.txt").write_text(
            f"== fds\n{descriptors[role]}\n== gdb\n{stacks.stdout}{stacks.stderr[-2000:]}\n")
    print(f"stall: dumped {', '.join(f'{r}={p}' for r, p in processes.items())} into {directory}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--kinds", default="pubsub,oneshot,service")
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--shared-shm", action="store_true", help="leave /dev/shm shared with the host")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--payload-bytes", type=int, default=16,
                        help="size of each published message (6291456 = a 2 MP rgb8 frame)")
    parser.add_argument("--fresh-processes", action="store_true",
                        help="two new processes per round (pubsub and service), as the test peers")
    parser.add_argument("--stall-dumps", type=Path,
                        help="--fresh-processes: write a stalled round's stacks, sockets and /dev/shm files here")
    parser.add_argument("--side-b", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--fresh-side", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side_b:
        side_b(args.payload_bytes)
        return
    if args.fresh_side:
        role, kind, name, timeout = args.fresh_side
        fresh_side(role, kind, name, float(timeout))
        return
    isolation.ensure_isolated(private_shm=not args.shared_shm)
    results: dict[str, list[float | None]] = {}
    acked: list[float | None] = []
    if args.fresh_processes:
        results = fresh_rounds(args.count, args.timeout, args.stall_dumps, clean_shm=not args.shared_shm)
    else:
        results, acked = long_lived_rounds(args)
    summarise(args, results, acked)


def long_lived_rounds(args: argparse.Namespace) -> tuple[dict[str, list[float | None]], list[float | None]]:
    """The default rounds: side B in one long-lived child, side A in this process (see the module docstring)."""
    results: dict[str, list[float | None]] = {}
    acked: list[float | None] = []
    child = subprocess.Popen([sys.executable, __file__, "--side-b", "--payload-bytes", str(args.payload_bytes)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        for kind in args.kinds.split(","):
            results[kind] = []
            for index in range(args.count):
                child.stdin.write(f"go {index} {kind}\n")  # type: ignore[union-attr]
                child.stdin.flush()  # type: ignore[union-attr]
                results[kind].append(round_a(index, kind, args.timeout))
                child.stdin.write("stop\n")  # type: ignore[union-attr]
                child.stdin.flush()  # type: ignore[union-attr]
                assert child.stdout is not None
                answer = child.stdout.readline().split()
                assert answer[:1] == ["done"], "side B died"
                if kind == "oneshot":
                    acked.append(float(answer[1]) if float(answer[1]) >= 0 else None)
    finally:
        child.stdin.close()  # type: ignore[union-attr]
        child.wait(timeout=30)
    return results, acked


def summarise(args: argparse.Namespace, results: dict[str, list[float | None]], acked: list[float | None]) -> None:
    """Print the table (or with --json one JSON line) of the rounds."""
    summary = {}
    for kind, times in results.items():
        ok = sorted(t for t in times if t is not None)
        summary[kind] = {"rounds": len(times), "stalls": len(times) - len(ok), "times_s": times,
                         "median_s": ok[len(ok) // 2] if ok else None, "max_s": ok[-1] if ok else None,
                         "over_2s": sum(1 for t in times if t is None or t > 2.0)}
    if acked:
        summary["oneshot"]["acked_s"] = acked
    if args.json:
        print(json.dumps(summary), flush=True)
        return
    from benchlib import print_table, summarize

    rows = []
    for kind, s in summary.items():
        ok = [t * 1e3 for t in s["times_s"] if t is not None]
        median, p95 = summarize(ok)
        rows.append([kind, s["rounds"], s["stalls"], s["over_2s"], median, p95, max(ok) if ok else float("nan")])
        if kind == "oneshot":
            done = [t * 1e3 for t in s["acked_s"] if t is not None]
            median, p95 = summarize(done)
            rows.append(["oneshot: publish -> acknowledged", len(s["acked_s"]), len(s["acked_s"]) - len(done),
                         sum(1 for t in done if t > 2000), median, p95, max(done) if done else float("nan")])
    profile = "/dev/shm shared with the host" if args.shared_shm else "private /dev/shm"
    print_table(["kind", "rounds", f"stalls (> {args.timeout:g} s)", "over 2 s", "median ms", "p95 ms", "max ms"],
                rows, f"DDS start-up to first message, {profile}")


if __name__ == "__main__":
    main()
