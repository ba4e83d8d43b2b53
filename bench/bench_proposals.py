"""The studio's proposal sources compared on real and synthetic frames: proposals per frame, recall and precision at
mask IoU 0.5 (class-aware, instseg_core.eval.real_photos: the project's real-validation matching; ground truth under
--min-gt-area pixels is ignored), AP50, and milliseconds per frame (median, p95), all in one run.

    .venv/bin/python bench/bench_proposals.py [--coco ../shared/real/coco_people_vehicles] \\
        [--highway ../shared/real/udacity_highway/images] [--synthetic 12] [--overlays DIR] [--json FILE]

Sources: box2pix and spatial_embeddings (the streaming models at the studio's score threshold 0.3, each instance its
proposal), semantic (the ESPNetv2 Cityscapes network's person / vehicle regions split into connected components,
each segmented by the extreme-point network from the component's extreme points;
instseg_studio.segmenters.SemanticProposals), semantic-regions (the components' own outlines, no extreme-point
network) and semantic+se (the Spatial Embeddings instances the semantic network confirms, then the semantic
components they leave, all segmented by the extreme-point network, from one pass of one graph: CombinedProposals,
`instseg-studio --proposals semantic`). The synthetic frames are `instseg-synth` val images (seed 1, 1024x512, held
out from training); the COCO photographs are validation only (never trained on); the highway stills are labelled in
eval_sets/highway_stills.json (every car; small and far traffic as crowd regions, ignored; their outlines came from
the extreme-point network, checked by eye, 10 of 58 redrawn by hand). Figures are at score thresholds 0.3 / 0.5 /
0.7 from one pass."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from instseg_core.annotate.segmenter import create_annotation_segmenter
from instseg_core.base.classes import INSTANCE_CLASSES
from instseg_core.data.cityscapes import CityscapesDataset
from instseg_core.data.synth_cli import generate_images
from instseg_core.eval.real_photos import (
    GroundTruthObject,
    ImageInstances,
    RealSample,
    evaluate_predictions,
    read_coco_instances,
    read_rgb,
    read_yolo_seg,
)
from instseg_core.runtime.segmenter import create_segmenter
from instseg_studio.assist import distinct, proposals_from_result
from instseg_studio.segmenters import CombinedProposals, SemanticProposals

CLASSES = tuple(INSTANCE_CLASSES)
THRESHOLDS = (0.3, 0.5, 0.7)


def synthetic_samples(count: int, folder: Path) -> list[RealSample]:
    generate_images(folder, "val", count, seed=1, width=1024, height=512, progress=False)
    samples = []
    for sample in CityscapesDataset(folder, "val"):
        objects = tuple(GroundTruthObject.from_mask(name, mask)
                        for name, mask in zip(sample.class_names, sample.masks, strict=True))
        samples.append(RealSample(sample.paths["image"].stem, sample.paths["image"], sample.image.shape[1],
                                  sample.image.shape[0], objects))
    return samples


def sources(threads: int) -> dict:
    annotation = create_annotation_segmenter(threads=threads)
    semantic = SemanticProposals(annotation, threads=threads)
    regions = SemanticProposals(None, threads=threads)
    box2pix = create_segmenter("box2pix", threads=threads, score_threshold=0.3)
    embeddings = create_segmenter("spatial_embeddings", threads=threads, score_threshold=0.3)
    combined = CombinedProposals(annotation, threads=threads)
    return {
        "box2pix": lambda rgb: proposals_from_result(box2pix(rgb), CLASSES),
        "spatial_embeddings": lambda rgb: proposals_from_result(embeddings(rgb), CLASSES),
        "semantic": lambda rgb: distinct(semantic.propose(rgb, CLASSES, min_area=64), rgb.shape[:2]),
        "semantic-regions": lambda rgb: distinct(regions.propose(rgb, CLASSES, min_area=64), rgb.shape[:2]),
        "semantic+se": lambda rgb: distinct(combined.propose(rgb, CLASSES, min_area=64), rgb.shape[:2]),
    }


def instances(found: list[dict], height: int, width: int) -> ImageInstances:
    rles = tuple(mask_utils.merge(mask_utils.frPyObjects([np.asarray(p["polygon"], float).ravel().tolist()],
                                                         height, width)) for p in found)
    return ImageInstances(rles, tuple(p["class"] for p in found), np.array([p["score"] for p in found], np.float32))


def draw(rgb: np.ndarray, found: list[dict], threshold: float) -> np.ndarray:
    image = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    for k, proposal in enumerate(p for p in found if p["score"] >= threshold):
        polygon = np.asarray(proposal["polygon"], np.int32).reshape(-1, 1, 2)
        cv2.polylines(image, [polygon], True, (0, 255, 0), 2)
        x, y = polygon.reshape(-1, 2).min(axis=0)
        cv2.putText(image, f"{k}:{proposal['class'][:3]} {proposal['score']:.2f}", (int(x), max(12, int(y) - 3)),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 255, 0), 1)
    return image


def run(names: list[str], images: list[np.ndarray], propose: dict, repeats: int) -> tuple[dict, dict]:
    """{source: [proposals per image]}, {source: [ms per call]}; the sources alternate per image so that a change
    of the machine's load hits all of them alike."""
    found: dict[str, list] = {name: [] for name in names}
    times: dict[str, list] = {name: [] for name in names}
    for rgb in images:
        for name in names:
            for _ in range(repeats):
                start = time.perf_counter()
                result = propose[name](rgb)
                times[name].append((time.perf_counter() - start) * 1e3)
            found[name].append(result)
    return found, times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--coco", default="../shared/real/coco_people_vehicles")
    parser.add_argument("--highway", default="../shared/real/udacity_highway/images")
    parser.add_argument("--highway-labels", default="eval_sets/highway_stills.json",
                        help="COCO labels of the highway stills (every car; small and far traffic as crowd)")
    parser.add_argument("--synthetic", type=int, default=12, help="synthetic val images (0: none)")
    parser.add_argument("--min-gt-area", type=float, default=400.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="timed calls per image and source")
    parser.add_argument("--sources", default="box2pix,spatial_embeddings,semantic,semantic+se")
    parser.add_argument("--overlays", default=None, help="folder for the highway overlays (score >= 0.5)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    names = args.sources.split(",")
    propose = sources(args.threads)
    for name in names:  # first calls (graph optimisation, thread pools) are not timed
        propose[name](np.zeros((512, 1024, 3), np.uint8))
    sets: dict[str, list[RealSample]] = {}
    work = Path(tempfile.mkdtemp(prefix="bench_proposals_"))
    if args.synthetic:
        sets["synthetic val"] = synthetic_samples(args.synthetic, work / "synthetic")
    if args.coco and Path(args.coco).is_dir():
        sets["COCO people/vehicles (val only)"] = read_yolo_seg(args.coco).samples
    min_area = {name: args.min_gt_area for name in sets}
    highway = sorted(Path(args.highway).glob("*.jpg")) if args.highway else []
    if highway and args.highway_labels and Path(args.highway_labels).is_file():
        sets["highway stills (eval_sets, labelled)"] = read_coco_instances(args.highway_labels, args.highway).samples
        min_area["highway stills (eval_sets, labelled)"] = 0.0  # its small and far traffic is crowd (ignored)
    load = os.getloadavg()
    report: dict = {"load_before": load, "sets": {}}
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    header = ("| set | source | thr | proposals/frame | recall@0.5 | precision@0.5 | AP50 | ms median | ms p95 |\n"
              "|---|---|---|---|---|---|---|---|---|")
    print(header)
    for set_name, samples in sets.items():
        images = [s.rgb() for s in samples]
        found, times = run(names, images, propose, args.repeats)
        for name in names:
            predictions = [instances(f, s.height, s.width) for f, s in zip(found[name], samples, strict=True)]
            for threshold in THRESHOLDS:
                figures = evaluate_predictions(predictions, samples, min_gt_area=min_area[set_name],
                                               score_threshold=threshold)
                per_frame = np.mean([sum(p["score"] >= threshold for p in f) for f in found[name]])
                row = {"proposals_per_frame": float(per_frame), "recall": figures.recall,
                       "precision": figures.precision, "ap50": figures.ap50,
                       "ms_median": float(np.median(times[name])), "ms_p95": float(np.percentile(times[name], 95)),
                       "images": len(samples), "ground_truth": figures.overall.ground_truth}
                report["sets"].setdefault(set_name, {}).setdefault(name, {})[str(threshold)] = row
                print(f"| {set_name} | {name} | {threshold} | {per_frame:.1f} | {figures.recall or 0:.3f} | "
                      f"{figures.precision or 0:.3f} | {figures.ap50 or 0:.3f} | {row['ms_median']:.0f} | "
                      f"{row['ms_p95']:.0f} |", flush=True)
    if highway and args.overlays:
        images = [read_rgb(p) for p in highway]
        found, _ = run(names, images, propose, 1)
        for name in names:
            folder = Path(args.overlays) / name
            folder.mkdir(parents=True, exist_ok=True)
            for path, rgb, proposals in zip(highway, images, found[name], strict=True):
                cv2.imwrite(str(folder / f"{path.stem}.png"), draw(rgb, proposals, 0.5))
    load = os.getloadavg()
    report["load_after"] = load
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    sys.exit(main())
