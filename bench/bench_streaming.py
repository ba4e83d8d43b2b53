"""End-to-end streaming: frames published here -> segmentation_node (another process) -> InstanceArray back here.

    .venv/bin/python bench/bench_streaming.py [--cases spatial_embeddings box2pix box2pix:int8 ...]
        [--sizes 512x256 1024x512 2048x1024] [--seconds 20] [--rate 15] [--backend onnxruntime --device cpu]

Per case (model, with ':int8' for its static int8 QDQ graph) and input size, in one run: the node runs with its
network input equal to the frame size (sensor-data QoS, keep-newest-frame worker); this process publishes a
synthetic street frame (rgb8) at --rate Hz for --seconds and measures the latency from publishing a frame to
receiving its InstanceArray, and the output rate (fps); "vs fp32" is the fps ratio to the same model's fp32 case
at the same size. The node's /diagnostics give the median ms of each stage inside it (wait+decode, preprocess,
inference, postprocess, publish); "transport" is what remains of the end-to-end latency. Its exit summary
gives the memory: peak RSS and the range of the RSS sampled between frames after the warm-up.
Goals on 2 CPU cores: Spatial Embeddings >= 8 fps at 512x256; Box2Pix int8 >= 15 fps at 512x256 and >= 5 fps
at 1024x512. On a GPU machine run with --backend tensorrt --device cuda --sizes 2048x1024 (>= 30 fps).
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


def run_case(case: str, width: int, height: int, seconds: float, rate: float, backend: str, device: str,
             threads: int) -> dict:
    from rclpy.node import Node
    from sensor_msgs.msg import Image
    from streamlib import SENSOR_QOS, NodeProcess, Observer

    from instseg_core.data.street_layout import make_scene
    from instseg_core.data.synthetic import render
    from instseg_ros.image_codec import numpy_to_image

    frame = cv2.resize(render(make_scene(5, 1024, 512)).rgb, (width, height), interpolation=cv2.INTER_AREA)
    model, _, precision = case.partition(":")
    node = NodeProcess(f"model:={model}", f"int8:={precision == 'int8'}", f"input_width:={width}",
                       f"input_height:={height}", f"backend:={backend}", f"device:={device}", f"threads:={threads}",
                       "diagnostics_period:=0.5").start()
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
    summary = node.stop()
    diagnostics = dict(observer.diagnostics)
    latency = summarize(observer.latencies_ms)
    fps = observer.fps()
    observer.close()
    publisher_node.destroy_node()
    stage_ms = {s: float(diagnostics.get(f"{s}_ms", "nan")) for s in STAGES}
    inside = sum(v for v in stage_ms.values() if np.isfinite(v))
    transport = latency[0] - inside
    shares = {s: v / latency[0] for s, v in stage_ms.items()} | {"transport": transport / latency[0]}
    return {"input": f"{width}x{height}", "model": model, "precision": precision or "fp32", "sent": sent,
            "processed": summary.get("processed", 0), "dropped": summary.get("dropped", 0), "fps": fps,
            "p50": latency[0], "p95": latency[1], "peak_rss_mb": summary.get("peak_rss_mb", float("nan")),
            "rss_range_mb": summary.get("rss_range_mb", float("nan")),
            "shares": " ".join(f"{k} {100 * v:.0f}%" for k, v in shares.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=["spatial_embeddings", "spatial_embeddings:int8", "box2pix",
                                                         "box2pix:int8"])
    parser.add_argument("--sizes", nargs="+", default=["512x256", "1024x512", "2048x1024"])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=15.0)
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    isolation.ensure_isolated()
    os.environ.setdefault("ROS_DOMAIN_ID", "71")
    import rclpy

    rclpy.init()
    results = []
    try:
        for size in args.sizes:
            width, height = (int(v) for v in size.split("x"))
            for case in args.cases:
                results.append(run_case(case, width, height, args.seconds, args.rate, args.backend, args.device,
                                        args.threads))
                r = results[-1]
                print(f"  {size} {case}: {r['fps']:.2f} fps, p50 {r['p50']:.0f} ms, peak {r['peak_rss_mb']:.0f} MB",
                      flush=True)
    finally:
        rclpy.try_shutdown()
    fp32_fps = {(r["input"], r["model"]): r["fps"] for r in results if r["precision"] == "fp32"}
    rows = [[r["input"], r["model"], r["precision"], r["sent"], r["processed"], r["dropped"], r["fps"],
             r["fps"] / fp32_fps[(r["input"], r["model"])] if fp32_fps.get((r["input"], r["model"])) else float("nan"),
             r["p50"], r["p95"], r["peak_rss_mb"], r["rss_range_mb"], r["shares"]] for r in results]
    print_table(["input", "model", "precision", "sent", "processed", "dropped", "fps", "vs fp32", "latency p50 ms",
                 "latency p95 ms", "peak RSS MB", "RSS range between frames MB", "share of p50 latency"], rows,
                title=f"End-to-end streaming, {args.backend}/{args.device}, {args.rate:.0f} Hz input for "
                      f"{args.seconds:.0f} s, {os.cpu_count()} CPU cores")


if __name__ == "__main__":
    main()
