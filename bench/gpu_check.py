"""The GPU check: one command that measures every streaming model on a CUDA machine and writes one table and a JSON.

    python3 bench/gpu_check.py                    # cuda, 2048x1024, shipped weights -> table + gpu_check.json
    make gpu-check                                # the same through the project's venv
    python3 bench/gpu_check.py --device cpu --size 256x128 --repeats 2 --train-steps 1   # what `make test` runs

Needs only Python >= 3.11 with PyTorch (a CUDA build for the real check), NumPy and OpenCV, run from a checkout:
no ROS, no ONNX Runtime, no TensorRT, no set-up, nothing of ours installed, no data (frames and labels are drawn
here). It uses the shipped weights (models/*.pt) when present, else random weights of the same architecture
(`--weights random`); speed does not depend on the weights, only the instance counts of the end-to-end rows do.

Per model (Spatial Embeddings, Box2Pix, DCME) at --size:
- network: fp32 eager, fp16 eager, fp16 with torch.compile and fp16 replayed from a CUDA graph (where they work;
  a failure is reported in the row, not raised);
- decoding: the model's post-processing on the GPU (torch) and on the CPU (NumPy), from the output a perfect
  network would give for a frame with --objects objects (instseg_core.testing.ideal_outputs);
- end to end: the runtime `Segmenter` (uint8 RGB frame in, instances at frame size out), fp32 and fp16, as fps;
- training: one optimiser step (forward, loss, backward, Adam) on --train-batch crops of --train-crop, fp32, with
  fp16 autocast, and as `train --amp` runs it (bf16 autocast where the GPU has it, else fp16 with a GradScaler;
  training/loop.py), as images/s.
Times are medians and p95 over --repeats runs after warm-up, with the device synchronised around each run.
The whole check takes a few minutes on one GPU (torch.compile is most of it; --no-compile skips it).
"""

from __future__ import annotations

import sys

_AT_START = set(sys.modules)  # what the interpreter and site (.pth files) loaded before this script
# ruff: noqa: E402  (the imports below come after that snapshot on purpose)

import argparse
import copy
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch

from instseg_core.losses.precision import to_float32
from instseg_core.runtime.adapters import ModelAdapter, model_adapter
from instseg_core.runtime.backends import TorchBackend
from instseg_core.runtime.segmenter import Segmenter

MODELS = ("spatial_embeddings", "box2pix", "dcme")


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], object], device: str, repeats: int, warmup: int = 3) -> dict:
    """{'median_ms', 'p95_ms', 'repeats'} of fn() with the device synchronised before and after each call."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        samples.append((time.perf_counter() - start) * 1e3)
    return {"median_ms": float(np.median(samples)), "p95_ms": float(np.percentile(samples, 95)),
            "repeats": repeats}


def guarded(fn: Callable[[], dict]) -> dict:
    """fn()'s result, or {'error': 'Type: message'} when it raises (a variant that does not work here)."""
    try:
        return fn()
    except Exception as exc:  # compile / CUDA graph failures differ by torch version and GPU
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"}


def labelled_frame(width: int, height: int, objects: int, classes: int, seed: int = 0
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A drawn street-like frame: (rgb (H, W, 3) uint8, instances (H, W) int32 0 = background, labels (H, W)
    int64 class index + 1 on instance pixels). Objects are filled ellipses and boxes of random colour, size and
    class on a smooth textured background, drawn in painter's order."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 1, (height // 8 + 1, width // 8 + 1, 3)).astype(np.float32)
    background = cv2.resize(cv2.GaussianBlur(noise, (0, 0), 2), (width, height), interpolation=cv2.INTER_LINEAR)
    rgb = np.clip(110 + 40 * background, 0, 255).astype(np.uint8)
    instances = np.zeros((height, width), np.int32)
    labels = np.zeros((height, width), np.int64)
    scale = min(width, height)
    for k in range(1, objects + 1):
        cx, cy = int(rng.uniform(0.05, 0.95) * width), int(rng.uniform(0.3, 0.9) * height)
        ax, ay = (max(2, int(rng.uniform(0.02, 0.12) * scale)) for _ in range(2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        mask = np.zeros((height, width), np.uint8)
        if rng.random() < 0.5:
            cv2.ellipse(mask, (cx, cy), (ax, ay), 0, 0, 360, 1, -1)
        else:
            cv2.rectangle(mask, (cx - ax, cy - ay), (cx + ax, cy + ay), 1, -1)
        inside = mask.astype(bool)
        rgb[inside] = colour
        instances[inside] = k
        labels[inside] = rng.integers(1, classes + 1)
    return rgb, instances, labels


def load_network(name: str, weights: str) -> tuple[ModelAdapter, torch.nn.Module, torch.nn.Module, str]:
    """(adapter, inference module, training module, where the weights came from). The inference module is what
    the runtime runs (Box2Pix: with its upsampling and argmax); the training module is what the loss takes."""
    adapter_type = model_adapter(name)
    path = REPO / "models" / adapter_type.torch_file
    if name == "spatial_embeddings":
        from instseg_core.networks.spatial_embeddings import SpatialEmbeddings, SpatialEmbeddingsConfig

        if weights == "shipped" and path.is_file():
            network, config = adapter_type.load_torch(path)
            source = str(path.relative_to(REPO))
        else:
            network, source = SpatialEmbeddings(SpatialEmbeddingsConfig()), "random"
            config = network.config.to_dict()
        return adapter_type(config), network, network, source
    if name == "dcme":
        from instseg_core.networks.dcme import Dcme, DcmeConfig, DcmeInference

        if weights == "shipped" and path.is_file():
            inference, config = adapter_type.load_torch(path)
            source = str(path.relative_to(REPO))
        else:
            inference, source = DcmeInference(Dcme(DcmeConfig())), "random"
            config = inference.model.config.to_dict()
        return adapter_type(config), inference, inference.model, source
    from instseg_core.networks.box2pix import Box2Pix, Box2PixConfig, Box2PixInference

    if weights == "shipped" and path.is_file():
        inference, config = adapter_type.load_torch(path)
        source = str(path.relative_to(REPO))
    else:
        inference, source = Box2PixInference(Box2Pix(Box2PixConfig())), "random"
        config = inference.model.config.to_dict()
    return adapter_type(config), inference, inference.model, source


def network_rows(module: torch.nn.Module, x: torch.Tensor, device: str, repeats: int, compile_: bool) -> dict:
    """Forward-pass timings of the inference module: fp32, fp16, fp16 compiled, fp16 CUDA graph."""
    rows: dict[str, dict] = {}
    fp32 = module.eval().to(device).to(memory_format=torch.channels_last)
    with torch.inference_mode():
        rows["fp32 eager"] = guarded(lambda: measure(lambda: fp32(x), device, repeats))
    if not device.startswith("cuda"):
        return rows
    half = copy.deepcopy(fp32).half()
    xh = x.half()
    with torch.inference_mode():
        rows["fp16 eager"] = guarded(lambda: measure(lambda: half(xh), device, repeats))
    if compile_:
        def compiled_row() -> dict:
            start = time.perf_counter()
            compiled = torch.compile(half)
            with torch.inference_mode():
                compiled(xh)
                synchronize(device)
                row = measure(lambda: compiled(xh), device, repeats)
            return {**row, "compile_s": time.perf_counter() - start}

        rows["fp16 torch.compile"] = guarded(compiled_row)

    def graph_row() -> dict:
        static = xh.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(3):
                half(static)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.inference_mode():
            half(static)
        return measure(graph.replay, device, repeats)

    rows["fp16 CUDA graph"] = guarded(graph_row)
    return rows


def decode_rows(adapter: ModelAdapter, instances: np.ndarray, labels: np.ndarray, device: str, repeats: int) -> dict:
    """Decoding timings from a perfect network's output for the labelled frame: torch on `device`, NumPy."""
    from instseg_core.testing import ideal_outputs

    n_classes = len(adapter.classes)
    if adapter.name == "spatial_embeddings":
        raw_np = ideal_outputs.ideal_spatial_embeddings_output(instances, labels, n_classes,
                                                               int(adapter.config["n_sigma"]))[None]
        raw_t: object = torch.from_numpy(raw_np).to(device)
        numpy_raw: object = raw_np
    elif adapter.name == "dcme":
        dense, class_probs = ideal_outputs.ideal_dcme_output(instances, labels, adapter.classes)
        numpy_raw = (dense[None], class_probs[None])
        raw_t = tuple(torch.from_numpy(a).to(device) for a in numpy_raw)  # type: ignore[union-attr]
    else:
        detections, semantic, offsets = ideal_outputs.ideal_box2pix_output(instances, labels, n_classes)
        numpy_raw = (detections[None], semantic[None], offsets[None])
        raw_t = tuple(torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in numpy_raw)  # type: ignore[union-attr]
    found = len(adapter.decode(numpy_raw, {}))
    rows = {f"torch on {device}": guarded(lambda: measure(lambda: adapter.decode(raw_t, {}), device, repeats)),
            "NumPy on the CPU": guarded(lambda: measure(lambda: adapter.decode(numpy_raw, {}), "cpu", repeats))}
    for row in rows.values():
        row["instances"] = found
    return rows


def end_to_end_rows(adapter: ModelAdapter, module: torch.nn.Module, rgb: np.ndarray, device: str,
                    repeats: int) -> dict:
    """The runtime Segmenter on the frame (uint8 RGB in, instances at frame size out), fp32 and fp16 (CUDA)."""
    rows = {}
    for precision in ("fp32", "fp16") if device.startswith("cuda") else ("fp32",):
        def row(precision: str = precision) -> dict:
            backend = TorchBackend(copy.deepcopy(module), device=device, threads=os.cpu_count() or 1,
                                   fp16=precision == "fp16")
            segmenter = Segmenter(adapter, backend, score_threshold=0.5, max_input_pixels=None)
            result = measure(lambda: segmenter(rgb), device, repeats)
            result["fps"] = 1e3 / result["median_ms"]
            result["instances"] = len(segmenter(rgb).instances)
            return result

        rows[precision] = guarded(row)
    return rows


def training_rows(adapter: ModelAdapter, network: torch.nn.Module, device: str, batch: int, crop: tuple[int, int],
                  steps: int, objects: int) -> dict:
    """One Adam step on `batch` crops (height, width) of drawn frames, fp32 and fp16 autocast (CUDA): images/s."""
    height, width = crop
    frames = [labelled_frame(width, height, max(1, objects // 4), len(adapter.classes), seed=1 + i)
              for i in range(batch)]
    images = torch.from_numpy(np.stack([f[0] for f in frames])).permute(0, 3, 1, 2).float().div(255)
    images = images.to(device).contiguous(memory_format=torch.channels_last)
    instances = np.stack([f[1] for f in frames])
    labels = np.stack([f[2] for f in frames])
    if adapter.name == "spatial_embeddings":
        from instseg_core.losses.spatial_embedding import SpatialEmbeddingLoss

        loss_module: torch.nn.Module = SpatialEmbeddingLoss(int(adapter.config["n_sigma"]), len(adapter.classes))
        instances_t, labels_t = torch.from_numpy(instances).long().to(device), torch.from_numpy(labels).to(device)
        ignore_t = torch.zeros_like(instances_t, dtype=torch.bool)

        def loss_of(output: object) -> torch.Tensor:
            return loss_module(output.float(), instances_t, labels_t, ignore_t)[0]  # type: ignore[union-attr]
    elif adapter.name == "dcme":
        from instseg_core.losses.dcme import DcmeLoss, dcme_targets

        loss_module = DcmeLoss(float(adapter.config["vector_scale"]))
        dcme_batch = [dcme_targets(i, lab, np.zeros(i.shape, bool), adapter.classes)
                      for i, lab in zip(instances, labels, strict=True)]

        def loss_of(output: object) -> torch.Tensor:
            return loss_module(output, dcme_batch)[0]
    else:
        from instseg_core.losses.box2pix import Box2PixLoss, dense_targets
        from instseg_core.networks.box_priors import prior_boxes

        loss_module = Box2PixLoss()
        targets = [dense_targets(i, lab.astype(np.uint8), np.zeros(i.shape, bool)) for i, lab in zip(instances, labels,
                                                                                                      strict=True)]
        priors = prior_boxes(height, width, network.priors_per_layer)

        def loss_of(output: object) -> torch.Tensor:
            return loss_module(output, targets, priors)[0]

    rows = {}
    # what `train --amp` does (training/loop.py): bfloat16 autocast where the GPU has it (Ampere and newer), no scaler;
    # else float16 with a GradScaler; the loss in float32
    amp_dtype = torch.bfloat16 if device.startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float16
    amp = f"--amp ({'bf16 autocast' if amp_dtype == torch.bfloat16 else 'fp16 autocast + GradScaler'})"
    dtypes = {"fp32": None, "fp16 autocast": torch.float16, amp: amp_dtype}
    for precision in ("fp32", "fp16 autocast", amp) if device.startswith("cuda") else ("fp32",):
        def row(precision: str = precision) -> dict:
            model = copy.deepcopy(network).to(device).train()
            loss_module.to(device)
            optimizer = torch.optim.Adam([*model.parameters(), *loss_module.parameters()], lr=1e-5)
            dtype = dtypes[precision]
            scaler = torch.amp.GradScaler(device.split(":")[0], enabled=dtype == torch.float16)

            def step() -> None:
                with torch.autocast(device.split(":")[0], dtype=dtype or torch.float32, enabled=dtype is not None):
                    output = model(images)
                if dtype is not None:
                    output = to_float32(output)
                loss = loss_of(output)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()

            result = measure(step, device, steps, warmup=1)
            result["images_per_s"] = batch * 1e3 / result["median_ms"]
            result["batch"], result["crop"] = batch, f"{width}x{height}"
            return result

        rows[precision] = guarded(row)
    return rows


def format_row(section: str, variant: str, row: dict) -> list[str]:
    if "error" in row:
        return [section, variant, "-", "-", "-", f"failed: {row['error']}"]
    extra = []
    for key, unit in (("fps", "fps"), ("images_per_s", "images/s"), ("instances", "instances"),
                      ("compile_s", "s to compile")):
        if key in row:
            extra.append(f"{row[key]:.1f} {unit}" if isinstance(row[key], float) else f"{row[key]} {unit}")
    return [section, variant, f"{row['median_ms']:.2f}", f"{row['p95_ms']:.2f}", str(row["repeats"]),
            ", ".join(extra)]


def print_table(title: str, rows: list[list[str]]) -> None:
    header = ["stage", "variant", "median ms", "p95 ms", "runs", ""]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print(f"\n{title}")
    for r in [header, ["-" * w for w in widths], *rows]:
        print("| " + " | ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda[:i] (the check) or cpu (the smoke run in tests)")
    parser.add_argument("--size", default="2048x1024", help="network input WxH")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--weights", choices=("shipped", "random"), default="shipped")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--objects", type=int, default=30, help="objects in the drawn frame")
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--train-crop", default="1024x512", help="training crop WxH")
    parser.add_argument("--train-steps", type=int, default=10)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (the slowest part)")
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.split("x"))
    crop_w, crop_h = (int(v) for v in args.train_crop.split("x"))
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device (torch {torch.__version__}, CUDA build: {torch.version.cuda}); run with "
              "--device cpu for the smoke run", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = True
    machine = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
               "cpu_cores": os.cpu_count(), "device": args.device,
               "gpu": torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else None,
               "opencv": cv2.__version__, "numpy": np.__version__}
    try:
        import tensorrt  # used by the runtime's TensorRT backend when present; not timed here

        machine["tensorrt"] = tensorrt.__version__
    except ImportError:
        machine["tensorrt"] = None
    report: dict = {"machine": machine, "size": f"{width}x{height}", "models": {}}
    started = time.perf_counter()
    for name in args.models:
        model_start = time.perf_counter()
        adapter, module, network, source = load_network(name, args.weights)
        multiple = adapter.input_multiple
        if width % multiple or height % multiple:
            parser.error(f"--size must be a multiple of {multiple} for {name}")
        rgb, instances, labels = labelled_frame(width, height, args.objects, len(adapter.classes))
        x = torch.from_numpy(adapter.preprocess(rgb)).to(args.device).contiguous(memory_format=torch.channels_last)
        result = {"weights": source,
                  "network": network_rows(module, x, args.device, args.repeats, not args.no_compile),
                  "decoding": decode_rows(adapter, instances, labels, args.device, args.repeats),
                  "end_to_end": end_to_end_rows(adapter, module, rgb, args.device, args.repeats),
                  "training": training_rows(adapter, network, args.device, args.train_batch, (crop_h, crop_w),
                                            args.train_steps, args.objects)}
        result["seconds"] = time.perf_counter() - model_start
        report["models"][name] = result
        rows = [format_row(section, variant, row) for section in ("network", "decoding", "end_to_end", "training")
                for variant, row in result[section].items()]
        print_table(f"{name} at {width}x{height} on {machine['gpu'] or args.device} ({source} weights, "
                    f"{result['seconds']:.0f} s)", rows)
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    report["seconds"] = time.perf_counter() - started
    report["imported"] = sorted({m.split(".")[0] for m in set(sys.modules) - _AT_START if not m.startswith("_")}
                                - set(sys.stdlib_module_names) - {"cython_runtime"})
    args.out.write_text(json.dumps(report, indent=1))
    print(f"\nwrote {args.out} ({report['seconds']:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
