"""Camera bags (instseg_core.data.bags): read back by rosbags, deserialised by rclpy, replayed over DDS; chunk
CRCs and atomic overwrites; bags from a video (instseg_core.data.video_bag) and their reuse by tools/demo.py."""

from __future__ import annotations

import importlib.util
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np
import pytest
from rclpy.serialization import deserialize_message
from rosbags.highlevel import AnyReader
from sensor_msgs.msg import CompressedImage, Image

from instseg_core.data import synth_cli
from instseg_core.data.bags import write_image_bag
from instseg_ros.image_codec import compressed_to_numpy, image_to_numpy

START_NS = 1_700_000_000_000_000_000
REPO = Path(__file__).resolve().parents[1]


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


def test_a_flipped_byte_in_a_frame_is_detected_when_read(tmp_path: Path) -> None:
    """MCAP bags are written as the recorder writes them, with chunk CRCs: a damaged frame is refused by rosbags
    (what the studio and instseg-label read with) and by verify_bag (before: rosbags' writer wrote no CRC, and the
    studio served the frame with wrong pixels)."""
    from instseg_core.data.recording import BagIntegrityError, verify_bag

    source = [np.full((48, 64, 3), 40 * k + 7, np.uint8) for k in range(4)]
    bag = write_image_bag(tmp_path / "bag", source, rate_hz=10.0, start_ns=START_NS).path
    assert verify_bag(bag).verified and not verify_bag(bag).unchecked
    mcap = next(bag.glob("*.mcap"))
    data = bytearray(mcap.read_bytes())
    data[data.index(bytes([87] * 64)) + 5] ^= 0x01  # inside frame 2's pixels
    mcap.write_bytes(bytes(data))
    with pytest.raises(BagIntegrityError, match="CRC does not match"):
        verify_bag(bag)
    with AnyReader([bag]) as reader, pytest.raises(Exception, match="Chunk checksum mismatch"):
        for _ in reader.messages():
            pass


def test_overwrite_replaces_a_bag_only_with_a_complete_one(tmp_path: Path) -> None:
    """A write that fails half-way leaves the old bag whole and no half-written folder behind."""
    write_image_bag(tmp_path / "bag", frames(3), rate_hz=10.0)

    def failing() -> Iterator[np.ndarray]:
        yield from frames(2)
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        write_image_bag(tmp_path / "bag", failing(), rate_hz=10.0, overwrite=True)
    with AnyReader([tmp_path / "bag"]) as reader:
        assert reader.message_count == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bag"]
    summary = write_image_bag(tmp_path / "bag", frames(5), rate_hz=10.0, overwrite=True)
    with AnyReader([summary.path]) as reader:
        assert reader.message_count == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bag"]
    with pytest.raises(ValueError, match="no frame"):
        write_image_bag(tmp_path / "empty", [])
    assert not (tmp_path / "empty").exists()
    (tmp_path / "afile").write_text("x")  # overwrite onto a regular file: replaced, nothing hidden left behind
    write_image_bag(tmp_path / "afile", frames(2), rate_hz=10.0, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "bag"] and (tmp_path / "afile").is_dir()


VIDEO_MTIME_NS = 1_600_000_000_123_456_000  # 2020-09-13 12:26:40 UTC


def small_video(path: Path, count: int = 12, fps: float = 25.0) -> Path:
    """An MP4 (mp4v) of `count` 64x48 frames, each of its own grey, with a fixed modification time; OpenCV's
    writer records no creation time (0)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, (64, 48))
    for k in range(count):
        writer.write(np.full((48, 64, 3), 20 * k, np.uint8))
    writer.release()
    os.utime(path, ns=(VIDEO_MTIME_NS, VIDEO_MTIME_NS))
    return path


def decoded(video: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(video))
    out = []
    while True:
        ok, bgr = capture.read()
        if not ok:
            return out
        out.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


def test_a_video_becomes_a_bag_of_its_frames(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m instseg_core.data.video_bag VIDEO OUT --frames 5 --rate 12.5`: every 2nd frame of a 25 Hz video,
    stamped from the file's modification time (the video records no creation time) at 80 ms, on the topic."""
    from instseg_core.data import video_bag

    video = small_video(tmp_path / "clip.mp4")
    video_bag.main([str(video), str(tmp_path / "bag"), "--frames", "5", "--rate", "12.5", "--topic", "/cam/image"])
    line = capsys.readouterr().out
    assert "wrote 5 frames" in line and "64x48" in line and "2020-09-13 12:26:40 UTC" in line, line
    assert "modification time" in line and "chunk CRCs" in line, line
    source = decoded(video)
    with AnyReader([tmp_path / "bag"]) as reader:
        assert [c.topic for c in reader.connections] == ["/cam/image"]
        messages = [(t, reader.deserialize(raw, c.msgtype)) for c, t, raw in reader.messages()]
    assert [t for t, _ in messages] == [VIDEO_MTIME_NS + k * 80_000_000 for k in range(5)]
    for k, (_, msg) in enumerate(messages):
        assert (msg.encoding, msg.width, msg.height) == ("rgb8", 64, 48)
        np.testing.assert_array_equal(msg.data.reshape(48, 64, 3), source[2 * k])
    from instseg_core.data.recording import verify_bag

    assert verify_bag(tmp_path / "bag").verified
    with pytest.raises(SystemExit) as refused:  # an existing OUT is kept
        video_bag.main([str(video), str(tmp_path / "bag")])
    assert refused.value.code == 2 and "--overwrite" in str(refused.value)
    with pytest.raises(SystemExit, match="above the video's 25"):
        video_bag.main([str(video), str(tmp_path / "fast"), "--rate", "30"])
    video_bag.main([str(video), str(tmp_path / "bag"), "--overwrite", "--start", "2024-05-01T14:00:00+02:00"])
    with AnyReader([tmp_path / "bag"]) as reader:
        stamps = [t for _, t, _ in reader.messages()]
    assert len(stamps) == 12 and stamps[0] == 1_714_564_800 * 10**9 and stamps[1] - stamps[0] == 40_000_000


def mp4_header(creation: int, version: int = 0) -> bytes:
    """The boxes an MP4 starts with, enough for its movie header: ftyp, then moov holding mvhd."""
    def box(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I4s", 8 + len(payload), kind) + payload

    times = struct.pack(">II", creation, creation) if version == 0 else struct.pack(">QQ", creation, creation)
    mvhd = box(b"mvhd", bytes([version, 0, 0, 0]) + times + bytes(80))
    return box(b"ftyp", b"isom\0\0\2\0isomiso2mp41") + box(b"free", b"") + box(b"moov", mvhd + box(b"trak", b""))


def test_the_start_is_the_videos_creation_time_else_the_files(tmp_path: Path) -> None:
    from instseg_core.base.command_exit import InputError
    from instseg_core.data.video_bag import mp4_creation_ns, resolve_start

    created = 3_568_987_448  # 2017-02-03 17:24:08 UTC, seconds since 1904
    for version in (0, 1):
        (tmp_path / f"v{version}.mp4").write_bytes(mp4_header(created, version) + b"\0" * 64)
        assert mp4_creation_ns(tmp_path / f"v{version}.mp4") == 1_486_142_648 * 10**9
    (tmp_path / "none.mp4").write_bytes(mp4_header(0))
    (tmp_path / "other.avi").write_bytes(b"RIFF\x10\0\0\0AVI LIST" + bytes(40))
    for name in ("none.mp4", "other.avi"):
        assert mp4_creation_ns(tmp_path / name) is None
        os.utime(tmp_path / name, ns=(VIDEO_MTIME_NS, VIDEO_MTIME_NS))
        assert resolve_start(tmp_path / name, "auto") == (VIDEO_MTIME_NS, "the video file's modification time")
    assert resolve_start(tmp_path / "v0.mp4", "auto") == (1_486_142_648 * 10**9, "the video's creation time")
    assert resolve_start(tmp_path / "v0.mp4", "2024-05-01T12:00:00")[0] == 1_714_564_800 * 10**9  # UTC
    assert resolve_start(tmp_path / "v0.mp4", "2024-05-01T12:00:00.5Z")[0] == 1_714_564_800_500_000_000
    with pytest.raises(InputError, match="no creation time"):
        resolve_start(tmp_path / "none.mp4", "video")
    with pytest.raises(InputError, match="ISO 8601"):
        resolve_start(tmp_path / "v0.mp4", "yesterday")


def demo_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("demo_tool", REPO / "tools" / "demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_reuses_a_video_bag_only_when_it_matches_what_is_asked(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """`tools/demo.py --video clip.mp4 --frames 3`, then `--frames 5`: the second run rewrites the bag with 5 frames
    and says why (before: it kept the 3-frame bag silently); the same request again reuses it; a changed video is
    written again."""
    demo = demo_tool()
    video = small_video(tmp_path / "clip.mp4")

    def frames_in(bag: Path) -> int:
        with AnyReader([bag]) as reader:
            return reader.message_count

    bag = demo.video_camera_bag(video, tmp_path / "demo", 3)
    assert bag == tmp_path / "demo" / "video_clip" and frames_in(bag) == 3
    assert "wrote 3 frames" in capsys.readouterr().out
    mcap = next(bag.glob("*.mcap")).stat()
    assert demo.video_camera_bag(video, tmp_path / "demo", 3) == bag
    assert "reusing" in capsys.readouterr().out and next(bag.glob("*.mcap")).stat().st_ino == mcap.st_ino
    demo.video_camera_bag(video, tmp_path / "demo", 5)
    out = capsys.readouterr().out
    assert frames_in(bag) == 5 and "frames = 3, and frames = 5 is asked" in out, out
    small_video(video, count=8)
    os.utime(video, ns=(VIDEO_MTIME_NS + 10**9,) * 2)
    demo.video_camera_bag(video, tmp_path / "demo", 20)
    out = capsys.readouterr().out
    assert frames_in(bag) == 8 and "rewritten: it was written with video_bytes" in out, out
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == ["video_clip"]
    with pytest.raises(SystemExit, match="does not exist"):
        demo.video_camera_bag(tmp_path / "missing.mp4", tmp_path / "demo", 5)


def test_demo_rate_is_a_factor_of_the_bags_own_rate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--rate's help names the bag's own rate (10 Hz synthetic, the video's with --video; before: "10 Hz" for
    every bag, while a video bag plays at 25 Hz), and the rate the demo reports is read from the bag. The
    synthetic camera bag is generated again when --frames asks for another number of frames."""
    demo = demo_tool()
    rate_help = next(a.help for a in demo.build_parser()._actions if "--rate" in a.option_strings)
    assert "the video's frame rate" in rate_help and "10 Hz for the synthetic" in rate_help
    bag = demo.video_camera_bag(small_video(tmp_path / "clip.mp4"), tmp_path / "demo", 6)
    assert demo.bag_frames_and_rate(bag) == (6, pytest.approx(25.0))

    from instseg_core.data import synth_cli

    asked: list[list[str]] = []
    monkeypatch.setattr(synth_cli, "main", asked.append)
    write_image_bag(tmp_path / "demo" / "camera", frames(3), rate_hz=10.0)
    assert demo.ensure_camera_bag(tmp_path / "demo", 3) == tmp_path / "demo" / "camera" and not asked
    assert demo.bag_frames_and_rate(tmp_path / "demo" / "camera") == (3, pytest.approx(10.0))
    demo.ensure_camera_bag(tmp_path / "demo", 4)
    assert len(asked) == 1 and asked[0][asked[0].index("--sequence") + 1] == "4"


def truncated_video(path: Path) -> tuple[Path, int]:
    """A Matroska (MJPG) video whose header declares 20 frames, cut to 60 % of its bytes: (its path, the frames
    OpenCV still decodes from it)."""
    whole = path.with_suffix(".whole.mkv")
    writer = cv2.VideoWriter(str(whole), cv2.VideoWriter.fourcc(*"MJPG"), 25.0, (64, 48))
    for k in range(20):
        writer.write(np.full((48, 64, 3), 10 * k, np.uint8))
    writer.release()
    data = whole.read_bytes()
    whole.unlink()
    path.write_bytes(data[: len(data) * 6 // 10])
    capture = cv2.VideoCapture(str(path))
    assert capture.get(cv2.CAP_PROP_FRAME_COUNT) == 20
    capture.release()
    readable = len(decoded(path))
    assert 3 <= readable <= 15, readable
    return path, readable


def test_a_truncated_video_is_refused_unless_frames_keeps_what_can_be_read(tmp_path: Path) -> None:
    """A video that ends before the frames asked for and clearly before the frame count its header declares is
    refused with one line (exit 2) and nothing at OUT (before: the readable part was written, exit 0);
    `--frames K` keeps the part that can be read."""
    from instseg_core.data import video_bag

    video, readable = truncated_video(tmp_path / "cut.mkv")
    for extra in ([], ["--frames", str(readable + 1)], ["--rate", "12.5"], ["--overwrite"]):
        with pytest.raises(SystemExit) as refused:
            video_bag.main([str(video), str(tmp_path / "bag"), *extra])
        line = str(refused.value)
        assert refused.value.code == 2 and "\n" not in line, (extra, line)
        assert f"after {readable} of the 20 frames its header declares" in line, (extra, line)
        kept = readable if "--rate" not in extra else (readable + 1) // 2  # bag frames 0, 2, 4, ... of the video
        assert line.endswith(f"--frames {kept} writes the {kept} frames before that"), (extra, line)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.mkv"], extra  # nothing at OUT, no staging
    video_bag.main([str(video), str(tmp_path / "bag"), "--frames", str(readable)])
    with AnyReader([tmp_path / "bag"]) as reader:
        assert reader.message_count == readable
    assert video_bag.short_of_declared(3, 221) and video_bag.short_of_declared(12, 20)
    for decodable, declared in ((221, 221), (219, 221), (210, 221), (18, 20), (5, 0), (7, -1)):
        assert not video_bag.short_of_declared(decodable, declared), (decodable, declared)


def test_an_out_below_a_file_is_named_as_such(tmp_path: Path) -> None:
    """OUT whose parent is a regular file: the line says so (before: "OUT exists; pass --overwrite", also with
    --overwrite)."""
    from instseg_core.data import video_bag

    video = small_video(tmp_path / "clip.mp4", count=2)
    (tmp_path / "notes.txt").write_text("not a folder\n")
    for out, extra in ((tmp_path / "notes.txt" / "bag", []), (tmp_path / "notes.txt" / "bag", ["--overwrite"]),
                       (tmp_path / "notes.txt" / "deeper" / "bag", [])):
        with pytest.raises(SystemExit) as refused:
            video_bag.main([str(video), str(out), *extra])
        line = str(refused.value)
        assert refused.value.code == 2 and "--overwrite" not in line and "exists" not in line, line
        assert f"cannot write {out}: {tmp_path / 'notes.txt'} is a file, not a folder" in line, line


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_a_failed_write_names_out_and_missing_parents_are_created(tmp_path: Path) -> None:
    """A write that fails names OUT as given (before: the hidden staging folder beside it); missing parent folders
    of OUT are created, as mkdir -p does."""
    from instseg_core.data import video_bag

    video = small_video(tmp_path / "clip.mp4", count=2)
    for out in (Path("/proc") / "instseg-video-bag-test", Path("/proc") / "instseg-video-bag-test" / "a" / "bag"):
        with pytest.raises(SystemExit) as refused:
            video_bag.main([str(video), str(out)])
        line = str(refused.value)
        assert refused.value.code == 2 and line.startswith(f"instseg-video-bag: cannot write {out}: [Errno "), line
    video_bag.main([str(video), str(tmp_path / "new" / "deeper" / "bag")])
    with AnyReader([tmp_path / "new" / "deeper" / "bag"]) as reader:
        assert reader.message_count == 2


def test_ffmpeg_prints_nothing_of_its_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`instseg-video-bag notvideo.mp4 OUT` and a truncated video: stderr holds the command's one line each
    (before, FFmpeg's "[mov,mp4,...] moov atom not found" and "[matroska,webm ...] File ended prematurely" came
    first); OPENCV_FFMPEG_LOGLEVEL is restored after the command, and one the user set is left as it is."""
    import subprocess
    import sys

    from instseg_core.data import video_bag

    (tmp_path / "notvideo.mp4").write_text("hello\n")
    video, _ = truncated_video(tmp_path / "cut.mkv")
    driver = ("import os, sys\nfrom instseg_core.data import video_bag\n"
              "for argv in (sys.argv[1:3], sys.argv[3:5]):\n"
              "    try:\n        video_bag.main(argv)\n"
              "    except SystemExit as exc:\n        print(exc.code, os.environ.get('OPENCV_FFMPEG_LOGLEVEL'))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("OPENCV_FFMPEG_LOGLEVEL", "OPENCV_FFMPEG_DEBUG")}
    done = subprocess.run([sys.executable, "-c", driver, str(tmp_path / "notvideo.mp4"), str(tmp_path / "a"),
                           str(video), str(tmp_path / "b")], capture_output=True, text=True, env=env, timeout=60,
                          cwd=REPO)
    lines = done.stderr.splitlines()
    assert lines[0] == (f"instseg-video-bag: cannot read the video {tmp_path / 'notvideo.mp4'}: "
                        "OpenCV opens no video stream in it"), done.stderr
    assert len(lines) == 2 and lines[1].startswith(f"instseg-video-bag: {video} cannot be decoded after "), done
    assert done.stdout == "2 None\n2 None\n", done
    monkeypatch.setenv("OPENCV_FFMPEG_LOGLEVEL", "24")
    with video_bag.ffmpeg_quiet():
        assert os.environ["OPENCV_FFMPEG_LOGLEVEL"] == "24"
    monkeypatch.delenv("OPENCV_FFMPEG_LOGLEVEL")
    with video_bag.ffmpeg_quiet(enabled=False):
        assert "OPENCV_FFMPEG_LOGLEVEL" not in os.environ
