"""`segmentation_node`: camera images in, instance masks out, in real time.

Topics (relative names, so they remap):
  in   `image` (sensor_msgs/Image) or `image/compressed` (sensor_msgs/CompressedImage; parameter input_type)
  out  `~/instances`    instseg_interfaces/InstanceArray (header = the input header)
       `~/instance_ids` sensor_msgs/Image mono16, 0 = background, value = Instance.id
       `~/overlay`      sensor_msgs/Image bgr8, coloured instances over the frame; computed only while
                        someone subscribes
       `/diagnostics`   diagnostic_msgs/DiagnosticArray every diagnostics_period seconds: fps, latency
                        p50/p95 (reception to publication), median ms per stage (wait_and_decode,
                        preprocess, inference, postprocess, publish), frames received/processed/dropped/
                        bad/failed, backend, device
Behaviour: the subscription callback only stores the newest frame; a worker thread decodes, segments and
publishes, so the executor never blocks and a slow model drops frames (counted) instead of queueing them
(instseg_core.runtime.streaming, the ROS-free core this node is glue around).
Bad frames (unsupported encoding, truncated data, 0x0, 16-bit) are counted, logged (rate-limited) and
skipped. A publisher with incompatible QoS is reported as a warning. Every parameter is validated at start
(a bad one stops the node with a message and exit status 2); score_threshold and overlay_alpha can be
changed at run time, the others are read-only. SIGINT/SIGTERM shut down cleanly.

Parameters: model (spatial_embeddings | ... registry), model_file (a path, or a file name looked up in
$INSTSEG_MODEL_DIR, the installed share directory and the source tree; empty = the model's shipped file),
backend (torch |
onnxruntime | tensorrt), device (cpu | cuda | tensorrt (onnxruntime's TensorRT EP)), input_width /
input_height (network input; 0 = the frame's size rounded to the model's multiple, scaled down to at most
max_input_pixels, 2048 x 1024 by default), int8 (the static int8 QDQ graph), threads,
score_threshold, classes (names to publish; empty = all), input_type (raw | compressed), input_reliability
(best_effort, the default, accepts every camera; reliable is needed for frames over ~8 MB, which best-effort
DDS drops; best_available is decided once, when the node starts, from the cameras up then), input_depth,
output_reliability (reliable, the default, serves reliable and best-effort subscribers alike | best_effort),
output_depth, overlay_alpha, polygon_tolerance (px; < 0 = no polygons),
engine_cache_dir, fp16, diagnostics_period, health_window (seconds: /diagnostics is WARN while bad or failed
frames were counted that recently; the totals stay in its values), input_timeout (seconds a matched camera may
send nothing before a warning, counted as 'silent'), max_pixels.
"""

from __future__ import annotations

import gc
import json
import sys
import time
from collections.abc import Callable

import cv2
import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from instseg_interfaces.msg import Instance, InstanceArray
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.event_handler import PublisherEventCallbacks, SubscriptionEventCallbacks
from rclpy.exceptions import ParameterException, ParameterUninitializedException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image, RegionOfInterest

from instseg_core.base.command_exit import EXIT_DONE, debug_requested, failure_status
from instseg_core.postprocess.overlay import render_overlay
from instseg_core.runtime import BACKENDS, MODELS, BackendUnavailableError, ModelFileError, create_segmenter
from instseg_core.runtime.segmenter import SegmentationResult, Segmenter
from instseg_core.runtime.streaming import COUNTERS, TRANSPORT_COUNTERS, BadFrameError, FrameStats, LatestFrameWorker
from instseg_ros.allocator import keep_large_buffers
from instseg_ros.image_codec import ImageCodecError, compressed_to_numpy, image_to_numpy, numpy_to_image, to_rgb8
from instseg_ros.spinning import end_node_process, failures_status, init_node_process, spin_until_shutdown

RUNTIME_PARAMETERS = ("score_threshold", "overlay_alpha")
RELIABILITY = {"best_available": ReliabilityPolicy.BEST_AVAILABLE, "reliable": ReliabilityPolicy.RELIABLE,
               "best_effort": ReliabilityPolicy.BEST_EFFORT}


class ParameterError(ValueError):
    """A parameter value the node cannot start with."""


class SegmentationMixin:
    """The node's behaviour, shared by the plain and the lifecycle node: `_init_state` (from the node's
    __init__) creates every attribute, `_load` the segmenter, `_start_io` the subscription, publishers,
    diagnostics timer and worker; `_stop_io` and `_unload` undo them."""

    def _init_state(self) -> None:
        self.segmenter: Segmenter | None = None
        self.stats = FrameStats()  # kept across deactivate/activate: the node's totals
        self.worker: LatestFrameWorker | None = None
        self.subscription = None
        self.compressed = False
        self.model_name = ""
        self.overlay_alpha = 0.5
        self.polygon_tolerance = 1.0
        self.health_window_s = 10.0
        self.max_pixels = 4096 * 4096
        self.input_timeout_s = 10.0
        self.last_frame_at = time.monotonic()  # or when a camera appeared, whichever is later
        self.cameras = 0

    def _read_parameters(self) -> dict:
        p = {name: self._value(name) for name in self._parameter_names}
        self._validate(p)
        return p

    def _load(self, p: dict) -> None:
        input_size = (int(p["input_width"]), int(p["input_height"])) if p["input_width"] else None
        start = time.perf_counter()
        segmenter = create_segmenter(
            p["model"], model_file=p["model_file"] or None, backend=p["backend"], device=p["device"],
            input_size=input_size, threads=int(p["threads"]), score_threshold=float(p["score_threshold"]),
            engine_cache_dir=p["engine_cache_dir"] or None, fp16=bool(p["fp16"]), classes=p["classes"],
            int8=bool(p["int8"]), max_input_pixels=int(p["max_input_pixels"]) or None)
        self.overlay_alpha = float(p["overlay_alpha"])
        self.polygon_tolerance = float(p["polygon_tolerance"])
        self.model_name = p["model"]
        warmup_size = input_size or (512, 256)
        segmenter(np.zeros((warmup_size[1], warmup_size[0], 3), np.uint8))  # first runs allocate and plan
        self.segmenter = segmenter
        self.get_logger().info(
            f"{segmenter.describe()} loaded from {segmenter.model_file} and warmed up in "
            f"{(time.perf_counter() - start) * 1e3:.0f} ms; network input "
            f"{'frame size' if input_size is None else f'{input_size[0]}x{input_size[1]}'}")

    def _unload(self) -> None:
        self.segmenter = None  # the backend (and its GPU memory) goes with it
        gc.collect()

    def _start_io(self, p: dict) -> None:
        self.health_window_s = float(p["health_window"])
        self.max_pixels = int(p["max_pixels"])
        depth = int(p["input_depth"])
        input_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                               reliability=RELIABILITY[p["input_reliability"]])
        events = SubscriptionEventCallbacks(incompatible_qos=self._on_incompatible_qos,
                                            message_lost=self._on_message_lost)
        self.compressed = p["input_type"] == "compressed"
        topic, msg_type = ("image/compressed", CompressedImage) if self.compressed else ("image", Image)
        output_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=int(p["output_depth"]),
                                reliability=RELIABILITY[p["output_reliability"]])
        self.instances_pub = self.create_publisher(InstanceArray, "~/instances", output_qos,
                                                   event_callbacks=self._publisher_events("~/instances"))
        self.ids_pub = self.create_publisher(Image, "~/instance_ids", output_qos,
                                             event_callbacks=self._publisher_events("~/instance_ids"))
        self.overlay_pub = self.create_publisher(Image, "~/overlay", output_qos,
                                                 event_callbacks=self._publisher_events("~/overlay"))
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.diagnostics_timer = self.create_timer(float(p["diagnostics_period"]), self._publish_diagnostics)
        self.input_timeout_s = float(p["input_timeout"])
        self.last_frame_at, self.cameras = time.monotonic(), 0
        self.watchdog_timer = self.create_timer(0.5, self._check_input) if self.input_timeout_s > 0 else None
        self.worker = LatestFrameWorker(self._process, self.stats, on_bad=self._on_bad_frame,
                                        on_error=self._on_failure, shutting_down=lambda: not self.context.ok(),
                                        name="segmentation-worker")
        self.worker.start()
        self.subscription = self.create_subscription(msg_type, topic, self._on_frame, input_qos,
                                                     event_callbacks=events)
        self.get_logger().info(f"segmenting {self.resolve_topic_name(topic)} ({p['input_reliability']}, depth "
                               f"{depth}); outputs {p['output_reliability']}, depth {p['output_depth']}")

    def _stop_io(self) -> None:
        if self.subscription is None:
            return
        self.destroy_subscription(self.subscription)
        self.subscription = None
        self.stop()
        self.destroy_timer(self.diagnostics_timer)
        if self.watchdog_timer is not None:
            self.destroy_timer(self.watchdog_timer)
        for publisher in (self.instances_pub, self.ids_pub, self.overlay_pub, self.diagnostics_pub):
            self.destroy_publisher(publisher)


    # --- parameters ------------------------------------------------------------------------------

    def _declare_parameters(self) -> None:
        specs = {
            "model": ("spatial_embeddings", f"one of {sorted(MODELS)}"),
            "model_file": ("", "model file (.onnx with its .json manifest, or .pt for torch): a path or a file "
                               "name in the model folders; empty = the model's shipped file"),
            "backend": ("onnxruntime", f"one of {BACKENDS}"),
            "device": ("cpu", "cpu | cuda | tensorrt (onnxruntime's TensorRT execution provider)"),
            "input_width": (0, "network input width (a multiple of the model's); 0 = frame size, capped"),
            "input_height": (0, "network input height (a multiple of the model's); 0 = frame size, capped"),
            "max_input_pixels": (2048 * 1024, "with input_width/height 0: larger frames are scaled down (aspect "
                                              "kept) to at most this many network input pixels; 0 = no cap"),
            "threads": (2, "CPU threads for inference"),
            "score_threshold": (0.5, "instances below this score are not published (changeable at run time)"),
            "classes": (Parameter.Type.STRING_ARRAY, "class names to publish; empty = all"),
            "input_type": ("raw", "raw (sensor_msgs/Image on 'image') | compressed ('image/compressed')"),
            "input_reliability": ("best_effort", "camera subscription: best_effort (accepts every camera) | reliable "
                                                 "(needed for frames over ~8 MB) | best_available (decided "
                                                 "when the node starts, from the cameras up then)"),
            "input_depth": (1, "camera subscription history depth"),
            "output_reliability": ("reliable", "outputs: reliable (serves reliable and best-effort subscribers) | "
                                               "best_effort"),
            "output_depth": (1, "output history depth"),
            "overlay_alpha": (0.5, "overlay opacity in [0, 1] (changeable at run time)"),
            "polygon_tolerance": (1.0, "polygon simplification in px; < 0 publishes no polygons"),
            "engine_cache_dir": ("", "TensorRT engine cache; empty = ~/.cache/instseg/engines"),
            "fp16": (False, "half precision: TensorRT engines, or torch on cuda"),
            "int8": (False, "the model's static int8 (QDQ) ONNX graph, derived at set-up (onnxruntime, tensorrt)"),
            "diagnostics_period": (1.0, "seconds between /diagnostics messages"),
            "health_window": (10.0, "seconds of bad or failed frames that make /diagnostics WARN"),
            "input_timeout": (10.0, "seconds without a frame while a camera is matched before a warning (counted as "
                                    "'silent': how big best-effort frames dropped by DDS show); 0 = no check"),
            "max_pixels": (4096 * 4096, "larger frames are refused before decoding (compressed ones by their "
                                        "header), counted as bad"),
        }
        self._parameter_names = list(specs)
        for name, (default, description) in specs.items():
            read_only = name not in RUNTIME_PARAMETERS
            descriptor = ParameterDescriptor(description=description, read_only=read_only)
            if default is Parameter.Type.STRING_ARRAY:
                self.declare_parameter(name, Parameter.Type.STRING_ARRAY, descriptor)
            else:
                self.declare_parameter(name, default, descriptor)

    def _value(self, name: str) -> object:
        try:
            return self.get_parameter(name).value
        except ParameterUninitializedException:  # a string array left unset
            return []

    def _validate(self, p: dict) -> None:
        p["classes"] = list(p["classes"] or [])
        problems = []
        if p["model"] not in MODELS:
            problems.append(f"model {p['model']!r} is not one of {sorted(MODELS)}")
        if p["backend"] not in BACKENDS:
            problems.append(f"backend {p['backend']!r} is not one of {BACKENDS}")
        if p["device"] not in ("cpu", "cuda", "tensorrt") and not str(p["device"]).startswith("cuda:"):
            problems.append(f"device {p['device']!r} is not cpu, cuda[:N] or tensorrt")
        if (p["input_width"] == 0) != (p["input_height"] == 0) or p["input_width"] < 0 or p["input_height"] < 0:
            problems.append("input_width and input_height must both be 0 or both positive")
        if p["input_type"] not in ("raw", "compressed"):
            problems.append(f"input_type {p['input_type']!r} is not raw or compressed")
        if p["input_reliability"] not in RELIABILITY:
            problems.append(f"input_reliability {p['input_reliability']!r} is not one of {sorted(RELIABILITY)}")
        if p["output_reliability"] not in ("best_effort", "reliable"):
            problems.append(f"output_reliability {p['output_reliability']!r} is not reliable or best_effort")
        if (min(p["input_depth"], p["output_depth"], p["threads"], p["max_pixels"]) < 1
                or p["diagnostics_period"] <= 0 or p["health_window"] <= 0 or p["input_timeout"] < 0):
            problems.append("input_depth, output_depth, threads, max_pixels, diagnostics_period and health_window "
                            "must be positive, input_timeout not negative")
        for name in ("score_threshold", "overlay_alpha"):
            if not 0.0 <= p[name] <= 1.0:
                problems.append(f"{name} must be in [0, 1], got {p[name]}")
        if problems:
            raise ParameterError("; ".join(problems))

    def _on_set_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        for parameter in parameters:
            if parameter.name not in RUNTIME_PARAMETERS:
                return SetParametersResult(successful=False, reason=f"{parameter.name} is read-only")
            if not isinstance(parameter.value, float | int) or not 0.0 <= parameter.value <= 1.0:
                return SetParametersResult(successful=False, reason=f"{parameter.name} must be in [0, 1]")
        for parameter in parameters:
            if parameter.name == "score_threshold":
                if self.segmenter is not None:
                    self.segmenter.score_threshold = float(parameter.value)
            else:
                self.overlay_alpha = float(parameter.value)
            self.get_logger().info(f"{parameter.name} set to {parameter.value}")
        return SetParametersResult(successful=True)

    # --- frames ----------------------------------------------------------------------------------

    def _on_incompatible_qos(self, event: object) -> None:
        self.get_logger().warning(
            f"a publisher on {self.subscription.topic_name} has QoS incompatible with this subscription "
            f"(policy {getattr(event, 'last_policy_kind', '?')}); no frames will arrive from it. Set "
            "'input_reliability' to best_effort (it accepts every camera).",
            throttle_duration_sec=5.0)

    def _on_message_lost(self, event: object) -> None:
        """The middleware reports frames that were sent but never arrived (e.g. big best-effort frames)."""
        lost = int(getattr(event, "total_count_change", 1) or 1)
        self.stats.count("lost", lost)
        self.get_logger().warning(
            f"{lost} frame(s) on {self.subscription.topic_name} were lost in transport ({self.stats.counts['lost']} "
            "so far); DDS drops big frames (over ~8 MB) sent or received best effort: make the camera reliable "
            "and set input_reliability to reliable", throttle_duration_sec=5.0)

    def _publisher_events(self, topic: str) -> PublisherEventCallbacks:
        def incompatible(event: object) -> None:
            self.get_logger().warning(
                f"a subscriber of {topic} asks for QoS this publisher cannot give (policy "
                f"{getattr(event, 'last_policy_kind', '?')}); it receives nothing. Set output_reliability to "
                "reliable (serves every subscriber) or change the subscriber.", throttle_duration_sec=5.0)
        return PublisherEventCallbacks(incompatible_qos=incompatible)

    def _check_input(self) -> None:
        """Timer: a camera is matched but no frame arrived for input_timeout seconds -> count 'silent', warn.
        Fast DDS does not report the frames best-effort transport drops (message_lost stays 0 for 36 MB frames),
        so silence with a matched camera is the one sign of it a subscriber has."""
        if self.subscription is None:
            return
        now = time.monotonic()
        cameras = self.count_publishers(self.subscription.topic_name)
        if cameras and not self.cameras:
            self.last_frame_at = max(self.last_frame_at, now)  # a camera appeared: its silence starts now
        self.cameras = cameras
        if cameras and now - self.last_frame_at > self.input_timeout_s:
            self.last_frame_at = now  # the next warning after another input_timeout
            self.stats.count("silent")
            self.get_logger().warning(
                f"{cameras} camera(s) on {self.subscription.topic_name} but no frame for {self.input_timeout_s:g} s "
                f"({self.stats.counts['silent']} time(s) so far). Best-effort DDS drops frames over ~8 MB without "
                "telling anyone: for big frames make the camera reliable and set input_reliability to reliable. "
                "(A camera that only publishes now and then: raise input_timeout, or 0 for no check.)")

    def _on_frame(self, msg: object) -> None:
        self.last_frame_at = time.monotonic()
        self.worker.offer(msg)

    def _on_bad_frame(self, exc: BadFrameError) -> None:
        self.get_logger().warning(f"skipping bad frame: {exc}", throttle_duration_sec=1.0)

    def _on_failure(self, exc: Exception) -> None:
        self.get_logger().error(f"segmentation failed: {exc!r}", throttle_duration_sec=1.0)

    def _decode(self, msg: object) -> np.ndarray:
        """The frame as (H, W, 3) uint8 RGB; BadFrameError naming the problem. Frames over max_pixels are
        refused before any pixel memory is taken (compressed ones by the size their header declares)."""
        try:
            if self.compressed:
                image, encoding = compressed_to_numpy(msg, max_pixels=self.max_pixels)
            else:
                if msg.width == 0 or msg.height == 0:
                    raise ImageCodecError(f"empty image {msg.width}x{msg.height}")
                image, encoding = image_to_numpy(msg, max_pixels=self.max_pixels), msg.encoding
            return np.ascontiguousarray(to_rgb8(image, encoding))
        except (ImageCodecError, ValueError) as exc:
            raise BadFrameError(str(exc)) from exc

    def _process(self, msg: object, received_at: float) -> dict[str, float]:
        """Worker thread: decode, segment, publish one frame; returns the stage times (ms)."""
        rgb = self._decode(msg)
        decoded = time.monotonic()
        result = self.segmenter(rgb)
        segmented = time.monotonic()
        self._publish(msg.header, rgb, result)
        return {"wait_and_decode": (decoded - received_at) * 1e3, **result.timing_ms,
                "publish": (time.monotonic() - segmented) * 1e3}

    def _publish(self, header: object, rgb: np.ndarray, result: SegmentationResult) -> None:
        instances = result.instances
        polygons = result.polygons(self.polygon_tolerance) if self.polygon_tolerance >= 0 else None
        out = InstanceArray()
        out.header = header
        out.height, out.width = rgb.shape[:2]
        out.model_name = self.model_name
        out.inference_ms = float(result.timing_ms["total"])
        id_image = instances.id_image
        for k in range(len(instances)):
            x0, y0, x1, y1 = (int(v) for v in instances.boxes[k])
            item = Instance()
            item.id = k + 1
            item.class_name = result.class_names[k]
            item.class_id = int(result.label_ids[k])
            item.score = float(instances.scores[k])
            item.bbox = RegionOfInterest(x_offset=x0, y_offset=y0, width=x1 - x0, height=y1 - y0)
            if polygons is not None:
                item.polygon = polygons[k].reshape(-1).tolist()
            item.area = int(instances.areas[k])
            out.instances.append(item)
        self.instances_pub.publish(out)
        self.ids_pub.publish(numpy_to_image(id_image, "mono16", header))
        if self.overlay_pub.get_subscription_count() > 0:
            bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
            self.overlay_pub.publish(numpy_to_image(render_overlay(bgr, id_image, self.overlay_alpha, bgr=True),
                                                    "bgr8", header))

    # --- diagnostics and shutdown ----------------------------------------------------------------

    def _publish_diagnostics(self) -> None:
        s = self.stats.snapshot()
        status = DiagnosticStatus()
        status.name = f"{self.get_name()}: {self.model_name}"
        status.hardware_id = self.segmenter.backend.describe()
        window = self.health_window_s
        level, health = self.stats.health(window)
        status.level = DiagnosticStatus.WARN if level == "WARN" else DiagnosticStatus.OK
        status.message = f"{s['fps']:.1f} fps, {health}"
        recent = {f"recent_{name}": str(self.stats.recent(name, window)) for name in ("bad", "failed")}
        values = {**{k: f"{v:.2f}" if isinstance(v, float) else str(v) for k, v in s.items()}, **recent,
                  "recent_window_s": f"{window:g}",
                  "backend": self.segmenter.backend.name, "device": self.segmenter.backend.describe(),
                  "score_threshold": str(self.segmenter.score_threshold)}
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        array.status = [status]
        self.diagnostics_pub.publish(array)

    def stop(self) -> None:
        """Stop the worker (the frame in flight is finished first; a frame still waiting is dropped)."""
        if self.worker is None:
            return
        self.worker.stop(timeout=30.0)
        self.worker = None


class SegmentationNode(SegmentationMixin, Node):
    """See the module docstring."""

    def __init__(self, **kwargs: object) -> None:
        Node.__init__(self, "segmentation_node", **kwargs)
        self._init_state()
        self._declare_parameters()
        p = self._read_parameters()
        self._load(p)
        self._start_io(p)
        self.add_on_set_parameters_callback(self._on_set_parameters)


class LifecycleSegmentationNode(SegmentationMixin, LifecycleNode):
    """The managed variant (`segmentation_lifecycle_node`): configure validates the parameters and loads the
    model, activate starts segmenting (reloading the model if it was freed), deactivate stops and frees the
    model (and its GPU memory), cleanup and shutdown release everything."""

    def __init__(self, **kwargs: object) -> None:
        LifecycleNode.__init__(self, "segmentation_node", **kwargs)
        self._init_state()
        self._declare_parameters()
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.parameters: dict | None = None

    def _guarded(self, action: str, steps: Callable[[], None]) -> TransitionCallbackReturn:
        try:
            steps()
        except (ParameterError, ModelFileError, BackendUnavailableError, FileNotFoundError, ValueError) as exc:
            self.get_logger().error(f"{action} failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        def configure() -> None:
            self.parameters = self._read_parameters()
            self._load(self.parameters)
        return self._guarded("configure", configure)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        def activate() -> None:
            self.parameters = self._read_parameters()  # run-time parameters may have changed meanwhile
            if self.segmenter is None:
                self._load(self.parameters)
            self._start_io(self.parameters)
        result = self._guarded("activate", activate)
        return super().on_activate(state) if result == TransitionCallbackReturn.SUCCESS else result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_io()
        self._unload()
        self.get_logger().info("deactivated: model freed")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_io()
        self._unload()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self.on_cleanup(state)


def print_summary(s: dict) -> None:
    """The exit lines on stderr: a readable one and 'segmentation_node summary {json}' with the counters and the
    memory figures (MiB: between-frame RSS range after the warm-up, peak RSS)."""
    print(f"segmentation_node: received {s['received']} frames, processed {s['processed']}, dropped "
          f"{s['dropped']}, bad {s['bad']}, failed {s['failed']}", file=sys.stderr, flush=True)
    memory = {k: round(float(s[k]), 1) for k in ("rss_mb", "rss_range_mb", "peak_rss_mb")}
    print("segmentation_node summary " + json.dumps({**{k: s[k] for k in COUNTERS + TRANSPORT_COUNTERS}, **memory}),
          file=sys.stderr, flush=True)


def run(node_class: type, argv: list[str] | None = None) -> None:
    """The node's process: exit status 0 after a clean stop; 2 with one line for a parameter, model or backend it
    cannot start with; 1 with one line for an internal error (its traceback in a log file, or on stderr with
    INSTSEG_DEBUG=1) and after a clean stop when frames failed (instseg_core.base.command_exit)."""
    keep_large_buffers()  # multi-MB frames in and id images out: reuse warm heap pages (see allocator.py)
    init_node_process(argv)
    node = None
    executor: SingleThreadedExecutor | None = None
    status = EXIT_DONE
    try:  # a signal can arrive at any moment from here on: every step below may be cut short
        try:
            node = node_class()
        except (ParameterError, ParameterException, ModelFileError, BackendUnavailableError, FileNotFoundError,
                ValueError) as exc:
            print(f"segmentation_node: {exc}", file=sys.stderr, flush=True)
            rclpy.try_shutdown()
            sys.exit(2)
        if not rclpy.ok():  # SIGTERM during start-up: rclpy shut the context down, nothing to process
            return
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        spin_until_shutdown(executor)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception as exc:
        # after a signal shut the context down while the node or executor was being built (rcl refuses to create
        # entities then), a clean stop like any other; else an internal error: one line, the traceback logged
        if rclpy.ok():
            status = failure_status("segmentation_node", exc, debug=debug_requested())
    finally:
        if node is not None:
            node.stop()
        if sys.exc_info()[0] is not SystemExit:
            summary = node.stats.snapshot() if node is not None else FrameStats().snapshot()
            print_summary(summary)
            if status == EXIT_DONE:
                status = failures_status("segmentation_node", summary["failed"], "frames")
        end_node_process(executor, node, "segmentation_node", clean=sys.exc_info()[0] is None, status=status)


def main(argv: list[str] | None = None) -> None:
    """Entry point (`ros2 run instseg_ros segmentation_node`, or `.venv/bin/segmentation_node`)."""
    run(SegmentationNode, argv)


def main_lifecycle(argv: list[str] | None = None) -> None:
    """Entry point of the managed node (`segmentation_lifecycle_node`); drive it with lifecycle transitions."""
    run(LifecycleSegmentationNode, argv)


if __name__ == "__main__":
    main()
