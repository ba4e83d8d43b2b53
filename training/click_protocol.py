"""The correction-click protocol of interactive segmentation on real objects, for the extreme-point pipeline.

    python -m training.click_protocol --models models/extreme_unet_int8.onnx [OLD.onnx ...]
        [--coco /work/shared/real/coco_people_vehicles] [--markdown docs/extreme_points_clicks.md]
        [--record models/extreme_unet.json]

Every method gets the four extreme points of the ground-truth mask, then correction clicks placed automatically one
after another, each at the interior of the largest error region of its current mask
(instseg_core.annotate.corrections.next_correction_click: positive on missed foreground, negative on a false
positive; Xu et al. 2016, RITM, f-BRS). Reported per set: mean IoU after 0, 1, 2 and 3 clicks, and the mean number
of clicks to reach IoU 0.85 / 0.90 (NoC@85 / NoC@90; 0 when the points alone reach it; at most 20 clicks, an
object that never reaches it counts 20), and how many never reach 0.90. IoU on the full image.

Rows: each graph through the Python API (`segment(..., positive=, negative=)`, as the pipeline runs it: flip union,
its manifest's margin; a graph without click channels gets the clicks painted onto its output), optionally the same
with GrabCut refinement seeded by the clicks (`--refine-models`), and GrabCut given the same clicks as hard seeds on
its 10 % crop (the baseline).

Sets: the real validation set (eval_sets/real_photos_val.json), the two real test sets (eval_sets/real_photos.json
and the set labelled by others), and, with --coco, the persons and vehicles of at least 32 x 32 pixels of a YOLO-seg
folder read by instseg_core.eval.real_photos.read_yolo_seg (coco_people_vehicles: validation only, never trained
on). None of these is ever used in training.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from instseg_core.annotate.corrections import next_correction_click
from instseg_core.annotate.encoding import crop, crop_box, extreme_points_from_mask, paste_back, points_in_crop
from instseg_core.annotate.refine import grabcut_from_points
from instseg_core.eval.binary_metrics import iou
from training.photo_archives import ProxyObject

ClickMethod = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]
"""(image (H, W, 3) uint8, points (4, 2), positive (K, 2), negative (K, 2)) -> (H, W) bool mask."""

MAX_CLICKS = 20
CURVE_CLICKS = 3
THRESHOLDS = (0.85, 0.90)
MIN_COCO_SIDE = 32  # COCO objects smaller than 32 x 32 pixels (1024 px) are left out, as in the set labelled by others
COCO_CLASSES = ("person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")


def network_click_method(model: str, refine: str = "none") -> ClickMethod:
    from instseg_core.annotate.segmenter import create_annotation_segmenter

    segmenter = create_annotation_segmenter(model, refine=refine)
    return lambda image, points, positive, negative: segmenter.segment(image, points, positive=positive,
                                                                       negative=negative).mask


def grabcut_click_method(image: np.ndarray, points: np.ndarray, positive: np.ndarray,
                         negative: np.ndarray) -> np.ndarray:
    """GrabCut from the points on their 10 % crop (the proxies' GrabCut row), the clicks as hard seeds."""
    box = crop_box(points)
    mask = grabcut_from_points(crop(image, box), points_in_crop(points, box),
                               crop_positive=points_in_crop(positive, box), crop_negative=points_in_crop(negative, box))
    region, (x0, y0) = paste_back(mask, box, image.shape[:2])
    full = np.zeros(image.shape[:2], bool)
    full[y0:y0 + region.shape[0], x0:x0 + region.shape[1]] = region > 0.5
    return full


def export_click_checkpoints(checkpoints: list[str], scratch: Path, manifest: Path) -> list[str]:
    """Each click-training checkpoint RUN/FILE.pt exported to scratch/RUN/FILE.onnx (fp32), with a copy of `manifest`
    beside it (its crop margin and colour-prior foreground: the network's, which the pipeline reads from there)."""
    from training.extreme_point_clicks import load_click_run
    from training.extreme_point_proxies import export_checkpoints

    return export_checkpoints(checkpoints, scratch, load=load_click_run, manifest=manifest)


def click_curve(method: ClickMethod, obj: ProxyObject, max_clicks: int = MAX_CLICKS) -> list[float]:
    """IoU after 0, 1, ... automatic clicks on one object: at least CURVE_CLICKS + 1 values, continued until the IoU
    reaches the highest threshold or `max_clicks` clicks were made."""
    points = extreme_points_from_mask(obj.mask).astype(np.float64)
    positive: list[tuple[int, int]] = []
    negative: list[tuple[int, int]] = []
    curve = []
    while True:
        prediction = method(obj.image, points, np.array(positive, np.float64).reshape(-1, 2),
                            np.array(negative, np.float64).reshape(-1, 2))
        curve.append(iou(prediction, obj.mask))
        clicks = len(curve) - 1
        if clicks >= max_clicks or (clicks >= CURVE_CLICKS and curve[-1] >= max(THRESHOLDS)):
            return curve
        click = next_correction_click(prediction, obj.mask)
        if click is None:  # perfect: the curve stays at 1
            curve.extend([1.0] * max(0, CURVE_CLICKS - clicks))
            return curve
        (positive if click.positive else negative).append((click.x, click.y))


def fixed_region_method(method: ClickMethod, obj: ProxyObject) -> ClickMethod:
    """The upper bound of a click that corrects exactly the error region it is placed in: `method`'s mask from the
    points alone, then each click sets its whole region (largest_error_region of the mask so far against `obj`'s
    truth) to the click's label. Only for `obj` (it reads the truth); the clicks given are the protocol's own."""
    from instseg_core.annotate.corrections import largest_error_region

    state: dict[str, np.ndarray] = {}

    def fixed(image: np.ndarray, points: np.ndarray, positive: np.ndarray, negative: np.ndarray) -> np.ndarray:
        if not len(positive) and not len(negative):
            state["mask"] = method(image, points, positive, negative).copy()
            return state["mask"]
        found = largest_error_region(state["mask"], obj.mask)
        if found is not None:
            region, label = found
            state["mask"][region] = label
        return state["mask"].copy()

    return fixed


def clicks_to_reach(curve: list[float], threshold: float, max_clicks: int = MAX_CLICKS) -> int:
    """The first click count whose IoU reaches `threshold` (max_clicks when none does)."""
    return next((k for k, value in enumerate(curve) if value >= threshold), max_clicks)


def summarise(curves: dict[str, list[float]], max_clicks: int = MAX_CLICKS) -> dict:
    values = list(curves.values())
    return {"objects": len(values), "max_clicks": max_clicks,
            "mean_iou_after_clicks": [float(np.mean([c[k] for c in values])) for k in range(CURVE_CLICKS + 1)],
            **{f"noc@{round(t * 100)}": float(np.mean([clicks_to_reach(c, t, max_clicks) for c in values]))
               for t in THRESHOLDS},
            "never_reach_0.90": int(sum(c[-1] < max(THRESHOLDS) and clicks_to_reach(c, max(THRESHOLDS), max_clicks)
                                        >= max_clicks for c in values)),
            "per_object": curves}


def coco_objects(root: str | Path, min_side: int = MIN_COCO_SIDE) -> list[ProxyObject]:
    """The persons and vehicles (not crowd) of at least min_side^2 pixels of a YOLO-seg folder, as ProxyObjects."""
    from pycocotools import mask as mask_utils

    from instseg_core.eval.real_photos import read_yolo_seg

    objects = []
    for sample in read_yolo_seg(root).samples:
        image = None
        for index, gt in enumerate(sample.objects):
            if gt.crowd or gt.area < min_side * min_side or gt.class_name not in COCO_CLASSES:
                continue
            image = sample.rgb() if image is None else image
            mask = mask_utils.decode(gt.rle).astype(bool)
            objects.append(ProxyObject(f"{sample.name}#{index}", gt.class_name, image, mask))
    return objects


UPPER_BOUND = ": each click corrects its whole error region (upper bound)"

SET_NAMES = {"real_val": "real validation set (eval_sets/real_photos_val.json)",
             "coco": "coco_people_vehicles (validation only)",
             "real": "real test set (eval_sets/real_photos.json)",
             "real_by_others": "real test set labelled by others"}


def load_sets(sets: list[str], coco: str | None) -> dict[str, list[ProxyObject]]:
    from training.extreme_point_proxies import REAL_PHOTOS, REAL_PHOTOS_VAL, load_real_photos
    from training.labelled_by_others import load_labelled_by_others

    loaders = {"real_val": lambda: load_real_photos(REAL_PHOTOS_VAL), "real": lambda: load_real_photos(REAL_PHOTOS),
               "real_by_others": load_labelled_by_others, "coco": lambda: coco_objects(coco or "")}
    return {name: loaders[name]() for name in sets if name != "coco" or coco}


def protocol_table(rows: dict[str, ClickMethod], objects: dict[str, list[ProxyObject]],
                   reuse: dict | None = None, max_clicks: int = MAX_CLICKS) -> tuple[str, dict]:
    """One markdown table per set (rows: methods) and every figure, per object included. `reuse`: the results
    of an earlier run (its --json); a row found there with every set is taken from it instead of being run again
    (every method is deterministic)."""
    results: dict = {}
    for row, method in rows.items():
        per_object = row.endswith(UPPER_BOUND)
        earlier = (reuse or {}).get(row, {})
        if all(name in earlier and earlier[name]["objects"] == len(found) for name, found in objects.items()):
            results[row] = {name: earlier[name] for name in objects}
            print(f"{row}: taken from the earlier run", flush=True)
            continue
        start = time.perf_counter()
        results[row] = {name: summarise({obj.name: click_curve(fixed_region_method(method, obj) if per_object
                                                               else method, obj, max_clicks) for obj in found},
                                        max_clicks)
                        for name, found in objects.items()}
        print(f"{row}: {time.perf_counter() - start:.0f} s", flush=True)
    lines = []
    for name, found in objects.items():
        lines += ["", f"**{SET_NAMES[name]}**, {len(found)} objects:", "",
                  "| method | IoU, points only | after 1 click | after 2 | after 3 | NoC@85 | NoC@90 | never 0.90 |",
                  "|---|---|---|---|---|---|---|---|"]
        for row in rows:
            figures = results[row][name]
            curve = figures["mean_iou_after_clicks"]
            lines.append(f"| {row} | " + " | ".join(f"{v:.3f}" for v in curve)
                         + f" | {figures['noc@85']:.2f} | {figures['noc@90']:.2f} | {figures['never_reach_0.90']} |")
    header = ("Correction-click protocol: the 4 extreme points of the ground-truth mask, then clicks placed "
              "automatically at the interior of the largest error region (positive on missed foreground, negative on "
              f"a false positive); mean IoU after 0-3 clicks; NoC@85 / NoC@90: mean clicks to reach IoU 0.85 / 0.90 "
              f"(at most {max_clicks}; an object that never does counts {max_clicks}); never 0.90: objects that did "
              f"not reach 0.90 within {max_clicks} clicks.")
    return header + "\n" + "\n".join(lines), results


def record(manifest_path: Path, table: str, results: dict, rows: dict[str, str]) -> None:
    """The figures (without the per-object curves) into the manifest's `correction_clicks.protocol`."""
    from instseg_core.base.atomic_files import write_text_atomically
    from training.common import git_commit

    manifest = json.loads(manifest_path.read_text())
    figures = {row: {name: {k: v for k, v in f.items() if k != "per_object"} for name, f in by_set.items()}
               for row, by_set in results.items()}
    manifest.setdefault("correction_clicks", {})["protocol"] = {
        "table": table, "figures": figures, "models": rows, "commit": git_commit(),
        "reproduce": "python -m training.click_protocol --models models/extreme_unet_int8.onnx "
                     "models/extreme_unet.onnx OLD_5_CHANNEL_GRAPH --coco /work/shared/real/coco_people_vehicles "
                     "--record models/extreme_unet.json"}
    write_text_atomically(manifest_path, json.dumps(manifest, indent=1))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.click_protocol", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="*", default=[], help="extreme-point graphs (.onnx)")
    parser.add_argument("--checkpoints", nargs="*", default=[],
                        help="click-training checkpoints (RUN/step400.pt): each exported to a temporary fp32 graph run "
                             "with --checkpoint-manifest's margin and colour prior, a row named RUN/FILE")
    parser.add_argument("--checkpoint-manifest", default="models/extreme_unet.json")
    parser.add_argument("--max-clicks", type=int, default=MAX_CLICKS,
                        help="clicks at most per object (a quick comparison of checkpoints: 3)")
    parser.add_argument("--names", nargs="*", default=[], help="row names for --models, in order")
    parser.add_argument("--upper-bound-models", nargs="*", default=[],
                        help="graphs also run as the upper bound of a click: their mask from the points alone, each "
                             "click then correcting exactly its whole error region (fixed_region_method)")
    parser.add_argument("--refine-models", nargs="*", default=[],
                        help="graphs also run with GrabCut refinement seeded by the clicks")
    parser.add_argument("--no-grabcut", action="store_true", help="leave out the GrabCut baseline row")
    parser.add_argument("--sets", nargs="+", choices=tuple(SET_NAMES), default=list(SET_NAMES))
    parser.add_argument("--coco", default=None, help="a YOLO-seg folder (coco_people_vehicles); validation only")
    parser.add_argument("--markdown", help="write the tables here")
    parser.add_argument("--json", help="write every figure, per object, here")
    parser.add_argument("--reuse", help="an earlier run's --json: rows found there (same sets) are not run again")
    parser.add_argument("--record", help="a model manifest: the figures go into correction_clicks.protocol")
    args = parser.parse_args(argv)
    import tempfile

    scratch = tempfile.TemporaryDirectory()
    exported = export_click_checkpoints(args.checkpoints, Path(scratch.name), Path(args.checkpoint_manifest))
    names = {**dict(zip(args.models, args.names, strict=False)),
             **dict(zip(exported, args.checkpoints, strict=True))}
    args.models = [*args.models, *exported]
    rows: dict[str, ClickMethod] = {}
    sources: dict[str, str] = {}
    for model in args.models:
        rows[names.get(model, Path(model).name)] = network_click_method(model)
        sources[names.get(model, Path(model).name)] = model
    for model in args.upper_bound_models:
        name = f"{Path(model).name}{UPPER_BOUND}"
        rows[name] = network_click_method(model)
        sources[name] = model
    for model in args.refine_models:
        name = f"{Path(model).name} + GrabCut refinement, clicks as hard seeds"
        rows[name] = network_click_method(model, refine="grabcut")
        sources[name] = model
    if not args.no_grabcut:
        rows["GrabCut from the points, clicks as hard seeds"] = grabcut_click_method
    reuse = json.loads(Path(args.reuse).read_text()) if args.reuse else None
    table, results = protocol_table(rows, load_sets(args.sets, args.coco), reuse, args.max_clicks)
    scratch.cleanup()
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if args.record:
        record(Path(args.record), table, results, sources)


if __name__ == "__main__":
    main()
