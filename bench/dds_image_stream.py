"""Camera-stream transport over real Fast DDS: 2048x1024 rgb8 frames from one process to another.

    .venv/bin/python bench/dds_image_stream.py [--rate 30] [--seconds 10] [--reliable]

This is what `make demo` runs until the streaming segmentation node lands: the image-transport half of
the main job (numpy frame -> image codec -> publish -> DDS -> subscriber process -> codec -> numpy),
measured end to end. A publisher (this process) sends synthetic frames at --rate with the send time in
header.stamp; a subscriber process measures latency (callback time - stamp, same clock), decode time
and drops. The script enters a loopback-only network namespace itself before starting rclpy (and
`make demo` wraps it in one too), so no DDS traffic reaches a real interface.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from instseg_ros import isolation

HEIGHT, WIDTH = 1024, 2048
TOPIC = "camera/image_raw"


def qos_profile(reliable: bool):
    from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data

    if not reliable:
        return qos_profile_sensor_data  # best effort, keep last 5: what camera drivers publish
    return QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)


def synthetic_frames(count: int):
    """`count` distinct 2048x1024 rgb8 frames: a moving gradient with noise (cheap to make)."""
    import numpy as np

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    frames = []
    for k in range(count):
        base = np.stack([(x + 40 * k) % 256, (y + 20 * k) % 256, (x + y) % 256], axis=-1)
        frames.append((base + rng.integers(0, 16, size=base.shape)).astype(np.uint8))
    return frames


def run_subscriber(args: argparse.Namespace) -> None:
    import rclpy
    from sensor_msgs.msg import Image

    from instseg_ros.image_codec import image_to_numpy

    rclpy.init()
    node = rclpy.create_node("stream_subscriber")
    latencies, decode_ms, bad = [], [], []
    last = [time.monotonic()]

    def on_image(msg: Image) -> None:
        now_ns = time.time_ns()
        latencies.append((now_ns - (msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec)) / 1e6)
        start = time.perf_counter()
        image = image_to_numpy(msg)
        decode_ms.append((time.perf_counter() - start) * 1e3)
        k = int(msg.header.frame_id.rsplit("_", 1)[1])
        if image.shape != (HEIGHT, WIDTH, 3) or int(image[0, 0, 0]) < (40 * k) % 256:
            bad.append(k)
        last[0] = time.monotonic()

    node.create_subscription(Image, TOPIC, on_image, qos_profile(args.reliable))
    print("ready", flush=True)
    deadline = time.monotonic() + args.seconds + 30
    while time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.1)
        if latencies and time.monotonic() - last[0] > 2.0:
            break
    print(json.dumps({"received": len(latencies), "latency_ms": latencies, "decode_ms": decode_ms,
                      "bad_frames": bad}))
    rclpy.try_shutdown()


def run_publisher(args: argparse.Namespace) -> None:
    import rclpy
    from benchlib import print_table, summarize
    from sensor_msgs.msg import Image

    from instseg_ros.image_codec import numpy_to_image

    print(
        "instseg demo (foundation stage). The streaming segmentation node is not there yet, so this runs\n"
        "the image-transport half of the main job: 2048x1024 rgb8 frames -> codec -> Fast DDS "
        f"({os.environ.get('FASTDDS_BUILTIN_TRANSPORTS')})\n"
        "-> a subscriber process -> codec, inside a loopback-only network namespace "
        f"(ROS_DOMAIN_ID={os.environ['ROS_DOMAIN_ID']}).\n", flush=True,
    )
    subscriber = subprocess.Popen(
        [sys.executable, __file__, "--role", "sub", "--seconds", str(args.seconds),
         *(["--reliable"] if args.reliable else [])],
        stdout=subprocess.PIPE, text=True,
    )
    assert subscriber.stdout is not None
    if subscriber.stdout.readline().strip() != "ready":
        sys.exit("subscriber failed to start")
    frames = synthetic_frames(8)
    rclpy.init()
    node = rclpy.create_node("stream_publisher")
    publisher = node.create_publisher(Image, TOPIC, qos_profile(args.reliable))
    deadline = time.monotonic() + 20
    while publisher.get_subscription_count() == 0 and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.05)
    time.sleep(0.5)
    msg = Image()
    encode_ms, publish_ms = [], []
    total = int(args.rate * args.seconds)
    period = 1.0 / args.rate
    start = time.monotonic()
    for k in range(total):
        time.sleep(max(0.0, start + k * period - time.monotonic()))
        t0 = time.perf_counter()
        numpy_to_image(frames[k % len(frames)], "rgb8", out=msg)
        t1 = time.perf_counter()
        msg.header.frame_id = f"camera_{k % len(frames)}"
        now = time.time_ns()
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(now, 10**9)
        publisher.publish(msg)
        t2 = time.perf_counter()
        encode_ms.append((t1 - t0) * 1e3)
        publish_ms.append((t2 - t1) * 1e3)
    elapsed = time.monotonic() - start
    stdout, _ = subscriber.communicate(timeout=args.seconds + 60)
    result = json.loads(stdout.strip().splitlines()[-1])
    rclpy.try_shutdown()

    received = result["received"]
    rows = [
        ["frames sent / received", f"{total} / {received}", ""],
        ["dropped", f"{total - received} ({100.0 * (total - received) / max(total, 1):.1f} %)", ""],
        ["send rate achieved (Hz)", f"{total / elapsed:.1f}", ""],
        ["latency publish -> subscriber callback (ms)", *summarize(result["latency_ms"])],
        ["numpy_to_image, reused buffer (ms)", *summarize(encode_ms)],
        ["publish() incl. rclpy serialisation (ms)", *summarize(publish_ms)],
        ["image_to_numpy in subscriber (ms)", *summarize(result["decode_ms"])],
    ]
    print_table(
        ["measure", "median", "p95"], rows,
        title=f"DDS image stream: {WIDTH}x{HEIGHT} rgb8 at {args.rate:g} Hz for {args.seconds:g} s, "
              f"{'reliable' if args.reliable else 'best effort (sensor data)'} QoS, "
              f"{os.environ.get('RMW_IMPLEMENTATION')}, FASTDDS_BUILTIN_TRANSPORTS="
              f"{os.environ.get('FASTDDS_BUILTIN_TRANSPORTS')}",
    )
    if result["bad_frames"]:
        sys.exit(f"subscriber saw wrong pixels in frames {sorted(set(result['bad_frames']))}")
    if received == 0:
        sys.exit("no frame arrived")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=["pub", "sub"], default="pub")
    parser.add_argument("--rate", type=float, default=30.0, help="frames per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--reliable", action="store_true", help="reliable QoS instead of sensor-data")
    args = parser.parse_args()
    isolation.ensure_isolated()
    (run_publisher if args.role == "pub" else run_subscriber)(args)


if __name__ == "__main__":
    main()
