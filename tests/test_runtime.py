"""The runtime: registry, backends (real ONNX Runtime and PyTorch; GPU ones fail clearly here), Segmenter."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

from instseg_core.base.atomic_files import write_bytes_atomically
from instseg_core.base.instances import Instances, filter_instances, resize_instances
from instseg_core.base.model_files import find_model
from instseg_core.data.street_layout import make_scene
from instseg_core.data.synthetic import render
from instseg_core.runtime import (
    MODELS,
    BackendUnavailableError,
    ModelFileError,
    create_segmenter,
    model_adapter,
)
from instseg_core.runtime.backends import (
    OnnxRuntimeBackend,
    TorchBackend,
    engine_cache_key,
    ensure_writable_dir,
)

SE_ONNX = find_model("spatial_embeddings.onnx")
SE_TORCH = find_model("spatial_embeddings.pt")
CUDA = __import__("torch").cuda.is_available()


@pytest.fixture(scope="module")
def street_frame() -> np.ndarray:
    return render(make_scene(777, 1024, 512)).rgb


def test_registry_lists_models_and_rejects_unknown_names() -> None:
    assert "spatial_embeddings" in MODELS
    assert model_adapter("spatial_embeddings").onnx_file == SE_ONNX.name
    with pytest.raises(ValueError, match=r"registered: .*spatial_embeddings"):
        model_adapter("mask_rcnn")
    with pytest.raises(ValueError, match="unknown backend"):
        create_segmenter(backend="openvino")


def test_shipped_model_files_and_manifest() -> None:
    assert SE_ONNX.is_file() and SE_TORCH.is_file() and SE_ONNX.with_suffix(".json").is_file()
    config = model_adapter("spatial_embeddings").read_manifest(SE_ONNX)
    assert config["classes"][:3] == ["person", "rider", "car"] and config["n_sigma"] in (1, 2)


@pytest.mark.parametrize(("width", "height"), [(512, 256), (1024, 512)])
def test_onnxruntime_matches_pytorch(street_frame: np.ndarray, width: int, height: int) -> None:
    """Parity on two input sizes: the raw outputs agree, and so do the decoded instances."""
    torch_segmenter = create_segmenter(backend="torch", input_size=(width, height))
    onnx_segmenter = create_segmenter(backend="onnxruntime", input_size=(width, height))
    import cv2

    network_input = torch_segmenter.adapter.preprocess(cv2.resize(street_frame, (width, height),
                                                                  interpolation=cv2.INTER_AREA))
    raw_torch = torch_segmenter.backend.run(network_input)
    raw_onnx = onnx_segmenter.backend.run(network_input)
    assert raw_torch.shape == raw_onnx.shape == (1, raw_torch.shape[1], height, width)
    assert np.abs(raw_torch - raw_onnx).max() < 2e-3 * max(1.0, float(np.abs(raw_torch).max()))
    a, b = torch_segmenter(street_frame), onnx_segmenter(street_frame)
    assert a.instances.id_image.shape == street_frame.shape[:2]
    assert abs(len(a.instances) - len(b.instances)) <= 1
    agree = np.mean((a.instances.id_image > 0) == (b.instances.id_image > 0))
    assert agree > 0.995


def test_segmenter_output_at_the_image_size(street_frame: np.ndarray) -> None:
    segmenter = create_segmenter(backend="onnxruntime", score_threshold=0.5)
    odd = street_frame[:501, :1003]  # not a multiple of the model's: the network runs at the nearest multiples
    m = segmenter.adapter.input_multiple
    assert segmenter.network_size(1003, 501) == (round(1003 / m) * m, round(501 / m) * m)
    result = segmenter(np.ascontiguousarray(odd))
    instances = result.instances
    assert instances.id_image.shape == (501, 1003) and instances.id_image.dtype == np.uint16
    assert len(result.class_names) == len(instances) == len(result.label_ids)
    assert set(result.class_names) <= set(segmenter.classes)
    assert np.all(instances.scores >= 0.5)
    assert set(result.timing_ms) == {"preprocess", "inference", "postprocess", "total"}
    for k, ((x0, y0, x1, y1), polygon) in enumerate(zip(instances.boxes, result.polygons(), strict=True)):
        ys, xs = np.nonzero(instances.id_image == k + 1)
        if len(xs):
            assert x0 <= xs.min() and xs.max() < x1 and y0 <= ys.min() and ys.max() < y1
        assert polygon.ndim == 2 and polygon.shape[1] == 2
    # a higher threshold (changeable at run time) keeps a subset, renumbered 1..M
    loose = segmenter(street_frame)
    segmenter.score_threshold = 0.9
    strict = segmenter(street_frame)
    assert len(strict.instances) == int(np.sum(loose.instances.scores >= 0.9))
    assert np.all(strict.instances.scores >= 0.9)
    assert strict.instances.id_image.max() == len(strict.instances)
    cars = create_segmenter(backend="onnxruntime", score_threshold=0.5, classes=["car"])(street_frame)
    assert set(cars.class_names) <= {"car"} and len(cars.instances) == loose.class_names.count("car")
    with pytest.raises(ValueError, match="unicorn"):
        create_segmenter(backend="onnxruntime", classes=["unicorn"])


def test_segmenter_rejects_bad_images() -> None:
    segmenter = create_segmenter(backend="onnxruntime")
    for bad in (np.zeros((64, 64), np.uint8), np.zeros((64, 64, 3), np.float32), np.zeros((0, 64, 3), np.uint8)):
        with pytest.raises(ValueError, match="uint8 RGB"):
            segmenter(bad)
    multiple = segmenter.adapter.input_multiple  # 16 for the ESPNetv2 backbone, 8 for ERFNet
    with pytest.raises(ValueError, match=f"multiples of {multiple}"):
        create_segmenter(backend="onnxruntime", input_size=(1000 + multiple // 2, 500))


@pytest.mark.skipif(CUDA, reason="this machine has a GPU: test_torch_cuda_matches_cpu runs the GPU path instead")
def test_gpu_backends_fail_clearly_without_a_gpu(tmp_path: Path) -> None:
    import onnxruntime
    import torch

    with pytest.raises(BackendUnavailableError, match="CUDA GPU"):
        create_segmenter(backend="torch", device="cuda")
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(BackendUnavailableError, match="CUDAExecutionProvider"):
            create_segmenter(backend="onnxruntime", device="cuda")
        with pytest.raises(BackendUnavailableError, match="TensorrtExecutionProvider"):
            create_segmenter(backend="onnxruntime", device="tensorrt", engine_cache_dir=tmp_path)
    with pytest.raises(BackendUnavailableError, match=r"tensorrt|CUDA|input_size"):
        create_segmenter(backend="tensorrt", device="cuda", input_size=(1024, 512), engine_cache_dir=tmp_path)
    with pytest.raises(BackendUnavailableError, match="unknown torch device"):
        TorchBackend(torch.nn.Identity(), device="tpu")


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (the no-GPU errors are tested above)")
def test_torch_cuda_matches_cpu(street_frame: np.ndarray) -> None:
    """On a GPU machine: the torch CUDA backend (GPU decoding included) finds the instances the CPU finds."""
    cpu = create_segmenter(backend="torch", device="cpu", input_size=(1024, 512))(street_frame)
    gpu = create_segmenter(backend="torch", device="cuda", input_size=(1024, 512))(street_frame)
    assert len(gpu.instances) == len(cpu.instances) > 0
    assert np.mean(gpu.instances.id_image > 0) == pytest.approx(np.mean(cpu.instances.id_image > 0), abs=0.01)


def test_missing_and_corrupt_model_files(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match=r"not found: .*nowhere.onnx"):
        create_segmenter(model_file=tmp_path / "nowhere.onnx")
    with pytest.raises(ModelFileError, match=r"'nowhere.onnx' not found \(searched"):
        create_segmenter(model_file="nowhere.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not a model" * 100)
    with pytest.raises(ModelFileError, match="manifest"):
        create_segmenter(model_file=corrupt)
    for bad_manifest in ("[1, 2]", '{"model": "spatial_embeddings"}', "{not json"):
        corrupt.with_suffix(".json").write_text(bad_manifest)
        with pytest.raises(ModelFileError, match=r"corrupt\.json"):
            create_segmenter(model_file=corrupt)
    corrupt.with_suffix(".json").write_text(SE_ONNX.with_suffix(".json").read_text())
    with pytest.raises(ModelFileError, match=r"cannot load ONNX model .*corrupt.onnx"):
        create_segmenter(model_file=corrupt)
    with pytest.raises(ModelFileError, match="not found"):
        OnnxRuntimeBackend(tmp_path / "missing.onnx")


def test_engine_cache_key_and_directory(tmp_path: Path) -> None:
    base = dict(model_sha256="ab" * 32, input_shape=(1, 3, 1024, 2048), fp16=True, gpu_name="NVIDIA H100 80GB HBM3",
                tensorrt_version="10.3.0")
    key = engine_cache_key(**base)
    assert key.endswith(".engine") and "/" not in key and " " not in key
    for change in (dict(model_sha256="cd" * 32), dict(input_shape=(1, 3, 512, 1024)), dict(fp16=False),
                   dict(gpu_name="NVIDIA H200"), dict(tensorrt_version="10.4.0")):
        assert engine_cache_key(**{**base, **change}) != key, change
    assert ensure_writable_dir(tmp_path / "a" / "b").is_dir()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(BackendUnavailableError, match="not writable"):
        ensure_writable_dir(blocker / "engines")
    target = tmp_path / "engine.bin"
    write_bytes_atomically(target, b"123")
    assert target.read_bytes() == b"123" and sorted(os.listdir(tmp_path)) == ["a", "engine.bin", "file"]


def test_filter_and_resize_instances() -> None:
    id_image = np.zeros((4, 6), np.uint16)
    id_image[0:2, 0:2] = 1
    id_image[2:4, 3:6] = 2
    instances = Instances(id_image, np.array([0, 2]), np.array([0.4, 0.9], np.float32),
                          np.array([[0, 0, 2, 2], [3, 2, 6, 4]]), np.array([4, 6]))
    kept = filter_instances(instances, instances.scores >= 0.5)
    assert len(kept) == 1 and kept.id_image.max() == 1 and (kept.id_image == 1).sum() == 6
    assert kept.classes.tolist() == [2]
    big = resize_instances(instances, 12, 8)
    assert big.id_image.shape == (8, 12)
    assert big.areas.tolist() == [16, 24]
    assert big.boxes.tolist() == [[0, 0, 4, 4], [6, 4, 12, 8]]


@pytest.mark.parametrize("content", ["random", "truncated", "onnx", "other_model", "not_a_checkpoint"])
def test_bad_torch_checkpoints_are_clear_errors(tmp_path: Path, content: str) -> None:
    """backend 'torch' with a file that is not a checkpoint of this model: one ModelFileError naming the file."""
    import torch

    path = tmp_path / f"{content}.pt"
    if content == "random":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif content == "truncated":
        path.write_bytes(SE_TORCH.read_bytes()[:100_000])
    elif content == "onnx":
        path.write_bytes(SE_ONNX.read_bytes())
    elif content == "other_model":
        torch.save(torch.load(find_model("box2pix.pt"), weights_only=False), path)
    else:
        torch.save([1, 2, 3], path)
    with pytest.raises(ModelFileError, match=re.escape(str(path))):
        create_segmenter("spatial_embeddings", backend="torch", model_file=path)


def test_tiny_images_are_scaled_up_to_the_model_s_smallest_input() -> None:
    """A 10 x 10 image runs (at the model's smallest side) instead of failing inside the network; an explicit input
    size below it is a clear error."""
    segmenter = create_segmenter(backend="onnxruntime")
    smallest = max(segmenter.adapter.input_multiple, segmenter.adapter.min_input_side)
    assert min(segmenter.network_size(10, 10)) == smallest
    result = segmenter(np.zeros((10, 10, 3), np.uint8))
    assert result.instances.id_image.shape == (10, 10)
    if smallest > segmenter.adapter.input_multiple:
        with pytest.raises(ValueError, match="smallest side"):
            create_segmenter(backend="onnxruntime", input_size=(segmenter.adapter.input_multiple,) * 2)
