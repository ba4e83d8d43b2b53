"""Camera bags written with rosbags: read back by rosbags, deserialised by rclpy, replayed over DDS."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rclpy.serialization import deserialize_message
from rosbags.highlevel import AnyReader
from sensor_msgs.msg import CompressedImage, Image

from instseg_core.data import synth_cli
from instseg_core.data.bags import write_image_bag
from instseg_ros.image_codec import compressed_to_numpy, image_to_numpy

START_NS = 1_700_000_000_000_000_000


def frames(count: int = 5, height: int = 48, width: int = 64) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:height, 0:width]
    return [np.dstack([(x * 4 + 9 * k) % 256, y * 5 % 256, rng.integers(0, 30, (height, width))]).astype(np.uint8)
            for k in range(count)]


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
@pytest.mark.parametrize("encoding", ["rgb8", "bgr8"])
def test_bag_reads_back_with_rosbags_and_rclpy(tmp_path: Path, storage: str, encoding: str) -> None:
    source = frames()
    summary = write_image_bag(tmp_path / "bag", source, rate_hz=10.0, storage=storage, encoding=encoding,
                              frame_id="cam_front", compressed_topic="/camera/image_raw/compressed",
                              start_ns=START_NS)
    assert summary.counts == {"/camera/image_raw": 5, "/camera/image_raw/compressed": 5}
    expected_files = {"mcap": ".mcap", "sqlite3": ".db3"}[storage]
    assert any(p.suffix == expected_files for p in (tmp_path / "bag").iterdir())
    assert (tmp_path / "bag" / "metadata.yaml").is_file()
    with AnyReader([tmp_path / "bag"]) as reader:
        assert reader.message_count == 10
        by_topic: dict[str, list] = {}
        for connection, timestamp, rawdata in reader.messages():
            by_topic.setdefault(connection.topic, []).append((timestamp, bytes(rawdata), connection.msgtype))
    raw = by_topic["/camera/image_raw"]
    assert [t for t, _, _ in raw] == [START_NS + k * 100_000_000 for k in range(5)]
    for index, (timestamp, data, msgtype) in enumerate(raw):
        assert msgtype == "sensor_msgs/msg/Image"
        msg = deserialize_message(data, Image)  # rclpy reads rosbags' CDR
        assert msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec == timestamp
        assert (msg.header.frame_id, msg.encoding, msg.step) == ("cam_front", encoding, 64 * 3)
        pixels = image_to_numpy(msg)
        np.testing.assert_array_equal(pixels if encoding == "rgb8" else pixels[..., ::-1], source[index])
    for index, (_, data, _) in enumerate(by_topic["/camera/image_raw/compressed"]):
        decoded, decoded_encoding = compressed_to_numpy(deserialize_message(data, CompressedImage))
        assert decoded_encoding == "rgb8"
        assert np.abs(decoded.astype(int) - source[index]).mean() < 6.0


def test_bag_refuses_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="storage"):
        write_image_bag(tmp_path / "a", frames(1), storage="rosbag1")
    with pytest.raises(ValueError, match="encoding"):
        write_image_bag(tmp_path / "b", frames(1), encoding="mono8")
    write_image_bag(tmp_path / "c", frames(1))
    with pytest.raises(FileExistsError):
        write_image_bag(tmp_path / "c", frames(1))


def test_synth_sequence_writes_frames_and_bag(tmp_path: Path) -> None:
    summary = synth_cli.generate_sequence(tmp_path, "val", 3, width=160, height=80, bag=tmp_path / "cam",
                                          bag_storage="sqlite3", write_gt=True, progress=False)
    assert summary["bag"]["counts"] == {"/camera/image_raw": 3}
    images = sorted(p.name for p in (tmp_path / "leftImg8bit_sequence" / "val").rglob("*.png"))
    assert images == [f"valdorf_000000_{k:06d}_leftImg8bit.png" for k in range(3)]
    assert len(list((tmp_path / "gtFine_sequence" / "val").rglob("*_instanceIds.png"))) == 3


@pytest.mark.ros
def test_bag_replays_through_rclpy_over_dds(tmp_path: Path, ros_processes) -> None:
    source = frames(4, 512, 1024)
    write_image_bag(tmp_path / "bag", source, rate_hz=15.0, storage="mcap", start_ns=START_NS)
    subscriber = ros_processes.start("sub-camera", "--count", "4")
    player = ros_processes.start("replay-bag", "--bag", str(tmp_path / "bag"))
    assert ros_processes.wait(player, timeout=60).result == {"published": 4, "acked": True}
    result = ros_processes.wait(subscriber, timeout=60).result
    assert result["stamps"] == [START_NS + round(k * 1e9 / 15) for k in range(4)]
    assert result["frame_ids"] == ["camera_optical_frame"]
    assert result["shapes"] == [[512, 1024, 3]] * 4
    assert result["sums"] == [int(f.astype(np.int64).sum()) for f in source]
