"""How the studio turns four clicks into a polygon: through the annotation service node, or in-process.

Both take the frame (instseg_studio.bag_frames.Frame), the 4 extreme points rounded to whole pixels (the
service's int32 points; the in-process path rounds the same way, so both give the same polygon), the polygon
tolerance and optional correction clicks (`positive` / `negative`: [[x, y], ...] image pixels that belong / do not
belong to the object; the service's positive_xy / negative_xy), and return a Segmentation. Bad points or clicks
raise AnnotationError with the service's error codes. Without clicks a request is exactly the old one.

- `InProcessSegmenter`: the shipped extreme-point model on ONNX Runtime in the studio's own process
  (`--segmenter inprocess`), for machines without a ROS graph.
- `ServiceSegmenter`: a ROS 2 client of `extreme_point_node`'s `SegmentObject` service (`--segmenter service`,
  the product's design and the default of `launch/labelling.launch.py`). Each frame's pixels are sent once;
  later requests on the same frame carry only the points and name the frame by a header the studio makes
  unique (stamp = the frame's receive time, frame_id = "instseg_studio/<index>"), which the node's frame cache
  resolves. A cache miss (the node restarted, or evicted the frame) is answered by sending the pixels again.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from instseg_core.annotate.encoding import order_extreme_points
from instseg_core.annotate.segmenter import (
    AnnotationError,
    Clicks,
    ErrorCode,
    ExtremePointSegmenter,
    validate_clicks,
    validate_points,
)
from instseg_studio.bag_frames import Frame


class ServiceUnavailableError(RuntimeError):
    """The annotation service did not appear in time (a problem of the set-up, not of the studio)."""


@dataclass(frozen=True)
class Segmentation:
    """One object: polygon (N, 2) int32 image x, y; mean probability inside the mask; IoU of the polygon with
    the mask; mask pixels; the points used (4, 2) int (left, top, right, bottom); milliseconds spent."""

    polygon: np.ndarray
    score: float
    polygon_iou: float
    area: int
    points: np.ndarray
    milliseconds: float


def prepare_points(points: Any, image_shape: tuple[int, int]) -> np.ndarray:
    """Four clicks in any order -> (4, 2) int64 left, top, right, bottom, validated for the image (AnnotationError
    otherwise)."""
    array = validate_points(points, image_shape)
    return np.rint(order_extreme_points(array)).astype(np.int64)


def prepare_clicks(positive: Clicks, negative: Clicks, image_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Correction clicks -> ((P, 2), (Q, 2)) float64 image x, y, validated for the image (AnnotationError otherwise);
    None gives (0, 2)."""
    return (validate_clicks(positive, image_shape, "positive"), validate_clicks(negative, image_shape, "negative"))


def warm_points(image_shape: tuple[int, int]) -> np.ndarray:
    """(4, 2) int64 extreme points of a small box at the image centre (left, top, right, bottom): what `warm`
    segments so that the frame's first real object does not pay for first-use costs."""
    height, width = image_shape
    cx, cy, r = width // 2, height // 2, max(4, min(width, height) // 8)
    return np.array([[cx - r, cy], [cx, cy - r], [cx + r, cy], [cx, cy + r]], np.int64)


class StudioSegmenter(Protocol):
    name: str
    stats: Counter

    def segment(self, frame: Frame, points: Any, tolerance: float, positive: Clicks = None,
                negative: Clicks = None) -> Segmentation: ...

    def warm(self, frame: Frame) -> None: ...

    def close(self) -> None: ...


class InProcessSegmenter:
    """The annotation model in this process (see the module docstring)."""

    name = "inprocess"

    def __init__(self, segmenter: ExtremePointSegmenter) -> None:
        self.segmenter = segmenter
        self.stats: Counter = Counter()

    def segment(self, frame: Frame, points: Any, tolerance: float, positive: Clicks = None,
                negative: Clicks = None) -> Segmentation:
        start = time.perf_counter()
        ordered = prepare_points(points, frame.rgb.shape[:2])
        plus, minus = prepare_clicks(positive, negative, frame.rgb.shape[:2])
        if len(plus) or len(minus):
            result = self.segmenter.segment(frame.rgb, ordered.astype(np.float64), polygon_tolerance=tolerance,
                                            positive=plus, negative=minus)
            self.stats["with_clicks"] += 1
        else:
            result = self.segmenter.segment(frame.rgb, ordered.astype(np.float64), polygon_tolerance=tolerance)
        self.stats["requests"] += 1
        return Segmentation(result.polygon.astype(np.int32), result.score, result.polygon_iou, result.area, ordered,
                            (time.perf_counter() - start) * 1e3)

    def warm(self, frame: Frame) -> None:
        """Segment a small box at the centre of `frame` and drop the result (the frame is being shown: the network's
        threads and buffers are ready for its first object)."""
        self.segmenter.segment(frame.rgb, warm_points(frame.rgb.shape[:2]).astype(np.float64))
        self.stats["warm"] += 1

    def close(self) -> None:
        pass


class ServiceSegmenter:
    """A client of extreme_point_node's SegmentObject service (see the module docstring). `service` is the
    service's name (default /extreme_point_node/segment); `timeout` seconds per request."""

    name = "service"

    def __init__(self, service: str = "/extreme_point_node/segment", timeout: float = 10.0,
                 wait_for_service: float = 30.0, frames_sent: int = 4) -> None:
        import rclpy
        from instseg_interfaces.srv import SegmentObject
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor

        self._srv_type = SegmentObject
        self.timeout = timeout
        self._context = Context()
        rclpy.init(context=self._context)
        self._node = rclpy.create_node("instseg_studio", context=self._context)
        self._client: Any = self._node.create_client(SegmentObject, service)
        self._executor = SingleThreadedExecutor(context=self._context)
        self._executor.add_node(self._node)
        self._thread = threading.Thread(target=self._spin, name="studio-ros", daemon=True)
        self._thread.start()
        self._sent: OrderedDict[int, None] = OrderedDict()
        self.stats: Counter = Counter()  # requests; with_pixels: those that carried the frame's pixels
        self._frames_sent = frames_sent
        self._lock = threading.Lock()
        if not self._client.wait_for_service(timeout_sec=wait_for_service):
            self.close()
            raise ServiceUnavailableError(f"the annotation service {service} did not appear within "
                                          f"{wait_for_service:g} s; start extreme_point_node "
                                          "(launch/labelling.launch.py does) or use --segmenter inprocess")

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        try:
            while self._context.ok():
                self._executor.spin_once(timeout_sec=0.1)
        except (ExternalShutdownException, RuntimeError):
            pass

    def _request(self, frame: Frame, points: np.ndarray, tolerance: float, with_pixels: bool,
                 clicks: tuple[np.ndarray, np.ndarray]) -> Any:
        from instseg_ros.image_codec import numpy_to_image

        request = self._srv_type.Request()
        if with_pixels:
            request.image = numpy_to_image(frame.rgb, "rgb8")
        request.image.header.stamp.sec = frame.timestamp_ns // 10**9
        request.image.header.stamp.nanosec = frame.timestamp_ns % 10**9
        request.image.header.frame_id = f"instseg_studio/{frame.index}"
        request.extreme_points = [int(v) for v in points.reshape(-1)]
        request.polygon_tolerance = float(tolerance)
        request.crop_mask = True
        if len(clicks[0]) or len(clicks[1]):  # set only when used: a node built before these fields still answers
            request.positive_xy = [float(v) for v in clicks[0].reshape(-1)]
            request.negative_xy = [float(v) for v in clicks[1].reshape(-1)]
            self.stats["with_clicks"] += 1
        self.stats["requests"] += 1
        self.stats["with_pixels"] += int(with_pixels)
        done = threading.Event()
        future = self._client.call_async(request)
        future.add_done_callback(lambda _: done.set())
        if not done.wait(self.timeout):
            self._client.remove_pending_request(future)
            raise AnnotationError(ErrorCode.INTERNAL_ERROR, f"the annotation service did not answer in "
                                                            f"{self.timeout:g} s")
        return future.result()

    def segment(self, frame: Frame, points: Any, tolerance: float, positive: Clicks = None,
                negative: Clicks = None) -> Segmentation:
        start = time.perf_counter()
        ordered = prepare_points(points, frame.rgb.shape[:2])
        clicks = prepare_clicks(positive, negative, frame.rgb.shape[:2])
        with self._lock:
            cached = frame.index in self._sent
        response = self._request(frame, ordered, tolerance, not cached, clicks)
        if cached and not response.success and response.error_code == ErrorCode.BAD_IMAGE:
            response = self._request(frame, ordered, tolerance, True, clicks)  # the node forgot the frame
        if not response.success:
            raise AnnotationError(ErrorCode(response.error_code), response.message)
        with self._lock:
            self._sent[frame.index] = None
            self._sent.move_to_end(frame.index)
            while len(self._sent) > self._frames_sent:
                self._sent.popitem(last=False)
        polygon = np.asarray(response.polygon, np.int32).reshape(-1, 2)
        area = int(np.count_nonzero(np.asarray(response.mask.data)))
        return Segmentation(polygon, float(response.score), float(response.polygon_iou), area, ordered,
                            (time.perf_counter() - start) * 1e3)

    def warm(self, frame: Frame) -> None:
        """Send `frame`'s pixels to the node now (one request on a small central box, its answer dropped) unless they
        were sent already, so that the first object clicked on it carries only points."""
        with self._lock:
            if frame.index in self._sent:
                return
        response = self._request(frame, warm_points(frame.rgb.shape[:2]), 1.0, True, (np.zeros((0, 2)),) * 2)
        self.stats["warm"] += 1
        if response.success:
            with self._lock:
                self._sent[frame.index] = None
                while len(self._sent) > self._frames_sent:
                    self._sent.popitem(last=False)

    def close(self) -> None:
        import rclpy

        if self._context.ok():
            rclpy.shutdown(context=self._context)
        self._thread.join(timeout=2)
        self._executor.shutdown()
        self._node.destroy_node()
