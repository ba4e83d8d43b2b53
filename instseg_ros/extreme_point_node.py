"""`extreme_point_node`: the annotation service. 4 extreme points in, mask and polygon out, on CPU.

Service `~/segment` (instseg_interfaces/srv/SegmentObject). Parameters:
  model_file (string: a path, or a file name looked up in $INSTSEG_MODEL_DIR, the installed share directory
  and the source tree; empty = the shipped extreme_unet_int8.onnx), threads (int, 2: ONNX Runtime
  intra-op threads), threshold (double, 0.5), polygon_tolerance (double, 1.0 px: Douglas-Peucker
  epsilon), max_image_pixels (int, 16777216), max_concurrent (int, 2: requests segmented at once),
  frame_cache (int, 4: frames remembered for requests without pixels; 0 = off), spin_wait (bool, true:
  ONNX Runtime's worker threads busy-wait between runs; false frees the cores between requests), refine
  (string, "none": "grabcut" moves the network's uncertain border pixels to the colour edge with OpenCV
  GrabCut, see instseg_core.annotate.refine; about 10-30 ms more per object), flip (string, "union": the
  network also sees the mirrored crop and the larger probability is kept per pixel, ~3 ms more per object;
  "none": one pass).

Correction clicks: the request's optional positive_xy / negative_xy (x0,y0,x1,y1,... image pixels) re-segment the
object with them in the same request (ExtremePointSegmenter.segment's positive / negative); without them a request
is answered exactly as before they existed.

Masks: with crop_mask in the request the response's mask covers only the object's bounding box
(`mask_roi`), a few kB; without it, the whole image (2 MB at 2048x1024, a sizeable part of a round trip).

Frame cache (instseg_core.annotate.frame_cache): an operator clicks several objects per frame, so only the
first request of a frame needs to carry the 6 MB image. A request whose image is empty (height = width = 0,
no data) but whose header (stamp, frame_id) equals that of one of the last `frame_cache` frames received is
segmented on that frame; that saves the image transfer, most of the round trip. A cache hit is never
ambiguous: an empty image with an unknown header, with the default header (stamp 0, empty frame_id), or with
a header that two different images were sent under, is refused (BAD_IMAGE, with the reason).

The model is loaded and warmed up at start; a missing or corrupt model file stops the node at once with
an error naming the path. Bad requests are answered with success=false, an error code and a message,
and are counted per code; they are logged as warnings (rate-limited) and never stop the node. Requests
are served concurrently (a reentrant callback group and a multi-threaded executor).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import Counter

import numpy as np
import rclpy
from instseg_interfaces.srv import SegmentObject
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image, RegionOfInterest
from std_msgs.msg import Header

from instseg_core.annotate.frame_cache import FrameCache, FrameCacheMissError
from instseg_core.annotate.segmenter import (
    AnnotationError,
    AnnotationResult,
    ErrorCode,
    create_annotation_segmenter,
)
from instseg_core.base.command_exit import EXIT_DONE, debug_requested, failure_status
from instseg_core.base.model_files import ModelFileError
from instseg_ros.allocator import keep_large_buffers
from instseg_ros.image_codec import ImageCodecError, image_to_numpy, numpy_to_image, to_rgb8
from instseg_ros.spinning import end_node_process, failures_status, init_node_process, spin_until_shutdown


class ExtremePointNode(Node):
    """Serves ~/segment; see the module docstring."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__("extreme_point_node", **kwargs)
        describe = ParameterDescriptor
        self.declare_parameter("model_file", "", describe(description="ONNX model: a path or a file name in the "
                                                                     "model folders; empty = shipped default"))
        self.declare_parameter("threads", 2, describe(description="ONNX Runtime intra-op threads"))
        self.declare_parameter("threshold", 0.5, describe(description="foreground probability threshold"))
        self.declare_parameter("polygon_tolerance", 1.0, describe(description="polygon simplification (px)"))
        self.declare_parameter("max_image_pixels", 4096 * 4096, describe(description="larger images are refused"))
        self.declare_parameter("max_concurrent", 2, describe(description="requests segmented at the same time"))
        self.declare_parameter("spin_wait", True, describe(description="ONNX Runtime threads busy-wait between runs"))
        self.declare_parameter("frame_cache", 4, describe(description="frames kept for requests without pixels"))
        self.declare_parameter("refine", "none", describe(description="none | grabcut: refine the network's border"))
        self.declare_parameter("flip", "union", describe(
            description="union: also run the network on the mirrored crop and keep the larger probability per "
                        "pixel (more accurate, ~3 ms more per object) | none: one pass"))
        get = self.get_parameter
        threads, threshold = int(get("threads").value), float(get("threshold").value)
        tolerance = float(get("polygon_tolerance").value)
        self.max_pixels = int(get("max_image_pixels").value)
        if threads < 1 or not 0.0 < threshold < 1.0 or tolerance < 0 or self.max_pixels < 1:
            raise ValueError(f"invalid parameters: threads={threads} threshold={threshold} "
                             f"polygon_tolerance={tolerance} max_image_pixels={self.max_pixels}")
        self.segmenter = create_annotation_segmenter(get("model_file").value or None, threads=threads,
                                                     spin_wait=bool(get("spin_wait").value), threshold=threshold,
                                                     polygon_tolerance=tolerance, refine=str(get("refine").value),
                                                     flip=str(get("flip").value))
        start = time.perf_counter()
        self.segmenter.warmup()
        self.errors: Counter[str] = Counter()
        self.frames = FrameCache(int(get("frame_cache").value))
        self.served = 0
        self._lock = threading.Lock()
        self._slots = threading.Semaphore(max(1, int(get("max_concurrent").value)))
        # Services default to keep-last 10: a UI queuing more clicks than that would lose requests silently.
        service_qos = QoSProfile(depth=64, reliability=ReliabilityPolicy.RELIABLE)
        self.create_service(SegmentObject, "~/segment", self._on_request, qos_profile=service_qos,
                            callback_group=ReentrantCallbackGroup())
        self.get_logger().info(f"loaded {self.segmenter.backend.path} ({self.segmenter.channels} input channels, "
                               f"{threads} threads), "
                               f"warm-up {1e3 * (time.perf_counter() - start):.0f} ms; serving "
                               f"{self.resolve_service_name('~/segment')}")

    def _refuse(self, response: SegmentObject.Response, code: ErrorCode, message: str) -> SegmentObject.Response:
        with self._lock:
            self.errors[code.name] += 1
        self.get_logger().warning(f"segment request refused ({code.name}): {message}", throttle_duration_sec=1.0)
        response.success, response.error_code, response.message = False, int(code), message
        return response

    def _on_request(self, request: SegmentObject.Request, response: SegmentObject.Response) -> SegmentObject.Response:
        start = time.perf_counter()
        image_msg = request.image
        if int(image_msg.width) * int(image_msg.height) > self.max_pixels:
            size = f"{image_msg.width}x{image_msg.height}"
            return self._refuse(response, ErrorCode.IMAGE_TOO_LARGE,
                                f"image {size} exceeds max_image_pixels={self.max_pixels}")
        stamp = image_msg.header.stamp
        key = (int(stamp.sec), int(stamp.nanosec), image_msg.header.frame_id)
        if image_msg.width == 0 and image_msg.height == 0 and len(image_msg.data) == 0:
            try:
                rgb = self.frames.lookup(key)
            except FrameCacheMissError as exc:
                return self._refuse(response, ErrorCode.BAD_IMAGE, f"image of zero size: {exc}")
        else:
            try:
                rgb = to_rgb8(image_to_numpy(image_msg), image_msg.encoding)
            except ImageCodecError as exc:
                return self._refuse(response, ErrorCode.BAD_IMAGE, str(exc))
            self.frames.store(key, rgb)
        try:
            with self._slots:
                result = self.segmenter.segment(rgb, np.asarray(request.extreme_points, np.float64),
                                                request.polygon_tolerance,
                                                positive=np.asarray(request.positive_xy, np.float64),
                                                negative=np.asarray(request.negative_xy, np.float64))
        except AnnotationError as exc:
            return self._refuse(response, exc.code, str(exc))
        except Exception as exc:  # keep serving whatever the model does
            return self._refuse(response, ErrorCode.INTERNAL_ERROR, f"segmentation failed: {exc!r}")
        response.success, response.error_code = True, int(ErrorCode.OK)
        response.mask, response.mask_roi = mask_message(result, request.crop_mask, image_msg.header)
        response.polygon = result.polygon.reshape(-1).tolist()
        response.polygon_iou = float(result.polygon_iou)
        response.score = float(result.score)
        response.inference_ms = float((time.perf_counter() - start) * 1e3)
        with self._lock:
            self.served += 1
        return response


def mask_message(result: AnnotationResult, crop: bool, header: Header) -> tuple[Image, RegionOfInterest]:
    """The response's mono8 0/255 mask and the region it covers: the object's tight box when `crop` (an
    empty 0x0 image at the box's corner for an empty mask), else the whole image."""
    if crop:
        (x, y, width, height), mask = result.roi, result.roi_mask
    else:
        (height, width), x, y, mask = result.image_shape, 0, 0, result.mask
    roi = RegionOfInterest(x_offset=x, y_offset=y, width=width, height=height)
    if mask.size == 0:
        return Image(header=header, encoding="mono8"), roi
    return numpy_to_image(mask.view(np.uint8) * np.uint8(255), "mono8", header), roi


def print_summary(served: int, refused: dict[str, int]) -> None:
    """The exit lines on stderr (the ROS context may already be gone after a signal): a readable one and
    'extreme_point_node summary {json}' for scripts."""
    print(f"extreme_point_node: served {served} requests; refused {refused or 'none'}", file=sys.stderr, flush=True)
    print("extreme_point_node summary " + json.dumps({"served": served, "refused": refused}), file=sys.stderr,
          flush=True)


def main(argv: list[str] | None = None) -> None:
    """Entry point (`ros2 run instseg_ros extreme_point_node`, or `.venv/bin/extreme_point_node`). Exit status 0
    after a clean stop; 2 with one line for a parameter or model it cannot start with; 1 with one line for an
    internal error (its traceback in a log file, or on stderr with INSTSEG_DEBUG=1) and after a clean stop when
    requests failed with INTERNAL_ERROR (instseg_core.base.command_exit)."""
    keep_large_buffers()  # 6 MB requests: reuse warm heap pages instead of fresh mmaps (see allocator.py)
    init_node_process(argv)
    node: ExtremePointNode | None = None
    executor: MultiThreadedExecutor | None = None
    status = EXIT_DONE
    try:  # a signal can arrive at any moment from here on: every step below may be cut short
        try:
            node = ExtremePointNode()
        except (ModelFileError, ValueError) as exc:
            print(f"extreme_point_node: {exc}", file=sys.stderr, flush=True)
            rclpy.try_shutdown()
            sys.exit(2)
        if not rclpy.ok():  # SIGTERM during start-up: rclpy shut the context down, nothing to serve
            return
        executor = MultiThreadedExecutor(num_threads=4)
        executor.add_node(node)
        spin_until_shutdown(executor)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception as exc:
        # after a signal shut the context down while the node or executor was being built (rcl refuses to create
        # entities then), a clean stop like any other; else an internal error: one line, the traceback logged
        if rclpy.ok():
            status = failure_status("extreme_point_node", exc, debug=debug_requested())
    finally:
        if sys.exc_info()[0] is not SystemExit:
            refused = dict(node.errors) if node else {}
            print_summary(node.served if node else 0, refused)
            if status == EXIT_DONE:
                status = failures_status("extreme_point_node", refused.get(ErrorCode.INTERNAL_ERROR.name, 0),
                                         "requests")
        end_node_process(executor, node, "extreme_point_node", clean=sys.exc_info()[0] is None, status=status)


if __name__ == "__main__":
    main()


__all__ = ["ExtremePointNode", "main", "mask_message"]
