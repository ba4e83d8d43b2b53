"""`instseg-bag`: play rosbag2 files onto ROS 2 topics and record topics into MCAP, with rosbags + rclpy.

    instseg-bag play BAG [--rate 1.0] [--loop] [--start-offset S] [--clock] [--topics T ...]
                         [--remap /from:=/to ...] [--reliability reliable|best_effort]
    instseg-bag record OUT --topics T [T ...] [--duration S] [--split-seconds 1.0] [--wait S] [--until-count N]

`ros2 bag` (rosbag2_py) is not installable from PyPI; this is the same job for the product's needs. Play
reads any rosbag2 directory (MCAP or sqlite3, any writer: rosbags, ros2 bag, the mcap library) or a single
.mcap file, and publishes each message's serialized CDR bytes unchanged at the recorded pace (log time),
scaled by --rate; --clock also publishes /clock (rosgraph_msgs/Clock) with the bag time. Before playing, the
chunk CRCs of MCAP files are checked (instseg_core.data.recording.verify_bag; --no-verify skips it): a
damaged bag is refused instead of played. Record subscribes to serialized messages and writes them unchanged
into MCAP splits of --split-seconds, each with chunk CRCs, closed and listed in metadata.yaml as it ends: a
recorder killed by SIGKILL leaves a readable bag that lacks at most the last split. Message definitions of
this package's interfaces are registered from their .msg files, so InstanceArray bags open in other tools
too. Both stop cleanly on SIGINT/SIGTERM.

Exit status (instseg_core.base.command_exit): 0 only when everything asked was done; 2 with one line on stderr
for corrupt or missing bags, unknown topics and a recording stopped by a failed write (a full or read-only disk:
the line names the path, the errno and the free space; the finished splits stay listed in metadata.yaml, the
unfinished one is removed, and the JSON summary of what was kept is still printed, with "error"; when no split was
finished, nothing is kept and the directory is removed), a bag that holds no messages given to play; 1 with one line
for an internal error, its traceback in a log file (or on stderr with --debug). While recording, a warning goes
to stderr when the free space falls below --low-space-warning seconds of recording at the current rate.
"""

from __future__ import annotations

import argparse
import importlib
import json
import signal
import sys
import threading
import time
from pathlib import Path

import rclpy
from rclpy.duration import Duration
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from instseg_core.base.command_exit import EXIT_DONE, InputError, add_debug_argument, debug_requested, failure_status
from instseg_core.data.bags import interface_typestore
from instseg_core.data.recording import BagIntegrityError, BagWriteError, LowSpaceWatch, SplitBagWriter, verify_bag
from instseg_ros.spinning import finish_process

COMMAND = "instseg-bag"


class BagToolError(InputError):
    """A problem the user must fix (bad bag, unknown topic, full disk); printed without a traceback, status 2."""


def message_class(msgtype: str) -> type:
    """'sensor_msgs/msg/Image' -> the rclpy message class."""
    package, _, name = msgtype.rpartition("/")
    try:
        return getattr(importlib.import_module(package.replace("/", ".")), name)
    except (ImportError, AttributeError) as exc:
        raise BagToolError(f"message type {msgtype} is not available in this ROS environment") from exc


def _qos(reliability: str, depth: int = 10) -> QoSProfile:
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=ReliabilityPolicy.RELIABLE if reliability == "reliable"
                      else ReliabilityPolicy.BEST_EFFORT, durability=DurabilityPolicy.VOLATILE)


def parse_remaps(remaps: list[str]) -> dict[str, str]:
    result = {}
    for remap in remaps:
        source, sep, target = remap.partition(":=")
        if not sep or not source or not target:
            raise BagToolError(f"--remap expects /from:=/to, got {remap!r}")
        result[source] = target
    return result


def _lists_no_data_file(path: Path) -> bool:
    """Whether `path` is a rosbag2 directory whose metadata.yaml lists no data file (a bag no reader opens: rosbags
    says "Bag contains no type definitions"); False when it cannot tell (the reader reports what is wrong)."""
    import yaml

    try:
        info = yaml.safe_load((path / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
        return not info.get("relative_file_paths") and not info.get("files")
    except (OSError, ValueError, yaml.YAMLError, KeyError, TypeError, AttributeError):
        return False


def _open_reader(path: Path) -> object:
    from rosbags.highlevel import AnyReader

    if not path.exists():
        raise BagToolError(f"bag not found: {path}")
    if _lists_no_data_file(path):
        raise BagToolError(f"bag {path} holds no messages: its metadata.yaml lists no data file (a recording that "
                           "ended before its first split was finished); nothing to play")
    try:
        reader = AnyReader([path])
        reader.open()
    except Exception as exc:  # rosbags raises several types for damaged files
        raise BagToolError(f"cannot read bag {path}: {exc}") from exc
    return reader


def play(args: argparse.Namespace, node: Node, stop: threading.Event) -> dict:
    """Publish the bag; returns {'published': {topic: count}, 'loops': n}."""
    remaps = parse_remaps(args.remap)
    if args.verify and Path(args.bag).exists():
        try:
            verify_bag(args.bag)
        except BagIntegrityError as exc:
            raise BagToolError(f"bag {args.bag} is damaged, not played: {exc}") from exc
    reader = _open_reader(Path(args.bag))
    try:
        connections = [c for c in reader.connections if not args.topics or c.topic in args.topics]
        missing = set(args.topics or []) - {c.topic for c in reader.connections}
        if missing:
            raise BagToolError(f"topics {sorted(missing)} are not in {args.bag} (it has "
                               f"{sorted({c.topic for c in reader.connections})})")
        publishers = {}
        for connection in connections:
            topic = remaps.get(connection.topic, connection.topic)
            if topic not in publishers:
                publishers[topic] = node.create_publisher(message_class(connection.msgtype), topic,
                                                          _qos(args.reliability))
        clock = None
        if args.clock:
            from rosgraph_msgs.msg import Clock

            clock = (node.create_publisher(Clock, "/clock", _qos("reliable")), Clock)
        start_ns = reader.start_time + int(args.start_offset * 1e9)
        counts = {topic: 0 for topic in publishers}
        loops = 0
        if args.wait_for_subscribers:
            deadline = time.monotonic() + args.wait_for_subscribers
            while (time.monotonic() < deadline and not stop.is_set()
                   and any(p.get_subscription_count() == 0 for p in publishers.values())):
                time.sleep(0.05)
            time.sleep(0.5)  # the publisher sees the subscriber before the subscriber's side has matched
        while not stop.is_set():
            wall_start = time.monotonic()
            try:
                for connection, timestamp, rawdata in reader.messages(connections=connections, start=start_ns):
                    due = wall_start + (timestamp - start_ns) / 1e9 / args.rate
                    while not stop.is_set() and (delay := due - time.monotonic()) > 0:
                        time.sleep(min(delay, 0.1))
                    if stop.is_set():
                        break
                    if clock is not None:
                        publisher, clock_type = clock
                        message = clock_type()
                        message.clock.sec, message.clock.nanosec = divmod(int(timestamp), 10**9)
                        publisher.publish(message)
                    topic = remaps.get(connection.topic, connection.topic)
                    publishers[topic].publish(bytes(rawdata))
                    counts[topic] += 1
            except Exception as exc:  # a damaged chunk in the middle of a bag
                raise BagToolError(f"bag {args.bag} is damaged after {sum(counts.values())} messages: {exc}") \
                    from exc
            loops += 1
            if not args.loop:
                break
        if args.reliability == "reliable":  # do not exit (and destroy the publishers) before delivery
            for publisher in publishers.values():
                publisher.wait_for_all_acked(Duration(seconds=5.0))
        return {"published": counts, "loops": loops}
    finally:
        reader.close()


def record(args: argparse.Namespace, node: Node, stop: threading.Event, executor: SingleThreadedExecutor) -> dict:
    """Record the topics until --duration elapses, --until-count messages arrived on every topic, or SIGINT;
    returns {"recorded": {topic: count}}. Prints "recording, every topic matched" to stderr once every
    subscription has a publisher."""

    out = Path(args.out)
    if out.exists():
        raise BagToolError(f"{out} exists; choose a new directory")
    types: dict[str, str] = {}
    deadline = time.monotonic() + args.wait
    while len(types) < len(args.topics) and time.monotonic() < deadline and not stop.is_set():
        for name, type_names in node.get_topic_names_and_types():
            if name in args.topics and type_names:
                types[name] = type_names[0]
        executor.spin_once(timeout_sec=0.1)
    missing = sorted(set(args.topics) - set(types))
    if missing:
        raise BagToolError(f"no publisher for {missing} appeared within {args.wait} s")
    lock = threading.Lock()
    writer = SplitBagWriter(out, interface_typestore(), split_seconds=args.split_seconds)
    watch = LowSpaceWatch(out, horizon_s=args.low_space_warning)
    failures: list[BagWriteError] = []
    try:
        for topic in args.topics:
            writer.add_topic(topic, types[topic])

        def callback(topic: str) -> object:
            def write(data: bytes) -> None:
                with lock:
                    if failures:
                        return
                    try:
                        writer.write(topic, node.get_clock().now().nanoseconds, data)
                    except BagWriteError as exc:  # a full disk: stop recording, keep what is finished
                        failures.append(exc)
            return write

        subscriptions = [node.create_subscription(message_class(types[topic]), topic, callback(topic),
                                                  _qos(args.reliability, 100), raw=True) for topic in args.topics]
        end = time.monotonic() + args.duration if args.duration else float("inf")
        matched = False
        while not stop.is_set() and not failures and time.monotonic() < end:
            executor.spin_once(timeout_sec=0.1)
            with lock:
                if failures:
                    break
                try:
                    writer.tick(node.get_clock().now().nanoseconds)
                except BagWriteError as exc:
                    failures.append(exc)
                    break
                warning = watch.check(time.monotonic(), writer.bytes_received)
            if warning:
                print(f"{COMMAND}: warning: {warning}", file=sys.stderr, flush=True)
            if not matched and all(s.get_publisher_count() > 0 for s in subscriptions):
                matched = True  # what a caller waits for before it starts the publishers' sources
                print("instseg-bag: recording, every topic matched", file=sys.stderr, flush=True)
            if args.until_count:
                with lock:
                    if min(writer.counts.values()) >= args.until_count:
                        break
    finally:
        with lock:
            try:
                writer.close()
            except BagWriteError as exc:
                if not failures:
                    failures.append(exc)
    summary = {"recorded": writer.counts, "path": str(out), "splits": len(writer.closed)}
    if failures:  # what was kept, for scripts; then the one line and status 2
        kept = {topic: sum(s.counts.get(topic, 0) for s in writer.closed) for topic in writer.topics}
        print(json.dumps({**summary, "recorded": kept, "error": str(failures[0])}), flush=True)
        raise BagToolError(str(failures[0])) from failures[0]
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="instseg-bag", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    play_parser = commands.add_parser("play", help="publish a bag's messages")
    play_parser.add_argument("bag", help="rosbag2 directory or .mcap file")
    play_parser.add_argument("--rate", type=float, default=1.0)
    play_parser.add_argument("--loop", action="store_true")
    play_parser.add_argument("--start-offset", type=float, default=0.0, help="seconds into the bag")
    play_parser.add_argument("--clock", action="store_true", help="publish /clock with the bag time")
    play_parser.add_argument("--topics", nargs="*", default=[])
    play_parser.add_argument("--remap", nargs="*", default=[], help="/from:=/to")
    play_parser.add_argument("--reliability", choices=("reliable", "best_effort"), default="reliable")
    play_parser.add_argument("--no-verify", dest="verify", action="store_false",
                             help="play without checking the chunk CRCs first")
    play_parser.add_argument("--wait-for-subscribers", type=float, default=0.0,
                             help="wait up to S seconds for a subscriber on every topic before playing")
    record_parser = commands.add_parser("record", help="record topics into a new bag")
    record_parser.add_argument("out")
    record_parser.add_argument("--topics", nargs="+", required=True)
    record_parser.add_argument("--duration", type=float, default=0.0, help="seconds; 0 = until SIGINT")
    record_parser.add_argument("--until-count", type=int, default=0,
                               help="stop once every topic has this many messages (0 = no limit)")
    record_parser.add_argument("--split-seconds", type=float, default=1.0,
                               help="length of a split; a killed recorder loses at most the last one")
    record_parser.add_argument("--wait", type=float, default=10.0, help="seconds to wait for the topics")
    record_parser.add_argument("--reliability", choices=("reliable", "best_effort"), default="best_effort",
                               help="best_effort (default) also receives from reliable publishers")
    record_parser.add_argument("--low-space-warning", type=float, default=300.0, metavar="S",
                               help="warn when the free space holds less than S seconds of recording at the current "
                                    "rate (0: never)")
    for command_parser in (play_parser, record_parser):
        add_debug_argument(command_parser)
    args = parser.parse_args(argv)
    if args.command == "play" and args.rate <= 0:
        parser.error("--rate must be positive")
    rclpy.init(signal_handler_options=rclpy.signals.SignalHandlerOptions.NO)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    node = Node(f"instseg_bag_{args.command}")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    status = EXIT_DONE
    try:
        result = play(args, node, stop) if args.command == "play" else record(args, node, stop, executor)
        print(json.dumps(result), flush=True)
    except ExternalShutdownException:  # the context was shut down from outside: a requested stop
        pass
    except (Exception, KeyboardInterrupt) as exc:  # every other end is a failure, with its line and status
        status = failure_status(COMMAND, exc, debug=debug_requested(args))
    finally:
        def teardown() -> None:
            executor.shutdown()
            node.destroy_node()
            rclpy.try_shutdown()

        finish_process(teardown, COMMAND, status)


if __name__ == "__main__":
    main()
