"""Camera bags: write image sequences as real rosbag2 files (MCAP or sqlite3) without ROS.

No ROS installation is needed: rosbags serialises the messages (CDR) and writes sqlite3 bags; MCAP bags are
written as `instseg-bag record` writes them (`instseg_core.data.recording.SplitBagWriter`: uncompressed chunks,
each with the CRC32 of its records, so a damaged frame is refused by `instseg-bag play`, `instseg-label` and the
studio instead of being shown with wrong pixels). The result plays in ROS 2 (`ros2 bag play`) and through
rclpy's deserialize_message. Messages carry header.stamp = start + k / rate and the given frame_id; the bag's
receive timestamps equal the stamps.

A bag is written into a hidden folder beside its path and renamed into place when it is complete, so a failed
or interrupted write leaves no half-written bag, and `overwrite=True` replaces an old bag only with a whole new
one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import yaml
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from instseg_core.base.atomic_files import replace_with
from instseg_core.base.model_files import share_directories, source_tree
from instseg_core.data.recording import SplitBagWriter

TYPESTORE = get_typestore(Stores.ROS2_KILTED)
STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
IMAGE_ENCODINGS = ("rgb8", "bgr8")
# rosbag2 format version written (9 = Jazzy/Kilted, readable by Humble's rosbag2 too for sqlite3).
BAG_VERSION: Literal[9] = 9
# The start time when none is given: a fixed, made-up instant (2023-11-14 22:13:20 UTC), so that synthetic bags
# are reproducible. A bag of real footage should be given its real start (see instseg_core.data.video_bag).
DEFAULT_START_NS = 1_700_000_000_000_000_000
# An MCAP bag is written as one file: the recorder's split length, made longer than any bag.
ONE_SPLIT_SECONDS = 1e9


@dataclass(frozen=True)
class BagSummary:
    """What was written: path, storage, message count per topic, first and last stamp (ns)."""

    path: Path
    storage: str
    counts: dict[str, int]
    start_ns: int
    end_ns: int


def _msg(name: str) -> type:
    """A rosbags message class, e.g. _msg('sensor_msgs/msg/Image')."""
    return TYPESTORE.types[name]


def _header(stamp_ns: int, frame_id: str) -> object:
    stamp = _msg("builtin_interfaces/msg/Time")(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000)
    return _msg("std_msgs/msg/Header")(stamp=stamp, frame_id=frame_id)


def image_message(rgb: np.ndarray, stamp_ns: int, frame_id: str, encoding: str = "rgb8") -> object:
    """rosbags sensor_msgs/msg/Image of an (H, W, 3) uint8 RGB array, as rgb8 or bgr8."""
    if encoding not in IMAGE_ENCODINGS:
        raise ValueError(f"encoding must be one of {IMAGE_ENCODINGS}, got {encoding!r}")
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB array, got {rgb.dtype} {rgb.shape}")
    pixels = rgb if encoding == "rgb8" else rgb[..., ::-1]
    height, width = rgb.shape[:2]
    return _msg("sensor_msgs/msg/Image")(header=_header(stamp_ns, frame_id), height=height, width=width,
                 encoding=encoding, is_bigendian=0, step=width * 3,
                 data=np.ascontiguousarray(pixels).reshape(-1))


def compressed_message(rgb: np.ndarray, stamp_ns: int, frame_id: str, quality: int = 90) -> object:
    """rosbags sensor_msgs/msg/CompressedImage (JPEG, image_transport's 'rgb8; jpeg compressed bgr8')."""
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return _msg("sensor_msgs/msg/CompressedImage")(header=_header(stamp_ns, frame_id),
                                                   format="rgb8; jpeg compressed bgr8", data=data.reshape(-1))


def write_image_bag(
    path: str | Path,
    frames: Iterable[np.ndarray],
    *,
    rate_hz: float = 15.0,
    topic: str = "/camera/image_raw",
    frame_id: str = "camera_optical_frame",
    encoding: str = "rgb8",
    storage: str = "mcap",
    compressed_topic: str | None = None,
    start_ns: int = DEFAULT_START_NS,
    overwrite: bool = False,
    custom_data: Mapping[str, str] | None = None,
) -> BagSummary:
    """Write RGB frames ((H, W, 3) uint8) as sensor_msgs/Image on `topic` (and JPEG CompressedImage on
    `compressed_topic` if given) into a new rosbag2 directory `path`, one frame every 1/rate_hz s, stamped from
    `start_ns` (ns since the epoch). `custom_data` goes into metadata.yaml's custom_data (strings only).

    MCAP chunks carry CRCs (module docstring). The bag appears at `path` only once it is complete; with
    `overwrite` an existing bag is replaced by the new one then, and is left as it was when the write fails.
    FileExistsError when `path` exists and not `overwrite`; ValueError for bad arguments or no frame."""
    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {sorted(STORAGES)}, got {storage!r}")
    if encoding not in IMAGE_ENCODINGS:
        raise ValueError(f"encoding must be one of {IMAGE_ENCODINGS}, got {encoding!r}")
    if rate_hz <= 0:
        raise ValueError(f"rate_hz must be positive, got {rate_hz}")
    if custom_data and not all(isinstance(v, str) for v in custom_data.values()):
        raise ValueError("custom_data values must be strings")
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.parent / f".{path.name}.writing-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        staging.mkdir()
        bag = staging / path.name  # the files inside are named after the bag, as they will be at `path`
        write = _write_mcap if storage == "mcap" else _write_sqlite3
        counts, end_ns = write(bag, frames, rate_hz=rate_hz, topic=topic, frame_id=frame_id, encoding=encoding,
                               compressed_topic=compressed_topic, start_ns=start_ns, custom_data=custom_data or {})
        replace_with(bag, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return BagSummary(path, storage, counts, start_ns, end_ns)


def _messages(frames: Iterable[np.ndarray], *, rate_hz: float, frame_id: str, encoding: str, start_ns: int,
              compressed: bool) -> Iterable[tuple[int, bytes, bytes | None]]:
    """(stamp, serialized Image, serialized CompressedImage or None) for each frame."""
    for index, rgb in enumerate(frames):
        stamp = start_ns + round(index * 1e9 / rate_hz)
        raw = bytes(TYPESTORE.serialize_cdr(image_message(rgb, stamp, frame_id, encoding), "sensor_msgs/msg/Image"))
        packed = bytes(TYPESTORE.serialize_cdr(compressed_message(rgb, stamp, frame_id),
                                               "sensor_msgs/msg/CompressedImage")) if compressed else None
        yield stamp, raw, packed


def _write_mcap(bag: Path, frames: Iterable[np.ndarray], *, rate_hz: float, topic: str, frame_id: str,
                encoding: str, compressed_topic: str | None, start_ns: int,
                custom_data: Mapping[str, str]) -> tuple[dict[str, int], int]:
    """One MCAP file with chunk CRCs, written by the recorder's writer; returns (counts, last stamp)."""
    writer = SplitBagWriter(bag, TYPESTORE, split_seconds=ONE_SPLIT_SECONDS)
    writer.add_topic(topic, "sensor_msgs/msg/Image")
    if compressed_topic:
        writer.add_topic(compressed_topic, "sensor_msgs/msg/CompressedImage")
    stamp = start_ns
    try:
        for stamp, raw, packed in _messages(frames, rate_hz=rate_hz, frame_id=frame_id, encoding=encoding,
                                            start_ns=start_ns, compressed=bool(compressed_topic)):
            writer.write(topic, stamp, raw)
            if packed is not None and compressed_topic:
                writer.write(compressed_topic, stamp, packed)
    except BaseException:
        with contextlib.suppress(Exception):  # closes the open file; the caller removes what was written
            writer.close()
        raise
    if not writer.counts[topic]:
        raise ValueError(f"no frame to write into {bag.name}")
    writer.close()
    if custom_data:
        metadata = bag / "metadata.yaml"
        info = yaml.safe_load(metadata.read_text())
        info["rosbag2_bagfile_information"]["custom_data"] = dict(custom_data)
        metadata.write_text(yaml.safe_dump(info, sort_keys=False))
    return writer.counts, stamp


def _write_sqlite3(bag: Path, frames: Iterable[np.ndarray], *, rate_hz: float, topic: str, frame_id: str,
                   encoding: str, compressed_topic: str | None, start_ns: int,
                   custom_data: Mapping[str, str]) -> tuple[dict[str, int], int]:
    """A sqlite3 bag written by rosbags (the format has no checksums); returns (counts, last stamp)."""
    counts = {topic: 0} | ({compressed_topic: 0} if compressed_topic else {})
    stamp = start_ns
    with Writer(bag, version=BAG_VERSION, storage_plugin=STORAGES["sqlite3"]) as writer:
        for key, value in custom_data.items():
            writer.set_custom_data(key, value)
        raw_connection = writer.add_connection(topic, "sensor_msgs/msg/Image", typestore=TYPESTORE)
        packed_connection = (writer.add_connection(compressed_topic, "sensor_msgs/msg/CompressedImage",
                                                   typestore=TYPESTORE) if compressed_topic else None)
        for stamp, raw, packed in _messages(frames, rate_hz=rate_hz, frame_id=frame_id, encoding=encoding,
                                            start_ns=start_ns, compressed=bool(compressed_topic)):
            writer.write(raw_connection, stamp, raw)
            counts[topic] += 1
            if packed is not None and packed_connection is not None and compressed_topic:
                writer.write(packed_connection, stamp, packed)
                counts[compressed_topic] += 1
        if not counts[topic]:
            raise ValueError(f"no frame to write into {bag.name}")
    return counts, stamp


def read_custom_data(path: str | Path) -> dict[str, str]:
    """The custom_data of a rosbag2 directory's metadata.yaml ({} when it has none); OSError or ValueError when
    the metadata cannot be read."""
    info = yaml.safe_load((Path(path) / "metadata.yaml").read_text())
    if not isinstance(info, dict) or not isinstance(info.get("rosbag2_bagfile_information"), dict):
        raise ValueError(f"{path}/metadata.yaml is not rosbag2 metadata")
    custom = info["rosbag2_bagfile_information"].get("custom_data") or {}
    return {str(k): str(v) for k, v in custom.items()} if isinstance(custom, dict) else {}


INTERFACES_PACKAGE = "instseg_interfaces"


def _interface_msg_dirs() -> list[Path]:
    """msg/ of instseg_interfaces: installed share directories first, then the source tree's ros2_ws."""
    dirs = [share / "msg" for share in share_directories(INTERFACES_PACKAGE)]
    root = source_tree()
    if root is not None:
        dirs.append(root / "ros2_ws" / "src" / INTERFACES_PACKAGE / "msg")
    return [d for d in dirs if d.is_dir()]


def interface_typestore() -> object:
    """The Kilted typestore plus this project's messages (instseg_interfaces/msg/*), parsed from their .msg
    files, so rosbags can serialise them and write their definitions into MCAP."""
    from rosbags.typesys import get_types_from_msg

    typestore = get_typestore(Stores.ROS2_KILTED)
    dirs = _interface_msg_dirs()
    if dirs:
        types = {}
        for path in sorted(dirs[0].glob("*.msg")):
            types.update(get_types_from_msg(path.read_text(), f"{INTERFACES_PACKAGE}/msg/{path.stem}"))
        typestore.register(types)
    return typestore
