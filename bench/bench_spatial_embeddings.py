"""Spatial Embeddings on CPU: network ms per input size (PyTorch eager vs ONNX Runtime) and clustering ms.

    .venv/bin/python bench/bench_spatial_embeddings.py [--model models/spatial_embeddings.onnx] [--threads 2]

Network: the ERFNet two-branch network at 512x256, 1024x512 and 2048x1024, PyTorch eager (channels_last,
no_grad) and ONNX Runtime (graph optimisation ALL) in the same run. The ONNX model is the shipped one when
it exists (else a fresh export); PyTorch runs the same architecture with fresh weights (same cost).
Clustering at 2048x1024 on 31 and on 45 objects: the network output a perfect model would give for a
mosaic of four synthetic street scenes (instseg_core.testing.ideal_outputs, 2 px embedding noise),
with ours (NumPy, 1 and 2 threads; torch on CPU) against a literal port of the reference implementation's
clustering (davyneven/SpatialEmbeddings, torch, per class) as the baseline. When the shipped model exists,
clustering of its real output on a synthetic 1024x512 frame is timed too.
Goal on 2 cores: clustering <= 15 ms at 2048x1024 with ~30 instances.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, os.path.dirname(__file__))
from benchlib import print_table, time_call

from instseg_core.base.network_input import rgb_to_unit_nchw as preprocess
from instseg_core.data.cityscapes import PolygonObject, name2label, visible_masks
from instseg_core.data.instance_training import instance_targets
from instseg_core.data.street_layout import make_scene
from instseg_core.data.synthetic import render
from instseg_core.networks.embedding_coding import PIXEL_SPACING, SIGMA_SCALE
from instseg_core.networks.spatial_embeddings import SpatialEmbeddings
from instseg_core.postprocess.seed_clustering import ClusteringParams, cluster_seeds, cluster_seeds_torch
from instseg_core.testing.ideal_outputs import ideal_spatial_embeddings_output as ideal_output

REPO = Path(__file__).resolve().parents[1]
SIZES = ((512, 256), (1024, 512), (2048, 1024))
CLASSES = ("person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")
CLUSTERING_TARGET_MS = 15.0
# four 1024x512 scenes per 2048x1024 mosaic: 31 objects (the goal's ~30) and a busier 45
MOSAICS = ((27, 28, 31, 29), (20, 21, 22, 23))
ONE_THREAD = ClusteringParams(threads=1)


def instance_ids_of(frame_objects: list, height: int, width: int) -> np.ndarray:
    """A Cityscapes instanceIds map (labelId * 1000 + k) of a rendered frame's objects."""
    objects = [PolygonObject(label, polygon) for label, polygon in frame_objects]
    ids = np.zeros((height, width), np.int32)
    counters: dict[str, int] = {}
    for obj, mask in zip(objects, visible_masks(height, width, objects), strict=True):
        if obj.label in CLASSES:
            ids[mask] = name2label[obj.label].id * 1000 + counters.setdefault(obj.label, 0)
            counters[obj.label] += 1
    return ids


def mosaic_scene(seeds: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rgb 1024x2048x3, instances, labels) from four 1024x512 synthetic scenes."""
    rgb = np.zeros((1024, 2048, 3), np.uint8)
    instances = np.zeros((1024, 2048), np.int32)
    labels = np.zeros((1024, 2048), np.uint8)
    count = 0
    for i, seed in enumerate(seeds):
        frame = render(make_scene(seed, 1024, 512))
        inst, lab, _ = instance_targets(instance_ids_of(frame.objects, 512, 1024), CLASSES)
        window = (slice(512 * (i // 2), 512 * (i // 2 + 1)), slice(1024 * (i % 2), 1024 * (i % 2 + 1)))
        rgb[window] = frame.rgb
        instances[window] = np.where(inst > 0, inst + count, 0)
        labels[window] = lab
        count += int(inst.max())
    return rgb, instances, labels


def reference_clustering(raw: torch.Tensor, n_sigma: int, n_classes: int, threshold: float = 0.5,
                         min_pixel: int = 64) -> list:
    """A literal port of the reference Cluster.cluster (per class), the baseline."""
    height, width = raw.shape[1:]
    xym = torch.stack([torch.arange(width).float()[None].expand(height, width),
                       torch.arange(height).float()[:, None].expand(height, width)]) * PIXEL_SPACING
    spatial_emb = torch.tanh(raw[0:2]) + xym
    sigma = raw[2:2 + n_sigma]
    instances = []
    for c in range(n_classes):
        seed_map = torch.sigmoid(raw[2 + n_sigma + c:3 + n_sigma + c])
        mask = seed_map > 0.5
        if mask.sum() <= min_pixel:
            continue
        spatial_emb_masked = spatial_emb[mask.expand_as(spatial_emb)].view(2, -1)
        sigma_masked = sigma[mask.expand_as(sigma)].view(n_sigma, -1)
        seed_map_masked = seed_map[mask].view(1, -1)
        unclustered = torch.ones(mask.sum()).short()
        instance_map_masked = torch.zeros(mask.sum()).short()
        count = 1
        while unclustered.sum() > min_pixel:
            seed = (seed_map_masked * unclustered.float()).argmax().item()
            seed_score = (seed_map_masked * unclustered.float()).max().item()
            if seed_score < threshold:
                break
            center = spatial_emb_masked[:, seed:seed + 1]
            unclustered[seed] = 0
            s = torch.exp(sigma_masked[:, seed:seed + 1] * SIGMA_SCALE)
            dist = torch.exp(-1 * torch.sum(torch.pow(spatial_emb_masked - center, 2) * s, 0, keepdim=True))
            proposal = (dist > 0.5).squeeze()
            if proposal.sum() > min_pixel and unclustered[proposal].sum().float() / proposal.sum().float() > 0.5:
                instance_map_masked[proposal.squeeze()] = count
                instance_mask = torch.zeros(height, width).short()
                instance_mask[mask.squeeze()] = proposal.short()
                instances.append({"mask": instance_mask, "score": seed_score, "class": c})
                count += 1
            unclustered[proposal] = 0
    return instances


def network_rows(model_path: Path | None, threads: int) -> list[list]:
    torch.set_num_threads(threads)
    model = SpatialEmbeddings().eval().to(memory_format=torch.channels_last)
    with tempfile.TemporaryDirectory() as tmp:
        if model_path is None or not model_path.is_file():
            model_path = Path(tmp) / "se.onnx"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(model, torch.zeros(1, 3, 256, 512), str(model_path), input_names=["image"],
                                  output_names=["raw"], opset_version=17, dynamo=False,
                                  dynamic_axes={"image": {2: "h", 3: "w"}, "raw": {2: "h", 3: "w"}})
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    rows = []
    rng = np.random.default_rng(0)
    for width, height in SIZES:
        image = preprocess(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
        repeats = {512: 20, 1024: 8, 2048: 4}[width]
        x = torch.from_numpy(image).contiguous(memory_format=torch.channels_last)

        def run_torch(x: torch.Tensor = x) -> None:
            with torch.no_grad():
                model(x)

        eager = time_call("torch", run_torch, repeats=repeats, warmup=1)
        onnx = time_call("ort", lambda image=image: session.run(["raw"], {"image": image}), repeats=repeats,
                         warmup=1)
        rows.append([f"{width}x{height}", "PyTorch eager", eager.median, eager.p95, 1.0])
        rows.append([f"{width}x{height}", "ONNX Runtime", onnx.median, onnx.p95, eager.median / onnx.median])
    return rows


def clustering_rows(model_path: Path | None, threads: int) -> list[list]:
    rows = []
    many_threads = ClusteringParams(threads=threads)
    for seeds in MOSAICS:
        _, instances, labels = mosaic_scene(seeds)
        count = int(instances.max())
        raw = ideal_output(instances, labels, len(CLASSES), 2, margin_px=8, noise_px=2.0)
        raw_torch = torch.from_numpy(raw)
        baseline = time_call("reference", lambda raw_torch=raw_torch: reference_clustering(raw_torch, 2, len(CLASSES)),
                             repeats=3, warmup=1)
        found = len(cluster_seeds(raw, 2))
        name = f"2048x1024, ideal output, {count} objects ({found} found)"
        rows.append([name, "reference port (torch CPU)", baseline.median, baseline.p95, 1.0])
        for label, fn in (("ours, NumPy, 1 thread", lambda raw=raw: cluster_seeds(raw, 2, ONE_THREAD)),
                          (f"ours, NumPy, {threads} threads", lambda raw=raw: cluster_seeds(raw, 2, many_threads)),
                          ("ours, torch CPU", lambda raw_torch=raw_torch: cluster_seeds_torch(raw_torch, 2))):
            timing = time_call(label, fn, repeats=5 if "torch" in label else 40, warmup=1)
            rows.append([name, label, timing.median, timing.p95, baseline.median / timing.median])
    if model_path is not None and model_path.is_file():
        session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        frame = render(make_scene(4242, 1024, 512))
        trained = session.run(["raw"], {"image": preprocess(frame.rgb)})[0][0]
        found = len(cluster_seeds(trained, 2))
        timing = time_call("trained", lambda: cluster_seeds(trained, 2, ClusteringParams(threads=threads)),
                           repeats=40)
        rows.append([f"1024x512, shipped model's output ({found} found)", f"ours, NumPy, {threads} threads",
                     timing.median, timing.p95, float("nan")])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=REPO / "models" / "spatial_embeddings.onnx")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-network", action="store_true")
    args = parser.parse_args()
    if not args.skip_network:
        print_table(["input", "backend", "p50 ms", "p95 ms", "speed-up vs PyTorch"],
                    network_rows(args.model, args.threads),
                    title=f"Spatial Embeddings network on {os.cpu_count()} CPU cores")
    rows = clustering_rows(args.model, args.threads)
    print_table(["case", "clustering", "p50 ms", "p95 ms", "speed-up vs reference"], rows,
                title=f"Seed clustering (goal <= {CLUSTERING_TARGET_MS:.0f} ms at 2048x1024 with ~30 instances)")


if __name__ == "__main__":
    main()
