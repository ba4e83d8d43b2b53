"""One Segmenter for every model and backend: RGB uint8 image in, instances at the image's resolution out.

    segmenter = create_segmenter("spatial_embeddings", backend="onnxruntime", device="cpu",
                                 input_size=(1024, 512), threads=2)
    result = segmenter(rgb)            # rgb (H, W, 3) uint8
    result.instances.id_image          # (H, W) uint16, 0 = background
    result.class_names, result.label_ids, result.instances.scores, result.instances.boxes
    result.polygons(tolerance=1.0)     # [(N_i, 2) int32 x, y per instance]
    result.timing_ms                   # {'preprocess', 'inference', 'postprocess', 'total'}

Pre-processing resizes the image to the network input size (`input_size` (width, height), default: the
image's own size rounded to the model's multiple, scaled down, aspect kept, to at most `max_input_pixels`
(2048 x 1024 by default: the network's memory and time grow with its input, a 12 MP frame would need ~3.5 GB
and seconds per frame on a CPU)) and converts it as the model wants; post-processing
decodes the raw output at network resolution, drops instances below `score_threshold` or not of
`classes` (names; default all), and maps the id image (nearest) and boxes back to the image's size.
Backends: 'torch' (device 'cpu' or 'cuda'), 'onnxruntime' (device 'cpu', 'cuda' or 'tensorrt' for the
TensorRT execution provider) and 'tensorrt' (native engine, device 'cuda').
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from instseg_core.base.instances import Instances, filter_instances, resize_instances
from instseg_core.base.model_files import find_model
from instseg_core.postprocess.polygons import mask_to_polygon
from instseg_core.runtime.adapters import ModelAdapter, model_adapter
from instseg_core.runtime.backends import (
    BackendUnavailableError,
    InferenceBackend,
    OnnxRuntimeBackend,
    TensorRTBackend,
    TorchBackend,
)

BACKENDS = ("torch", "onnxruntime", "tensorrt")
DEFAULT_MAX_INPUT_PIXELS = 2048 * 1024  # network input cap when the input size follows the frame


@dataclass
class SegmentationResult:
    """instances at the input image's resolution; class_names / label_ids (Cityscapes label ids) per instance;
    timing_ms per stage."""

    instances: Instances
    class_names: list[str]
    label_ids: np.ndarray
    timing_ms: dict[str, float] = field(default_factory=dict)

    def polygons(self, tolerance: float = 1.0) -> list[np.ndarray]:
        """Largest outer contour of each instance, simplified with `tolerance` pixels; (N_i, 2) int32 x, y."""
        polygons = []
        for k, (x0, y0, x1, y1) in enumerate(self.instances.boxes):
            window = self.instances.id_image[y0:y1, x0:x1] == k + 1
            polygon, _ = mask_to_polygon(window, tolerance)
            polygons.append(polygon + np.array([x0, y0], np.int32))
        return polygons


@dataclass
class RawOutput:
    """The network's raw output for one image (NumPy array, or a torch tensor on a GPU backend) and the time spent
    to make it (ms)."""

    output: Any
    preprocess_ms: float
    inference_ms: float


class Segmenter:
    """Pre-process, run a backend, decode; thread-safe (one inference at a time)."""

    def __init__(self, adapter: ModelAdapter, backend: InferenceBackend, *, input_size: tuple[int, int] | None = None,
                 score_threshold: float = 0.5, decode_params: dict | None = None,
                 classes: Collection[str] | None = None, model_file: Path | None = None,
                 max_input_pixels: int | None = DEFAULT_MAX_INPUT_PIXELS) -> None:
        self.adapter = adapter
        self.backend = backend
        multiple, smallest = adapter.input_multiple, max(adapter.input_multiple, adapter.min_input_side)
        if input_size is not None and (input_size[0] % multiple or input_size[1] % multiple or min(input_size) <= 0):
            raise ValueError(f"input size {input_size} must be positive multiples of {multiple} for "
                             f"{adapter.name}")
        if input_size is not None and min(input_size) < smallest:
            raise ValueError(f"input size {input_size} is below {adapter.name}'s smallest side of {smallest} pixels")
        self.input_size = input_size
        if max_input_pixels is not None and max_input_pixels < multiple * multiple:
            raise ValueError(f"max_input_pixels {max_input_pixels} is below one {multiple}x{multiple} block")
        self.max_input_pixels = max_input_pixels
        self.score_threshold = float(score_threshold)
        unknown = set(classes or ()) - set(adapter.classes)
        if unknown:
            raise ValueError(f"classes {sorted(unknown)} are not classes of {adapter.name} "
                             f"({', '.join(adapter.classes)})")
        # class indices to keep; None = all
        self.keep_classes = np.array([adapter.classes.index(c) for c in classes]) if classes else None
        unknown_params = set(decode_params or {}) - set(adapter.decode_parameters())
        if unknown_params:
            raise ValueError(f"unknown decoding parameters {sorted(unknown_params)} for {adapter.name}; known: "
                             f"{', '.join(adapter.decode_parameters())}")
        self.decode_params = dict(decode_params or {})
        self._lock = threading.Lock()
        self.model_file = model_file  # the file the network came from, when known

    @property
    def classes(self) -> tuple[str, ...]:
        return self.adapter.classes

    def network_size(self, width: int, height: int) -> tuple[int, int]:
        """The network input (width, height) for a width x height image: `input_size` when set, else the image's
        size scaled down (aspect kept) to at most `max_input_pixels`, rounded to the model's multiple, and each side at
        least the model's smallest side (a tiny image is scaled up)."""
        if self.input_size is not None:
            return self.input_size
        m = self.adapter.input_multiple
        smallest = max(m, self.adapter.min_input_side)
        scale = 1.0
        if self.max_input_pixels is not None and width * height > self.max_input_pixels:
            scale = (self.max_input_pixels / (width * height)) ** 0.5
        size_w, size_h = max(smallest, round(width * scale / m) * m), max(smallest, round(height * scale / m) * m)
        while (self.max_input_pixels is not None and size_w * size_h > self.max_input_pixels
               and max(size_w, size_h) - m >= smallest):
            # rounding up passed the cap: take one multiple off the longer side
            if size_w >= size_h:
                size_w -= m
            else:
                size_h -= m
        return size_w, size_h

    def __call__(self, rgb: np.ndarray) -> SegmentationResult:
        start = time.perf_counter()
        raw = self.infer_raw(rgb)
        inferred = time.perf_counter()
        result = self.decode_raw(raw, rgb.shape[1], rgb.shape[0])
        result.timing_ms = {"preprocess": raw.preprocess_ms, "inference": raw.inference_ms,
                            "postprocess": (time.perf_counter() - inferred) * 1e3,
                            "total": (time.perf_counter() - start) * 1e3}
        return result

    def infer_raw(self, rgb: np.ndarray) -> RawOutput:
        """Pre-process and run the network: the raw output at network resolution (ValueError for a bad image)."""
        if not (isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
                and rgb.shape[0] > 0 and rgb.shape[1] > 0):
            raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {getattr(rgb, 'dtype', type(rgb))} "
                             f"{getattr(rgb, 'shape', '')}")
        start = time.perf_counter()
        height, width = rgb.shape[:2]
        size = self.network_size(width, height)
        resized = rgb if size == (width, height) else cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        network_input = self.adapter.preprocess(resized)
        preprocessed = time.perf_counter()
        with self._lock:
            run_tensor = getattr(self.backend, "run_tensor", None)
            if run_tensor is not None and getattr(self.backend, "device", "cpu") != "cpu":
                raw = run_tensor(network_input)  # decoded on the GPU
            else:
                raw = self.backend.run(network_input)
        return RawOutput(raw, (preprocessed - start) * 1e3, (time.perf_counter() - preprocessed) * 1e3)

    def decode_raw(self, raw: RawOutput, width: int, height: int, decode_params: dict | None = None,
                   score_threshold: float | None = None) -> SegmentationResult:
        """Instances of a raw output for a width x height image: decoded with this segmenter's decoding parameters
        (or `decode_params` over them), instances below its score threshold (or `score_threshold`) or of other
        classes dropped, mapped to the image's size. Decoding one output several ways (a calibration sweep) costs
        no further network run."""
        params = self.decode_params if decode_params is None else {**self.decode_params, **decode_params}
        threshold = self.score_threshold if score_threshold is None else score_threshold
        with self._lock:
            instances = self.adapter.decode(raw.output, params)
        keep = instances.scores >= threshold
        if self.keep_classes is not None:
            keep &= np.isin(instances.classes, self.keep_classes)
        instances = resize_instances(filter_instances(instances, keep), width, height)
        return SegmentationResult(instances, [self.adapter.classes[c] for c in instances.classes],
                                  self.adapter.label_ids[instances.classes])

    def describe(self) -> str:
        return f"{self.adapter.name} on {self.backend.describe()}"


def default_model_file(model: str, backend: str, int8: bool = False) -> str:
    """The shipped file of `model` for `backend`: the .pt checkpoint for 'torch', else the .onnx graph (its static
    int8 QDQ version `<name>_int8.onnx` when `int8`; ValueError for int8 with 'torch')."""
    adapter = model_adapter(model)
    if int8:
        if backend == "torch":
            raise ValueError("int8 models are QDQ ONNX graphs: use backend 'onnxruntime' (or 'tensorrt'), not 'torch'")
        return adapter.int8_onnx_file
    return adapter.torch_file if backend == "torch" else adapter.onnx_file


def create_segmenter(model: str = "spatial_embeddings", *, model_file: str | os.PathLike | None = None,
                     backend: str = "onnxruntime", device: str = "cpu", input_size: tuple[int, int] | None = None,
                     threads: int = 2, score_threshold: float = 0.5, engine_cache_dir: str | os.PathLike | None = None,
                     fp16: bool = False, decode_params: dict | None = None,
                     classes: Collection[str] | None = None, int8: bool = False,
                     max_input_pixels: int | None = DEFAULT_MAX_INPUT_PIXELS) -> Segmenter:
    """Build a Segmenter from names (what the ROS node's parameters carry).

    model_file: a .pt checkpoint for backend 'torch', else an .onnx file with its .json manifest beside it; a
    path, or a bare file name found by instseg_core.base.model_files.find_model; default: the shipped file
    (`default_model_file`; with `int8`, the static int8 QDQ graph derived at set-up). Raises ValueError for
    unknown names or decoding parameters, ModelFileError for missing or corrupt files, BackendUnavailableError
    when the backend/device cannot run here.
    """
    adapter_type = model_adapter(model)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    path = find_model(model_file or default_model_file(model, backend, int8))
    runtime: InferenceBackend
    if backend == "torch":
        module, config = adapter_type.load_torch(path)
        runtime = TorchBackend(module, device=device, threads=threads, fp16=fp16)
    else:
        config = adapter_type.read_manifest(path)
        if backend == "onnxruntime":
            runtime = OnnxRuntimeBackend(path, provider=device, threads=threads, engine_cache_dir=engine_cache_dir,
                                         fp16=fp16)
        else:
            if input_size is None:
                raise BackendUnavailableError("backend 'tensorrt' builds an engine for one input size: set input_size")
            runtime = TensorRTBackend(path, (1, 3, input_size[1], input_size[0]), fp16=fp16,
                                      engine_cache_dir=engine_cache_dir,
                                      device=device if device.startswith("cuda") else "cuda:0")
    return Segmenter(adapter_type(config), runtime, input_size=input_size, score_threshold=score_threshold,
                     decode_params=decode_params, classes=classes, model_file=path, max_input_pixels=max_input_pixels)
