"""`instseg-label`: label a recorded camera bag offline from extreme-point clicks.

    instseg-label BAG --topic /camera/image_raw --clicks clicks.json --out OUT [--model-file extreme_unet.onnx]
                  [--threads 2] [--polygon-tolerance 1.0] [--split train] [--city labelled]

BAG is a rosbag2 directory (MCAP or sqlite3) with sensor_msgs/Image or CompressedImage on --topic.
clicks.json maps a frame to the objects clicked in it. The key is the frame's index on the topic
("12"), or its header stamp in nanoseconds ("1700000000066666667"), or in seconds with a decimal point
("1700000000.066666667"). Each object is {"points": [[x, y] x 4: left, top, right, bottom],
"class": "car"} or the compact [[x, y], [x, y], [x, y], [x, y], "car"].

Output under OUT, each file written atomically:
- the labelled frames as leftImg8bit/{split}/{city}/{city}_000000_{index:06d}_leftImg8bit.png, with
  gtFine polygons JSON, instanceIds, labelIds and color images (the Cityscapes layout: the reader,
  the official tools and our training commands load it);
- annotations_coco.json: COCO instances with polygon segmentations, areas, boxes, categories with
  Cityscapes label ids, and per annotation the extreme points, score and polygon IoU.
Errors are clear: a missing topic (available topics are listed), an unreadable or corrupt bag, frame
indices or stamps that are not in the bag, and invalid points (the key and the reason are named).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rosbags.highlevel import AnyReader
from tqdm import tqdm

from instseg_core.annotate.segmenter import AnnotationError, ExtremePointSegmenter, create_annotation_segmenter
from instseg_core.base.atomic_files import write_text_atomically
from instseg_core.base.model_files import ModelFileError
from instseg_core.data.cityscapes import name2label, write_sample
from instseg_ros.image_codec import ImageCodecError, compressed_to_numpy, image_to_numpy, to_rgb8

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")


class LabelError(RuntimeError):
    """A problem with the inputs of instseg-label; the message says which and why."""


@dataclass(frozen=True)
class Click:
    """One object to label: 4 extreme points (image pixels) and its Cityscapes class name."""

    points: np.ndarray
    class_name: str


def parse_clicks(data: dict) -> dict[str, list[Click]]:
    """Validate the clicks JSON; keys are kept as given (resolved against the bag later)."""
    if not isinstance(data, dict) or not data:
        raise LabelError("clicks JSON must be a non-empty object {frame index or stamp: [objects]}")
    result = {}
    for key, objects in data.items():
        if not isinstance(objects, list):
            raise LabelError(f"clicks[{key!r}] must be a list of objects")
        clicks = []
        for index, obj in enumerate(objects):
            if isinstance(obj, dict):
                points, name = obj.get("points"), obj.get("class")
            elif isinstance(obj, list) and len(obj) == 5:
                points, name = obj[:4], obj[4]
            else:
                raise LabelError(f"clicks[{key!r}][{index}]: expected {{'points': [...], 'class': ...}} "
                                 "or [[x,y] x 4, class]")
            array = np.asarray(points, dtype=np.float64) if points is not None else np.zeros(0)
            if array.shape != (4, 2):
                raise LabelError(f"clicks[{key!r}][{index}]: need 4 points [x, y], got {points!r}")
            if name not in name2label or name2label[name].id < 0:
                raise LabelError(f"clicks[{key!r}][{index}]: unknown Cityscapes class {name!r}")
            clicks.append(Click(array, str(name)))
        result[str(key)] = clicks
    return result


def _key_kind(key: str) -> tuple[str, int]:
    """('index', i) for a frame index, ('stamp', ns) for a stamp in ns or in seconds with a decimal point."""
    text = key.strip()
    if "." in text:
        seconds, _, fraction = text.partition(".")
        if not (seconds.isdigit() and fraction.isdigit()):
            raise LabelError(f"cannot read {key!r} as a stamp in seconds")
        return "stamp", int(seconds) * 10**9 + int((fraction + "000000000")[:9])
    if not text.isdigit():
        raise LabelError(f"cannot read {key!r} as a frame index or a stamp")
    value = int(text)
    return ("stamp", value) if len(text) >= 16 else ("index", value)


def _decode(msg: object, msgtype: str) -> np.ndarray:
    if msgtype.endswith("CompressedImage"):
        image, encoding = compressed_to_numpy(msg)
    else:
        image, encoding = image_to_numpy(msg), msg.encoding
    return to_rgb8(image, encoding)


def _read_messages(reader: AnyReader, connections: list, bag: Path) -> Iterator[tuple[object, object]]:
    """(connection, deserialised message) in bag order; a bag that breaks while reading -> LabelError."""
    messages = reader.messages(connections=connections)
    while True:
        try:
            connection, _, rawdata = next(messages)
            msg = reader.deserialize(rawdata, connection.msgtype)
        except StopIteration:
            return
        except Exception as exc:  # rosbags raises various types on truncated or corrupt data
            raise LabelError(f"cannot read bag {bag} (corrupt data?): {exc}") from exc
        yield connection, msg


def _atomic_json(path: Path, data: object) -> None:
    write_text_atomically(path, json.dumps(data))


def label_bag(bag: Path, topic: str, clicks: dict[str, list[Click]], out: Path, segmenter: ExtremePointSegmenter, *,
              split: str = "train", city: str = "labelled", progress: bool = True) -> dict:
    """Label the clicked frames of `topic` in `bag` into `out`; returns a summary."""
    wanted = {key: _key_kind(key) for key in clicks}
    by_index = {v: k for k, (kind, v) in wanted.items() if kind == "index"}
    by_stamp = {v: k for k, (kind, v) in wanted.items() if kind == "stamp"}
    try:
        reader = AnyReader([Path(bag)])
        reader.open()
    except Exception as exc:  # rosbags raises several types for missing, unreadable or corrupt bags
        raise LabelError(f"cannot read bag {bag}: {exc}") from exc
    try:
        connections = [c for c in reader.connections if c.topic == topic]
        if not connections:
            available = sorted({f"{c.topic} ({c.msgtype})" for c in reader.connections})
            raise LabelError(f"topic {topic} is not in {bag}; it has: {', '.join(available) or 'no topics'}")
        if connections[0].msgtype not in IMAGE_TYPES:
            raise LabelError(f"topic {topic} carries {connections[0].msgtype}, not an image type {IMAGE_TYPES}")
        total = sum(c.msgcount for c in connections)
        images, annotations, found = [], [], set()
        categories: dict[int, str] = {}
        bar = tqdm(total=total, desc=f"labelling {topic}", unit="frame", disable=not progress, file=sys.stderr)
        try:
            for index, (connection, msg) in enumerate(_read_messages(reader, connections, bag)):
                bar.update(1)
                stamp = int(msg.header.stamp.sec) * 10**9 + int(msg.header.stamp.nanosec)
                key = by_index.get(index, by_stamp.get(stamp))
                if key is None:
                    continue
                found.add(key)
                try:
                    rgb = _decode(msg, connection.msgtype)
                except ImageCodecError as exc:
                    raise LabelError(f"frame {index} ({key}): cannot decode the image: {exc}") from exc
                try:
                    results = segmenter.segment_batch(rgb, [c.points for c in clicks[key]])
                except AnnotationError as exc:
                    raise LabelError(f"clicks[{key!r}]: {exc}") from exc
                stem = f"{city}_000000_{index:06d}"
                objects = [(c.class_name, r.polygon) for c, r in zip(clicks[key], results, strict=True)
                           if len(r.polygon) >= 3]
                write_sample(out, split, city, stem, rgb, objects)
                image_id = len(images) + 1
                images.append({"id": image_id, "file_name": f"leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png",
                               "height": int(rgb.shape[0]), "width": int(rgb.shape[1]), "frame_index": index,
                               "stamp_ns": stamp, "frame_id": str(msg.header.frame_id)})
                for click, result in zip(clicks[key], results, strict=True):
                    if len(result.polygon) < 3:
                        continue
                    label = name2label[click.class_name]
                    categories[label.id] = label.name
                    x0, y0 = result.polygon.min(axis=0)
                    x1, y1 = result.polygon.max(axis=0)
                    annotations.append({
                        "id": len(annotations) + 1, "image_id": image_id, "category_id": label.id, "iscrowd": 0,
                        "segmentation": [result.polygon.astype(float).reshape(-1).tolist()],
                        "area": float(result.area),
                        "bbox": [float(x0), float(y0), float(x1 - x0 + 1), float(y1 - y0 + 1)],
                        "score": result.score, "polygon_iou": result.polygon_iou,
                        "extreme_points": click.points.reshape(-1).tolist(),
                    })
        finally:
            bar.close()
    finally:
        reader.close()
    missing = sorted(set(clicks) - found)
    if missing:
        raise LabelError(f"{len(missing)} clicked frame(s) not in {topic} of {bag} ({total} frames): "
                         + ", ".join(missing[:10]))
    coco = {"images": images, "annotations": annotations,
            "categories": [{"id": i, "name": n} for i, n in sorted(categories.items())]}
    _atomic_json(out / "annotations_coco.json", coco)
    return {"frames": len(images), "objects": len(annotations), "out": str(out)}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="instseg-label", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("bag", type=Path)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--clicks", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model-file", "--model", dest="model_file", default=None,
                        help="a path, or a file name in the model folders; default: the shipped extreme_unet_int8.onnx")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--polygon-tolerance", type=float, default=1.0)
    parser.add_argument("--split", default="train", choices=["train", "val", "test"])
    parser.add_argument("--city", default="labelled")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if "_" in args.city:
        parser.error("--city must not contain '_' (Cityscapes file names split on it)")
    try:
        clicks = parse_clicks(json.loads(args.clicks.read_text()))
        segmenter = create_annotation_segmenter(args.model_file, threads=args.threads,
                                                polygon_tolerance=args.polygon_tolerance)
        summary = label_bag(args.bag, args.topic, clicks, args.out, segmenter, split=args.split, city=args.city,
                            progress=not args.quiet)
    except (LabelError, ModelFileError, OSError, json.JSONDecodeError) as exc:
        sys.exit(f"instseg-label: {exc}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
