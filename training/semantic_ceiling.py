"""The ceiling of the real-data semantic encoder on real labelled photographs (instseg_core/eval/semantic_ceiling.py).

    python -m training.semantic_ceiling --data ../shared/real/coco_people_vehicles --scales 1.0 0.5 --json out.json

Runs the shipped ESPNetv2 Cityscapes network (models/espnetv2_s2_cityscapes.fp16.pt, or --weights) on every image at
each of --scales (a fraction of the image's own size, rounded down to a multiple of 16 pixels), averages the softmax
probabilities at the image's size, takes the arg-max class map and reports, over the labelled objects:
mean coverage, the recall ceilings (any decoder on this map; a perfect separator given perfect boxes), the recall of
its connected components, and the share of background pixels it calls a person or a vehicle.

Takes the same labelled-set options as training.real_validation (--data YOLO-seg, --coco with --image-dir,
--skip-bad, --limit). Exit status as every command here (instseg_core.base.command_exit).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from instseg_core.base.atomic_files import check_writable_folder, write_text_atomically
from instseg_core.base.command_exit import add_debug_argument, debug_requested, run_command
from instseg_core.base.model_files import ModelFileError, find_model
from instseg_core.eval.real_photos import RealDataError
from instseg_core.eval.semantic_ceiling import CeilingReport, add_image
from instseg_core.networks.espnetv2 import ESPNetv2Segmentation, load_espnetv2_cityscapes, normalise_unit_rgb
from training.real_validation import parse_set_arguments, read_sets

COMMAND = "training.semantic_ceiling"
DEFAULT_WEIGHTS = "espnetv2_s2_cityscapes.fp16.pt"
SIZE_MULTIPLE = 16


def class_map(network: ESPNetv2Segmentation, rgb: np.ndarray, scales: Sequence[float]) -> np.ndarray:
    """(H, W) uint8 Cityscapes train ids of `rgb` ((H, W, 3) uint8): softmax averaged over `scales` of the image's
    own size, each rounded down to a multiple of 16 pixels (at least 32)."""
    height, width = rgb.shape[:2]
    total = np.zeros((height, width, 0), np.float32)
    for scale in scales:
        size = (max(32, int(width * scale) // SIZE_MULTIPLE * SIZE_MULTIPLE),
                max(32, int(height * scale) // SIZE_MULTIPLE * SIZE_MULTIPLE))
        resized = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        tensor = torch.from_numpy(resized).permute(2, 0, 1)[None].float() / 255.0
        with torch.no_grad():
            probabilities = torch.softmax(network(normalise_unit_rgb(tensor)), 1)[0].permute(1, 2, 0).numpy()
        probabilities = cv2.resize(probabilities, (width, height), interpolation=cv2.INTER_LINEAR)
        total = probabilities if total.shape[2] == 0 else total + probabilities
    return total.argmax(2).astype(np.uint8)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m {COMMAND}", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="labelled set in YOLO-seg layout (ROOT/images, ROOT/labels)")
    parser.add_argument("--coco", type=Path, help="COCO instances JSON (with --image-dir)")
    parser.add_argument("--image-dir", type=Path, help="folder the --coco file's file_name entries are under")
    parser.add_argument("--weights", default=DEFAULT_WEIGHTS, help="ESPNetv2 s=2 Cityscapes state dict (a path or "
                                                                   "a shipped file name)")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0],
                        help="fractions of each image's own size; probabilities averaged (default 1.0)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N images")
    parser.add_argument("--skip-bad", action="store_true", help="skip (and count) images that cannot be read")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="write the report (atomically)")
    add_debug_argument(parser)
    return parser


def measure(args: argparse.Namespace) -> dict:
    """The command's work: the report as a dict (also printed, and written to --json)."""
    if args.json is not None:
        check_writable_folder(args.json.parent)
    if not args.scales or any(not 0.05 <= s <= 4.0 for s in args.scales):
        raise SystemExit(f"--scales must be fractions in [0.05, 4], got {args.scales}")
    torch.set_num_threads(args.threads)
    network = load_espnetv2_cityscapes(find_model(args.weights))
    real_set = read_sets(args)
    for message in real_set.skipped:
        print(f"warning: skipped {message}", file=sys.stderr)
    report = CeilingReport()
    for sample in real_set.samples:
        add_image(report, class_map(network, sample.rgb(), args.scales), sample)
    figures = {**report.to_dict(), "images": len(real_set.samples), "skipped_images": len(real_set.skipped),
               "scales": list(args.scales), "weights": str(args.weights)}
    def rate(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"
    print(f"{figures['images']} images, {figures['objects']} objects, scales {args.scales}: mean coverage "
          f"{rate(figures['mean_coverage'])}, recall ceiling: any decoder {rate(figures['recall_ceiling_any'])}, "
          f"oracle box {rate(figures['recall_ceiling_box'])}, "
          f"connected components {rate(figures['recall_components'])}, background called a thing "
          f"{rate(figures['background_called_thing'])}, false regions per image "
          f"{rate(figures['false_regions_per_image'])}")
    if args.json is not None:
        write_text_atomically(args.json, json.dumps(figures, indent=1) + "\n")
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_set_arguments(build_parser(), argv)
    run_command(COMMAND, lambda: measure(args), debug=debug_requested(args),
                input_errors=(RealDataError, ModelFileError, ValueError))
    return 0


if __name__ == "__main__":
    sys.exit(main())
