"""Frames of one image topic of a rosbag2, indexed once and decoded lazily.

The index is the topic's receive timestamps (ns) in bag order; frame k is the k-th message of the topic, the
same numbering as `instseg-label`'s frame indices. It is built without reading image data where the storage
allows: from the MCAP message indexes (a few ms per thousand frames) or with one query on sqlite3; an MCAP
file without indexes (an unfinished recording split) is read through once. The index is cached in the output
folder, keyed on the bag files' sizes and modification times, so a bag opens from its cache in milliseconds.

A frame is read by its timestamp (rosbags seeks to the chunk that holds it), decoded to RGB by the project's
image codec (any supported encoding, Image or CompressedImage) and kept in a small LRU cache, so memory stays
bounded whatever the bag's length.
"""

from __future__ import annotations

import io
import json
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rosbags.highlevel import AnyReader

from instseg_core.base.atomic_files import write_text_atomically
from instseg_core.base.command_exit import describe
from instseg_ros.image_codec import IMAGE_MSGTYPES, ImageCodecError, decode_to_rgb8

INDEX_FORMAT = "instseg-studio-index/1"


class BagFramesError(RuntimeError):
    """The bag cannot be opened or a frame cannot be read; the message says which and why."""


@dataclass(frozen=True)
class Frame:
    """One decoded frame: index on the topic, receive timestamp and header stamp (ns), header frame_id, and the
    (H, W, 3) uint8 RGB image."""

    index: int
    timestamp_ns: int
    stamp_ns: int
    frame_id: str
    rgb: np.ndarray


def bag_files(bag: Path) -> list[Path]:
    """The storage files of a rosbag2 directory (or the single .mcap / .db3 file given)."""
    if bag.is_file():
        return [bag]
    files = sorted([*bag.glob("*.mcap"), *bag.glob("*.db3")])
    if not files:
        raise BagFramesError(f"{bag} holds no .mcap or .db3 file: not a rosbag2")
    return files


def _mcap_timestamps(path: Path, topic: str) -> list[int] | None:
    """Log times of `topic` from an MCAP file's summary and message indexes, or None when it has none."""
    from mcap.exceptions import EndOfFile, McapError
    from mcap.reader import make_reader
    from mcap.records import MessageIndex
    from mcap.stream_reader import StreamReader

    with path.open("rb") as handle:
        try:
            summary = make_reader(handle).get_summary()
        except (McapError, EndOfFile, ValueError):
            return None
        if summary is None or not summary.chunk_indexes:
            return None
        channels = {cid for cid, channel in summary.channels.items() if channel.topic == topic}
        times: list[int] = []
        for chunk in summary.chunk_indexes:
            if not channels & set(chunk.message_index_offsets):
                continue
            handle.seek(chunk.chunk_start_offset + chunk.chunk_length)
            records = StreamReader(io.BytesIO(handle.read(chunk.message_index_length)), skip_magic=True).records
            try:
                for record in records:
                    if isinstance(record, MessageIndex) and record.channel_id in channels:
                        times.extend(t for t, _ in record.records)
            except EndOfFile:  # the stream reader signals the end of the buffer this way
                pass
        return times


def _sqlite_timestamps(path: Path, topic: str) -> list[int]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT m.timestamp FROM messages m JOIN topics t ON m.topic_id = t.id WHERE t.name = ?",
                          (topic,)).fetchall()
    return [int(r[0]) for r in rows]


class BagFrames:
    """Random access to the frames of `topic` in `bag` (a rosbag2 directory or file).

    `progress(done, total)` is called while the index is built by reading messages (the slow path). Thread-safe:
    reads are serialised with a lock (rosbags readers are not reentrant)."""

    def __init__(self, bag: str | Path, topic: str | None = None, *, cache_dir: Path | None = None,
                 cache_frames: int = 8, progress: Callable[[int, int], None] | None = None,
                 defer_cache_write: bool = False) -> None:
        self.bag = Path(bag)
        self._unsaved_index: tuple[Path, str] | None = None  # with defer_cache_write: what save_index_cache writes
        self._defer_cache_write = defer_cache_write
        if not self.bag.exists():
            raise BagFramesError(f"bag {self.bag} does not exist")
        self._lock = threading.Lock()
        self._cache: OrderedDict[int, Frame] = OrderedDict()
        self._cache_frames = cache_frames
        try:
            self._reader = AnyReader([self.bag])
            self._reader.open()
        except Exception as exc:  # rosbags raises several types for unreadable or corrupt bags
            raise BagFramesError(f"cannot read bag {self.bag}: {describe(exc)}") from exc
        self.image_topics = sorted({c.topic for c in self._reader.connections if c.msgtype in IMAGE_MSGTYPES})
        if topic is None:
            if len(self.image_topics) != 1:
                self._reader.close()
                raise BagFramesError(f"{self.bag} has {len(self.image_topics)} image topics "
                                     f"({', '.join(self.image_topics) or 'none'}); choose one with --topic")
            topic = self.image_topics[0]
        self.connections = [c for c in self._reader.connections if c.topic == topic]
        if not self.connections:
            available = sorted({f"{c.topic} ({c.msgtype})" for c in self._reader.connections})
            self._reader.close()
            raise BagFramesError(f"topic {topic} is not in {self.bag}; it has: {', '.join(available) or 'no topics'}")
        if self.connections[0].msgtype not in IMAGE_MSGTYPES:
            self._reader.close()
            raise BagFramesError(f"topic {topic} carries {self.connections[0].msgtype}, not an image type")
        self.topic = topic
        self.msgtype = self.connections[0].msgtype
        self.timestamps = self._index(cache_dir, progress)

    def __len__(self) -> int:
        return len(self.timestamps)

    def close(self) -> None:
        with self._lock:
            self._reader.close()

    # --- the index ---------------------------------------------------------------------------------------

    def _index_key(self) -> dict:
        files = bag_files(self.bag)
        return {"format": INDEX_FORMAT, "topic": self.topic,
                "files": [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]}

    def _index(self, cache_dir: Path | None, progress: Callable[[int, int], None] | None) -> np.ndarray:
        key = self._index_key()
        cache = cache_dir / f"index_{self.bag.name}_{self.topic.strip('/').replace('/', '_')}.json" \
            if cache_dir else None
        if cache is not None and cache.exists():
            try:
                saved = json.loads(cache.read_text())
                if saved.get("key") == key:
                    return np.asarray(saved["timestamps"], np.int64)
            except (OSError, ValueError):
                pass  # a stale or damaged cache is rebuilt
        timestamps = self._timestamps_from_indexes()
        if timestamps is None:
            timestamps = self._timestamps_by_reading(progress)
        array = np.sort(np.asarray(timestamps, np.int64), kind="stable")
        if cache is not None:
            self._unsaved_index = cache, json.dumps({"key": key, "timestamps": array.tolist()})
            if not self._defer_cache_write:
                self.save_index_cache()
        return array

    def save_index_cache(self) -> None:
        """Write the index built by the constructor into `cache_dir` (creating it), if it was not written yet and
        not read from there. The constructor does this itself unless `defer_cache_write`: a command that may
        still fail to start (instseg-studio) writes it only once it has started, so a failed start writes
        nothing."""
        if self._unsaved_index is not None:
            cache, text = self._unsaved_index
            write_text_atomically(cache, text)  # creates the folder
            self._unsaved_index = None

    def _timestamps_from_indexes(self) -> list[int] | None:
        files = bag_files(self.bag)
        times: list[int] = []
        for path in files:
            found = _sqlite_timestamps(path, self.topic) if path.suffix == ".db3" else \
                _mcap_timestamps(path, self.topic)
            if found is None:
                return None
            times.extend(found)
        expected = sum(c.msgcount for c in self.connections)
        return times if len(times) == expected or not expected else None

    def _timestamps_by_reading(self, progress: Callable[[int, int], None] | None) -> list[int]:
        total = sum(c.msgcount for c in self.connections)
        times = []
        try:
            for _, timestamp, _ in self._reader.messages(connections=self.connections):
                times.append(int(timestamp))
                if progress is not None and len(times) % 100 == 0:
                    progress(len(times), total)
        except Exception as exc:  # truncated or corrupt data
            if not times:
                raise BagFramesError(f"cannot read bag {self.bag}: {describe(exc)}") from exc
        if progress is not None:
            progress(len(times), total)
        return times

    # --- frames --------------------------------------------------------------------------------------------

    def frame(self, index: int) -> Frame:
        """Frame `index` (0-based), decoded; BagFramesError when out of range, unreadable or not decodable."""
        if not 0 <= index < len(self.timestamps):
            raise BagFramesError(f"frame {index} is not in {self.topic} ({len(self.timestamps)} frames)")
        with self._lock:
            if index in self._cache:
                self._cache.move_to_end(index)
                return self._cache[index]
            frame = self._read(index)
            self._cache[index] = frame
            while len(self._cache) > self._cache_frames:
                self._cache.popitem(last=False)
            return frame

    def iter_frames(self, stride: int = 1) -> Iterator[tuple[int, Frame | None, str | None]]:
        """(index, frame, None) for every `stride`-th frame (0, stride, 2 stride, ...) read in one pass through the
        bag (much faster than `frame` per index for a whole bag), or (index, None, reason) for a frame that cannot
        be read or decoded. Once the bag's data cannot be read any further, every remaining wanted frame is
        reported with that reason. Frames are not cached. The bag is locked while the iterator runs: consume it to
        the end (or close it) before calling `frame`."""
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        seen, failed = 0, None  # seen: messages read in bag order; frame `seen` is the next one
        with self._lock:
            try:
                for connection, timestamp, rawdata in self._reader.messages(connections=self.connections):
                    index, seen = seen, seen + 1
                    if index >= len(self.timestamps):
                        break
                    if index % stride:
                        continue
                    if int(timestamp) != int(self.timestamps[index]):
                        failed, seen = f"frame {index}: the bag's messages are not in index order", index
                        break
                    try:
                        msg: Any = self._reader.deserialize(rawdata, connection.msgtype)
                        rgb = decode_to_rgb8(msg, self.msgtype)
                    except Exception as exc:  # a damaged message of any kind is one bad frame
                        yield index, None, f"frame {index} cannot be decoded: {describe(exc)}"
                        continue
                    stamp = int(msg.header.stamp.sec) * 10**9 + int(msg.header.stamp.nanosec)
                    yield index, Frame(index, int(timestamp), stamp, str(msg.header.frame_id), rgb), None
            except Exception as exc:  # truncated or corrupt data: the rest of the bag cannot be read
                failed = f"cannot read {self.bag} from frame {seen} on: {describe(exc)}"
        if failed is None and seen < len(self.timestamps):
            failed = f"{self.bag}: only {seen} of the {len(self.timestamps)} frames in its index could be read"
        if failed is not None:
            for rest in range(seen + (-seen % stride), len(self.timestamps), stride):
                yield rest, None, failed

    def _read(self, index: int) -> Frame:
        timestamp = int(self.timestamps[index])
        # frames sharing a timestamp: the n-th of them, as in bag order
        nth = index - int(np.searchsorted(self.timestamps, timestamp, side="left"))
        msg: Any = None
        try:
            for n, (connection, _, rawdata) in enumerate(self._reader.messages(
                    connections=self.connections, start=timestamp, stop=timestamp + 1)):
                if n == nth:
                    msg = self._reader.deserialize(rawdata, connection.msgtype)
                    break
            else:
                raise BagFramesError(f"frame {index} (t = {timestamp} ns) could not be found in {self.bag}")
        except BagFramesError:
            raise
        except Exception as exc:  # truncated or corrupt data
            raise BagFramesError(f"cannot read frame {index} of {self.bag}: {describe(exc)}") from exc
        try:
            rgb = decode_to_rgb8(msg, self.msgtype)
        except ImageCodecError as exc:
            raise BagFramesError(f"frame {index} cannot be shown: {exc}") from exc
        stamp = int(msg.header.stamp.sec) * 10**9 + int(msg.header.stamp.nanosec)
        return Frame(index, timestamp, stamp, str(msg.header.frame_id), rgb)
