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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np

from instseg_core.annotate.encoding import extreme_points_from_mask, order_extreme_points
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


MIN_POINT_DISTANCE = 2.0
"""Four extreme points are distinct when each is at least this many image pixels from the others (the page refuses a
click closer than this to an earlier one, whatever the zoom): an object is never made from fewer than four points."""


def close_points(points: Any) -> tuple[int, int] | None:
    """The first pair (i, j), i < j, of `points` (4, 2) closer to each other than MIN_POINT_DISTANCE, or None when the
    four are distinct."""
    array = np.asarray(points, np.float64).reshape(-1, 2)
    for i in range(len(array)):
        for j in range(i + 1, len(array)):
            if np.hypot(*(array[i] - array[j])) < MIN_POINT_DISTANCE:
                return i, j
    return None


def prepare_points(points: Any, image_shape: tuple[int, int]) -> np.ndarray:
    """Four clicks in any order -> (4, 2) int64 left, top, right, bottom rounded to whole pixels, validated for the
    image (instseg_core's validate_points) and distinct (`close_points`); AnnotationError otherwise."""
    array = validate_points(points, image_shape)
    ordered = np.rint(order_extreme_points(array)).astype(np.int64)
    pair = close_points(ordered)
    if pair is not None:
        a, b = ordered[list(pair)]
        raise AnnotationError(ErrorCode.BAD_POINTS, (
            f"the points ({a[0]}, {a[1]}) and ({b[0]}, {b[1]}) are {np.hypot(*(a - b)):.3g} px apart: an object "
            f"needs four distinct extreme points, each at least {MIN_POINT_DISTANCE:g} px from the others"))
    return ordered


def polygon_extreme_points(polygon: Any, image_shape: tuple[int, int]) -> np.ndarray | None:
    """(4, 2) int64 left, top, right, bottom points of the mask of `polygon` ([[x, y], ...] image pixels) as
    pycocotools fills it (label_export.polygon_rle: the mask the object has in the COCO export), by
    extreme_points_from_mask; None when that mask is empty or two of the points are not distinct (`close_points`)."""
    from pycocotools import mask as mask_utils

    from instseg_core.data.label_export import polygon_rle

    outline = np.asarray(polygon, np.float64).reshape(-1, 2)
    height, width = image_shape
    if len(outline) < 3:
        return None
    # the polygon's box only (moved by whole pixels, which fills the same pixels): not a whole frame per proposal
    x0, y0 = (max(0, int(np.floor(v))) for v in outline.min(axis=0))
    x1, y1 = min(width - 1, int(np.ceil(outline[:, 0].max()))), min(height - 1, int(np.ceil(outline[:, 1].max())))
    if x1 < x0 or y1 < y0:
        return None
    mask = mask_utils.decode(polygon_rle(outline - [x0, y0], (y1 - y0 + 1, x1 - x0 + 1)))
    if not mask.any():
        return None
    points = extreme_points_from_mask(mask) + np.array([x0, y0], np.int64)
    return None if close_points(points) is not None else points


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


def _agreement(polygon: np.ndarray, window: np.ndarray, origin: tuple[int, int], step: float) -> float:
    """IoU of a polygon (N, 2) in frame pixels with a component mask `window` (h, w) bool of a label map whose
    pixel (0, 0) of the window is label pixel `origin` and one label pixel spans `step` frame pixels."""
    import cv2

    x0, y0 = origin
    left, top = int(np.floor(x0 * step)), int(np.floor(y0 * step))
    size = (max(1, round(window.shape[1] * step)), max(1, round(window.shape[0] * step)))
    component = cv2.resize(window.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
    polygon = np.asarray(polygon, np.int32).reshape(-1, 2)
    right = max(left + size[0], int(polygon[:, 0].max()) + 1)
    bottom = max(top + size[1], int(polygon[:, 1].max()) + 1)
    lo_x, lo_y = min(left, int(polygon[:, 0].min())), min(top, int(polygon[:, 1].min()))
    canvas = np.zeros((bottom - lo_y, right - lo_x), np.uint8)
    cv2.fillPoly(canvas, [(polygon - [lo_x, lo_y]).reshape(-1, 1, 2)], 1)
    placed = np.zeros(canvas.shape, bool)
    placed[top - lo_y:top - lo_y + size[1], left - lo_x:left - lo_x + size[0]] = component
    union = np.count_nonzero(placed | canvas.astype(bool))
    return float(np.count_nonzero(placed & canvas.astype(bool)) / union) if union else 0.0


SEMANTIC_WEIGHTS = "espnetv2_s2_cityscapes.fp16.pt"
MAX_CANDIDATES = 16  # candidates segmented per frame, best semantic support first
MAX_ELONGATION = 6.0  # a candidate whose box is more than 6 times longer one way than the other is no object
SEMANTIC_INPUT_WIDTH = 1024  # the width the zoo's network was trained at (1024x512 Cityscapes frames)


class _SemanticLabels:
    """ESPNetv2 (instseg_core.networks.espnetv2, Cityscapes weights) as a graph: (1, 3, H, W) RGB in [0, 1] ->
    "label" (1, H/2, W/2) int64 argmax over the 19 train ids and "confidence" (1, H/2, W/2) float32 its softmax
    probability, both at the network's own 1/2 resolution (no upsampling of 20 logit maps)."""

    def __new__(cls, weights: Path) -> Any:
        import torch

        from instseg_core.networks.espnetv2 import load_espnetv2_cityscapes, normalise_unit_rgb

        class Labels(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.network = load_espnetv2_cityscapes(weights)

            def forward(self, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                _, _, logits = self.network.decode_features(normalise_unit_rgb(rgb))
                confidence, label = torch.softmax(logits[:, :19], 1).max(1)
                return label, confidence

        return Labels().eval()


def _cached_graph(source: Path, stem: str, cache_dir: str | Path | None, build: Callable[[], Any],
                  outputs: list[str]) -> Path:
    """The ONNX export of the module `build()` makes from `source`, kept in `cache_dir` (default
    $XDG_CACHE_HOME/instseg or ~/.cache/instseg) as <stem>_<sha256 of source>.onnx: exported once (written
    atomically), reused after. Input "image" (1, 3, H, W) with dynamic height and width; `outputs` named in order,
    the image-sized ones ("raw") and the label-sized ones ("label", "confidence") dynamic too."""
    import hashlib
    import os
    import warnings

    from instseg_core.base.atomic_files import atomic_path

    digest = hashlib.sha256(Path(source).read_bytes()).hexdigest()[:16]
    folder = Path(cache_dir or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "instseg")
    path = folder / f"{stem}_{digest}.onnx"
    if path.is_file():
        return path
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    axes = {"image": {2: "height", 3: "width"}, "raw": {2: "height", 3: "width"}, "label": {1: "h", 2: "w"},
            "confidence": {1: "h", 2: "w"}}
    with atomic_path(path) as staging, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated (as in training.common.export_graph)
        torch.onnx.export(build().eval(), (torch.zeros(1, 3, 256, 512),), str(staging), input_names=["image"],
                          output_names=outputs, opset_version=17, dynamo=False,
                          dynamic_axes={name: axes[name] for name in ["image", *outputs]})
    return path


def semantic_graph(weights: str | Path | None = None, cache_dir: str | Path | None = None) -> Path:
    """The ONNX graph of `_SemanticLabels` for `weights` (default: the shipped ESPNetv2 Cityscapes weights),
    exported once (about half a minute) into `cache_dir` (default $XDG_CACHE_HOME/instseg or ~/.cache/instseg) under
    a name holding the weights' sha256, and reused after; height and width dynamic (multiples of 16)."""
    from instseg_core.base.model_files import find_model

    source = Path(find_model(str(weights or SEMANTIC_WEIGHTS)))
    return _cached_graph(source, "espnetv2_labels", cache_dir, lambda: _SemanticLabels(source),
                         ["label", "confidence"])


def _plausible(window: np.ndarray, scale: float) -> bool:
    """Whether a candidate mask (h, w) bool whose pixels span `scale` frame pixels could be an object: at least 4
    frame pixels each way, and its box at most MAX_ELONGATION times longer one way than the other (a sliver along
    the frame's edge is not)."""
    height, width = window.shape
    return min(height, width) * scale >= 4 and max(height, width) <= MAX_ELONGATION * min(height, width)


class SemanticProposals:
    """Proposals from a real-data semantic network refined by the extreme-point network.

    The ESPNetv2 Cityscapes network labels a SEMANTIC_INPUT_WIDTH-wide copy of the frame (argmax at 1/2 of it).
    Candidates: with `instances` (a streaming Segmenter, e.g. the shipped Spatial Embeddings model), its instances
    whose pixels the semantic network labels as a person / rider / vehicle for at least SUPPORT of them (instances
    on road or barriers are dropped; the class is the semantic majority); then the connected components of the
    semantic person / vehicle regions that those instances do not already cover (more than half of the component),
    so touching cars the semantic map merges come apart where the instance model separates them. Each candidate of
    at least `min_area` frame pixels gives its 4 extreme points, which the annotation model segments (all of a
    frame's candidates in one batch) into the proposal's polygon; the proposal's extreme points are those of that
    polygon's mask (`polygon_extreme_points`), and a proposal whose mask has no four distinct ones is dropped
    (counted in stats["without_four_points"]). score = the candidate's semantic support (mean
    probability of its class over a component; the fraction of an instance's pixels labelled so) x the IoU of the
    annotation model's polygon with the candidate (where the two disagree, e.g. a "person" blob in foliage, the
    score drops). `annotation` None: the candidate's own outline is the polygon, score the semantic support."""

    name = "semantic"
    SUPPORT = 0.5
    max_candidates = MAX_CANDIDATES

    def __init__(self, annotation: ExtremePointSegmenter | None, weights: str | Path | None = None,
                 threads: int = 2, input_width: int = SEMANTIC_INPUT_WIDTH,
                 cache_dir: str | Path | None = None, instances: Any = None) -> None:
        from instseg_core.networks.espnetv2 import CITYSCAPES_TRAIN_IDS
        from instseg_core.runtime.backends import OnnxRuntimeBackend

        self.backend = OnnxRuntimeBackend(semantic_graph(weights, cache_dir), threads=threads)
        self.annotation, self.input_width, self.instances = annotation, input_width, instances
        self.train_ids = dict(CITYSCAPES_TRAIN_IDS)
        self.stats: Counter = Counter()

    def labels(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """(label (h, w) int64 train ids, confidence (h, w) float32, frame pixels per label pixel along one side)
        for an (H, W, 3) uint8 RGB frame."""
        import cv2

        height, width = rgb.shape[:2]
        scale = self.input_width / width
        size = (self.input_width, max(16, round(height * scale / 16) * 16))
        resized = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        batch = (resized.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]
        label, confidence = self.backend.session.run(None, {self.backend.input_name: batch})
        return label[0], confidence[0], width / label.shape[2]

    def analyse(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, Any]:
        """`labels(rgb)` and the instance model's result on `rgb` (None without one)."""
        label, confidence, step = self.labels(rgb)
        return label, confidence, step, None if self.instances is None else self.instances(rgb)

    def _instance_candidates(self, result: Any, shape: tuple[int, int], label: np.ndarray,
                             classes: tuple[str, ...], min_area: int) -> tuple[list[tuple], np.ndarray]:
        """Candidates (class, window (h, w) bool in frame pixels, (x0, y0), support) from the instance model's
        `result` on a frame of `shape` (H, W), and the label-grid mask of what they cover."""
        import cv2

        height, width = shape
        # the label of each frame pixel (nearest label pixel)
        grid = cv2.resize(label.astype(np.int32), (width, height), interpolation=cv2.INTER_NEAREST)
        wanted = {self.train_ids[c]: c for c in classes if c in self.train_ids}
        covered = np.zeros((height, width), bool)
        found = []
        for k, (x0, y0, x1, y1) in enumerate(result.instances.boxes):
            window = result.instances.id_image[y0:y1, x0:x1] == k + 1
            area = int(window.sum())
            if area < min_area:
                continue
            votes = np.bincount(grid[y0:y1, x0:x1][window].ravel(), minlength=19)
            ids = [i for i in wanted if i < len(votes)]
            support = float(sum(votes[i] for i in ids)) / area
            if support < self.SUPPORT or not ids:
                continue
            name = wanted[max(ids, key=lambda i: votes[i])]
            found.append((name, window, (int(x0), int(y0)), support))
            covered[y0:y1, x0:x1] |= window
        small = cv2.resize(covered.astype(np.uint8), (label.shape[1], label.shape[0]), interpolation=cv2.INTER_AREA)
        return found, small.astype(bool)

    def propose(self, rgb: np.ndarray, classes: tuple[str, ...], tolerance: float = 1.0,
                min_area: int = 64) -> list[dict]:
        """Proposals {"class", "polygon", "points", "score", "polygon_iou", "area"} in frame pixels, best first."""
        import cv2

        from instseg_core.postprocess.polygons import mask_to_polygon

        label, confidence, step, result = self.analyse(rgb)
        height, width = rgb.shape[:2]
        # (class, window, origin, support, step of the window's pixels)
        candidates: list[tuple[str, np.ndarray, tuple[int, int], float, float]] = []
        covered = np.zeros(label.shape, bool)
        if result is not None:
            instance_candidates, covered = self._instance_candidates(result, (height, width), label, classes,
                                                                     min_area)
            candidates += [(*c, 1.0) for c in instance_candidates]
        for name in classes:
            if name not in self.train_ids:
                continue
            region = (label == self.train_ids[name]).astype(np.uint8)
            count, components, stats, _ = cv2.connectedComponentsWithStats(region, connectivity=8)
            for k in range(1, count):
                if stats[k, cv2.CC_STAT_AREA] * step * step < min_area:
                    continue
                x0, y0, w, h = (int(v) for v in stats[k, :4])
                window = components[y0:y0 + h, x0:x0 + w] == k
                if covered[y0:y0 + h, x0:x0 + w][window].mean() > 0.5:
                    continue  # an instance above has it
                candidates.append((name, window, (x0, y0), float(confidence[y0:y0 + h, x0:x0 + w][window].mean()),
                                   step))
        # plausible shapes, the best-supported first (each costs an extreme-point network run; junk has low support)
        candidates = sorted((c for c in candidates if _plausible(c[1], c[4])), key=lambda c: -c[3])
        self.stats["candidates_dropped"] += max(0, len(candidates) - self.max_candidates)
        candidates = candidates[:self.max_candidates]
        points, kept = [], []
        for candidate in candidates:
            _, window, (x0, y0), _, scale = candidate
            # window pixel centres to frame pixels (a label map's rows may span a little less than its columns: the
            # network's input height is rounded to its multiple); the outermost points reach the outer edge
            axes = np.array([1.0, 1.0]) if scale == 1.0 else np.array([width / label.shape[1], height / label.shape[0]])
            frame_points = (extreme_points_from_mask(window) + np.array([x0, y0]) + 0.5) * axes - 0.5
            frame_points[:, 0] = np.clip(frame_points[:, 0], 0, width - 1)
            frame_points[:, 1] = np.clip(frame_points[:, 1], 0, height - 1)
            if np.ptp(frame_points[:, 0]) >= 2 and np.ptp(frame_points[:, 1]) >= 2:  # what the annotation model needs
                points.append(frame_points)
                kept.append(candidate)
        candidates = kept
        results: list[Any] = [None] * len(candidates)
        if self.annotation is not None and candidates:
            results = list(self.annotation.segment_batch(rgb, points, tolerance))
        found = []
        for (name, window, (x0, y0), support, scale), result in zip(candidates, results, strict=True):
            if result is not None and len(result.polygon) >= 3:
                agreement = _agreement(result.polygon, window, (x0, y0), scale)
                polygon, polygon_iou, score, area = result.polygon, result.polygon_iou, support * agreement, \
                    result.area
            else:
                outline, polygon_iou = mask_to_polygon(window, max(tolerance / scale, 0.5))
                if len(outline) < 3:
                    continue
                polygon = np.rint((outline + [x0, y0] + 0.5) * scale - 0.5).astype(np.int32)
                score, area = support, int(window.sum() * scale * scale)
            # the proposal's points: those of its final mask (its polygon), not the candidate's points on the low
            # resolution label map (two of which could fall on one frame pixel); none distinct: no proposal
            extremes = polygon_extreme_points(polygon, (height, width))
            if extremes is None:
                self.stats["without_four_points"] += 1
                continue
            found.append({"class": name, "polygon": np.asarray(polygon).tolist(), "points": extremes.tolist(),
                          "score": float(score), "polygon_iou": float(polygon_iou), "area": int(area)})
        self.stats["frames"] += 1
        return sorted(found, key=lambda p: -p["score"])


def combined_graph(checkpoint: str | Path | None = None, cache_dir: str | Path | None = None) -> Path:
    """One ONNX graph for the Spatial Embeddings model on ESPNetv2 (`checkpoint`, default the shipped
    spatial_embeddings.pt) that also outputs its semantic branch's labels: "raw" (the model's own output, decoded by
    its adapter) plus "label" and "confidence" as `_SemanticLabels` makes them, from the same ESPNetv2 pass (captured
    by a forward hook on the branch's last decoder stage). Exported once into `cache_dir` (see semantic_graph)."""
    from instseg_core.base.model_files import find_model

    source = Path(find_model(str(checkpoint or "spatial_embeddings.pt")))
    return _cached_graph(source, "spatial_embeddings_labels", cache_dir, lambda: _with_labels(source),
                         ["raw", "label", "confidence"])


def _with_labels(source: Path) -> Any:
    """The torch module of combined_graph: (raw, label, confidence) of the Spatial Embeddings checkpoint `source`."""
    import torch

    from instseg_core.runtime.adapters import model_adapter

    loaded, _ = model_adapter("spatial_embeddings").load_torch(source)
    model = cast(torch.nn.Module, loaded)
    semantic = getattr(getattr(model, "network", None), "semantic", None)
    if semantic is None:
        raise ValueError(f"{source}: not a Spatial Embeddings model on ESPNetv2 (no semantic branch)")
    last_stage = semantic.bu_dec_l4  # its output: the branch's logits at 1/2

    class WithLabels(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.captured: list[torch.Tensor] = []
            last_stage.register_forward_hook(lambda _m, _i, out: self.captured.append(out))

        def forward(self, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            self.captured.clear()
            raw = self.model(rgb)
            confidence, label = torch.softmax(self.captured[-1][:, :19], 1).max(1)
            return raw, label, confidence

    return WithLabels()


def prepare_combined_graph(cache_dir: str | Path | None = None) -> threading.Thread:
    """Export `combined_graph` in a background thread (nothing to do when it is cached); a failure is logged and
    comes back, with its reason, when the proposals are first asked for."""
    import logging

    def export() -> None:
        try:
            combined_graph(None, cache_dir)
        except Exception as exc:  # reported again, to the operator, by the first proposal request
            logging.getLogger("instseg_studio").warning("preparing the proposal graph failed: %s", exc)

    thread = threading.Thread(target=export, name="proposal-graph", daemon=True)
    thread.start()
    return thread


class _LabelsAside:
    """An ONNX Runtime backend over `combined_graph` for the runtime's Segmenter: `run` returns "raw" (what the
    Spatial Embeddings adapter decodes) and keeps the semantic label and confidence maps of that run aside."""

    def __init__(self, path: Path, threads: int) -> None:
        from instseg_core.runtime.backends import OnnxRuntimeBackend

        self.backend = OnnxRuntimeBackend(path, threads=threads)
        self.input_name, self.input_shape = self.backend.input_name, self.backend.input_shape
        self.name, self.device = "onnxruntime", "cpu"
        self.last: tuple[np.ndarray, np.ndarray] | None = None

    def run(self, image: np.ndarray) -> np.ndarray:
        raw, label, confidence = self.backend.session.run(None, {self.input_name: np.ascontiguousarray(image)})
        self.last = (label, confidence)
        return raw

    def describe(self) -> str:
        return self.backend.describe()


class CombinedProposals(SemanticProposals):
    """SemanticProposals with the shipped Spatial Embeddings instances, both from ONE network pass (combined_graph:
    the instance model's ESPNetv2 branch is the semantic network): what `instseg-studio --proposals semantic` runs.
    The network sees the frame scaled to at most `max_input_pixels` (default 1024x512, the size both networks were
    trained at); the label map is at 1/2 of that."""

    def __init__(self, annotation: ExtremePointSegmenter | None, threads: int = 2,
                 cache_dir: str | Path | None = None, score_threshold: float = 0.3,
                 max_input_pixels: int = 1024 * 512) -> None:
        from instseg_core.base.model_files import find_model
        from instseg_core.networks.espnetv2 import CITYSCAPES_TRAIN_IDS
        from instseg_core.runtime.adapters import model_adapter
        from instseg_core.runtime.segmenter import Segmenter

        adapter_type = model_adapter("spatial_embeddings")
        config = adapter_type.read_manifest(find_model("spatial_embeddings.onnx"))
        self.aside = _LabelsAside(combined_graph(None, cache_dir), threads)
        self.instances = Segmenter(adapter_type(config), self.aside, score_threshold=score_threshold,
                                   max_input_pixels=max_input_pixels)
        self.annotation = annotation
        self.train_ids = dict(CITYSCAPES_TRAIN_IDS)
        self.stats = Counter()
        self._lock = threading.Lock()

    def analyse(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, Any]:
        """One pass of the combined graph: (label, confidence, step) as `labels` gives them, and the instances.
        Thread-safe: the labels read are those of this call's pass (two tabs may ask at once)."""
        with self._lock:
            self.aside.last = None
            result = self.instances(rgb)
            if self.aside.last is None:
                raise RuntimeError("the combined graph gave no labels")
            label, confidence = self.aside.last
        return label[0], confidence[0], rgb.shape[1] / label.shape[2], result

    def labels(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        return self.analyse(rgb)[:3]
