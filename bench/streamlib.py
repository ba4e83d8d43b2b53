"""Shared by bench/bench_streaming.py and tools/demo.py: start segmentation_node as a process and watch its
outputs from this process over real DDS.

Callers must already be in a loopback-only network namespace (instseg_ros.isolation.ensure_isolated()).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from instseg_interfaces.msg import InstanceArray
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from instseg_ros.image_codec import image_to_numpy

REPO = Path(__file__).resolve().parents[1]
SENSOR_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
KEEP_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=50, reliability=ReliabilityPolicy.BEST_EFFORT)


def stamp_ns(header: object) -> int:
    return header.stamp.sec * 10**9 + header.stamp.nanosec


class NodeProcess:
    """segmentation_node in a child process (same environment); start() returns once the model is loaded."""

    def __init__(self, *parameters: str, remaps: tuple[str, ...] = ()) -> None:
        args = [sys.executable, str(REPO / "instseg_ros" / "segmentation_node.py"), "--ros-args"]
        args += [item for p in parameters for item in ("-p", p)]
        args += [item for r in remaps for item in ("-r", r)]
        self.args = args
        self.log: list[str] = []

    def start(self, timeout: float = 120.0) -> NodeProcess:
        self.proc = subprocess.Popen(self.args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                                     env=dict(os.environ))
        loaded = threading.Event()

        def read() -> None:
            for line in self.proc.stderr:
                self.log.append(line)
                if "loaded from" in line:
                    loaded.set()
            loaded.set()

        self.reader = threading.Thread(target=read, daemon=True)
        self.reader.start()
        if not loaded.wait(timeout) or self.proc.poll() is not None:
            raise RuntimeError("segmentation_node did not start:\n" + "".join(self.log))
        return self

    def stop(self) -> dict:
        """SIGINT, wait; returns the node's exit summary (counters, and memory in MiB: rss_range_mb between
        frames after the warm-up, peak_rss_mb); {} if it printed none."""
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=60)
        self.reader.join(timeout=5)
        prefix = "segmentation_node summary "
        summary = next((line for line in reversed(self.log) if line.startswith(prefix)), "")
        return json.loads(summary[len(prefix):]) if summary else {}


@dataclass
class Observer:
    """Watches the camera topic, the node's outputs and /diagnostics from this process.

    latency_ms: camera frame arrival here -> InstanceArray with the same stamp arrival here.
    """

    camera_topic: str = "/image"
    keep_overlays: bool = False
    camera_arrival: dict[int, float] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    arrays: list = field(default_factory=list)
    overlays: list[np.ndarray] = field(default_factory=list)
    diagnostics: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.node = Node("instseg_observer")
        self.lock = threading.Lock()
        self.node.create_subscription(Image, self.camera_topic, self._on_camera, KEEP_QOS)
        self.node.create_subscription(InstanceArray, "/segmentation_node/instances", self._on_instances, KEEP_QOS)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, KEEP_QOS)
        if self.keep_overlays:
            self.node.create_subscription(Image, "/segmentation_node/overlay", self._on_overlay, KEEP_QOS)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.running = True
        self.thread.start()

    def _spin(self) -> None:
        while self.running and rclpy.ok():
            self.executor.spin_once(timeout_sec=0.05)

    def mark_sent(self, stamp: int) -> None:
        """For frames published by this process: the publish time counts as arrival."""
        with self.lock:
            self.camera_arrival[stamp] = time.monotonic()

    def _on_camera(self, msg: Image) -> None:
        with self.lock:
            self.camera_arrival.setdefault(stamp_ns(msg.header), time.monotonic())

    def _on_instances(self, msg: InstanceArray) -> None:
        now = time.monotonic()
        with self.lock:
            sent = self.camera_arrival.get(stamp_ns(msg.header))
            if sent is not None:
                self.latencies_ms.append((now - sent) * 1e3)
            self.arrays.append((now, msg))

    def _on_overlay(self, msg: Image) -> None:
        with self.lock:
            self.overlays.append(image_to_numpy(msg)[..., ::-1].copy())  # bgr8 -> RGB

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.startswith("segmentation_node"):
                with self.lock:
                    self.diagnostics = {kv.key: kv.value for kv in status.values}

    def fps(self) -> float:
        times = [t for t, _ in self.arrays]
        return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0

    def close(self) -> None:
        self.running = False
        self.thread.join(timeout=5)
        self.executor.shutdown()
        self.node.destroy_node()
