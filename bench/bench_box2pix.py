"""Box2Pix, DCME and Spatial Embeddings on CPU, in the same run: network ms per input size and post-processing ms.

    .venv/bin/python bench/bench_box2pix.py [--threads 2] [--skip-network]

Network: the three ONNX models (the shipped ones in models/, else fresh exports of the same architectures) at
512x256, 1024x512 and 2048x1024 with ONNX Runtime on the CPU (graph optimisation ALL).
Post-processing: the output a perfect network would give (instseg_core.testing.ideal_outputs, 2 px offset noise) for a
synthetic scene at 512x256 and at 1024x512, and for 2048x1024 mosaics of four scenes (31 and 45 objects):
- Box2Pix: detections + NMS + pixel-to-box assignment + instances (instseg_core.postprocess.box_assignment),
  NumPy (1 thread) and torch on the CPU; the baseline is the paper's formulation taken literally, one
  pixels x boxes cost matrix and an argmin (NumPy), on the same detections;
- DCME: voting for centres + grouping + block classes (instseg_core.postprocess.dcme_voting), NumPy and torch on
  the CPU, with the shipped model's decoding parameters (fragment joining included), from a perfect output with
  2 px vector noise; the baseline groups the same foreground pixels the
  straightforward way, one pixels x centres distance matrix and an argmin (NumPy), on the same centres;
- Spatial Embeddings: seed clustering (NumPy, --threads threads), for comparison.
Goals on 2 cores: Box2Pix and DCME post-processing <= 30 ms at 2048x1024 with ~30 objects.
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
from bench_spatial_embeddings import CLASSES, MOSAICS, instance_ids_of, mosaic_scene
from benchlib import print_table, time_call

from instseg_core.base.network_input import rgb_to_unit_nchw
from instseg_core.data.instance_training import instance_targets
from instseg_core.data.street_layout import make_scene
from instseg_core.data.synthetic import render
from instseg_core.networks import box2pix, dcme, spatial_embeddings
from instseg_core.networks.box_priors import assign_priors, prior_boxes
from instseg_core.postprocess.box_assignment import (
    AssignmentParams,
    Detections,
    assign_pixels_torch,
    decode_box2pix,
    decode_detections,
    instances_from_assignment,
)
from instseg_core.postprocess.dcme_voting import VotingParams, decode_dcme, decode_dcme_torch, find_centres
from instseg_core.postprocess.seed_clustering import ClusteringParams, cluster_seeds
from instseg_core.runtime.adapters import DcmeAdapter
from instseg_core.testing.ideal_outputs import (
    ideal_box2pix_output,
    ideal_dcme_output,
    ideal_spatial_embeddings_output,
)

REPO = Path(__file__).resolve().parents[1]
SIZES = ((512, 256), (1024, 512), (2048, 1024))
TARGET_MS = 30.0


def _session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _export(module: torch.nn.Module, path: Path, outputs: list[str]) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), torch.zeros(1, 3, 256, 512), str(path), input_names=["image"],
                          output_names=outputs, opset_version=17, dynamo=False,
                          dynamic_axes={"image": {2: "h", 3: "w"}})
    return path


def network_rows(threads: int) -> list[list]:
    with tempfile.TemporaryDirectory() as tmp:
        se_path = REPO / "models" / "spatial_embeddings.onnx"
        if not se_path.is_file():
            se_path = _export(spatial_embeddings.SpatialEmbeddings(), Path(tmp) / "se.onnx", ["raw"])
        b2p_path = REPO / "models" / "box2pix.onnx"
        if not b2p_path.is_file():
            b2p_path = _export(box2pix.Box2PixInference(box2pix.Box2Pix()), Path(tmp) / "b2p.onnx",
                               ["detections", "semantic", "offsets"])
        dcme_path = REPO / "models" / "dcme.onnx"
        if not dcme_path.is_file():
            dcme_path = _export(dcme.DcmeInference(dcme.Dcme()), Path(tmp) / "dcme.onnx", ["dense", "classes"])
        sessions = {"Spatial Embeddings (ERFNet)": _session(se_path, threads),
                    "Box2Pix (GoogLeNet-SSD-FCN)": _session(b2p_path, threads),
                    "DCME (ERFNet blocks + ASPP)": _session(dcme_path, threads)}
    rows = []
    rng = np.random.default_rng(0)
    for width, height in SIZES:
        image = rgb_to_unit_nchw(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
        repeats = {512: 15, 1024: 6, 2048: 3}[width]
        timings = {name: time_call(name, lambda s=session, image=image: s.run(None, {"image": image}),
                                   repeats=repeats, warmup=1)
                   for name, session in sessions.items()}
        baseline = timings["Spatial Embeddings (ERFNet)"].median
        for name, timing in timings.items():
            rows.append([f"{width}x{height}", name, timing.median, timing.p95, timing.median / baseline])
    return rows


def full_matrix_assignment(semantic: np.ndarray, offsets: np.ndarray, detections: Detections,
                           params: AssignmentParams) -> np.ndarray:
    """The paper's formulation as written: a boxes x pixels cost matrix D, argmin over boxes per pixel."""
    height, width = semantic.shape
    flat = semantic.ravel()
    foreground = np.flatnonzero(flat)
    px = (foreground % width).astype(np.float32) + 0.5
    py = (foreground // width).astype(np.float32) + 0.5
    cx, cy = px + offsets[0].ravel()[foreground], py + offsets[1].ravel()[foreground]
    b = detections.boxes
    centre = (b[:, :2] + b[:, 2:]) / 2
    cost = np.hypot(cx[None] - centre[:, :1], cy[None] - centre[:, 1:])
    cost += np.hypot(np.maximum(np.maximum(b[:, :1] - px[None], px[None] - b[:, 2:3]), 0),
                     np.maximum(np.maximum(b[:, 1:2] - py[None], py[None] - b[:, 3:4]), 0))
    cost += params.class_mismatch_penalty * (detections.classes[:, None] != flat[foreground][None].astype(np.int64) - 1)
    cost += (params.score_penalty * (1 - detections.scores) * np.hypot(height, width))[:, None]
    return cost.argmin(0)


def scenes() -> list[tuple[str, np.ndarray, np.ndarray]]:
    cases = []
    for width, height in SIZES[:2]:
        frame = render(make_scene(4242, width, height))
        instances, labels, _ = instance_targets(instance_ids_of(frame.objects, height, width), CLASSES)
        cases.append((f"{width}x{height}, {int(instances.max())} objects", instances, labels))
    for seeds in MOSAICS:
        _, instances, labels = mosaic_scene(seeds)
        cases.append((f"2048x1024, {int(instances.max())} objects", instances, labels))
    return cases


def scene_rows(name: str, instances: np.ndarray, labels: np.ndarray, threads: int) -> list[list]:
    height, width = instances.shape
    params = AssignmentParams(threads=1)
    detections, semantic, offsets = ideal_box2pix_output(instances, labels, len(CLASSES), noise_px=2.0)
    priors = prior_boxes(height, width, assign_priors())
    boxes = decode_detections(detections, priors, height, width, params)
    found = len(decode_box2pix(detections, semantic, offsets, priors, params))
    baseline = time_call("matrix", lambda: full_matrix_assignment(semantic, offsets, boxes, params), repeats=5,
                         warmup=1)
    case = f"{name}, {len(boxes)} boxes ({found} instances)"
    rows = [[case, "Box2Pix: assignment as one cost matrix (baseline)", baseline.median, baseline.p95, 1.0]]
    semantic_t, offsets_t = torch.from_numpy(semantic), torch.from_numpy(offsets)

    def torch_decode() -> None:
        flat = assign_pixels_torch(semantic_t, offsets_t, boxes, params).numpy().ravel()
        foreground = np.flatnonzero(flat >= 0)
        instances_from_assignment(foreground, flat[foreground], height, width, boxes, params.min_pixels)

    for label, fn, repeats in (
            ("Box2Pix: NMS + assignment + instances, NumPy",
             lambda: decode_box2pix(detections, semantic, offsets, priors, params), 30),
            ("Box2Pix: assignment + instances, torch CPU", torch_decode, 5)):
        timing = time_call(label, fn, repeats=repeats, warmup=1)
        rows.append([case, label, timing.median, timing.p95, baseline.median / timing.median])
    rows += dcme_rows(case, instances, labels)
    raw = ideal_spatial_embeddings_output(instances, labels, len(CLASSES), 2, margin_px=8, noise_px=2.0)
    clustering = ClusteringParams(threads=threads)
    timing = time_call("se", lambda: cluster_seeds(raw, 2, clustering), repeats=30, warmup=1)
    rows.append([case, f"Spatial Embeddings: seed clustering, NumPy, {threads} threads", timing.median,
                 timing.p95, baseline.median / timing.median])
    return rows


def matrix_grouping(dense: np.ndarray, params: VotingParams) -> np.ndarray:
    """The straightforward DCME grouping: every foreground pixel's vote against every centre (a pixels x centres
    distance matrix), nearest centre within max_distance_px; the centres come from the same vote histogram."""
    _, height, width = dense.shape
    foreground = np.flatnonzero(dense[2].ravel() >= params.foreground_threshold)
    rows, cols = np.divmod(foreground, width)
    vote_x = cols + 0.5 + dense[0].ravel()[foreground]
    vote_y = rows + 0.5 + dense[1].ravel()[foreground]
    cells_w, cells_h = -(-width // params.bin_px), -(-height // params.bin_px)
    cells = (np.clip((vote_y / params.bin_px).astype(np.int64), 0, cells_h - 1) * cells_w
             + np.clip((vote_x / params.bin_px).astype(np.int64), 0, cells_w - 1))
    votes = np.bincount(cells, minlength=cells_h * cells_w).astype(np.float32).reshape(cells_h, cells_w)
    centres = find_centres(votes, params).positions
    distance = np.hypot(vote_x[:, None] - centres[None, :, 0], vote_y[:, None] - centres[None, :, 1])
    best = distance.argmin(1)
    return np.where(distance[np.arange(len(best)), best] <= params.max_distance_px, best, -1)


def dcme_rows(case: str, instances: np.ndarray, labels: np.ndarray) -> list[list]:
    # the shipped model's decoding parameters (models/dcme.json), as the node runs them
    params = DcmeAdapter(DcmeAdapter.read_manifest(REPO / "models" / "dcme.onnx")).voting()
    dense, class_probs = ideal_dcme_output(instances, labels, CLASSES, noise_px=2.0)
    found = len(decode_dcme(dense, class_probs, params))
    baseline = time_call("dcme matrix", lambda: matrix_grouping(dense, params), repeats=5, warmup=1)
    rows = [[case, f"DCME: grouping as one distance matrix (baseline; ours finds {found})", baseline.median,
             baseline.p95, 1.0]]
    dense_t, probs_t = torch.from_numpy(dense), torch.from_numpy(class_probs)
    for label, fn, repeats in (("DCME: votes + centres + grouping + classes, NumPy",
                                lambda: decode_dcme(dense, class_probs, params), 30),
                               ("DCME: the same, torch CPU", lambda: decode_dcme_torch(dense_t, probs_t, params), 10)):
        timing = time_call(label, fn, repeats=repeats, warmup=1)
        rows.append([case, label, timing.median, timing.p95, baseline.median / timing.median])
    return rows


def postprocess_rows(threads: int) -> list[list]:
    return [row for name, instances, labels in scenes() for row in scene_rows(name, instances, labels, threads)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-network", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.skip_network:
        print_table(["input", "network (ONNX Runtime CPU)", "p50 ms", "p95 ms", "time vs Spatial Embeddings"],
                    network_rows(args.threads), title=f"Networks on {os.cpu_count()} CPU cores")
    print_table(["case (perfect network output)", "post-processing", "p50 ms", "p95 ms", "speed-up vs baseline"],
                postprocess_rows(args.threads),
                title=f"Post-processing (goal: Box2Pix and DCME <= {TARGET_MS:.0f} ms at 2048x1024 with ~30 objects)")


if __name__ == "__main__":
    main()
