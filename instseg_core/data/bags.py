"""Camera bags: write image sequences as real rosbag2 files (MCAP or sqlite3) with rosbags.

No ROS installation is needed: rosbags writes the rosbag2 format and CDR serialisation itself, and the
result plays in ROS 2 (`ros2 bag play`) and through rclpy's deserialize_message. Messages carry
header.stamp = start + k / rate and the given frame_id; the bag's receive timestamps equal the stamps.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from instseg_core.base.model_files import share_directories, source_tree

TYPESTORE = get_typestore(Stores.ROS2_KILTED)
STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
IMAGE_ENCODINGS = ("rgb8", "bgr8")
# rosbag2 format version written (9 = Jazzy/Kilted, readable by Humble's rosbag2 too for sqlite3).
BAG_VERSION: Literal[9] = 9


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
    start_ns: int = 1_700_000_000_000_000_000,
    overwrite: bool = False,
) -> BagSummary:
    """Write RGB frames ((H, W, 3) uint8) as sensor_msgs/Image on `topic` (and JPEG CompressedImage on
    `compressed_topic` if given) into a new rosbag2 directory `path`, one frame every 1/rate_hz s."""
    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {sorted(STORAGES)}, got {storage!r}")
    if rate_hz <= 0:
        raise ValueError(f"rate_hz must be positive, got {rate_hz}")
    path = Path(path)
    if path.exists():
        if not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
        shutil.rmtree(path)
    counts = {topic: 0} | ({compressed_topic: 0} if compressed_topic else {})
    stamp = start_ns
    with Writer(path, version=BAG_VERSION, storage_plugin=STORAGES[storage]) as writer:
        raw = writer.add_connection(topic, "sensor_msgs/msg/Image", typestore=TYPESTORE)
        packed = (writer.add_connection(compressed_topic, "sensor_msgs/msg/CompressedImage", typestore=TYPESTORE)
                  if compressed_topic else None)
        for index, rgb in enumerate(frames):
            stamp = start_ns + round(index * 1e9 / rate_hz)
            message = image_message(rgb, stamp, frame_id, encoding)
            writer.write(raw, stamp, TYPESTORE.serialize_cdr(message, "sensor_msgs/msg/Image"))
            counts[topic] += 1
            if packed is not None and compressed_topic is not None:
                compressed = compressed_message(rgb, stamp, frame_id)
                writer.write(packed, stamp, TYPESTORE.serialize_cdr(compressed, "sensor_msgs/msg/CompressedImage"))
                counts[compressed_topic] += 1
    return BagSummary(path, storage, counts, start_ns, stamp)


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
