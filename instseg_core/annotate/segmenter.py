"""Extreme points -> object mask and polygon, on CPU: crop, encode, network, paste back, threshold, polygon.

    segmenter = create_annotation_segmenter()          # the shipped int8 model, ONNX Runtime, 2 threads
    result = segmenter.segment(rgb, [[x_left, y_left], [x_top, y_top], [x_right, y_right], [x_bottom, y_bottom]])
    result.roi, result.roi_mask (or result.mask, full size), result.polygon, result.polygon_iou, result.score
    # correction clicks (image pixels, x right, y down): re-segment the object in one request
    result = segmenter.segment(rgb, points, positive=[[x, y], ...], negative=[[x, y], ...])

Images are (H, W, 3) uint8 RGB; points are image pixels (see encoding.py). The network runs on the runtime's
backends (instseg_core.runtime.backends), like the streaming models: `OnnxRuntimeBackend` on the exported
graph (the product path; its output is already a probability), or `TorchBackend` on an ExtremeUNet wrapped in
SigmoidOutput (`annotation_segmenter_from_module`, for training, parity checks and benchmarks). Either maps
(N, C, 128, 128) float32 inputs to (N, 1, 128, 128) foreground probabilities.
"""

from __future__ import annotations

import enum
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from instseg_core.annotate.corrections import click_array, paint_clicks
from instseg_core.annotate.encoding import (
    CHANNEL_LAYOUTS,
    CLICK_CHANNELS,
    CROP_SIZE,
    PRIOR_FOREGROUNDS,
    crop,
    crop_box,
    encode,
    order_extreme_points,
    paste_back,
    points_in_crop,
)
from instseg_core.annotate.refine import grabcut_refine
from instseg_core.base.instances import mask_box
from instseg_core.base.model_files import ModelFileError, find_model
from instseg_core.postprocess.polygons import mask_to_polygon
from instseg_core.runtime.backends import InferenceBackend, OnnxRuntimeBackend, TorchBackend

# The shipped default: the same held-out aIoU as the fp32 graph (0.916), ~1.5x faster on 2 cores.
DEFAULT_ANNOTATION_MODEL = "extreme_unet_int8.onnx"
# The crop's relaxation margin around the points' box, as a fraction of the box (encoding.crop_box), for a graph
# whose manifest names none: DEXTR's 10 %, which every model before the context-trained one was trained and run with.
DEFAULT_RELAX_FRACTION = 0.1
REFINEMENTS = ("none", "grabcut")
FLIPS = ("union", "none")


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


def _outside(array: np.ndarray, image_shape: tuple[int, int]) -> list[int]:
    """Indices of the (K, 2) x, y pixels of `array` outside an (H, W) image."""
    height, width = image_shape
    return [i for i, (x, y) in enumerate(array) if not (0 <= x < width and 0 <= y < height)]


def validate_points(points: Sequence[Sequence[float]] | np.ndarray, image_shape: tuple[int, int],
                    min_box: float = 2.0) -> np.ndarray:
    """(4, 2) float64 points in the order left, top, right, bottom, or AnnotationError: not 4 points, outside the
    image, or a degenerate box. Points given in another order are reordered (encoding.order_extreme_points) unless
    their order already spans the box as well as any (the network's colour prior fills the quadrilateral of the
    points in their order: a crossed order, e.g. left, right, top, bottom, lost 0.02 mean IoU on real photographs);
    a rotation of the right order gives the same mask either way."""
    try:
        array = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError, OverflowError) as exc:  # text, ragged lists, objects
        raise AnnotationError(ErrorCode.BAD_POINTS, f"extreme points must be 4 pairs of numbers: {exc}") from exc
    if array.size != 8:
        raise AnnotationError(ErrorCode.BAD_POINTS, f"expected 4 extreme points (8 numbers), got {array.size} numbers")
    array = array.reshape(4, 2)
    if not np.all(np.isfinite(array)):
        raise AnnotationError(ErrorCode.BAD_POINTS, "extreme points must be finite numbers")
    height, width = image_shape
    outside = _outside(array, image_shape)
    if outside:
        names = ("left", "top", "right", "bottom")
        detail = ", ".join(f"{names[i]} ({array[i, 0]:g}, {array[i, 1]:g})" for i in outside)
        raise AnnotationError(ErrorCode.POINTS_OUTSIDE, f"points outside the {width}x{height} image: {detail}")
    span = array.max(axis=0) - array.min(axis=0)
    if span[0] < min_box or span[1] < min_box:
        raise AnnotationError(ErrorCode.DEGENERATE_BOX,
                              f"the points span {span[0]:g} x {span[1]:g} pixels; at least {min_box:g} x {min_box:g} "
                              "is needed")
    spread = array[2, 0] - array[0, 0] + array[3, 1] - array[1, 1]
    if spread < span.sum():  # not left, top, right, bottom (or as good): put them in that order
        return order_extreme_points(array)
    return array


Clicks = Sequence[Sequence[float]] | np.ndarray | None
"""Correction clicks of one object: [[x, y], ...] image pixels (or a flat [x0, y0, ...], or None for none)."""


def validate_clicks(clicks: Clicks, image_shape: tuple[int, int], kind: str = "positive") -> np.ndarray:
    """(K, 2) float64 correction clicks (K >= 0), or AnnotationError: BAD_POINTS when they are not [x, y] pairs of
    finite numbers, POINTS_OUTSIDE when one lies outside the image (the message names `kind` and the click)."""
    try:
        array = click_array(clicks)
    except (TypeError, ValueError, OverflowError) as exc:
        raise AnnotationError(ErrorCode.BAD_POINTS, f"{kind} clicks must be [x, y] pairs of numbers: {exc}") from exc
    height, width = image_shape
    outside = _outside(array, image_shape)
    if outside:
        detail = ", ".join(f"{i} ({array[i, 0]:g}, {array[i, 1]:g})" for i in outside)
        raise AnnotationError(ErrorCode.POINTS_OUTSIDE, f"{kind} clicks outside the {width}x{height} image: {detail}")
    return array


def _per_object(clicks: Sequence[Clicks] | None, count: int, kind: str) -> list[Clicks]:
    if clicks is None:
        return [None] * count
    if len(clicks) != count:
        raise AnnotationError(ErrorCode.BAD_POINTS, f"{kind}: one click list per object expected ({count}), got "
                                                    f"{len(clicks)}")
    return list(clicks)


class ExtremePointSegmenter:
    """The annotation pipeline around a runtime backend (thread-safe: it keeps no per-call state).

    backend: an OnnxRuntimeBackend or TorchBackend mapping (N, C, 128, 128) float32 to (N, 1, 128, 128)
    probabilities; channels: C, 4 for the extreme-point model (RGB + points), 5 with the colour prior as well,
    3 for the box-only baseline (encoding.CHANNEL_LAYOUTS; default: the graph's declared input channels);
    relax_fraction, relax_min: the crop box is the points' box enlarged on every side by max(relax_fraction * its
    size, relax_min pixels) (encoding.crop_box); create_annotation_segmenter takes the fraction from the graph's
    manifest (`crop_relax`), the margin the network was chosen to run with;
    prior_foreground: where the colour prior (5-channel models) reads the foreground's colours, one of
    encoding.PRIOR_FOREGROUNDS; create_annotation_segmenter takes it from the manifest (`colour_prior_foreground`,
    default "box");
    refine: "none", or "grabcut" to move the network's uncertain border pixels to the colour edge with OpenCV
    GrabCut seeded by its probabilities (instseg_core.annotate.refine; about 10-30 ms more per object);
    flip: "union" (default) runs the network on the crop and on its mirror image in one batch and keeps, per pixel,
    the larger of the two probabilities (the mirror's map mirrored back): the model misses different parts of an
    object in each, and their union scored 0.015-0.03 higher on the real test and cut-and-paste proxies
    (docs/extreme_points_real_images.md), for about 3 ms more per object; "none" runs it once.

    Correction clicks (`segment(..., positive=, negative=)`): a 7-channel network (encoding.CLICK_CHANNELS, the
    shipped one) takes them as input channels and re-segments the object with them; a network without those
    channels gets them painted onto its output (corrections.paint_clicks), a local edit only (`takes_clicks`).
    paint_clicks (default True) paints them onto a click network's output too, so that the pixels under a click
    always take its label (0.005-0.015 more mean IoU after 2-3 automatic clicks on the real sets).
    """

    def __init__(self, backend: InferenceBackend, *, channels: int | None = None,
                 threshold: float = 0.5, polygon_tolerance: float = 1.0, point_mode: str = "circle",
                 relax_fraction: float = DEFAULT_RELAX_FRACTION, relax_min: float = 4.0, refine: str = "none",
                 flip: str = "union", prior_foreground: str = "box", paint_clicks: bool = True) -> None:
        self.backend = backend
        declared: tuple[int | None, ...] = getattr(backend, "input_shape", None) or ()
        self.channels = int(channels or (declared[1] or 0 if len(declared) > 1 else 0))
        if self.channels not in CHANNEL_LAYOUTS:
            raise ValueError(f"the annotation network must take {', '.join(map(str, CHANNEL_LAYOUTS))} input "
                             f"channels, not {self.channels}")
        # a graph exported with a fixed batch of 1 is run once per object
        self.fixed_batch = len(declared) > 0 and declared[0] == 1
        self.use_points = self.channels >= 4
        self.takes_clicks = self.channels == CLICK_CHANNELS
        self.paint_clicks = paint_clicks
        self.threshold = threshold
        self.polygon_tolerance = polygon_tolerance
        self.point_mode = point_mode
        self.relax = (relax_fraction, relax_min)
        if refine not in REFINEMENTS:
            raise ValueError(f"refine must be one of {', '.join(REFINEMENTS)}, not {refine!r}")
        self.refine = refine
        if flip not in FLIPS:
            raise ValueError(f"flip must be one of {', '.join(FLIPS)}, not {flip!r}")
        self.flip = flip
        if prior_foreground not in PRIOR_FOREGROUNDS:
            raise ValueError(f"prior_foreground must be one of {', '.join(PRIOR_FOREGROUNDS)}, "
                             f"not {prior_foreground!r}")
        self.prior_foreground = prior_foreground
        if not 0.0 <= relax_fraction <= 1.0 or relax_min < 0:
            raise ValueError(f"the crop relaxation must be a fraction in [0, 1] and a margin >= 0 pixels, not "
                             f"{relax_fraction!r}, {relax_min!r}")

    def probabilities(self, inputs: np.ndarray) -> np.ndarray:
        """(N, C, 128, 128) float32 network inputs -> (N, 128, 128) float32 foreground probabilities."""
        if self.fixed_batch and len(inputs) > 1:
            return np.concatenate([self.backend.run(x[None])[:, 0] for x in inputs])
        return self.backend.run(inputs)[:, 0]

    def crop_probabilities(self, inputs: np.ndarray) -> np.ndarray:
        """(N, C, 128, 128) float32 network inputs -> (N, 128, 128) float32 foreground probabilities as the
        pipeline uses them: with flip "union", the pixelwise maximum over each crop and its mirror image (one
        network call on 2N inputs); with "none", `probabilities`."""
        if self.flip == "none":
            return self.probabilities(inputs)
        both = self.probabilities(np.concatenate([inputs, inputs[..., ::-1]]))
        count = len(inputs)
        return np.maximum(both[:count], both[count:, :, ::-1])

    def warmup(self, runs: int = 3) -> None:
        zeros = np.zeros((1, self.channels, CROP_SIZE, CROP_SIZE), np.float32)
        for _ in range(runs):
            self.probabilities(zeros)

    def segment(self, image: np.ndarray, points: Sequence[Sequence[float]] | np.ndarray,
                polygon_tolerance: float | None = None, *, positive: Clicks = None,
                negative: Clicks = None) -> AnnotationResult:
        """Segment one object from its 4 extreme points and optional correction clicks (`positive`: pixels of the
        object, `negative`: pixels that are not, each [[x, y], ...] in image pixels); raises AnnotationError for
        bad points or clicks."""
        return self.segment_batch(image, [points], polygon_tolerance, positive=[positive],
                                  negative=[negative])[0]

    def segment_batch(self, image: np.ndarray, objects: Sequence[Sequence[Sequence[float]] | np.ndarray],
                      polygon_tolerance: float | None = None, *, positive: Sequence[Clicks] | None = None,
                      negative: Sequence[Clicks] | None = None) -> list[AnnotationResult]:
        """Segment several objects of one image with one network call; `positive` and `negative`, when given, hold
        one click list per object (None or [] for an object without). No objects: []."""
        if not isinstance(image, np.ndarray):
            raise AnnotationError(ErrorCode.BAD_IMAGE, f"expected an (H, W, 3) uint8 RGB numpy array, got "
                                                       f"{type(image).__name__} (np.asarray(image) converts a PIL "
                                                       "image)")
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise AnnotationError(ErrorCode.BAD_IMAGE, f"expected an (H, W, 3) uint8 RGB image, got "
                                                       f"{image.dtype} {image.shape}")
        if polygon_tolerance is not None and not isinstance(polygon_tolerance, (int, float, np.number)):
            raise AnnotationError(ErrorCode.BAD_POINTS, f"polygon_tolerance must be a number of pixels, got "
                                                        f"{type(polygon_tolerance).__name__}; correction clicks go "
                                                        "by name: positive=[[x, y], ...], negative=[[x, y], ...]")
        if not len(objects):
            return []
        tolerance = self.polygon_tolerance if polygon_tolerance is None or polygon_tolerance <= 0 else polygon_tolerance
        start = time.perf_counter()
        validated = [validate_points(p, image.shape[:2]) for p in objects]
        positives = [validate_clicks(c, image.shape[:2], "positive")
                     for c in _per_object(positive, len(objects), "positive")]
        negatives = [validate_clicks(c, image.shape[:2], "negative")
                     for c in _per_object(negative, len(objects), "negative")]
        boxes = [crop_box(p, *self.relax) for p in validated]
        crops = [crop(image, box) for box in boxes]
        crop_points = [points_in_crop(p, box) for p, box in zip(validated, boxes, strict=True)]
        crop_positive = [points_in_crop(c, box) for c, box in zip(positives, boxes, strict=True)]
        crop_negative = [points_in_crop(c, box) for c, box in zip(negatives, boxes, strict=True)]
        clicks_in = self.takes_clicks
        inputs = np.stack([encode(rgb, points if self.use_points else None, self.point_mode, self.channels,
                                  self.prior_foreground, pos if clicks_in else None, neg if clicks_in else None)
                           for rgb, points, pos, neg in zip(crops, crop_points, crop_positive, crop_negative,
                                                            strict=True)])
        encoded = time.perf_counter()
        probabilities = self.crop_probabilities(inputs)
        if (self.paint_clicks or not clicks_in) and any(len(c) for c in (*crop_positive, *crop_negative)):
            probabilities = np.stack([paint_clicks(probability, pos, neg) for probability, pos, neg
                                      in zip(probabilities, crop_positive, crop_negative, strict=True)])
        if self.refine == "grabcut":
            probabilities = np.stack([grabcut_refine(rgb, probability, points, crop_positive=pos, crop_negative=neg)
                                      for rgb, probability, points, pos, neg
                                      in zip(crops, probabilities, crop_points, crop_positive, crop_negative,
                                             strict=True)])
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
                image.shape[:2], polygon + np.array([x0, y0], np.int32) if len(polygon) else polygon, polygon_iou,
                score,
                {"encode": (encoded - start) * 1e3 * share, "network": (inferred - encoded) * 1e3 * share,
                 "postprocess": post},
            ))
        total = (time.perf_counter() - start) * 1e3
        for result in results:
            result.timing_ms["total"] = total / len(results)
        return results


def create_annotation_segmenter(model_file: str | os.PathLike | None = None, *, threads: int = 2,
                                spin_wait: bool = True, **options: float | str) -> ExtremePointSegmenter:
    """The product path: an exported extreme-point graph on ONNX Runtime (CPU, `threads` intra-op threads).

    model_file: a path or a bare file name (instseg_core.base.model_files.find_model); default the shipped
    DEFAULT_ANNOTATION_MODEL. `options` go to ExtremePointSegmenter (threshold, polygon_tolerance, ...); without
    `relax_fraction` or `prior_foreground` the graph's manifest says them (manifest_crop_relax,
    manifest_prior_foreground).
    Raises ModelFileError naming the file when it is missing or not a loadable graph, or its manifest's `crop_relax`
    is not a fraction or its `colour_prior_foreground` not one of encoding.PRIOR_FOREGROUNDS.
    """
    path = find_model(model_file or DEFAULT_ANNOTATION_MODEL)
    options.setdefault("relax_fraction", manifest_crop_relax(path))
    options.setdefault("prior_foreground", manifest_prior_foreground(path))
    return ExtremePointSegmenter(OnnxRuntimeBackend(path, threads=threads, spin_wait=spin_wait),
                                 **options)  # type: ignore[arg-type]


def _manifest_value(model_path: str | os.PathLike, key: str, default: Any) -> tuple[Any, Path]:
    """`key` of the manifest beside a graph (`<model>.json`), `default` without a manifest or the key; and the
    manifest's path. Raises ModelFileError when the manifest cannot be read."""
    manifest_path = Path(model_path).with_suffix(".json")
    if not manifest_path.is_file():
        return default, manifest_path
    try:
        return json.loads(manifest_path.read_text()).get(key, default), manifest_path
    except (OSError, ValueError, AttributeError) as exc:
        raise ModelFileError(f"{manifest_path}: cannot read the model manifest: {exc}") from exc


def manifest_crop_relax(model_path: str | os.PathLike) -> float:
    """The crop relaxation fraction that the manifest beside a graph (`<model>.json`, key `crop_relax`) gives; the
    network was trained on a range of margins and this one was chosen for it on the real validation set
    (docs/extreme_points_real_images.md). DEFAULT_RELAX_FRACTION when there is no manifest or no such key.
    Raises ModelFileError when the manifest cannot be read or the value is not a number in (0, 1]."""
    value, manifest_path = _manifest_value(model_path, "crop_relax", DEFAULT_RELAX_FRACTION)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
        raise ModelFileError(f"{manifest_path}: crop_relax must be a fraction in (0, 1], not {value!r}")
    return float(value)


def manifest_prior_foreground(model_path: str | os.PathLike) -> str:
    """Where the graph's colour prior reads the foreground (`colour_prior_foreground` in the manifest beside it,
    one of encoding.PRIOR_FOREGROUNDS); "box" when there is no manifest or no such key. Raises ModelFileError
    when the manifest cannot be read or names another region."""
    value, manifest_path = _manifest_value(model_path, "colour_prior_foreground", "box")
    if value not in PRIOR_FOREGROUNDS:
        raise ModelFileError(f"{manifest_path}: colour_prior_foreground must be one of "
                             f"{', '.join(PRIOR_FOREGROUNDS)}, not {value!r}")
    return str(value)


def annotation_segmenter_from_module(model: Any, *, threads: int = 0,
                                     **options: float | str) -> ExtremePointSegmenter:
    """PyTorch eager on CPU for an extreme-point network (logits; ExtremeUNet, ExtremeEfficientNetUNet) being
    trained or compared; `threads` 0 keeps torch's thread count."""
    from instseg_core.networks.extreme_unet import SigmoidOutput

    channels = int(model.in_channels)
    return ExtremePointSegmenter(TorchBackend(SigmoidOutput(model), threads=threads), channels=channels,
                                 **options)  # type: ignore[arg-type]
