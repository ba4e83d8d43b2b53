"""Recording that survives a kill, and bags whose corruption is detected: split MCAP files with CRCs.

`SplitBagWriter` writes a rosbag2 directory (storage `mcap`, metadata version 9) as a sequence of splits of
at most `split_seconds` each (by the receive clock). A split is written as `.{name}_{k}.mcap.part` and renamed
to `{name}_{k}.mcap` when it is closed (with its MCAP footer and summary); `metadata.yaml` is rewritten
atomically after every closed split and lists the closed splits only. So whatever kills the recorder
(SIGKILL, power loss), the directory is a readable bag of everything but the split that was open: at most
the last `split_seconds` are lost. `tick(now)` closes the open split on time even when no message arrives.

A write that fails (ENOSPC on a full disk, EROFS, EIO) stops the recording cleanly: the unfinished split's `.part`
file is removed (its bytes are cut off mid-record, and removing it frees the space metadata.yaml needs), every
finished split stays listed in metadata.yaml, and `BagWriteError` names the path, the errno and the free space. When
no split was finished, nothing is kept: no metadata.yaml is written (one that lists no file is a bag no reader
opens) and the bag's directory is removed; the message says so.
`LowSpaceWatch` warns before that happens: when the free space falls below the next minutes of recording at the
current rate.

Every chunk carries the CRC32 of its uncompressed records (rosbags' own writer writes 0, "not computed"), and
`verify_bag` checks them: a bit flipped inside a recorded frame is reported instead of being played or
labelled. MCAP files of other writers without CRCs, and sqlite3 bags, cannot be checked (`verify_bag` says
so in its result). Messages are the serialized CDR bytes as received; schemas are the ROS 2 message
definitions from the rosbags type store (`ros2msg`), so other MCAP tools decode the bags too.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import zlib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from instseg_core.base.atomic_files import write_text_atomically
from instseg_core.base.command_exit import InputError, os_error_line

PART_SUFFIX = ".mcap.part"


class BagIntegrityError(RuntimeError):
    """A recorded file is damaged (a chunk CRC does not match, or the file ends in the middle)."""


class BagWriteError(InputError):
    """Recording stopped because a write failed (a full or read-only disk); the message names the path, the errno,
    the free space and what was kept. `errno` is the failed write's."""

    def __init__(self, message: str, errno: int | None) -> None:
        super().__init__(message)
        self.errno = errno


def free_bytes(path: str | os.PathLike) -> int | None:
    """Bytes free for this user on the file system of `path`; None when it cannot be asked."""
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def megabytes(count: float | None) -> str:
    return "unknown" if count is None else f"{count / 1e6:.1f} MB"


@dataclass
class _Split:
    path: Path
    start_ns: int
    end_ns: int = 0
    count: int = 0
    counts: dict[str, int] = field(default_factory=dict)


class SplitBagWriter:
    """See the module docstring. Not thread-safe: call from one thread (or under one lock).

    path: the bag directory to create (must not exist); typestore: a rosbags type store that knows every
    recorded type (message definitions and hashes); split_seconds: the most a kill can lose.
    """

    def __init__(self, path: str | os.PathLike, typestore: Any, split_seconds: float = 1.0,
                 chunk_bytes: int = 1 << 20) -> None:
        self.path = Path(path)
        if self.path.exists():
            raise FileExistsError(f"{self.path} exists; choose a new directory")
        self.path.mkdir(parents=True)
        self.typestore = typestore
        self.split_ns = int(split_seconds * 1e9)
        self.chunk_bytes = chunk_bytes
        self.topics: dict[str, str] = {}  # topic -> message type
        self.closed: list[_Split] = []
        self._open: _Split | None = None
        self._writer: Any = None
        self._stream: Any = None
        self._channels: dict[str, int] = {}
        self.bytes_received = 0  # serialized message bytes passed to write(): the recording's data rate
        self.failure: BagWriteError | None = None

    def add_topic(self, topic: str, msgtype: str) -> None:
        """Declare a topic before writing to it (its type must be in the type store)."""
        self.typestore.generate_msgdef(msgtype, ros_version=2)  # fails early for an unknown type
        self.topics[topic] = msgtype

    def write(self, topic: str, timestamp_ns: int, data: bytes) -> None:
        """Append one serialized message received at `timestamp_ns` (ns since the epoch)."""
        if topic not in self.topics:
            raise KeyError(f"topic {topic} was not added")
        self.tick(timestamp_ns)
        if self.failure is not None:
            raise self.failure
        self.bytes_received += len(data)
        try:
            if self._open is None:
                self._start_split(timestamp_ns)
            if topic not in self._channels:
                self._channels[topic] = self._register(topic)
            self._writer.add_message(self._channels[topic], log_time=timestamp_ns, data=data,
                                     publish_time=timestamp_ns)
        except OSError as exc:
            self._stop_after(exc)
        split = self._open
        assert split is not None
        split.count += 1
        split.counts[topic] = split.counts.get(topic, 0) + 1
        split.end_ns = max(split.end_ns, timestamp_ns)

    def tick(self, now_ns: int) -> None:
        """Close the open split if it is `split_seconds` old (call this periodically, e.g. every 100 ms).
        BagWriteError when closing it fails (see `write`)."""
        if self._open is not None and now_ns - self._open.start_ns >= self.split_ns:
            self._close_split()

    def close(self) -> None:
        """Close the open split (if any) and write the final metadata; BagWriteError when that fails, or when the
        recording had stopped at a failed write before."""
        if self._open is not None:
            self._close_split()
        if self.failure is not None:
            raise self.failure
        try:
            self._write_metadata()
        except OSError as exc:
            self._stop_after(exc)

    @property
    def bytes_on_disk(self) -> int:
        """Bytes of the finished splits and of what the open split has written so far."""
        closed = sum(s.path.stat().st_size for s in self.closed if s.path.exists())
        return closed + (self._stream.tell() if self._stream is not None else 0)

    @property
    def counts(self) -> dict[str, int]:
        """Messages per topic written so far (closed and open splits)."""
        totals = dict.fromkeys(self.topics, 0)
        for split in [*self.closed, *([self._open] if self._open else [])]:
            for topic, count in split.counts.items():
                totals[topic] += count
        return totals

    def _start_split(self, start_ns: int) -> None:
        from mcap.writer import CompressionType, Writer

        name = f"{self.path.name}_{len(self.closed)}"
        self._open = _Split(self.path / f"{name}.mcap", start_ns, start_ns)
        self._stream = open(self.path / f".{name}{PART_SUFFIX}", "wb")  # noqa: SIM115 - closed in _close_split
        self._writer = Writer(self._stream, chunk_size=self.chunk_bytes, compression=CompressionType.NONE,
                              enable_crcs=True)
        self._writer.start(profile="ros2", library="instseg")
        self._channels = {}

    def _register(self, topic: str) -> int:
        msgtype = self.topics[topic]
        msgdef, _ = self.typestore.generate_msgdef(msgtype, ros_version=2)
        schema = self._writer.register_schema(name=msgtype, encoding="ros2msg", data=msgdef.encode())
        return int(self._writer.register_channel(topic=topic, message_encoding="cdr", schema_id=schema))

    def _part_path(self, split: _Split) -> Path:
        return self.path / f".{split.path.stem}{PART_SUFFIX}"

    def _close_split(self) -> None:
        split = self._open
        assert split is not None
        try:
            self._writer.finish()
            self._stream.flush()
            os.fsync(self._stream.fileno())
            self._stream.close()
            os.replace(self._part_path(split), split.path)
        except OSError as exc:
            self._stop_after(exc)
        self.closed.append(split)
        self._open, self._writer, self._stream = None, None, None
        try:
            self._write_metadata()
        except OSError as exc:
            self._stop_after(exc)

    def _stop_after(self, exc: OSError) -> None:
        """A write failed: remove the unfinished split's .part (cut off mid-record; removing it frees the space),
        make metadata.yaml list every finished split, and raise (and keep) BagWriteError saying what happened."""
        free = free_bytes(self.path)
        lost = ""
        if self._open is not None:
            split, stream = self._open, self._stream
            self._open, self._writer, self._stream = None, None, None
            if stream is not None:
                with contextlib.suppress(OSError):  # its buffered bytes cannot be written either; closed regardless
                    stream.close()
            self._part_path(split).unlink(missing_ok=True)
            lost = f"; the unfinished split {self._part_path(split).name} ({split.count} messages) was removed"
        if not self.closed:
            listed = self._remove_empty_bag()
        else:
            try:
                self._write_metadata()
                count = len(self.closed)
                listed = f"{count} finished split{'' if count == 1 else 's'} ({sum(s.count for s in self.closed)} " \
                         f"messages) {'is' if count == 1 else 'are'} kept and listed in metadata.yaml"
            except OSError as again:
                listed = f"metadata.yaml could not be rewritten either ({os_error_line(again)})"
        self.failure = BagWriteError(
            f"recording into {self.path} stopped: {os_error_line(exc)}; {megabytes(free)} free on its file system "
            f"at the failure{lost}; {listed}", exc.errno)
        raise self.failure from exc

    def _remove_empty_bag(self) -> str:
        """No split was finished: a metadata.yaml listing no file would make a bag no reader can open, so none is
        written, and the directory this writer created is removed when nothing else is in it. Returns what
        happened, for the failure's message."""
        try:
            (self.path / "metadata.yaml").unlink(missing_ok=True)
            self.path.rmdir()
        except OSError:
            left = sorted(p.name for p in self.path.iterdir()) if self.path.is_dir() else []
            return f"no split was finished, so no message was kept; {self.path} holds no bag (left: " \
                   f"{', '.join(left) or 'nothing'})"
        return f"no split was finished, so no message was kept and {self.path} was removed"

    def _write_metadata(self) -> None:
        """metadata.yaml of the closed splits (rosbag2 version 9, as rosbags and ros2 bag read it)."""
        splits = self.closed
        start = min((s.start_ns for s in splits), default=0)
        end = max((s.end_ns for s in splits), default=0)
        totals: dict[str, int] = dict.fromkeys(self.topics, 0)
        for split in splits:
            for topic, count in split.counts.items():
                totals[topic] += count
        info = {
            "version": 9,
            "storage_identifier": "mcap",
            "duration": {"nanoseconds": end - start},
            "starting_time": {"nanoseconds_since_epoch": start},
            "message_count": sum(s.count for s in splits),
            "topics_with_message_count": [
                {"topic_metadata": {"name": topic, "type": msgtype, "serialization_format": "cdr",
                                    "offered_qos_profiles": [],
                                    "type_description_hash": self.typestore.hash_rihs01(msgtype)},
                 "message_count": totals[topic]}
                for topic, msgtype in self.topics.items()],
            "compression_format": "",
            "compression_mode": "",
            "relative_file_paths": [s.path.name for s in splits],
            "files": [{"path": s.path.name, "starting_time": {"nanoseconds_since_epoch": s.start_ns},
                       "duration": {"nanoseconds": s.end_ns - s.start_ns}, "message_count": s.count}
                      for s in splits],
            "custom_data": None,
            "ros_distro": "instseg",
        }
        write_text_atomically(self.path / "metadata.yaml",
                              yaml.safe_dump({"rosbag2_bagfile_information": info}, sort_keys=False))


class LowSpaceWatch:
    """Warns before the disk fills: `check(now_s, bytes_received)` returns a warning when the free space on the file
    system of `path` is less than `horizon_s` seconds of recording at the current rate (the bytes received over
    the last `window_s` seconds), and again each time the time left has halved since the last warning; else None.
    Asks the file system at most every `every_s` seconds."""

    def __init__(self, path: str | os.PathLike, horizon_s: float = 300.0, window_s: float = 10.0,
                 every_s: float = 1.0) -> None:
        self.path = Path(path)
        self.horizon_s, self.window_s, self.every_s = horizon_s, window_s, every_s
        self._samples: deque[tuple[float, int]] = deque()
        self._checked_at = float("-inf")
        self._warned_left_s = float("inf")

    def check(self, now_s: float, bytes_received: int) -> str | None:
        self._samples.append((now_s, bytes_received))
        while now_s - self._samples[0][0] > self.window_s:
            self._samples.popleft()
        if self.horizon_s <= 0 or now_s - self._checked_at < self.every_s:
            return None
        self._checked_at = now_s
        (t0, b0), (t1, b1) = self._samples[0], self._samples[-1]
        if t1 - t0 < min(1.0, self.window_s) or b1 <= b0:
            return None
        rate = (b1 - b0) / (t1 - t0)
        free = free_bytes(self.path)
        if free is None:
            return None
        left_s = free / rate
        if left_s >= self.horizon_s or left_s > self._warned_left_s / 2:
            return None
        self._warned_left_s = left_s
        return (f"only {megabytes(free)} free on the file system of {self.path}: about {left_s:.0f} s of recording "
                f"at the current {megabytes(rate)}/s")


@dataclass(frozen=True)
class BagCheck:
    """What `verify_bag` found: files whose chunks all carry CRCs that match (`verified`), and files it could
    not check (`unchecked`, with the reason: no CRCs written, or not an MCAP file)."""

    verified: tuple[str, ...]
    unchecked: tuple[tuple[str, str], ...]


def verify_bag(path: str | os.PathLike) -> BagCheck:
    """Check every chunk CRC of the MCAP files of a bag directory (or of one .mcap file); BagIntegrityError
    naming the file and the chunk at the first damaged one (a CRC mismatch, or a file that ends in the middle
    of a record). Reads every byte once; the CRC costs ~1 ms per MB."""
    from mcap.exceptions import McapError
    from mcap.records import Chunk
    from mcap.stream_reader import StreamReader

    path = Path(path)
    files = [path] if path.is_file() else sorted(path.glob("*.mcap"))
    verified: list[str] = []
    unchecked: list[tuple[str, str]] = []
    if not path.is_file():
        unchecked += [(p.name, "sqlite3: the format has no checksums") for p in sorted(path.glob("*.db3"))]
    for file in files:
        chunks = without_crc = 0
        with open(file, "rb") as stream:
            try:
                for record in StreamReader(stream, emit_chunks=True).records:
                    if not isinstance(record, Chunk):
                        continue
                    chunks += 1
                    if record.uncompressed_crc == 0:
                        without_crc += 1
                    elif record.compression != "":
                        continue  # compressed by another writer: checked when decompressed by its reader
                    elif zlib.crc32(record.data) != record.uncompressed_crc:
                        raise BagIntegrityError(
                            f"{file}: chunk {chunks} (messages {record.message_start_time}.."
                            f"{record.message_end_time} ns) is damaged: its CRC does not match")
            except (McapError, ValueError, EOFError, OSError) as exc:
                raise BagIntegrityError(f"{file}: damaged after {chunks} chunks ({type(exc).__name__}: "
                                        f"{exc or 'the file ends in the middle of a record'})") from exc
        if without_crc:
            unchecked.append((file.name, f"{without_crc} of {chunks} chunks written without a CRC "
                                         "(rosbags and some other writers)"))
        else:
            verified.append(file.name)
    return BagCheck(tuple(verified), tuple(unchecked))
