"""Data benchmark: synthetic generator throughput at 1024x512 and evaluator time for 100 images.

    .venv/bin/python bench/bench_data.py [--images 100] [--jobs 2] [--out DIR]

Generator: per-image render time and write time (polygons JSON + official cityscapesscripts converters +
PNGs), median and p95, then end-to-end images/s with 1 and --jobs processes. Evaluation: the official
Cityscapes instance evaluator and pycocotools mask AP on the same 100 images with the same predictions
(ground truth with dropped instances, one false positive per image and random scores, so both
evaluators do real matching). pycocotools is the baseline for the ratio column.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from benchlib import print_table, summarize, time_call

from instseg_core.data import synth_cli
from instseg_core.data.cityscapes import CityscapesDataset, write_sample
from instseg_core.data.synthetic import make_scene, render
from instseg_core.eval.cityscapes_instances import evaluate_instances, write_predictions
from instseg_core.eval.coco import ImagePredictions, coco_mask_ap

WIDTH, HEIGHT = 1024, 512


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="keep the generated tree here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="instseg_bench_data_")) if args.out is None else args.out
    try:
        run(args, work)
    finally:
        if args.out is None:
            shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path) -> None:
    scenes = [make_scene(synth_cli.image_seed(99, "train", i), WIDTH, HEIGHT) for i in range(12)]
    frames = iter(scenes)
    render_t = time_call("render", lambda: render(next(frames)), repeats=10, warmup=1)
    frame = render(scenes[0])
    write_t = time_call("write", lambda: write_sample(work / "single", "train", "bench", "bench_000000_000019",
                                                      frame.rgb, frame.objects), repeats=10, warmup=1)
    rates = {}
    for jobs in sorted({1, args.jobs}):
        count = 10 * jobs
        rates[jobs] = synth_cli.generate_images(work / f"jobs{jobs}", "train", count, seed=5, width=WIDTH,
                                                height=HEIGHT, jobs=jobs, progress=False)
    start = time.perf_counter()
    synth_cli.generate_images(work / "eval", "val", args.images, seed=1, width=WIDTH, height=HEIGHT, jobs=args.jobs,
                              progress=False)
    generate_s = time.perf_counter() - start
    dataset = CityscapesDataset(work / "eval", "val")
    rng = np.random.default_rng(0)
    predictions = []
    for sample in dataset:
        keep = rng.random(len(sample.masks)) > 0.2
        masks = sample.masks[keep]
        false_positive = np.zeros((1, *sample.masks.shape[1:]), bool)
        false_positive[0, 10:60, 10:110] = True
        masks = np.concatenate([masks, false_positive])
        labels = [*sample.label_ids_per_instance[keep].tolist(), 26]
        scores = rng.uniform(0.3, 1.0, len(labels))
        predictions.append(ImagePredictions(masks, labels, scores))
        write_predictions(work / "pred", sample.stem, masks, labels, scores)
    start = time.perf_counter()
    official = evaluate_instances([s.paths["instance_ids"] for s in dataset], work / "pred", work / "official")
    official_s = time.perf_counter() - start
    start = time.perf_counter()
    coco = coco_mask_ap(list(dataset), predictions)
    coco_s = time.perf_counter() - start

    rows = [
        ["render one image", *summarize(render_t.samples_ms), ""],
        ["write one image (JSON, official converters, 4 PNGs)", *summarize(write_t.samples_ms), ""],
    ]
    for jobs, rate in rates.items():
        rows.append([f"end to end, {jobs} process(es)", 1000.0 / rate, "", f"{rate:.2f} images/s"])
    rows.append([f"generate {args.images} images, {args.jobs} processes", generate_s * 1000, "",
                 f"{args.images / generate_s:.2f} images/s"])
    print_table(["generator (1024x512)", "median ms", "p95 ms", "throughput"], rows,
                title=f"Synthetic generator, {WIDTH}x{HEIGHT}, {os.cpu_count()} cores")
    print_table(
        ["evaluator", f"seconds for {len(dataset)} images", "vs pycocotools", "AP", "AP50"],
        [["cityscapesscripts (official, subprocess)", official_s, f"{official_s / coco_s:.2f}x", official.ap,
          official.ap50],
         ["pycocotools COCOeval segm (baseline)", coco_s, "1.00x", coco.ap, coco.ap50]],
        title="Instance evaluation of the same predictions (GT minus 20 % of instances, 1 FP per image)",
    )


if __name__ == "__main__":
    main()
