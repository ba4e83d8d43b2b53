"""Codec benchmark: 2048x1024 rgb8 numpy -> sensor_msgs/Image and back, against baselines in the same run.

    .venv/bin/python bench/bench_image_codec.py [--repeats N]

Target (foundation issue): <= 3 ms median for each direction on a 2-core machine. Baselines:
- numpy -> msg: `msg.data = array.array('B', img.tobytes())` (the recipe DESIGN.md §3 started from) and
  a bare memcpy into a preallocated buffer (the floor any conversion pays);
- msg -> numpy: a copying receive (`np.frombuffer(...).reshape(...).copy()`).
rclpy's own serialisation (what `publish()` costs on top) and OpenCV JPEG at 2 MP are shown for context.
No rclpy context is started: nothing here touches the network.
"""

from __future__ import annotations

import argparse
import array
import os
import platform
import sys

import numpy as np
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import Image

sys.path.insert(0, os.path.dirname(__file__))
from benchlib import print_table, time_call

from instseg_ros.image_codec import (
    compressed_to_numpy,
    image_to_numpy,
    numpy_to_compressed,
    numpy_to_image,
)

HEIGHT, WIDTH = 1024, 2048
TARGET_MS = 3.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=100)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)
    reusable = numpy_to_image(pixels, "rgb8")
    received = deserialize_message(serialize_message(reusable), Image)
    floor = np.empty_like(pixels)

    def baseline_send() -> Image:
        msg = Image(height=HEIGHT, width=WIDTH, encoding="rgb8", step=WIDTH * 3)
        msg.data = array.array("B", pixels.tobytes())
        return msg

    n = args.repeats
    send = [
        (time_call("numpy_to_image (new buffer)", lambda: numpy_to_image(pixels, "rgb8"), n), True),
        (time_call("numpy_to_image (out=msg, reused buffer)",
                   lambda: numpy_to_image(pixels, "rgb8", out=reusable), n), True),
        (time_call("baseline: array.array('B', img.tobytes())", baseline_send, n), False),
        (time_call("floor: memcpy into preallocated array", lambda: np.copyto(floor, pixels), n), False),
        (time_call("avoid: array.array('B', memoryview(img)), per element",
                   lambda: array.array("B", memoryview(pixels).cast("B")), 3, warmup=0), False),
    ]
    def copying_receive() -> np.ndarray:
        return np.frombuffer(received.data, np.uint8).reshape(HEIGHT, WIDTH, 3).copy()

    receive = [
        (time_call("image_to_numpy (zero-copy view)", lambda: image_to_numpy(received), n), True),
        (time_call("baseline: copying receive", copying_receive, n), False),
    ]
    few = max(10, n // 5)
    serialized = serialize_message(reusable)
    jpeg = numpy_to_compressed(pixels, "rgb8")
    context = [
        time_call("rclpy serialize_message (publish side)", lambda: serialize_message(reusable), few),
        time_call("rclpy deserialize_message (take side)",
                  lambda: deserialize_message(serialized, Image), few),
        time_call("numpy_to_compressed jpeg q90", lambda: numpy_to_compressed(pixels, "rgb8"), few),
        time_call("compressed_to_numpy jpeg", lambda: compressed_to_numpy(jpeg), few),
    ]

    rows = []
    for direction, timings in (("numpy -> msg", send), ("msg -> numpy", receive)):
        baseline = next(t for t, ours in timings if not ours).median
        for timing, ours in timings:
            verdict = ("PASS" if timing.median <= TARGET_MS else "FAIL") if ours else ""
            rows.append([direction, timing.name, timing.median, timing.p95,
                         f"{timing.median / baseline:.3f}x", verdict])
    for timing in context:
        rows.append(["context", timing.name, timing.median, timing.p95, "", ""])
    print_table(
        ["direction", "operation", "median ms", "p95 ms", "vs baseline", f"<= {TARGET_MS:.0f} ms"], rows,
        title=f"Image codec, {WIDTH}x{HEIGHT} rgb8 ({pixels.nbytes / 1e6:.1f} MB), {n} runs, "
              f"{platform.machine()} {os.cpu_count()} cores, numpy {np.__version__}",
    )
    ours = [t for timings in (send, receive) for t, mine in timings if mine]
    sys.exit(0 if all(t.median <= TARGET_MS for t in ours) else 1)


if __name__ == "__main__":
    main()
