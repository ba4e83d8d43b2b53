"""instseg-bag play/record across processes: pacing options, remapping, /clock, loop, a bag from another
writer (the mcap library), damaged bags and unknown topics."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from small_filesystems import SCRIPT as SMALL_FILESYSTEM
from small_filesystems import small_filesystem_arguments

from instseg_core.data.bags import write_image_bag

REPO = Path(__file__).resolve().parents[1]
BAG_TOOL = REPO / "instseg_ros" / "bag_tools.py"
START_NS = 1_700_000_000_000_000_000
pytestmark = pytest.mark.ros


@pytest.fixture(scope="module")
def small_bag(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 frames of 64x48 at 10 Hz (stamps START_NS + k * 0.1 s), MCAP."""
    frames = [np.full((48, 64, 3), k * 20, np.uint8) for k in range(8)]
    return write_image_bag(tmp_path_factory.mktemp("bags") / "small", frames, rate_hz=10.0, start_ns=START_NS).path


def test_play_with_offset_rate_remap_and_clock(ros_processes, small_bag: Path) -> None:
    subscriber = ros_processes.start("sub-camera", "--topic", "/cam/remapped", "--count", "5", "--timeout", "30")
    started = time.monotonic()
    player = ros_processes.start("play", str(small_bag), "--rate", "2.0", "--start-offset", "0.25", "--clock",
                                 "--remap", "/camera/image_raw:=/cam/remapped", "--wait-for-subscribers", "20",
                                 script=BAG_TOOL)
    played = ros_processes.wait(player, timeout=60).result
    elapsed = time.monotonic() - started
    received = ros_processes.wait(subscriber, timeout=30).result
    assert played == {"published": {"/cam/remapped": 5}, "loops": 1}  # frames at 0.3 .. 0.7 s
    assert received["stamps"] == [START_NS + k * 100_000_000 for k in range(3, 8)]
    assert received["clocks"] >= 5 and received["clock_secs"] == [START_NS // 10**9]
    assert elapsed < 20  # 0.4 s of bag at 2x


def test_loop_until_interrupted(ros_processes, small_bag: Path) -> None:
    subscriber = ros_processes.start("sub-camera", "--count", "20", "--timeout", "30")
    player = ros_processes.start("play", str(small_bag), "--rate", "4", "--loop", "--wait-for-subscribers", "20",
                                 script=BAG_TOOL)
    received = ros_processes.wait(subscriber, timeout=60).result
    player.send_signal(signal.SIGINT)
    played = ros_processes.wait(player, timeout=30).result
    assert len(received["stamps"]) >= 20 and played["loops"] >= 2
    assert set(received["stamps"]) <= {START_NS + k * 100_000_000 for k in range(8)}


def test_a_bag_from_the_mcap_library_plays(ros_processes, tmp_path: Path) -> None:
    from mcap_ros2.writer import Writer
    from rosbags.typesys import Stores, get_typestore

    definition, _ = get_typestore(Stores.ROS2_KILTED).generate_msgdef("sensor_msgs/msg/Image", ros_version=2)
    path = tmp_path / "foreign.mcap"
    with path.open("wb") as stream:
        writer = Writer(stream)
        schema = writer.register_msgdef("sensor_msgs/msg/Image", definition)
        for k in range(3):
            writer.write_message(topic="/camera/image_raw", schema=schema, log_time=(50 + k) * 10**9,
                                 publish_time=(50 + k) * 10**9, message={
                                     "header": {"stamp": {"sec": 50 + k, "nanosec": 0}, "frame_id": "foreign"},
                                     "height": 2, "width": 2, "encoding": "rgb8", "is_bigendian": 0, "step": 6,
                                     "data": bytes([k] * 12)})
        writer.finish()
    subscriber = ros_processes.start("sub-camera", "--count", "3", "--timeout", "30")
    player = ros_processes.start("play", str(path), "--wait-for-subscribers", "20", script=BAG_TOOL)
    assert ros_processes.wait(player, timeout=60).result["published"] == {"/camera/image_raw": 3}
    received = ros_processes.wait(subscriber, timeout=30).result
    assert received["stamps"] == [(50 + k) * 10**9 for k in range(3)] and received["frame_ids"] == ["foreign"]
    assert received["sums"] == [12 * k for k in range(3)]


def test_damaged_bags_and_unknown_topics_fail_clearly(ros_processes, small_bag: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.mcap"
    data = next(small_bag.glob("*.mcap")).read_bytes()
    damaged.write_bytes(data[: len(data) // 3])
    cases = [(["play", str(damaged)], "damaged.mcap"), (["play", str(tmp_path / "nothing")], "bag not found"),
             (["play", str(small_bag), "--topics", "/lidar"], "/lidar"),
             (["record", str(tmp_path / "rec"), "--topics", "/nobody", "--wait", "1"], "/nobody")]
    for args, message in cases:
        proc = ros_processes.start(*args, script=BAG_TOOL)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 2, (args, stderr)
        assert message in stderr and "Traceback" not in stderr, (args, stderr)


def test_record_writes_what_was_published(ros_processes, small_bag: Path, tmp_path: Path) -> None:
    from rosbags.highlevel import AnyReader

    out = tmp_path / "recorded"
    recorder = ros_processes.start("record", str(out), "--topics", "/camera/image_raw", "--wait", "30",
                                   "--reliability", "reliable", script=BAG_TOOL)
    time.sleep(1.0)
    player = ros_processes.start("play", str(small_bag), "--wait-for-subscribers", "20", script=BAG_TOOL)
    ros_processes.wait(player, timeout=60)
    time.sleep(1.5)
    recorder.send_signal(signal.SIGINT)
    assert ros_processes.wait(recorder, timeout=30).result["recorded"] == {"/camera/image_raw": 8}
    with AnyReader([out]) as reader:
        stamps = [reader.deserialize(raw, c.msgtype).header.stamp.sec for c, _, raw in reader.messages()]
    assert len(stamps) == 8 and set(stamps) == {START_NS // 10**9}
    assert subprocess.run([sys.executable, str(BAG_TOOL), "play", "--rate", "0", str(out)],
                          capture_output=True).returncode == 2


def test_a_killed_recorder_leaves_a_readable_bag_missing_at_most_the_last_split(ros_processes,
                                                                                  tmp_path: Path) -> None:
    """SIGKILL while recording 20 Hz for 4 s: the bag opens, its chunk CRCs check, and it lacks at most the
    frames of the last 1 s split (before: no metadata.yaml and no MCAP footer, the whole bag unreadable)."""
    from rosbags.highlevel import AnyReader

    from instseg_core.data.recording import verify_bag

    out = tmp_path / "killed"
    # the streamer waits for a subscriber before it sends; the recorder waits for the publisher to learn the type
    streamer = ros_processes.start("stream-frames", "--size", "64x32", "--rate", "20", "--duration", "4",
                                   "--timeout", "30")
    recorder = ros_processes.start("record", str(out), "--topics", "/image", "--wait", "30", "--split-seconds", "1",
                                   script=BAG_TOOL)
    sent = ros_processes.wait(streamer, timeout=60).result["sent"]
    recorder.send_signal(signal.SIGKILL)
    recorder.wait(timeout=30)
    check = verify_bag(out)
    assert check.verified and not check.unchecked, check
    with AnyReader([out]) as reader:
        stamps = [reader.deserialize(raw, c.msgtype).header.stamp for c, _, raw in reader.messages()]
    ns = [s.sec * 10**9 + s.nanosec for s in stamps]
    assert ns == sorted(ns) and len(set(ns)) == len(ns)
    # at most the open split (1 s = 20 frames, + one 0.1 s tick) and a couple of best-effort drops are missing
    assert sent - 25 <= len(ns) <= sent, (sent, len(ns))


def test_recording_into_a_full_disk_stops_with_the_reason_and_keeps_the_finished_splits(ros_processes,
                                                                                       tmp_path: Path) -> None:
    """Issue 33: a 256x128 camera at 20 Hz (2 MB/s) recorded in 0.25 s splits into a 4 MB tmpfs. The recorder warns
    while space is low, stops at ENOSPC with exit status 2 and one line naming the path and the free space, prints
    the JSON summary of what it kept, and leaves a readable bag: every finished split listed in metadata.yaml, no
    .part file (before: status 0, no summary, no message, a .part left behind)."""
    from rosbags.highlevel import AnyReader

    from instseg_core.data.recording import verify_bag

    disk, out = tmp_path / "disk", tmp_path / "disk" / "recording"
    kept_bag = tmp_path / "copied" / "recording"  # what the tmpfs held when the recorder ended
    streamer = ros_processes.start("stream-frames", "--size", "256x128", "--rate", "20", "--duration", "30",
                                   "--timeout", "30")
    recorder = ros_processes.start(*small_filesystem_arguments(disk, 4 << 20, copy_to=kept_bag.parent),
                                   sys.executable, str(BAG_TOOL), "record", str(out), "--topics", "/image", "--wait",
                                   "30", "--split-seconds", "0.25", script=SMALL_FILESYSTEM)
    stdout, stderr = recorder.communicate(timeout=60)
    assert recorder.returncode == 2, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("instseg-bag: recording into")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    assert str(out) in errors[0] and "No space left on device" in errors[0] and "MB free" in errors[0], errors
    assert "instseg-bag: warning: only" in stderr, "the low-space warning comes before the disk is full"
    summary = json.loads(stdout.splitlines()[-1])
    assert summary["error"] in errors[0] and summary["splits"] >= 1, summary
    assert not list(kept_bag.glob(".*.part")), "the unfinished split is removed"
    assert verify_bag(kept_bag).verified == tuple(sorted(p.name for p in kept_bag.glob("*.mcap")))
    with AnyReader([kept_bag]) as reader:
        kept = sum(1 for _ in reader.messages())
    assert kept == summary["recorded"]["/image"] > 0, (kept, summary)
    assert streamer.poll() is None, "the camera was still sending: the disk, not the camera, ended the recording"


def test_a_corrupted_recording_is_refused_by_play_and_label(ros_processes, tmp_path: Path) -> None:
    """A flipped byte inside a recorded frame: play and instseg-label refuse the bag, naming the file."""
    import numpy as np

    from instseg_core.data.bags import TYPESTORE, image_message
    from instseg_core.data.recording import SplitBagWriter

    bag = tmp_path / "flipped"
    writer = SplitBagWriter(bag, TYPESTORE, split_seconds=1.0)
    writer.add_topic("/camera/image_raw", "sensor_msgs/msg/Image")
    for index in range(12):
        message = image_message(np.full((32, 64, 3), index * 20, np.uint8), START_NS + index * 10**8, "cam")
        writer.write("/camera/image_raw", START_NS + index * 10**8,
                     bytes(TYPESTORE.serialize_cdr(message, "sensor_msgs/msg/Image")))
    writer.close()
    first = bag / "flipped_0.mcap"
    data = bytearray(first.read_bytes())
    pixel = data.index(bytes([60] * 64))  # inside frame 3's pixels
    data[pixel] ^= 0x01
    first.write_bytes(bytes(data))
    result = subprocess.run([sys.executable, str(BAG_TOOL), "play", str(bag)], capture_output=True, text=True,
                            env=ros_processes.env, timeout=60)
    assert result.returncode == 2 and "damaged" in result.stderr and "flipped_0.mcap" in result.stderr, result.stderr
    clicks = tmp_path / "clicks.json"
    clicks.write_text('{"0": [[[1, 5], [30, 1], [60, 5], [30, 30], "car"]]}')
    result = subprocess.run([sys.executable, "-m", "instseg_ros.label_bag", str(bag), "--topic", "/camera/image_raw",
                             "--clicks", str(clicks), "--out", str(tmp_path / "out"), "--quiet"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "damaged" in result.stderr and not (tmp_path / "out").exists(), result.stderr


WRITE_UNTIL_FULL = """
import sys
from pathlib import Path

from instseg_core.data.bags import TYPESTORE
from instseg_core.data.recording import BagWriteError, SplitBagWriter

writer = SplitBagWriter(Path(sys.argv[1]), TYPESTORE, split_seconds=3600.0)
writer.add_topic("/image", "sensor_msgs/msg/Image")
try:
    for index in range(100):
        writer.write("/image", 1_700_000_000_000_000_000 + index, bytes(100_000))
except BagWriteError as exc:
    print(exc)
    sys.exit(2)
"""


def test_a_full_disk_before_the_first_split_leaves_no_unreadable_bag(tmp_path: Path) -> None:
    """The disk (a 1 MB tmpfs, tests/small_filesystems.py) fills before the first split is finished: nothing is kept,
    the bag's directory is removed and the message says so (before: a metadata.yaml listing no file was left, a "bag"
    that play and the readers refuse with "Bag contains no type definitions")."""
    disk, kept = tmp_path / "disk", tmp_path / "kept"
    result = subprocess.run([sys.executable, str(SMALL_FILESYSTEM), *small_filesystem_arguments(disk, 1 << 20, kept),
                             sys.executable, "-c", WRITE_UNTIL_FULL, str(disk / "recording")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "No space left on device" in result.stdout and "was removed" in result.stdout, result.stdout
    assert f"no split was finished, so no message was kept and {disk / 'recording'} was removed" in result.stdout
    assert list(kept.iterdir()) == []


def test_play_says_that_a_bag_without_data_files_holds_no_messages(ros_processes, tmp_path: Path) -> None:
    """A recording closed before any message arrived lists no data file in its metadata.yaml: play names the bag and
    says it holds no messages (status 2), instead of rosbags' "Bag contains no type definitions"."""
    from instseg_core.data.bags import TYPESTORE
    from instseg_core.data.recording import SplitBagWriter

    writer = SplitBagWriter(tmp_path / "empty", TYPESTORE)
    writer.add_topic("/image", "sensor_msgs/msg/Image")
    writer.close()
    result = subprocess.run([sys.executable, str(BAG_TOOL), "play", str(tmp_path / "empty")], capture_output=True,
                            text=True, env=ros_processes.env, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"instseg-bag: bag {tmp_path / 'empty'} holds no messages: its metadata.yaml lists no data file (a recording "
        "that ended before its first split was finished); nothing to play"), result.stderr
