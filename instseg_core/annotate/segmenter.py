"""Extreme points -> object mask and polygon, on CPU: crop, encode, network, paste back, threshold, polygon.

    segmenter = ExtremePointSegmenter(OnnxNetwork("models/extreme_unet.onnx", threads=2))
    result = segmenter.segment(rgb, [[x_left, y_left], [x_top, y_top], [x_right, y_right], [x_bottom, y_bottom]])
    result.roi, result.roi_mask (or result.mask, full size), result.polygon, result.polygon_iou, result.score

Images are (H, W, 3) uint8 RGB; points are image pixels (see encoding.py). The network is anything that
maps (N, C, 128, 128) float32 inputs to (N, 128, 128) probabilities: `OnnxNetwork` (ONNX Runtime on CPU,
the product path) or `TorchNetwork` (PyTorch eager, for parity checks and benchmarks).
"""

from __future__ import annotations

import enum
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from instseg_core.annotate.encoding import CROP_SIZE, crop, crop_box, encode, paste_back, points_in_crop
from instseg_core.postprocess.instances import mask_box
from instseg_core.postprocess.polygons import mask_to_polygon
from instseg_core.runtime.backends import ModelFileError, OnnxRuntimeBackend


class ErrorCode(enum.IntEnum):
    """Why a request was refused; the values equal instseg_interfaces/SegmentObject's constants."""

    OK = 0
    BAD_POINTS = 1
    POINTS_OUTSIDE = 2
    DEGENERATE_BOX = 3
    BAD_IMAGE = 4
    IMAGE_TOO_LARGE = 5
    INTERNAL_ERROR = 6


class AnnotationError(ValueError):
    """A request that cannot be segmented; `code` says which kind of problem, the text says what exactly."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class ModelLoadError(ModelFileError):
    """The model file is missing or unreadable; the message names the path."""


class OnnxNetwork:
    """ONNX Runtime on CPU (instseg_core.runtime.backends.OnnxRuntimeBackend), `threads` intra-op threads;
    (N, C, 128, 128) inputs -> (N, 128, 128) probabilities."""

    def __init__(self, path: str | os.PathLike, threads: int = 2, spin_wait: bool = True) -> None:
        try:
            self.backend = OnnxRuntimeBackend(path, threads=threads, spin_wait=spin_wait)
        except ModelFileError as exc:
            raise ModelLoadError(f"extreme-point model: {exc}") from exc
        model_input = self.backend.session.get_inputs()[0]
        self.channels = int(model_input.shape[1])
        self.batch_dynamic = not isinstance(model_input.shape[0], int)
        self.path = self.backend.path

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        if self.batch_dynamic or len(inputs) == 1:
            return self.backend.run(inputs)[:, 0]
        return np.concatenate([self.backend.run(x[None])[:, 0] for x in inputs])


class TorchNetwork:
    """PyTorch eager inference of an ExtremeUNet (logits -> sigmoid)."""

    def __init__(self, model: object, threads: int | None = None) -> None:
        import torch

        self.torch = torch
        self.model = model.eval()
        self.channels = int(model.in_channels)
        if threads:
            torch.set_num_threads(threads)

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        with self.torch.no_grad():
            return self.torch.sigmoid(self.model(self.torch.from_numpy(inputs))).numpy()[:, 0]


@dataclass
class AnnotationResult:
    """One segmented object.

    roi: (x, y, width, height) int pixels of the image: the mask's tight bounding box ((x, y, 0, 0) when
    the mask is empty); roi_mask: (height, width) bool, the mask inside it; image_shape: (H, W) of the
    image; polygon (N, 2) int32 image x, y (outer contour, simplified); polygon_iou: IoU of the filled
    polygon with the mask; score: mean probability inside the mask; timing_ms per stage. `mask` gives the
    full (H, W) bool mask (built on each access: ~2 MB at 2048x1024, which is why the ROI form exists).
    """

    roi: tuple[int, int, int, int]
    roi_mask: np.ndarray
    image_shape: tuple[int, int]
    polygon: np.ndarray
    polygon_iou: float
    score: float
    timing_ms: dict[str, float] = field(default_factory=dict)

    @property
    def mask(self) -> np.ndarray:
        """(H, W) bool, the whole image."""
        full = np.zeros(self.image_shape, bool)
        x, y, width, height = self.roi
        full[y:y + height, x:x + width] = self.roi_mask
        return full

    @property
    def area(self) -> int:
        """Mask pixels."""
        return int(np.count_nonzero(self.roi_mask))


def validate_points(points: Sequence[Sequence[float]] | np.ndarray, image_shape: tuple[int, int],
                    min_box: float = 2.0) -> np.ndarray:
    """(4, 2) float64 points, or AnnotationError: not 4 points, outside the image, or a degenerate box."""
    array = np.asarray(points, dtype=np.float64)
    if array.size != 8:
        raise AnnotationError(ErrorCode.BAD_POINTS, f"expected 4 extreme points (8 numbers), got {array.size} numbers")
    array = array.reshape(4, 2)
    if not np.all(np.isfinite(array)):
        raise AnnotationError(ErrorCode.BAD_POINTS, "extreme points must be finite numbers")
    height, width = image_shape
    outside = [i for i, (x, y) in enumerate(array) if not (0 <= x < width and 0 <= y < height)]
    if outside:
        names = ("left", "top", "right", "bottom")
        detail = ", ".join(f"{names[i]} ({array[i, 0]:g}, {array[i, 1]:g})" for i in outside)
        raise AnnotationError(ErrorCode.POINTS_OUTSIDE, f"points outside the {width}x{height} image: {detail}")
    span = array.max(axis=0) - array.min(axis=0)
    if span[0] < min_box or span[1] < min_box:
        raise AnnotationError(ErrorCode.DEGENERATE_BOX,
                              f"the points span {span[0]:g} x {span[1]:g} pixels; at least {min_box:g} x {min_box:g} "
                              "is needed")
    return array


class ExtremePointSegmenter:
    """The annotation pipeline around a network (thread-safe: it keeps no per-call state)."""

    def __init__(self, network: OnnxNetwork | TorchNetwork, *, threshold: float = 0.5, polygon_tolerance: float = 1.0,
                 point_mode: str = "circle", relax_fraction: float = 0.1, relax_min: float = 4.0) -> None:
        self.network = network
        self.use_points = network.channels == 4
        self.threshold = threshold
        self.polygon_tolerance = polygon_tolerance
        self.point_mode = point_mode
        self.relax = (relax_fraction, relax_min)

    def warmup(self, runs: int = 3) -> None:
        zeros = np.zeros((1, self.network.channels, CROP_SIZE, CROP_SIZE), np.float32)
        for _ in range(runs):
            self.network(zeros)

    def segment(self, image: np.ndarray, points: Sequence[Sequence[float]] | np.ndarray,
                polygon_tolerance: float | None = None) -> AnnotationResult:
        """Segment one object; raises AnnotationError for bad points."""
        return self.segment_batch(image, [points], polygon_tolerance)[0]

    def segment_batch(self, image: np.ndarray, objects: Sequence[Sequence[Sequence[float]] | np.ndarray],
                      polygon_tolerance: float | None = None) -> list[AnnotationResult]:
        """Segment several objects of one image with one network call."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise AnnotationError(ErrorCode.BAD_IMAGE, f"expected an (H, W, 3) uint8 RGB image, got "
                                                       f"{image.dtype} {image.shape}")
        tolerance = self.polygon_tolerance if polygon_tolerance is None or polygon_tolerance <= 0 else polygon_tolerance
        start = time.perf_counter()
        validated = [validate_points(p, image.shape[:2]) for p in objects]
        boxes = [crop_box(p, *self.relax) for p in validated]
        inputs = np.stack([
            encode(crop(image, box), points_in_crop(p, box) if self.use_points else None, self.point_mode)
            for p, box in zip(validated, boxes, strict=True)
        ])
        encoded = time.perf_counter()
        probabilities = self.network(inputs)
        inferred = time.perf_counter()
        results = []
        for probability, box in zip(probabilities, boxes, strict=True):
            t0 = time.perf_counter()
            region, (x0, y0) = paste_back(probability, box, image.shape[:2])
            region_mask = region > self.threshold
            polygon, polygon_iou = mask_to_polygon(region_mask, tolerance)
            rx0, ry0, rx1, ry1 = mask_box(region_mask) or (0, 0, 0, 0)
            score = float(region[region_mask].mean()) if rx1 else 0.0
            post = (time.perf_counter() - t0) * 1e3
            share = 1.0 / len(boxes)
            results.append(AnnotationResult(
                (x0 + rx0, y0 + ry0, rx1 - rx0, ry1 - ry0), region_mask[ry0:ry1, rx0:rx1],
                image.shape[:2], polygon + np.int32([x0, y0]) if len(polygon) else polygon, polygon_iou, score,
                {"encode": (encoded - start) * 1e3 * share, "network": (inferred - encoded) * 1e3 * share,
                 "postprocess": post},
            ))
        total = (time.perf_counter() - start) * 1e3
        for result in results:
            result.timing_ms["total"] = total / len(results)
        return results
