"""Extreme-point annotation latency on a 2048x1024 frame: in-process and through the ROS 2 service.

    .venv/bin/python bench/bench_annotate.py [--model models/extreme_unet.onnx] [--requests 40]
        [--previous-model OLD.onnx] [--in-process-only]

In-process: the full request per object (validate, crop, encode, network, paste back, threshold,
polygon) with ONNX Runtime (2 threads, the product path; fp32 and, when models/<name>_int8.onnx
exists, the static int8 QDQ model) and with PyTorch eager running the same architecture, in the same
run. The PyTorch model has fresh weights (the ONNX export folds batch norm into the convolutions, so
its weights do not map back), which does not change its latency.
Service: extreme_point_node in another process, a client here; the round trip includes sending the
6 MB rgb8 frame and receiving the mask over Fast DDS: full-size (2 MB) or cropped to the object
(crop_mask), and for a frame already sent (the node's frame cache). The node runs once with its malloc
tuning (instseg_ros/allocator.py) and once with glibc's defaults, as the baseline for that tuning.
Targets on 2 cores: in-process <= 8 ms p50 per object, service <= 20 ms p50.
The script isolates itself in a loopback-only network namespace before rclpy starts.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from benchlib import print_table, summarize, time_call

from instseg_ros import isolation

REPO = Path(__file__).resolve().parents[1]
IN_PROCESS_TARGET_MS, SERVICE_TARGET_MS = 8.0, 20.0


def objects_of_a_frame() -> tuple[np.ndarray, list[np.ndarray]]:
    """A synthetic 2048x1024 frame and the extreme points of its visible objects (>= 400 px)."""
    from instseg_core.annotate.encoding import extreme_points_from_mask
    from instseg_core.data.cityscapes import PolygonObject, visible_masks
    from instseg_core.data.synthetic import make_scene, render

    frame = render(make_scene(12345, 2048, 1024))
    objects = [PolygonObject(label, polygon) for label, polygon in frame.objects]
    masks = visible_masks(1024, 2048, objects)
    points = [extreme_points_from_mask(m) for o, m in zip(objects, masks, strict=True)
              if o.label in ("car", "person", "bicycle", "truck", "bus", "traffic sign", "rider") and m.sum() >= 400]
    return frame.rgb, points


def in_process(model_path: Path, rgb: np.ndarray, points: list[np.ndarray], repeats: int,
               previous: Path | None = None) -> list[list]:
    from instseg_core.annotate.segmenter import (
        ExtremePointSegmenter,
        annotation_segmenter_from_module,
        create_annotation_segmenter,
    )
    from training.extreme_points import build_network

    # Built lazily, in this order: PyTorch's OpenMP pool keeps spinning after it runs and would slow
    # ONNX Runtime's threads if it were created first.
    int8_path = model_path.with_name(model_path.stem + "_int8.onnx")
    backends = [("ONNX Runtime fp32 (2 threads)", lambda: create_annotation_segmenter(model_path, threads=2))]
    if int8_path.is_file():
        backends.append(("ONNX Runtime int8 QDQ (2 threads)",
                         lambda: create_annotation_segmenter(int8_path, threads=2)))
        backends.append(("ONNX Runtime int8 QDQ, one pass (flip none)",
                         lambda: create_annotation_segmenter(int8_path, threads=2, flip="none")))
        backends.append(("ONNX Runtime int8 QDQ + GrabCut refinement",
                         lambda: create_annotation_segmenter(int8_path, threads=2, refine="grabcut")))
    if previous is not None:
        backends.append((f"ONNX Runtime, previous model {previous.name} (2 threads)",
                         lambda: create_annotation_segmenter(previous, threads=2)))
        backends.append((f"ONNX Runtime, previous model {previous.name}, one pass (flip none)",
                         lambda: create_annotation_segmenter(previous, threads=2, flip="none")))
    architecture = json.loads(model_path.with_suffix(".json").read_text()).get("architecture", "unet")
    backends.append(("PyTorch eager fp32 (2 threads)", lambda: annotation_segmenter_from_module(
        build_network(architecture, create_annotation_segmenter(model_path).channels), threads=2)))
    rows, medians = [], {}
    for name, make_segmenter in backends:
        segmenter = make_segmenter()
        segmenter.warmup()
        cycle, network_ms = iter(range(10**9)), []

        def request(s: ExtremePointSegmenter = segmenter, c: object = cycle, seen: list = network_ms) -> None:
            seen.append(s.segment(rgb, points[next(c) % len(points)]).timing_ms["network"])

        timing = time_call(name, request, repeats)
        batch = time_call("batch", lambda s=segmenter: s.segment_batch(rgb, points), max(3, repeats // 10))
        medians[name] = timing.median
        rows.append([name, timing.median, timing.p95, float(np.median(network_ms[-repeats:])),
                     batch.median / len(points)])
    base = medians["PyTorch eager fp32 (2 threads)"]
    for row in rows:
        verdict = "PASS" if row[1] <= IN_PROCESS_TARGET_MS else "FAIL"
        row.extend([f"{row[1] / base:.2f}x", verdict if row[0].startswith("ONNX") else ""])
    return rows


def round_trips(node: object, client: object, requests: list, warmup: int = 3) -> tuple[list[float], list[float]]:
    """Send `requests` one after the other; (round-trip ms, node-side inference_ms) after `warmup` requests."""
    import rclpy

    trips, inside = [], []
    for k, request in enumerate(requests):
        start = time.perf_counter()
        future = client.call_async(request)
        rclpy.spin_until_future_complete(node, future, timeout_sec=30)
        elapsed = (time.perf_counter() - start) * 1e3
        response = future.result()
        if response is None or not response.success:
            raise RuntimeError(f"request failed: {response}")
        if k >= warmup:
            trips.append(elapsed)
            inside.append(response.inference_ms)
    return trips, inside


def service(model_path: Path, rgb: np.ndarray, points: list[np.ndarray], requests: int,
            node_parameters: tuple[str, ...] = (), allocator_defaults: bool = False) -> dict[str, list[float]]:
    """Round trips through extreme_point_node (another process) running `model_path`, plus
    `node_parameters` ("name:=value"); the node keeps glibc's malloc defaults if `allocator_defaults`.
    Returns ms lists: 'frame_full' (request with the 6 MB frame, full-size mask back), 'frame_crop' (the
    frame, mask cropped to the object: crop_mask), 'cached_crop' (no pixels: the node's frame cache,
    crop_mask), and 'inside_*': the node's own inference_ms for each."""
    import rclpy
    from instseg_interfaces.srv import SegmentObject
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from instseg_ros.image_codec import numpy_to_image

    env = dict(os.environ)
    if allocator_defaults:
        env["INSTSEG_MALLOC_DEFAULT"] = "1"
    node_proc = subprocess.Popen([sys.executable, str(REPO / "instseg_ros" / "extreme_point_node.py"), "--ros-args",
                                  "-p", f"model_file:={model_path}", "-p", "threads:=2",
                                  *[arg for parameter in node_parameters for arg in ("-p", parameter)]],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    rclpy.init()
    node = rclpy.create_node("annotate_bench_client")
    try:
        client = node.create_client(SegmentObject, "/extreme_point_node/segment",
                                    qos_profile=QoSProfile(depth=8, reliability=ReliabilityPolicy.RELIABLE))
        if not client.wait_for_service(timeout_sec=60):
            raise RuntimeError(f"service did not come up: {node_proc.stderr.read() if node_proc.poll() else ''}")
        image = numpy_to_image(rgb, "rgb8")
        # a camera's header: the frame cache refuses the default one (stamp 0, empty frame_id) as ambiguous
        image.header.frame_id, image.header.stamp.sec = "camera", 1

        def batch(crop: bool, pixels: bool, count: int) -> list:
            return [SegmentObject.Request(image=image if pixels else Image(header=image.header), crop_mask=crop,
                                          extreme_points=points[k % len(points)].reshape(-1).tolist())
                    for k in range(count)]

        results = {}
        for name, crop, pixels in (("frame_full", False, True), ("frame_crop", True, True),
                                   ("cached_crop", True, False)):
            results[name], results[f"inside_{name}"] = round_trips(node, client, batch(crop, pixels, requests + 3))
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        node_proc.send_signal(signal.SIGINT)  # the node's clean shutdown path
        try:
            node_proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            node_proc.kill()
            node_proc.wait()
    return results


def service_rows(label: str, results: dict[str, list[float]], kinds: tuple[str, ...]) -> list[list]:
    descriptions = {"frame_full": "request with the 6 MB frame, full-size mask back (2 MB)",
                    "frame_crop": "request with the 6 MB frame, mask cropped to the object (crop_mask)",
                    "cached_crop": "frame already sent (no pixels: node's frame cache), crop_mask"}
    rows = []
    for kind in kinds:
        p50, p95 = summarize(results[kind])
        inside = summarize(results[f"inside_{kind}"])[0]
        rows.append([f"{label}: {descriptions[kind]}", p50, p95, inside, p50 - inside,
                     "PASS" if p50 <= SERVICE_TARGET_MS else "FAIL"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / "models" / "extreme_unet.onnx",
                        help="the fp32 model; its _int8 sibling is measured too when present")
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--previous-model", type=Path, default=None,
                        help="an earlier graph to time in the same run (e.g. the int8 model shipped before)")
    parser.add_argument("--in-process-only", action="store_true", help="skip the ROS 2 service round trips")
    args = parser.parse_args()
    isolation.ensure_isolated()
    rgb, points = objects_of_a_frame()
    rows = in_process(args.model, rgb, points, args.repeats, args.previous_model)
    print_table(["backend", "p50 ms/object", "p95 ms", "network ms", "batched ms/object", "vs PyTorch",
                 f"p50 <= {IN_PROCESS_TARGET_MS:g} ms"], rows,
                title=f"In-process request, 2048x1024 frame, {len(points)} objects cycled, {os.cpu_count()} cores")
    if args.in_process_only:
        return
    int8 = args.model.with_name(args.model.stem + "_int8.onnx")
    default = int8 if int8.is_file() else args.model
    every = ("frame_full", "frame_crop", "cached_crop")
    rows = service_rows(f"{default.name}", service(default, rgb, points, args.requests), every)
    rows += service_rows(f"{default.name}, one pass (flip:=none)",
                         service(default, rgb, points, args.requests, ("flip:=none",)), every)
    rows += service_rows(f"{default.name}, glibc malloc defaults in the node",
                         service(default, rgb, points, args.requests, allocator_defaults=True), ("frame_crop",))
    if default != args.model:
        rows += service_rows(args.model.name, service(args.model, rgb, points, args.requests), ("frame_crop",))
    transports = os.environ["FASTDDS_BUILTIN_TRANSPORTS"]
    print_table([f"ROS 2 service round trip (extreme_point_node, Fast DDS {transports})", "p50 ms", "p95 ms",
                 "in the node p50", "transport p50 - node p50", f"p50 <= {SERVICE_TARGET_MS:g} ms"], rows,
                title=f"Service round trip across processes, {args.requests} requests each")


if __name__ == "__main__":
    main()
