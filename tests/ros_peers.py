"""Real rclpy peer processes for the cross-process tests (started by tests/conftest.py's ros_processes).

Each role runs one ROS 2 node in its own process, does its job over real Fast DDS, and prints one JSON
line with what it observed; the test asserts on that. Expected messages are built here by the same
deterministic functions on both sides, so a subscriber can compare every field it receives.

    python tests/ros_peers.py ROLE [options]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import rclpy
from instseg_interfaces.msg import Instance, InstanceArray
from instseg_interfaces.srv import SegmentObject
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image, RegionOfInterest

from instseg_ros import isolation
from instseg_ros.image_codec import ImageCodecError, image_to_numpy, numpy_to_image
from instseg_ros.spinning import exit_now

RELIABLE = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=10,
    reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE,
)
LATCHED = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=1,
    reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL,
)
IMAGE_CASES = 5


def report(**result: object) -> None:
    print(json.dumps(result), flush=True)


def expected_image(index: int) -> tuple[Image, np.ndarray]:
    """Frame `index` of the exchange and the array it was made from.

    0..2: 2048x1024 rgb8 noise (6 MB) through numpy_to_image; 3: mono16, big-endian, rows padded to
    step = 2*width + 64, built by hand; 4: 640x480 32FC1.
    """
    rng = np.random.default_rng(1000 + index)
    if index < 3:
        pixels = rng.integers(0, 256, size=(1024, 2048, 3), dtype=np.uint8)
        msg = numpy_to_image(pixels, "rgb8")
    elif index == 3:
        height, width, step = 1024, 2048, 2 * 2048 + 64
        pixels = rng.integers(0, 65536, size=(height, width), dtype=np.uint16)
        padded = np.zeros((height, step), np.uint8)
        padded[:, : 2 * width] = pixels.astype(">u2").view(np.uint8).reshape(height, 2 * width)
        msg = Image(height=height, width=width, encoding="mono16", is_bigendian=1, step=step)
        msg.data = padded.tobytes()
    else:
        pixels = rng.normal(size=(480, 640)).astype(np.float32)
        msg = numpy_to_image(pixels, "32FC1")
    msg.header.stamp.sec = 1_700_000_000 + index
    msg.header.stamp.nanosec = 123_456_789
    msg.header.frame_id = f"camera_optical_{index}"
    return msg, pixels


def expected_instances() -> InstanceArray:
    """An InstanceArray with three instances that exercises every field."""
    msg = InstanceArray(height=1024, width=2048, inference_ms=12.5, model_name="spatial_embeddings")
    msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id = 42, 7, "camera"
    for k, (name, class_id) in enumerate([("car", 26), ("person", 24), ("bicycle", 33)], start=1):
        # score 0.5**k is exact in float32, so == still holds after the round trip
        msg.instances.append(Instance(
            id=k, class_name=name, class_id=class_id, score=0.5**k,
            bbox=RegionOfInterest(x_offset=10 * k, y_offset=20 * k, width=30 + k, height=40 + k),
            polygon=[10 * k, 20 * k, 40 * k, 20 * k, 25 * k, 60 * k], area=1000 * k,
        ))
    return msg


def spin_until(node: Node, done: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.05)
    return done()


def wait_for_subscribers(node: Node, publisher, timeout: float) -> bool:
    ok = spin_until(node, lambda: publisher.get_subscription_count() > 0, timeout)
    time.sleep(0.3)  # let the subscriber's side of discovery finish too
    return ok


def discovered_client(node: Node, srv_type: type, name: str, timeout: float, **kwargs: object) -> object | None:
    """A service client whose server has been discovered, or None after `timeout` s."""
    client = node.create_client(srv_type, name, **kwargs)
    return client if client.wait_for_service(timeout_sec=timeout) else None


def receive(node: Node, msg_type: type, topic: str, count: int, timeout: float, qos: QoSProfile = RELIABLE,
            announce: bool = False) -> list:
    """Subscribe and spin until `count` messages arrived or `timeout` s passed; returns what arrived."""
    received: list = []
    node.create_subscription(msg_type, topic, received.append, qos)
    if announce:
        print("ready", flush=True)
    spin_until(node, lambda: len(received) >= count, timeout)
    return received


def report_acked(publisher, published: int, timeout: float) -> None:
    """Wait until every subscriber acknowledged what was published (reliable QoS), then report."""
    acked = publisher.wait_for_all_acked(rclpy.duration.Duration(seconds=timeout))
    report(published=published, acked=bool(acked))


# --- roles -----------------------------------------------------------------------------------------

def net_info(args: argparse.Namespace) -> None:
    """Report the interfaces of this ROS process's network namespace and its ROS environment."""
    node = Node("net_info")

    report(interfaces=isolation.interfaces_up(), node=node.get_fully_qualified_name(),
           domain_id=os.environ.get("ROS_DOMAIN_ID"),
           transports=os.environ.get("FASTDDS_BUILTIN_TRANSPORTS"))


def pub_images(args: argparse.Namespace) -> None:
    node = Node("image_publisher")
    publisher = node.create_publisher(Image, "camera/image", RELIABLE)
    if not wait_for_subscribers(node, publisher, args.timeout):
        report(error="no subscriber appeared")
        return
    for index in range(IMAGE_CASES):
        publisher.publish(expected_image(index)[0])
        time.sleep(0.05)
    report_acked(publisher, IMAGE_CASES, args.timeout)


def sub_images(args: argparse.Namespace) -> None:
    received = receive(Node("image_subscriber"), Image, "camera/image", IMAGE_CASES, args.timeout, announce=True)
    mismatches = []
    for msg in received:
        index = int(msg.header.frame_id.rsplit("_", 1)[1])
        expected, pixels = expected_image(index)
        for name in ("header", "height", "width", "encoding", "is_bigendian", "step"):
            if getattr(msg, name) != getattr(expected, name):
                mismatches.append(f"frame {index}: {name} {getattr(msg, name)} != {getattr(expected, name)}")
        if bytes(msg.data) != bytes(expected.data):
            mismatches.append(f"frame {index}: data differs")
        view = image_to_numpy(msg)
        if not np.array_equal(view, pixels):
            mismatches.append(f"frame {index}: decoded pixels differ")
        if not np.shares_memory(view, np.frombuffer(msg.data, np.uint8)):
            mismatches.append(f"frame {index}: image_to_numpy copied")
    report(received=sorted(int(m.header.frame_id.rsplit("_", 1)[1]) for m in received),
           mismatches=mismatches)


def pub_instances(args: argparse.Namespace) -> None:
    node = Node("instances_publisher")
    publisher = node.create_publisher(InstanceArray, "instances", LATCHED)
    wait_for_subscribers(node, publisher, args.timeout)
    publisher.publish(expected_instances())
    report_acked(publisher, 1, args.timeout)


def sub_instances(args: argparse.Namespace) -> None:
    received = receive(Node("instances_subscriber"), InstanceArray, "instances", 1, args.timeout, LATCHED)
    if not received:
        report(received=0)
        return
    msg, expected = received[0], expected_instances()
    report(received=len(received), equal=msg == expected,
           classes=[i.class_name for i in msg.instances], polygons=[list(i.polygon) for i in msg.instances],
           bbox_widths=[i.bbox.width for i in msg.instances], model_name=msg.model_name,
           stamp=[msg.header.stamp.sec, msg.header.stamp.nanosec])


def extreme_point_box_mask(image_shape: tuple[int, int], points: list[int]) -> np.ndarray:
    """The test server's 'segmentation': the quadrilateral through the 4 extreme points, mono8 0/255."""
    mask = np.zeros(image_shape, np.uint8)
    cv2.fillPoly(mask, [np.asarray(points, np.int32).reshape(4, 2)], 255)
    return mask


def serve_segment(args: argparse.Namespace) -> None:
    """A small SegmentObject server with the real request validation contract (not the real model)."""
    node = Node("segment_test_server")
    served = []

    def handle(request: SegmentObject.Request, response: SegmentObject.Response) -> SegmentObject.Response:
        served.append(1)
        points = list(request.extreme_points)
        if len(points) != 8:
            response.success, response.error_code = False, SegmentObject.Response.BAD_POINTS
            response.message = f"expected 8 integers (4 points), got {len(points)}"
            return response
        try:
            image = image_to_numpy(request.image)
        except ImageCodecError as exc:
            response.success, response.error_code = False, SegmentObject.Response.BAD_IMAGE
            response.message = str(exc)
            return response
        height, width = image.shape[:2]
        xs, ys = points[0::2], points[1::2]
        if min(xs) < 0 or min(ys) < 0 or max(xs) >= width or max(ys) >= height:
            response.success, response.error_code = False, SegmentObject.Response.POINTS_OUTSIDE
            response.message = f"points {points} outside the {width}x{height} image"
            return response
        mask = extreme_point_box_mask((height, width), points)
        response.success, response.error_code = True, SegmentObject.Response.OK
        response.mask = numpy_to_image(mask, "mono8", request.image.header)
        response.polygon, response.polygon_iou, response.score = points, 1.0, 1.0
        return response

    node.create_service(SegmentObject, "segment_test_server/segment", handle)
    print("ready", flush=True)
    spin_until(node, lambda: len(served) >= args.requests, args.timeout)
    report(served=len(served))


def call_segment(args: argparse.Namespace) -> None:
    node = Node(f"segment_client_{os.getpid()}")
    client = discovered_client(node, SegmentObject, "segment_test_server/segment", args.timeout)
    if client is None:
        report(error="service not available")
        return

    def call(request: SegmentObject.Request) -> SegmentObject.Response:
        future = client.call_async(request)
        rclpy.spin_until_future_complete(node, future, timeout_sec=args.timeout)
        return future.result()

    image, _ = expected_image(0)
    points = [100, 500, 900, 120, 1700, 480, 950, 1000]
    t0 = time.perf_counter()
    good = call(SegmentObject.Request(image=image, extreme_points=points, class_name="car"))
    round_trip_ms = (time.perf_counter() - t0) * 1e3
    mask = image_to_numpy(good.mask)
    expected_mask = extreme_point_box_mask((1024, 2048), points)
    bad_count = call(SegmentObject.Request(image=image, extreme_points=points[:6]))
    outside = call(SegmentObject.Request(image=image, extreme_points=[*points[:6], 950, 1024]))
    truncated = Image(height=1024, width=2048, encoding="rgb8", step=3 * 2048)
    truncated.data = bytes(1000)
    broken = call(SegmentObject.Request(image=truncated, extreme_points=points))
    report(
        success=good.success, mask_equal=bool(np.array_equal(mask, expected_mask)),
        mask_encoding=good.mask.encoding, mask_header_equal=good.mask.header == image.header,
        polygon=list(good.polygon), round_trip_ms=round_trip_ms,
        errors={name: [r.success, int(r.error_code), r.message] for name, r in
                [("bad_count", bad_count), ("outside", outside), ("truncated", broken)]},
    )


def replay_bag(args: argparse.Namespace) -> None:
    """Publish a camera bag's raw CDR messages with rclpy (serialized publish), at the bag's pace."""
    from rosbags.highlevel import AnyReader

    node = Node("bag_replayer")
    publisher = node.create_publisher(Image, "camera/image_raw", RELIABLE)
    if not wait_for_subscribers(node, publisher, args.timeout):
        report(error="no subscriber appeared")
        return
    published = 0
    with AnyReader([Path(args.bag)]) as reader:
        connections = [c for c in reader.connections if c.msgtype == "sensor_msgs/msg/Image"]
        for _, _, rawdata in reader.messages(connections=connections):
            publisher.publish(bytes(rawdata))
            published += 1
            time.sleep(0.02)
    report_acked(publisher, published, args.timeout)


def sub_camera(args: argparse.Namespace) -> None:
    """Receive --count images on --topic; report their stamps, sizes, a checksum of the pixels and how many
    /clock messages arrived meanwhile."""
    from rosgraph_msgs.msg import Clock

    node = Node("camera_subscriber")
    clocks: list = []
    node.create_subscription(Clock, "/clock", clocks.append, RELIABLE)
    received = receive(node, Image, args.topic, args.count, args.timeout, announce=True)
    report(clocks=len(clocks), clock_secs=sorted({c.clock.sec for c in clocks}),
           stamps=[m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m in received],
           frame_ids=sorted({m.header.frame_id for m in received}),
           shapes=[list(image_to_numpy(m).shape) for m in received],
           sums=[int(image_to_numpy(m).astype(np.int64).sum()) for m in received])


def call_extreme(args: argparse.Namespace) -> None:
    """Fire good and bad SegmentObject requests at the extreme_point_node at once, then one more good one."""
    node = Node(f"extreme_client_{os.getpid()}")  # two of these run at once: distinct node names
    client = discovered_client(node, SegmentObject, args.service, args.timeout,
                               qos_profile=QoSProfile(depth=64, reliability=ReliabilityPolicy.RELIABLE))
    if client is None:
        report(error="service not available")
        return
    image, pixels = expected_image(0)
    points = [300, 600, 900, 300, 1500, 620, 880, 950]

    def request(**fields: object) -> SegmentObject.Request:
        return SegmentObject.Request(**{"image": image, "extreme_points": points, "class_name": "car", **fields})

    truncated = Image(height=1024, width=2048, encoding="rgb8", step=3 * 2048)
    truncated.data = bytes(1000)
    mono16 = numpy_to_image(np.zeros((64, 64), np.uint16), "mono16")
    oversize = numpy_to_image(np.zeros((1536, 2048, 3), np.uint8), "rgb8")
    requests = {
        "good": request(),
        "good_bgr": request(image=numpy_to_image(np.ascontiguousarray(pixels[..., ::-1]), "bgr8", image.header)),
        "fine_polygon": request(polygon_tolerance=0.5),
        "crop": request(crop_mask=True),
        "bad_count": request(extreme_points=points[:6]),
        "outside": request(extreme_points=[*points[:6], 880, 1024]),
        "degenerate": request(extreme_points=[500, 500, 501, 500, 501, 501, 500, 501]),
        "mono16": request(image=mono16, extreme_points=[1, 30, 30, 1, 60, 30, 30, 60]),
        "truncated": request(image=truncated),
        "zero": request(image=Image(encoding="rgb8")),
        "oversize": request(image=oversize),
        # correction clicks (optional fields): re-segmented with them; refused when odd or outside the image
        "clicks": request(positive_xy=[600.0, 400.0], negative_xy=[900.0, 620.0, 1200.0, 500.0]),
        "clicks_odd": request(positive_xy=[600.0, 400.0, 700.0]),
        "click_outside": request(negative_xy=[2100.0, 10.0]),
    }
    futures = {name: client.call_async(r) for name, r in requests.items()}
    spin_until(node, lambda: all(f.done() for f in futures.values()), args.timeout)
    after = client.call_async(request())
    rclpy.spin_until_future_complete(node, after, timeout_sec=args.timeout)
    futures["after"] = after
    # the frame was sent before: a request without pixels but with the same header uses the node's cache
    cached = client.call_async(request(image=Image(header=image.header)))
    rclpy.spin_until_future_complete(node, cached, timeout_sec=args.timeout)
    futures["cached"] = cached
    other = Image()
    other.header.stamp, other.header.frame_id = image.header.stamp, "never_sent"
    uncached = client.call_async(request(image=other))
    rclpy.spin_until_future_complete(node, uncached, timeout_sec=args.timeout)
    futures["uncached"] = uncached
    # two images under the default header, or under one header: a request without pixels must be refused,
    # never answered on whichever image came last (issue: the mask came from the other frame)
    _, other_pixels = expected_image(1)
    duplicate = Image()
    duplicate.header.stamp.sec, duplicate.header.frame_id = 77, "duplicate"
    for name, header in (("default", Image().header), ("duplicate", duplicate.header)):
        for index, frame in enumerate((pixels, other_pixels)):
            sent = client.call_async(request(image=numpy_to_image(frame, "rgb8", header)))
            rclpy.spin_until_future_complete(node, sent, timeout_sec=args.timeout)
            futures[f"{name}_sent_{index}"] = sent
        cache_only = client.call_async(request(image=Image(header=header)))
        rclpy.spin_until_future_complete(node, cache_only, timeout_sec=args.timeout)
        futures[f"{name}_cache_only"] = cache_only
    results = {}
    for name, future in futures.items():
        response = future.result()
        if response is None:
            results[name] = {"success": None, "code": None, "message": "no response", "done": future.done()}
            continue
        mask = image_to_numpy(response.mask) if response.success else None
        roi = response.mask_roi
        results[name] = {
            "success": response.success, "code": int(response.error_code), "message": response.message,
            "mask_shape": list(mask.shape) if mask is not None else None,
            "mask_roi": [roi.x_offset, roi.y_offset, roi.width, roi.height],
            "mask_values": sorted(int(v) for v in np.unique(mask)) if mask is not None else None,
            "mask_header_equal": response.mask.header == image.header, "polygon_len": len(response.polygon),
            "polygon_iou": response.polygon_iou, "score": response.score, "inference_ms": response.inference_ms,
        }
    if results["clicks"]["success"]:  # the mask at the positive click, then at the two negative ones
        clicked = image_to_numpy(futures["clicks"].result().mask)
        results["clicks"]["mask_at_clicks"] = [int(clicked[y, x]) for x, y in ((600, 400), (900, 620), (1200, 500))]
    if results["good"]["success"] and results["crop"]["success"]:
        # the cropped mask is the full one's bounding box: equal inside it, and nothing outside it
        full, cropped = image_to_numpy(futures["good"].result().mask), image_to_numpy(futures["crop"].result().mask)
        x, y, width, height = results["crop"]["mask_roi"]
        outside = full.copy()
        outside[y:y + height, x:x + width] = 0
        results["crop"]["equals_full_mask"] = bool(np.array_equal(full[y:y + height, x:x + width], cropped))
        results["crop"]["full_mask_outside_roi"] = int(np.count_nonzero(outside))
    report(results=results)


HUGE_SIDE = 10000  # 'huge' and 'bomb' frames are HUGE_SIDE x HUGE_SIDE (100 MP: over every default limit)


def _frame(kind: str, rgb: np.ndarray, index: int) -> Image:
    """A test frame: 'good' (the rgb frame), or a bad one: 'badenc', 'truncated', 'empty', 'mono16', 'huge'
    (a 10000 x 10000 rgb8 frame, 300 MB) or 'bomb' (compressed only: a ~100 kB PNG that decodes to 10000 x 10000
    RGB, 300 MB)."""
    height, width = rgb.shape[:2]
    if kind == "good" or kind == "bomb":
        msg = numpy_to_image(rgb, "rgb8")
    elif kind == "badenc":
        msg = Image(height=height, width=width, encoding="yuv422", step=2 * width)
        msg.data = bytes(2 * width * height)
    elif kind == "truncated":
        msg = Image(height=height, width=width, encoding="rgb8", step=3 * width)
        msg.data = bytes(1000)
    elif kind == "empty":
        msg = Image(height=0, width=0, encoding="rgb8", step=0)
    elif kind == "mono16":
        msg = numpy_to_image(np.zeros((height, width), np.uint16), "mono16")
    elif kind == "huge":
        msg = Image(height=HUGE_SIDE, width=HUGE_SIDE, encoding="rgb8", step=3 * HUGE_SIDE)
        msg.data = bytes(3 * HUGE_SIDE * HUGE_SIDE)
    else:
        raise ValueError(kind)
    msg.header.stamp.sec, msg.header.stamp.nanosec = 1000 + index, 0
    msg.header.frame_id = "test_camera"
    return msg


def drive_segmentation(args: argparse.Namespace) -> None:
    """Publish --kinds frames on /image every --interval s; collect the node's outputs and diagnostics."""
    from diagnostic_msgs.msg import DiagnosticArray

    from instseg_core.data.street_layout import make_scene
    from instseg_core.data.synthetic import render

    width, height = (int(v) for v in args.size.split("x"))
    rgb = render(make_scene(31, width, height)).rgb
    node = Node("segmentation_driver")
    qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=(
        ReliabilityPolicy.BEST_EFFORT if args.reliability == "best_effort" else ReliabilityPolicy.RELIABLE))
    if args.compressed:
        from sensor_msgs.msg import CompressedImage

        from instseg_ros.image_codec import numpy_to_compressed
        publisher = node.create_publisher(CompressedImage, "image/compressed", qos)
    else:
        publisher = node.create_publisher(Image, "image", qos)
    instances, ids, overlays, diagnostics = [], [], [], []
    outputs = RELIABLE if args.output_reliability == "reliable" else QoSProfile(
        history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.BEST_EFFORT)
    node.create_subscription(InstanceArray, "/segmentation_node/instances", instances.append, outputs)
    node.create_subscription(Image, "/segmentation_node/instance_ids", ids.append, outputs)
    if args.overlay:
        node.create_subscription(Image, "/segmentation_node/overlay", overlays.append, outputs)
    node.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, RELIABLE)
    if not wait_for_subscribers(node, publisher, args.timeout):
        report(error="no subscriber appeared")
        return
    kinds = args.kinds.split(",")
    for index, kind in enumerate(kinds):
        frame = _frame(kind, rgb, index)
        if args.compressed:
            pixels = np.zeros((HUGE_SIDE, HUGE_SIDE, 3), np.uint8) if kind == "bomb" else rgb
            frame = numpy_to_compressed(pixels, "rgb8", "png" if kind == "bomb" else "jpeg", header=frame.header)
        publisher.publish(frame)
        spin_until(node, lambda: False, args.interval)
    good = kinds.count("good")
    # Done when every good frame's results arrived, or when the last good frame's results arrived on every output:
    # the node answers frames in order and its outputs are ordered, so an earlier frame missing by then (a
    # best-effort camera's first frame, sent before discovery completed) will not come any more.
    last_good = max((1000 + k for k, kind in enumerate(kinds) if kind == "good"), default=None)

    def complete() -> bool:
        if len(instances) >= good:
            return True
        streams = [instances, ids] + ([overlays] if args.overlay else [])
        return last_good is not None and all(any(m.header.stamp.sec == last_good for m in s) for s in streams)

    spin_until(node, complete, args.settle)

    def diagnostics_caught_up() -> bool:
        """The newest /diagnostics message was published after the last frame that was answered (its
        `processed` counter covers every result received), so its counters are final."""
        if not diagnostics:
            return False
        processed = {kv.key: kv.value for kv in diagnostics[-1].status[0].values}.get("processed", "")
        return processed.isdigit() and int(processed) >= len(instances)

    spin_until(node, diagnostics_caught_up, 10.0)  # the node publishes diagnostics every second
    if args.linger:
        spin_until(node, lambda: False, args.linger)
    last = {kv.key: kv.value for kv in diagnostics[-1].status[0].values} if diagnostics else {}
    report(
        stamps=[m.header.stamp.sec for m in instances], frame_ids=sorted({m.header.frame_id for m in instances}),
        models=sorted({m.model_name for m in instances}),
        sizes=sorted({(m.width, m.height) for m in instances}), counts=[len(m.instances) for m in instances],
        classes=sorted({i.class_name for m in instances for i in m.instances}),
        ids_ok=all(int(image_to_numpy(i).max()) == len(m.instances) or len(m.instances) == 0
                   for i, m in zip(ids, instances, strict=False)),
        id_encodings=sorted({i.encoding for i in ids}), id_stamps=[i.header.stamp.sec for i in ids],
        overlay_encodings=sorted({o.encoding for o in overlays}), overlays=len(overlays),
        scores=[i.score for m in instances for i in m.instances], diagnostics=last,
        diagnostics_level=ord(diagnostics[-1].status[0].level) if diagnostics else -1,
    )


def stream_frames(args: argparse.Namespace) -> None:
    """Publish one --size rgb8 frame with fresh stamps at --rate Hz for --duration s (best effort), or with
    --until-outputs N until the segmentation node has published N results (at most --duration s)."""
    width, height = (int(v) for v in args.size.split("x"))
    node = Node("frame_streamer")
    qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
    publisher = node.create_publisher(Image, "image", qos)
    outputs: list = []
    if args.until_outputs:
        node.create_subscription(InstanceArray, "/segmentation_node/instances", outputs.append, RELIABLE)
    if not wait_for_subscribers(node, publisher, args.timeout):
        report(error="no subscriber appeared")
        return
    frame = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    msg = numpy_to_image(frame, "rgb8")
    start, sent = time.monotonic(), 0
    while time.monotonic() - start < args.duration:
        if args.until_outputs and len(outputs) >= args.until_outputs:
            break
        msg.header.stamp = node.get_clock().now().to_msg()
        publisher.publish(msg)
        sent += 1
        rclpy.spin_once(node, timeout_sec=max(0.0, start + sent / args.rate - time.monotonic()))
        time.sleep(max(0.0, start + sent / args.rate - time.monotonic()))
    report(sent=sent, seconds=time.monotonic() - start, outputs=len(outputs))


def set_params(args: argparse.Namespace) -> None:
    """Set --params name=value,... on --target one by one; report each result."""
    from rclpy.parameter import Parameter
    from rclpy.parameter_client import AsyncParameterClient

    node = Node("parameter_setter")
    client = AsyncParameterClient(node, args.target)
    if not client.wait_for_services(timeout_sec=args.timeout):
        report(error="parameter services not available")
        return
    results = {}
    for item in args.params.split(","):
        name, value = item.split("=")
        parsed = float(value) if "." in value else int(value)
        future = client.set_parameters([Parameter(name, value=parsed)])
        rclpy.spin_until_future_complete(node, future, timeout_sec=args.timeout)
        result = future.result().results[0]
        results[name] = [result.successful, result.reason]
    report(results=results)


def drive_lifecycle(args: argparse.Namespace) -> None:
    """configure, activate, frame, deactivate, frame, activate, frame: report transitions and output stamps."""
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState, GetState

    from instseg_core.data.street_layout import make_scene
    from instseg_core.data.synthetic import render

    rgb = render(make_scene(31, 512, 256)).rgb
    node = Node("lifecycle_driver")
    change = discovered_client(node, ChangeState, "/segmentation_node/change_state", args.timeout)
    get_state = discovered_client(node, GetState, "/segmentation_node/get_state", args.timeout)
    if change is None or get_state is None:
        report(error="lifecycle services not available")
        return
    publisher = node.create_publisher(Image, "image", RELIABLE)
    outputs: list = []
    node.create_subscription(InstanceArray, "/segmentation_node/instances", outputs.append, RELIABLE)

    def transition(transition_id: int) -> bool:
        future = change.call_async(ChangeState.Request(transition=Transition(id=transition_id)))
        rclpy.spin_until_future_complete(node, future, timeout_sec=args.timeout)
        return bool(future.result() and future.result().success)

    def state() -> str:
        future = get_state.call_async(GetState.Request())
        rclpy.spin_until_future_complete(node, future, timeout_sec=10)
        return future.result().current_state.label

    def frame(index: int, expect: bool) -> None:
        wait_for_subscribers(node, publisher, 10) if expect else spin_until(node, lambda: False, 1.0)
        publisher.publish(_frame("good", rgb, index))
        spin_until(node, lambda: any(m.header.stamp.sec == 1000 + index for m in outputs), 30 if expect else 4)

    steps = {"initial": state(), "configure": transition(Transition.TRANSITION_CONFIGURE),
             "after_configure": state(), "activate": transition(Transition.TRANSITION_ACTIVATE)}
    frame(0, True)
    steps["deactivate"] = transition(Transition.TRANSITION_DEACTIVATE)
    steps["after_deactivate"] = state()
    frame(1, False)
    steps["reactivate"] = transition(Transition.TRANSITION_ACTIVATE)
    frame(2, True)
    steps["after_reactivate"] = state()
    report(steps=steps, stamps=[m.header.stamp.sec for m in outputs])


ROLES = {f.__name__.replace("_", "-"): f for f in
         (net_info, pub_images, sub_images, pub_instances, sub_instances, serve_segment, call_segment,
          replay_bag, sub_camera, call_extreme, drive_segmentation, stream_frames, set_params,
          drive_lifecycle)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("role", choices=sorted(ROLES))
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--requests", type=int, default=4, help="serve-segment: exit after this many")
    parser.add_argument("--bag", help="replay-bag: the rosbag2 directory")
    parser.add_argument("--count", type=int, default=1, help="sub-camera: images to wait for")
    parser.add_argument("--topic", default="camera/image_raw", help="sub-camera: image topic")
    parser.add_argument("--service", default="/extreme_point_node/segment", help="call-extreme: service name")
    parser.add_argument("--kinds", default="good", help="drive-segmentation: comma-separated frame kinds")
    parser.add_argument("--interval", type=float, default=0.5, help="drive-segmentation: seconds between frames")
    parser.add_argument("--settle", type=float, default=20.0, help="drive-segmentation: wait for outputs")
    parser.add_argument("--linger", type=float, default=0.0,
                        help="drive-segmentation: keep the camera connected this long after the frames")
    parser.add_argument("--size", default="512x256", help="frame size WxH")
    parser.add_argument("--reliability", default="reliable")
    parser.add_argument("--overlay", action="store_true", help="drive-segmentation: subscribe to the overlay")
    parser.add_argument("--compressed", action="store_true", help="drive-segmentation: publish JPEG CompressedImage")
    parser.add_argument("--output-reliability", default="reliable", choices=("reliable", "best_effort"),
                        help="drive-segmentation: QoS of its subscriptions to the node's outputs")
    parser.add_argument("--rate", type=float, default=15.0, help="stream-frames: Hz")
    parser.add_argument("--duration", type=float, default=10.0, help="stream-frames: seconds")
    parser.add_argument("--until-outputs", type=int, default=0,
                        help="stream-frames: stop once the segmentation node published this many results")
    parser.add_argument("--target", default="/segmentation_node", help="set-params: node name")
    parser.add_argument("--params", default="", help="set-params: name=value,...")
    args = parser.parse_args()
    if not isolation.is_loopback_only():
        sys.exit("ros_peers: refusing to start rclpy outside a loopback-only network namespace")
    rclpy.init()
    try:
        ROLES[args.role](args)
    except BaseException:
        rclpy.try_shutdown()
        raise
    # The result line is out: end now, without deleting the DDS participant. That deletion was seen to block
    # for over 60 s while holding the GIL (so no Python watchdog could run); peers notice this one gone by
    # its lease instead.
    exit_now(0)


if __name__ == "__main__":
    main()
