"""Inference backends: one network input (1, 3, H, W) float32 in, the raw output out: one array for a
single-output network (Spatial Embeddings: (1, C, H, W)), a tuple of arrays in the graph's output order for
several (Box2Pix: detections, semantic, offsets).

- `TorchBackend`: PyTorch eager on CPU or CUDA (channels_last, no_grad).
- `OnnxRuntimeBackend`: ONNX Runtime with the CPU, CUDA or TensorRT execution provider.
- `TensorRTBackend`: a native TensorRT engine built from the ONNX file (fp32 or fp16), cached on disk under
  a key of model hash + input shape + precision + GPU name + TensorRT version (see `engine_cache_key`),
  written atomically and rebuilt when the key changes.

A backend that cannot run on this machine (no GPU, no TensorRT, an execution provider missing from the
installed onnxruntime) raises `BackendUnavailableError` at construction, naming what is missing; nothing
falls back silently.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from instseg_core.base.atomic_files import write_bytes_atomically
from instseg_core.base.model_files import ModelFileError

# What `run` returns: one (1, ...) float32/uint8 array for a single-output network, a tuple of arrays in the
# graph's output order for several; `run_tensor` returns the same as torch tensors on the backend's device.
RawOutput = Any


class InferenceBackend(Protocol):
    """What the Segmenter and the annotation pipeline need of a backend."""

    name: str

    def run(self, image: np.ndarray) -> RawOutput:
        """(1 or N, 3 or 4, H, W) float32 network input -> the raw output as NumPy arrays on the CPU."""
        ...

    def describe(self) -> str:
        """e.g. 'onnxruntime 1.31.1 CPU (2 threads)'."""
        ...


class BackendUnavailableError(RuntimeError):
    """The requested backend/device cannot run here; the message says what is missing."""


def _require_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    return path


def _cuda_device(device: str) -> str:
    import torch

    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
        raise BackendUnavailableError(f"device {device!r} needs a CUDA GPU, but torch ({torch.__version__}, {build}) "
                                 "sees none (torch.cuda.is_available() is False)")
    return device


def _to_numpy(output: Any) -> RawOutput:
    """Torch output(s) -> NumPy on the CPU; floating point as float32, integer types kept."""
    if isinstance(output, (tuple, list)):
        return tuple(_to_numpy(o) for o in output)
    if output.is_floating_point():
        output = output.float()
    return output.cpu().numpy()


class TorchBackend:
    """PyTorch eager. `model` is an nn.Module mapping (1, 3, H, W) to its output tensor(s); device 'cpu' or
    'cuda[:i]'; `fp16` runs the network in half precision (CUDA only; outputs come back as float32 arrays)."""

    def __init__(self, model: Any, device: str = "cpu", threads: int = 2, fp16: bool = False) -> None:
        import torch

        self.torch = torch
        if device.startswith("cuda"):
            _cuda_device(device)
        elif device != "cpu":
            raise BackendUnavailableError(f"unknown torch device {device!r} (use 'cpu' or 'cuda[:index]')")
        if fp16 and device == "cpu":
            raise BackendUnavailableError("fp16 with backend 'torch' needs device 'cuda' (half-precision "
                                          "convolutions on a CPU are slower than float32)")
        self.dtype = torch.float16 if fp16 else torch.float32
        if device == "cpu" and threads:
            torch.set_num_threads(int(threads))
        self.device = device
        self.model = model.eval().to(device=device, dtype=self.dtype).to(memory_format=torch.channels_last)
        self.input_shape: tuple[int | None, ...] | None = None  # a module takes any shape it can
        self.name = "torch"

    def run_tensor(self, image: np.ndarray) -> RawOutput:
        """The raw output as a torch tensor on the backend's device (for GPU post-processing)."""
        with self.torch.no_grad():
            x = self.torch.from_numpy(image).to(self.device, self.dtype).contiguous(
                memory_format=self.torch.channels_last)
            return self.model(x)

    def run(self, image: np.ndarray) -> RawOutput:
        return _to_numpy(self.run_tensor(image))

    def describe(self) -> str:
        if self.device.startswith("cuda"):
            return f"torch {self.torch.__version__} on {self.torch.cuda.get_device_name(self.device)}"
        return f"torch {self.torch.__version__} on CPU ({self.torch.get_num_threads()} threads)"


ORT_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                 "tensorrt": "TensorrtExecutionProvider"}


class OnnxRuntimeBackend:
    """ONNX Runtime. provider: 'cpu', 'cuda' or 'tensorrt' (the TensorRT EP caches its engines in
    `engine_cache_dir`, fp16 when `fp16`). `spin_wait`: the intra-op worker threads busy-wait for the next
    piece of work (ONNX Runtime's default; lowest latency for back-to-back runs) or sleep at once (leaves the
    cores to other work between runs, e.g. DDS transport in a service node on a small machine)."""

    def __init__(self, path: str | os.PathLike, provider: str = "cpu", threads: int = 2,
                 engine_cache_dir: str | os.PathLike | None = None, fp16: bool = False,
                 spin_wait: bool = True) -> None:
        import onnxruntime as ort

        self.path = _require_file(path)
        if provider not in ORT_PROVIDERS:
            raise BackendUnavailableError(f"unknown onnxruntime provider {provider!r}; use one of "
                                          f"{sorted(ORT_PROVIDERS)}")
        wanted = ORT_PROVIDERS[provider]
        available = ort.get_available_providers()
        if wanted not in available:
            raise BackendUnavailableError(f"onnxruntime {ort.__version__} here has no {wanted} (available: "
                                     f"{', '.join(available)}); install onnxruntime-gpu with CUDA/TensorRT "
                                     "libraries on a GPU machine")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = max(1, int(threads))
        options.inter_op_num_threads = 1
        if not spin_wait:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers: list = [wanted]
        if provider == "tensorrt":
            cache = ensure_writable_dir(engine_cache_dir or default_engine_cache_dir())
            providers = [(wanted, {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
                                   "trt_fp16_enable": bool(fp16)}), "CUDAExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types for corrupt files
            raise ModelFileError(f"cannot load ONNX model {self.path}: {exc}") from exc
        graph_input = self.session.get_inputs()[0]
        self.input_name = graph_input.name
        # the graph's declared input shape; None for a symbolic (dynamic) dimension
        self.input_shape: tuple[int | None, ...] = tuple(d if isinstance(d, int) else None for d in graph_input.shape)
        self.output_names = [output.name for output in self.session.get_outputs()]
        self.provider = provider
        self.threads = threads
        self.name = "onnxruntime"

    def run(self, image: np.ndarray) -> RawOutput:
        outputs = self.session.run(self.output_names, {self.input_name: np.ascontiguousarray(image)})
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def describe(self) -> str:
        import onnxruntime as ort

        device = f"CPU ({self.threads} threads)" if self.provider == "cpu" else self.provider
        return f"onnxruntime {ort.__version__} {device}"


def default_engine_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "instseg" / "engines"


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create `path` if needed and check that files can be written there; BackendUnavailableError otherwise."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise BackendUnavailableError(f"engine cache directory {path} is not writable ({exc.strerror or exc}); "
                                 "set engine_cache_dir to a writable directory") from exc
    return path


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def engine_cache_key(model_sha256: str, input_shape: tuple[int, ...], fp16: bool, gpu_name: str,
                     tensorrt_version: str) -> str:
    """The file name of a cached engine: changes whenever the model, the input shape, the precision, the GPU
    or the TensorRT version changes."""
    gpu = "".join(c if c.isalnum() else "-" for c in gpu_name).strip("-")
    shape = "x".join(str(int(d)) for d in input_shape)
    return f"{model_sha256[:16]}_{shape}_{'fp16' if fp16 else 'fp32'}_{gpu}_trt{tensorrt_version}.engine"


class TensorRTBackend:
    """A native TensorRT engine for one input shape (1, 3, H, W), built from the ONNX file on first use and
    cached. Needs the `tensorrt` Python package, a CUDA GPU and torch with CUDA (for device buffers)."""

    def __init__(self, onnx_path: str | os.PathLike, input_shape: tuple[int, int, int, int], fp16: bool = True,
                 engine_cache_dir: str | os.PathLike | None = None, device: str = "cuda:0") -> None:
        self.onnx_path = _require_file(onnx_path)
        try:
            import tensorrt as trt
        except ImportError as exc:
            raise BackendUnavailableError("backend 'tensorrt' needs the tensorrt Python package (pip install "
                                     "tensorrt on a machine with an NVIDIA GPU and driver)") from exc
        import torch

        _cuda_device(device)
        self.trt, self.torch, self.device = trt, torch, torch.device(device)
        self.input_shape = tuple(int(d) for d in input_shape)
        cache_dir = ensure_writable_dir(engine_cache_dir or default_engine_cache_dir())
        key = engine_cache_key(file_sha256(self.onnx_path), self.input_shape, fp16,
                               torch.cuda.get_device_name(self.device), trt.__version__)
        self.engine_path = cache_dir / key
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.built_engine = False
        if not self.engine_path.is_file():
            start = time.perf_counter()
            write_bytes_atomically(self.engine_path, self._build(fp16))
            self.build_seconds = time.perf_counter() - start
            self.built_engine = True
        runtime = trt.Runtime(self.logger)
        self.engine = runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self.engine is None:
            raise ModelFileError(f"cannot deserialise TensorRT engine {self.engine_path}; delete it to rebuild")
        self.context = self.engine.create_execution_context()
        self.input_name = self.engine.get_tensor_name(0)
        self.context.set_input_shape(self.input_name, self.input_shape)
        self.input_buffer = torch.empty(self.input_shape, dtype=torch.float32, device=self.device)
        self.context.set_tensor_address(self.input_name, self.input_buffer.data_ptr())
        dtypes = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32,
                  trt.int64: torch.int64, trt.uint8: torch.uint8, trt.bool: torch.bool}
        self.output_buffers = []
        for index in range(1, self.engine.num_io_tensors):  # every output, in the graph's order
            name = self.engine.get_tensor_name(index)
            shape = tuple(self.context.get_tensor_shape(name))
            buffer = torch.empty(shape, dtype=dtypes[self.engine.get_tensor_dtype(name)], device=self.device)
            self.context.set_tensor_address(name, buffer.data_ptr())
            self.output_buffers.append(buffer)
        self.stream = torch.cuda.Stream(self.device)
        self.fp16 = fp16
        self.name = "tensorrt"

    def _build(self, fp16: bool) -> bytes:
        trt = self.trt
        builder = trt.Builder(self.logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse(self.onnx_path.read_bytes()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ModelFileError(f"TensorRT cannot parse {self.onnx_path}: {errors}")
        config = builder.create_builder_config()
        if fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        profile = builder.create_optimization_profile()
        name = network.get_input(0).name
        profile.set_shape(name, self.input_shape, self.input_shape, self.input_shape)
        config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise ModelFileError(f"TensorRT failed to build an engine from {self.onnx_path}")
        return bytes(serialized)

    def run_tensor(self, image: np.ndarray) -> RawOutput:
        if tuple(image.shape) != self.input_shape:
            raise ValueError(f"engine built for input {self.input_shape}, got {tuple(image.shape)}")
        with self.torch.cuda.stream(self.stream):
            self.input_buffer.copy_(self.torch.from_numpy(image), non_blocking=False)
            self.context.execute_async_v3(self.stream.cuda_stream)
        self.stream.synchronize()
        return self.output_buffers[0] if len(self.output_buffers) == 1 else tuple(self.output_buffers)

    def run(self, image: np.ndarray) -> RawOutput:
        return _to_numpy(self.run_tensor(image))

    def describe(self) -> str:
        return (f"TensorRT {self.trt.__version__} {'fp16' if self.fp16 else 'fp32'} on "
                f"{self.torch.cuda.get_device_name(self.device)}")
