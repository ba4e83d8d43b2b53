"""End-to-end streaming: frames published here -> segmentation_node (another process) -> InstanceArray back here.

    .venv/bin/python bench/bench_streaming.py [--sizes 512x256 1024x512 2048x1024] [--seconds 20] [--rate 15]
                                              [--backend onnxruntime --device cpu]

Per input size: the node runs with its network input equal to the frame size (the shipped Spatial
Embeddings model, sensor-data QoS, keep-newest-frame worker); this process publishes a synthetic street
frame (rgb8) at --rate Hz for --seconds and measures the latency from publishing a frame to receiving its
InstanceArray, and the output rate (fps). The node's /diagnostics give the median ms of each stage inside
it (wait+decode, preprocess, inference, postprocess, publish); "transport" is what remains of the
end-to-end latency. Goal on 2 CPU cores: >= 8 fps at 512x256 (ONNX Runtime). On a GPU machine run with
--backend tensorrt --device cuda --sizes 2048x1024 (goal >= 30 fps, p95 <= 40 ms).
The script isolates itself in a loopback-only network namespace before rclpy starts.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from benchlib import print_table, summarize

from instseg_ros import isolation

STAGES = ("wait_and_decode", "preprocess", "inference", "postprocess", "publish")


def run_case(width: int, height: int, seconds: float, rate: float, backend: str, device: str, threads: int) -> list:
    from rclpy.node import Node
    from sensor_msgs.msg import Image
    from streamlib import SENSOR_QOS, NodeProcess, Observer

    from instseg_core.data.street_layout import make_scene
    from instseg_core.data.synthetic import render
    from instseg_ros.image_codec import numpy_to_image

    frame = cv2.resize(render(make_scene(5, 1024, 512)).rgb, (width, height), interpolation=cv2.INTER_AREA)
    node = NodeProcess(f"input_width:={width}", f"input_height:={height}", f"backend:={backend}",
                       f"device:={device}", f"threads:={threads}", "diagnostics_period:=0.5").start()
    observer = Observer(camera_topic="/bench_unused")
    publisher_node = Node("bench_camera")
    publisher = publisher_node.create_publisher(Image, "image", SENSOR_QOS)
    message = numpy_to_image(frame, "rgb8")
    deadline = time.monotonic() + 30
    while publisher.get_subscription_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    start, sent = time.monotonic(), 0
    while time.monotonic() - start < seconds:
        stamp = publisher_node.get_clock().now()
        message.header.stamp = stamp.to_msg()
        observer.mark_sent(stamp.nanoseconds)
        publisher.publish(message)
        sent += 1
        time.sleep(max(0.0, start + sent / rate - time.monotonic()))
    time.sleep(3.0)
    counters = node.stop()
    diagnostics = dict(observer.diagnostics)
    latency = summarize(observer.latencies_ms)
    fps = observer.fps()
    observer.close()
    publisher_node.destroy_node()
    stage_ms = {s: float(diagnostics.get(f"{s}_ms", "nan")) for s in STAGES}
    inside = sum(v for v in stage_ms.values() if np.isfinite(v))
    transport = latency[0] - inside
    shares = {s: v / latency[0] for s, v in stage_ms.items()} | {"transport": transport / latency[0]}
    return [f"{width}x{height}", f"{backend}/{device}", sent, counters.get("processed", 0),
            counters.get("dropped", 0), fps, latency[0], latency[1],
            " ".join(f"{k} {100 * v:.0f}%" for k, v in shares.items())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["512x256", "1024x512", "2048x1024"])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=15.0)
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    isolation.ensure_isolated()
    os.environ.setdefault("ROS_DOMAIN_ID", "71")
    os.environ["FASTDDS_BUILTIN_TRANSPORTS"] = "LARGE_DATA"
    import rclpy

    rclpy.init()
    rows = []
    try:
        for size in args.sizes:
            width, height = (int(v) for v in size.split("x"))
            rows.append(run_case(width, height, args.seconds, args.rate, args.backend, args.device, args.threads))
            print(f"  {size}: {rows[-1][5]:.2f} fps, p50 {rows[-1][6]:.0f} ms", flush=True)
    finally:
        rclpy.try_shutdown()
    print_table(["input", "backend", "sent", "processed", "dropped", "fps", "latency p50 ms", "latency p95 ms",
                 "share of p50 latency"], rows,
                title=f"End-to-end streaming, {args.rate:.0f} Hz input for {args.seconds:.0f} s, "
                      f"{os.cpu_count()} CPU cores (goal: >= 8 fps at 512x256 on CPU)")


if __name__ == "__main__":
    main()
