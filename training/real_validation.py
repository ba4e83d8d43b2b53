"""A streaming model on real labelled photographs: recall@0.5, precision@0.5, mask AP50, predictions per image.

    python -m training.real_validation --data ROOT --model spatial_embeddings          # ROOT/images, ROOT/labels
    python -m training.real_validation --coco annotations_coco.json --image-dir DIR --model box2pix --int8 \\
        --input-size 1024x512 --json report.json --markdown --overlays overlays/

--data reads the YOLO-seg layout (COCO-80 class ids), --coco a COCO instances JSON over --image-dir; both may be
given, and their images are pooled. The formats and the metrics (class-aware greedy matching at mask IoU 0.5, a
predicted rider counts as a person, COCOeval's AP50, the class-agnostic diagnostic) are defined in
instseg_core/eval/real_photos.py and docs/real_validation.md.

Exit status (instseg_core.base.command_exit): 0 when everything asked was done; 2 with one line
(`training.real_validation: ...`) for bad input (a missing folder, an image that does not decode, a malformed label
line: naming the file; with --skip-bad a bad image is skipped, warned about and counted instead), a model that cannot
be loaded, a --record manifest that cannot be read, or an output that cannot be written (the errno and the file; the
folders of --json, --overlays and --record are checked before the evaluation starts); 1 with one line for an internal
error, its traceback in a log file (or on stderr with --debug).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from instseg_core.base.atomic_files import check_writable_folder, write_bytes_atomically, write_text_atomically
from instseg_core.base.command_exit import InputError, add_debug_argument, debug_requested, run_command
from instseg_core.base.model_files import ModelFileError
from instseg_core.eval.real_photos import (
    REPORT_CLASSES,
    ImageInstances,
    RealDataError,
    RealSample,
    RealSet,
    RealSetReport,
    decode_rle,
    evaluate_predictions,
    format_rate,
    predict_real_set,
    read_coco_instances,
    read_yolo_seg,
)
from instseg_core.postprocess.overlay import instance_palette
from instseg_core.runtime.adapters import MODELS
from instseg_core.runtime.backends import BackendUnavailableError
from instseg_core.runtime.segmenter import Segmenter, create_segmenter

COMMAND = "training.real_validation"
WHITE = (255, 255, 255)


def parse_input_size(text: str) -> tuple[int, int] | None:
    """--input-size: 'own' -> None (each image's own size, the Segmenter's default); 'WxH' -> (W, H), both
    positive; argparse refuses anything else."""
    if text == "own":
        return None
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected WxH (e.g. 1024x512) or 'own'") from None
    if min(width, height) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: width and height must be positive")
    return width, height


def describe_input_size(segmenter: Segmenter) -> str:
    """The network input size a Segmenter uses, in words."""
    if segmenter.input_size is not None:
        return "{}x{}".format(*segmenter.input_size)
    cap = segmenter.max_input_pixels
    return (f"own (each image's size rounded to multiples of {segmenter.adapter.input_multiple}"
            f"{'' if cap is None else f', at most {cap:,} pixels'})")


def _contours(rle: dict) -> list[np.ndarray]:
    mask = decode_rle(rle).astype(np.uint8)
    return list(cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0])


def render_real_overlay(rgb: np.ndarray, sample: RealSample, predictions: ImageInstances) -> np.ndarray:
    """(H, W, 3) uint8 RGB: the photograph with ground-truth outlines in white and each predicted instance's
    outline in its own colour, labelled with its class and score at its top-left corner."""
    out = rgb.copy()
    thickness = max(1, round(min(out.shape[:2]) / 320))
    for obj in sample.objects:
        cv2.drawContours(out, _contours(obj.rle), -1, WHITE, thickness + 1, cv2.LINE_AA)
    palette = instance_palette(len(predictions.rles))
    for k, (rle, name, score) in enumerate(zip(predictions.rles, predictions.class_names, predictions.scores,
                                               strict=True)):
        colour = tuple(int(v) for v in palette[k + 1])
        cv2.drawContours(out, _contours(rle), -1, colour, thickness + 1, cv2.LINE_AA)
        x, y, _, _ = (int(v) for v in mask_utils.toBbox(rle))
        text = f"{name} {score:.2f}"
        (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thickness, thickness)
        y = max(y, h + base)
        cv2.rectangle(out, (x, y - h - base), (x + w, y), colour, cv2.FILLED)
        cv2.putText(out, text, (x, y - base), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thickness, (0, 0, 0), thickness,
                    cv2.LINE_AA)
    return out


def write_overlays(folder: Path, samples: Sequence[RealSample], predictions: Sequence[ImageInstances]) -> None:
    """One JPEG per sample, `<index>_<name>.jpg` (the index keeps names of pooled sets apart)."""
    for index, (sample, prediction) in enumerate(zip(samples, predictions, strict=True)):
        bgr = cv2.cvtColor(render_real_overlay(sample.rgb(), sample, prediction), cv2.COLOR_RGB2BGR)
        ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])
        if not ok:
            raise RealDataError(f"{sample.image_path}: the overlay could not be encoded")
        write_bytes_atomically(folder / f"{index:04d}_{sample.name}.jpg", encoded.tobytes())


MARKDOWN_HEADER = ("| model | input | images | GT/image | predictions/image | recall@0.5 | precision@0.5 | AP50 | "
                   "agnostic recall | agnostic precision | agnostic AP50 |\n" + "|---" * 11 + "|")


def markdown_row(label: str, input_size: str, report: RealSetReport) -> str:
    agnostic = report.class_agnostic
    cells = [label, input_size, str(report.images), format_rate(report.ground_truth_per_image, 1),
             format_rate(report.predictions_per_image, 1), format_rate(report.recall), format_rate(report.precision),
             format_rate(report.ap50), format_rate(agnostic.recall), format_rate(agnostic.precision),
             format_rate(agnostic.ap50)]
    return "| " + " | ".join(cells) + " |"


def summary(report: RealSetReport) -> str:
    """The report as text: headline, then one line per class with ground truth or predictions."""
    overall, agnostic = report.overall, report.class_agnostic
    lines = [
        f"images {report.images}, ground truth {overall.ground_truth} ({format_rate(report.ground_truth_per_image, 2)}"
        f" per image; {report.ignored_ground_truth} ignored, {report.other_objects} objects of other classes), "
        f"predictions per image {format_rate(report.predictions_per_image, 2)}",
        f"class-aware:    recall@0.5 {format_rate(overall.recall)} ({overall.matched_ground_truth}/"
        f"{overall.ground_truth})  precision@0.5 {format_rate(overall.precision)} ({overall.matched_predictions}/"
        f"{overall.predictions})  AP50 {format_rate(overall.ap50)}",
        f"class-agnostic: recall@0.5 {format_rate(agnostic.recall)} ({agnostic.matched_ground_truth}/"
        f"{agnostic.ground_truth})  precision@0.5 {format_rate(agnostic.precision)} ({agnostic.matched_predictions}/"
        f"{agnostic.predictions})  AP50 {format_rate(agnostic.ap50)}",
        f"{'class':<11} {'GT':>4} {'recall':>7} {'pred':>5} {'precision':>9} {'AP50':>6}",
    ]
    for name in [*REPORT_CLASSES, *sorted(set(report.per_class) - set(REPORT_CLASSES))]:
        f = report.per_class.get(name)
        if f is not None and (f.ground_truth or f.predictions):
            lines.append(f"{name:<11} {f.ground_truth:>4} {format_rate(f.recall):>7} {f.predictions:>5} "
                         f"{format_rate(f.precision):>9} {format_rate(f.ap50):>6}")
    if report.skipped:
        lines.append(f"skipped {len(report.skipped)} bad images")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.real_validation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="labelled set in YOLO-seg layout (ROOT/images, ROOT/labels)")
    parser.add_argument("--coco", type=Path, help="COCO instances JSON (with --image-dir)")
    parser.add_argument("--image-dir", type=Path, help="folder the --coco file's file_name entries are under")
    parser.add_argument("--model", choices=sorted(MODELS), default="spatial_embeddings")
    parser.add_argument("--model-file", default=None, help="default: the shipped file for the backend")
    parser.add_argument("--backend", choices=("onnxruntime", "torch"), default="onnxruntime")
    parser.add_argument("--int8", action="store_true", help="the static int8 QDQ graph (onnxruntime)")
    parser.add_argument("--input-size", type=parse_input_size, default=None, metavar="WxH|own",
                        help="network input size; default 'own': each image's own size (the Segmenter's default)")
    parser.add_argument("--score-threshold", type=float, default=0.5, help="as the node (default 0.5)")
    parser.add_argument("--min-gt-area", type=float, default=0.0, metavar="PX",
                        help="ground truth below this many pixels is ignore (default 0: every object counts)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N images")
    parser.add_argument("--skip-bad", action="store_true", help="skip (and count) images that cannot be read")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="write the report (atomically)")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table row")
    parser.add_argument("--record", type=Path, default=None, metavar="MANIFEST",
                        help="also store the headline figures in this model manifest's 'real_validation' entry, "
                             "under --record-name")
    parser.add_argument("--record-name", default="coco_people_vehicles",
                        help="the name of the labelled set in the manifest (default coco_people_vehicles)")
    parser.add_argument("--overlays", type=Path, default=None, metavar="DIR",
                        help="one JPEG per image: predictions in colour, ground truth in white")
    add_debug_argument(parser)
    return parser


def read_sets(args: argparse.Namespace) -> RealSet:
    """The labelled images of --data and --coco/--image-dir, pooled (RealDataError)."""
    real_set = RealSet()
    if args.data is not None:
        real_set.extend(read_yolo_seg(args.data, skip_bad=args.skip_bad, limit=args.limit))
    if args.coco is not None:
        real_set.extend(read_coco_instances(args.coco, args.image_dir, skip_bad=args.skip_bad, limit=args.limit))
    real_set.samples = real_set.samples[:args.limit]
    return real_set


def parse_set_arguments(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """`parser`'s arguments, with a usage error unless they name a labelled set (--data and/or --coco with
    --image-dir); shared by the commands that read labelled sets with `read_sets`."""
    args = parser.parse_args(argv)
    if args.data is None and args.coco is None:
        parser.error("give --data ROOT and/or --coco FILE --image-dir DIR")
    if (args.coco is None) != (args.image_dir is None):
        parser.error("--coco and --image-dir go together")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_set_arguments(build_parser(), argv)
    run_command(COMMAND, lambda: validate(args), debug=debug_requested(args),
                input_errors=(RealDataError, ModelFileError, BackendUnavailableError))
    return 0


def check_outputs(args: argparse.Namespace) -> None:
    """Before the evaluation: the folders of --json, --overlays and --record can be written into, and the --record
    manifest can be read (OSError or InputError naming the file)."""
    for folder in (args.json.parent if args.json else None, args.overlays,
                   args.record.parent if args.record else None):
        if folder is not None:
            check_writable_folder(folder)
    if args.record is not None:
        read_manifest(args.record)


def validate(args: argparse.Namespace) -> None:
    """The command's work (module docstring); its errors are reported by main's exit rule."""
    check_outputs(args)
    real_set = read_sets(args)
    try:
        segmenter = create_segmenter(args.model, model_file=args.model_file, backend=args.backend, int8=args.int8,
                                     input_size=args.input_size, threads=args.threads,
                                     score_threshold=args.score_threshold)
    except ValueError as error:
        raise InputError(str(error)) from error
    for message in real_set.skipped:
        print(f"warning: skipped {message}", file=sys.stderr)
    samples = real_set.samples
    input_size = describe_input_size(segmenter)
    print(f"{len(samples)} images; {segmenter.describe()}, input size {input_size}, score threshold "
          f"{segmenter.score_threshold}", flush=True)
    start = time.perf_counter()
    predictions = predict_real_set(segmenter, samples)
    inferred = time.perf_counter()
    report = evaluate_predictions(predictions, samples, min_gt_area=args.min_gt_area,
                                  score_threshold=segmenter.score_threshold)
    report = replace(report, skipped=tuple(real_set.skipped))
    evaluated = time.perf_counter()
    if args.overlays is not None:
        write_overlays(args.overlays, samples, predictions)
    timing = {"inference_s": round(inferred - start, 3), "evaluation_s": round(evaluated - inferred, 3),
              "per_image_ms": round((inferred - start) * 1e3 / max(1, len(samples)), 1)}
    print(summary(report))
    print(f"time: inference {timing['inference_s']:.1f} s ({timing['per_image_ms']:.0f} ms per image), metrics "
          f"{timing['evaluation_s']:.1f} s")
    if args.markdown:
        label = f"{args.model}{' int8' if args.int8 else ''} ({args.backend})"
        print(MARKDOWN_HEADER)
        print(markdown_row(label, "own" if args.input_size is None else input_size, report))
    if args.json is not None:
        run = {"model": args.model, "model_file": str(segmenter.model_file), "backend": args.backend,
               "int8": args.int8, "input_size": "own" if args.input_size is None else input_size,
               "score_threshold": segmenter.score_threshold, "threads": args.threads,
               "data": [str(p) for p in (args.data, args.coco, args.image_dir) if p is not None],
               "timing": timing}
        write_text_atomically(args.json, json.dumps({**report.to_dict(), "run": run}, indent=1) + "\n")
    if args.record is not None:
        record_in_manifest(args.record, args, report, "own" if args.input_size is None else input_size)


def read_manifest(path: Path) -> dict:
    """A model manifest (a JSON object); InputError naming the file when it is not one (an OSError passes)."""
    try:
        manifest = json.loads(Path(path).read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"--record {path}: not a JSON manifest ({exc})") from exc
    if not isinstance(manifest, dict):
        raise InputError(f"--record {path}: not a JSON manifest (a {type(manifest).__name__}, not an object)")
    return manifest


def record_in_manifest(manifest_path: Path, args: argparse.Namespace, report: RealSetReport, input_size: str) -> None:
    """Store the headline figures in the manifest's `real_validation` entry under '<set> <precision> <input>'
    (atomically; the rest of the manifest untouched)."""
    manifest = read_manifest(manifest_path)
    figures = report.to_dict()
    key = f"{args.record_name} {'int8' if args.int8 else 'fp32'} {input_size}"
    manifest.setdefault("real_validation", {})[key] = {
        name: figures[name] for name in ("images", "recall", "precision", "ap50", "predictions_per_image",
                                         "ground_truth_per_image") if name in figures}
    manifest["real_validation"][key].update({
        "score_threshold": args.score_threshold, "min_gt_area": args.min_gt_area,
        "reproduce": f"python -m training.real_validation --data <{args.record_name}> --model {args.model}"
                     f"{' --int8' if args.int8 else ''} --input-size {input_size} --record {manifest_path.name}"})
    write_text_atomically(manifest_path, json.dumps(manifest, indent=1))


if __name__ == "__main__":
    main()
