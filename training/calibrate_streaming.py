"""Calibrate a streaming model's decoding on real photographs and synthetic val (issue 35, item 4).

    python -m training.calibrate_streaming --model spatial_embeddings --model-file RUN/last.pt --backend torch \
        --real ../shared/real/coco_people_vehicles --synthetic data/synthetic --synthetic-limit 20 \
        [--input-size own|WxH] [--grid seed_threshold=0.5,0.6,0.7 min_pixels=64,128] [--json OUT]

The network runs once per image (`Segmenter.infer_raw`); every point of the grid of decoding parameters decodes those
raw outputs again (`Segmenter.decode_raw`), so a grid of 60 points costs 60 decodings, not 60 network runs. For each
point it reports, on the real set, class-aware recall@0.5, precision@0.5, F1, mask AP50 and predictions per image
(instseg_core.eval.real_photos), and on the synthetic val images pycocotools' mask AP50 (instseg_core.eval.coco).

The chosen point maximises the real set's F1 (recall and precision both count, so the number of predictions per
image ends near the number of real objects) among the points whose synthetic AP50 is within `--synthetic-tolerance`
of the grid's best synthetic AP50. Export the model with it (the export command's clustering arguments); the node's
`score_threshold` (0.5) applies on top.

Exit status (instseg_core.base.command_exit): 0 when everything asked was done; 2 with one line
(`training.calibrate_streaming: ...`) for bad input (a bad --grid or --input-size, a real or synthetic set that
cannot be read, a model that cannot be loaded) or an output that cannot be written (the errno and the file; the
folder of --json is checked before the network runs); 1 with one line for an internal error, its traceback in a log
file (or on stderr with --debug).
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from instseg_core.base.atomic_files import check_writable_folder, write_text_atomically
from instseg_core.base.command_exit import InputError, add_debug_argument, debug_requested, run_command
from instseg_core.base.model_files import ModelFileError
from instseg_core.data.cityscapes import CityscapesDataset
from instseg_core.eval.coco import ImagePredictions, coco_mask_ap
from instseg_core.eval.real_photos import (
    ImageInstances,
    RealDataError,
    RealSetReport,
    evaluate_predictions,
    read_yolo_seg,
)
from instseg_core.runtime.backends import BackendUnavailableError
from instseg_core.runtime.segmenter import RawOutput, Segmenter, create_segmenter
from training.real_validation import parse_input_size

DEFAULT_GRIDS = {
    "spatial_embeddings": {"seed_threshold": [0.5, 0.6, 0.7, 0.8], "foreground_threshold": [0.3, 0.4, 0.5],
                           "min_pixels": [64, 256, 1024]},
    "box2pix": {},
    "dcme": {},
}


COMMAND = "training.calibrate_streaming"


def grid_item(item: str) -> tuple[str, list[float]]:
    """One --grid item, 'name=v1,v2' -> (name, [v1, v2]) (ints stay ints); argparse refuses anything else."""
    name, _, values = item.partition("=")
    try:
        if not name or not values:
            raise ValueError
        return name, [int(v) if v.lstrip("-").isdigit() else float(v) for v in values.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{item!r}: expected NAME=V1,V2,... with numbers") from None


def parse_grid(items: Sequence[str | tuple[str, list[float]]]) -> dict[str, list[float]]:
    """['name=v1,v2', ...] (or grid_item's pairs) -> {name: [v1, v2]} (ints stay ints)."""
    grid: dict[str, list[float]] = {}
    for item in items:
        name, values = grid_item(item) if isinstance(item, str) else item
        grid[name] = values
    return grid


def grid_points(grid: dict[str, list[float]]) -> list[dict[str, float]]:
    names = sorted(grid)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*(grid[n] for n in names))]


def calibrate(segmenter: Segmenter, real_samples: Sequence, synthetic_samples: Sequence,
              points: Sequence[dict[str, float]], synthetic_tolerance: float = 0.03) -> dict:
    """Every grid point's figures and the chosen point (module docstring)."""
    start = time.perf_counter()
    real_raw: list[tuple[RawOutput, int, int]] = []
    for sample in real_samples:
        rgb = sample.rgb()
        real_raw.append((segmenter.infer_raw(rgb), rgb.shape[1], rgb.shape[0]))
    synthetic_raw = [(segmenter.infer_raw(s.image), s.image.shape[1], s.image.shape[0]) for s in synthetic_samples]
    network_seconds = time.perf_counter() - start
    rows = []
    for point in points:
        real_predictions = [ImageInstances.from_result(segmenter.decode_raw(raw, w, h, point, 0.0))
                            for raw, w, h in real_raw]
        report = evaluate_predictions(real_predictions, real_samples)
        row: dict = {"params": point, **_headline(report)}
        if synthetic_samples:
            predictions = []
            for raw, w, h in synthetic_raw:
                result = segmenter.decode_raw(raw, w, h, point, 0.0)
                predictions.append(ImagePredictions(result.instances.masks(), list(result.label_ids),
                                                    list(result.instances.scores)))
            row["synthetic_ap50"] = coco_mask_ap(synthetic_samples, predictions).ap50
        rows.append(row)
        print(_row_text(row), flush=True)
    best_synthetic = max((r.get("synthetic_ap50", 0.0) for r in rows), default=0.0)
    eligible = [r for r in rows if r.get("synthetic_ap50", best_synthetic) >= best_synthetic - synthetic_tolerance]
    chosen = max(eligible, key=lambda r: (r["f1"], r.get("synthetic_ap50", 0.0)))
    return {"rows": rows, "chosen": chosen, "network_seconds": network_seconds, "real_images": len(real_samples),
            "synthetic_images": len(synthetic_samples), "synthetic_tolerance": synthetic_tolerance}


def _headline(report: RealSetReport) -> dict:
    recall, precision = report.recall or 0.0, report.precision or 0.0
    f1 = 2 * recall * precision / (recall + precision) if recall + precision else 0.0
    return {"recall": recall, "precision": precision, "f1": f1, "ap50": report.ap50,
            "predictions_per_image": report.predictions_per_image,
            "ground_truth_per_image": report.ground_truth_per_image}


def _row_text(row: dict) -> str:
    params = " ".join(f"{k}={v}" for k, v in row["params"].items())
    synthetic = f" synthetic AP50 {row['synthetic_ap50']:.3f}" if "synthetic_ap50" in row else ""
    return (f"{params}: recall {row['recall']:.3f} precision {row['precision']:.3f} F1 {row['f1']:.3f} "
            f"AP50 {row['ap50'] or 0:.3f} predictions/image {row['predictions_per_image']:.1f}{synthetic}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.calibrate_streaming", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="spatial_embeddings", choices=sorted(DEFAULT_GRIDS))
    parser.add_argument("--model-file", default=None, help="a .pt (backend torch) or .onnx with its manifest")
    parser.add_argument("--backend", default="onnxruntime", choices=("onnxruntime", "torch"))
    parser.add_argument("--int8", action="store_true")
    parser.add_argument("--real", required=True, help="a labelled real set in the YOLO-seg layout")
    parser.add_argument("--synthetic", default=None, help="a Cityscapes-format root whose val split is measured")
    parser.add_argument("--synthetic-limit", type=int, default=20)
    parser.add_argument("--synthetic-tolerance", type=float, default=0.03)
    parser.add_argument("--input-size", default=None, type=parse_input_size, metavar="own|WxH",
                        help="'own' (the image's size, default) or WxH")
    parser.add_argument("--grid", nargs="*", type=grid_item, default=[],
                        help="NAME=V1,V2 ... (default: the model's grid)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="write every point and the choice here")
    add_debug_argument(parser)
    args = parser.parse_args(argv)
    run_command(COMMAND, lambda: run(args), debug=debug_requested(args),
                input_errors=(RealDataError, ModelFileError, BackendUnavailableError))
    return 0


def run(args: argparse.Namespace) -> dict:
    """The command's work (module docstring): the inputs and the --json folder are checked before the network runs;
    returns the result written to --json."""
    grid = parse_grid(args.grid) if args.grid else DEFAULT_GRIDS[args.model]
    if args.json is not None:
        check_writable_folder(args.json.parent)
    real = read_yolo_seg(args.real).samples
    synthetic = []
    if args.synthetic:
        try:
            synthetic = list(CityscapesDataset(args.synthetic, "val"))[:args.synthetic_limit]
        except ValueError as error:
            raise InputError(f"--synthetic {args.synthetic}: {error}") from error
    try:
        segmenter = create_segmenter(args.model, model_file=args.model_file, backend=args.backend, int8=args.int8,
                                     input_size=args.input_size, threads=args.threads, score_threshold=0.0)
    except ValueError as error:
        raise InputError(str(error)) from error
    result = calibrate(segmenter, real, synthetic, grid_points(grid), args.synthetic_tolerance)
    size = "own" if args.input_size is None else f"{args.input_size[0]}x{args.input_size[1]}"
    result.update({"model": args.model, "model_file": str(segmenter.model_file), "input_size": size,
                   "int8": args.int8, "backend": args.backend})
    print("chosen: " + _row_text(result["chosen"]))
    if args.json is not None:
        write_text_atomically(args.json, json.dumps(result, indent=1, default=_json_default))
    return result


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(type(value))


if __name__ == "__main__":
    main()
