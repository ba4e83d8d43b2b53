"""`instseg-label`: label a recorded camera bag offline from extreme-point clicks.

    instseg-label BAG --topic /camera/image_raw --clicks clicks.json --out OUT [--model-file extreme_unet.onnx]
                  [--threads 2] [--polygon-tolerance 1.0] [--split train] [--city NAME] [--skip-bad]
                  [--overwrite]

BAG is a rosbag2 directory (MCAP or sqlite3) with sensor_msgs/Image or CompressedImage on --topic.
clicks.json maps a frame to the objects clicked in it. The key is the frame's index on the topic
("12"), or its header stamp in nanoseconds ("1700000000066666667"), or in seconds with a decimal point
("1700000000.066666667"). Each object is {"points": [[x, y] x 4: left, top, right, bottom],
"class": "car"} or the compact [[x, y], [x, y], [x, y], [x, y], "car"].

Output under OUT (a new folder; --overwrite replaces an existing one), all or nothing: the run writes into a
staging folder beside OUT, which becomes OUT only when the whole run succeeded. Files:
- the labelled frames as leftImg8bit/{split}/{city}/{city}_000000_{index:06d}_leftImg8bit.png, with
  gtFine polygons JSON, instanceIds, labelIds and color images (the Cityscapes layout: the reader,
  the official tools and our training commands load it);
- annotations_coco.json: COCO instances with polygon segmentations, areas, boxes, categories with
  Cityscapes label ids, and per annotation the extreme points, score and polygon IoU;
- clicks.json: the clicks that were labelled, keyed by frame index (what --clicks reads; the labelling
  studio exports the same file).
Errors are clear (one line on stderr, exit status 2, OUT untouched): a missing topic (available topics are
listed), an unreadable or corrupt bag, a clicks file that is not UTF-8 JSON, malformed clicks, duplicate keys
(the same key twice in one object, or "2" and "02"), frame indices or stamps that are not in the bag, frames that
cannot be decoded (e.g. mono16), points that are invalid for their frame (the key and the reason are named) and
files that cannot be read or written (the errno and the file). Anything else is an internal error: one line, exit
status 1, the traceback in a log file (or on stderr with --debug; instseg_core.base.command_exit). With --skip-bad
such entries are left out instead, each reported on stderr and in the summary's "skipped" list, and the rest is
labelled (exit status 0).
On success the summary is one JSON line on stdout: frames, objects, skipped, out.
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

from instseg_core.annotate.segmenter import (
    FLIPS,
    REFINEMENTS,
    AnnotationError,
    ExtremePointSegmenter,
    create_annotation_segmenter,
    validate_points,
)
from instseg_core.base.command_exit import add_debug_argument, debug_requested, run_command
from instseg_core.base.model_files import ModelFileError
from instseg_core.data.cityscapes import name2label
from instseg_core.data.label_export import (
    LabelExportError,
    LabelledFrame,
    LabelledObject,
    bag_city_name,
    write_label_tree,
)
from instseg_core.data.recording import BagIntegrityError, verify_bag
from instseg_ros.image_codec import IMAGE_MSGTYPES, ImageCodecError, decode_to_rgb8


class LabelError(RuntimeError):
    """A problem with the inputs of instseg-label; the message says which and why."""


@dataclass(frozen=True)
class Click:
    """One object to label: 4 extreme points (image pixels) and its Cityscapes class name."""

    points: np.ndarray
    class_name: str


def _points(points: object, where: str) -> np.ndarray:
    """(4, 2) float64 finite points from a JSON value, or LabelError saying what is wrong with it."""
    if not isinstance(points, list) or len(points) != 4:
        raise LabelError(f"{where}: need 4 points [x, y] in a list, got {points!r}")
    if any(not isinstance(p, list) or len(p) != 2 for p in points):
        raise LabelError(f"{where}: each point must be [x, y], got {points!r}")
    if any(isinstance(v, bool) or not isinstance(v, int | float) for p in points for v in p):
        raise LabelError(f"{where}: point coordinates must be numbers, got {points!r}")
    array = np.asarray(points, dtype=np.float64)
    if not np.all(np.isfinite(array)):
        raise LabelError(f"{where}: point coordinates must be finite, got {points!r}")
    return array


def parse_clicks(data: object) -> dict[str, list[Click]]:
    """Validate the clicks JSON; keys are kept as given (resolved against the bag later). Every problem is a
    LabelError naming the entry: not an object, an empty object list, malformed points or an unknown class,
    and two keys that name the same frame ("2" and "02", or a stamp in ns and in s)."""
    if not isinstance(data, dict) or not data:
        raise LabelError("clicks JSON must be a non-empty object {frame index or stamp: [objects]}")
    result = {}
    seen: dict[tuple[str, int], str] = {}
    for key, objects in data.items():
        frame = _key_kind(key)
        if frame in seen:
            raise LabelError(f"clicks[{key!r}] and clicks[{seen[frame]!r}] are duplicates: both name {frame[0]} "
                             f"{frame[1]}")
        seen[frame] = key
        if not isinstance(objects, list) or not objects:
            raise LabelError(f"clicks[{key!r}] must be a non-empty list of objects")
        clicks = []
        for index, obj in enumerate(objects):
            where = f"clicks[{key!r}][{index}]"
            if isinstance(obj, dict):
                points, name = obj.get("points"), obj.get("class")
            elif isinstance(obj, list) and len(obj) == 5:
                points, name = obj[:4], obj[4]
            else:
                raise LabelError(f"{where}: expected {{'points': [...], 'class': ...}} or [[x,y] x 4, class]")
            array = _points(points, where)
            if not isinstance(name, str) or name not in name2label or name2label[name].id < 0:
                raise LabelError(f"{where}: unknown Cityscapes class {name!r}")
            clicks.append(Click(array, name))
        result[str(key)] = clicks
    return result


def _refuse_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """json's object_pairs_hook: an object with a key twice is refused (json.loads keeps the last value silently,
    and the objects clicked under the first are lost)."""
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise LabelError(f"key {key!r} appears twice in one object (only one of them would be kept)")
        result[key] = value
    return result


def read_clicks(path: Path) -> dict[str, list[Click]]:
    """Read and validate a clicks file (`parse_clicks`); a file that is not UTF-8 or not JSON, or an object with a
    duplicate key, is a LabelError naming the file. An OSError (missing, unreadable) passes unchanged."""
    data = Path(path).read_bytes()
    try:
        return parse_clicks(json.loads(data.decode("utf-8"), object_pairs_hook=_refuse_duplicate_keys))
    except UnicodeDecodeError as exc:
        raise LabelError(f"{path} is not UTF-8 text (byte {exc.start}: {exc.reason}); a clicks file is JSON") from exc
    except json.JSONDecodeError as exc:
        raise LabelError(f"{path} is not JSON: {exc}") from exc
    except (ValueError, RecursionError) as exc:  # an integer of over 4300 digits, nesting deeper than the stack
        raise LabelError(f"{path} cannot be read as JSON: {exc}") from exc
    except LabelError as exc:
        raise LabelError(f"{path}: {exc}") from exc


def _key_kind(key: object) -> tuple[str, int]:
    """('index', i) for a frame index, ('stamp', ns) for a stamp in ns or in seconds with a decimal point."""
    text = str(key).strip()
    if "." in text:
        seconds, _, fraction = text.partition(".")
        if not (seconds.isdigit() and fraction.isdigit()):
            raise LabelError(f"cannot read {key!r} as a stamp in seconds")
        return "stamp", int(seconds) * 10**9 + int((fraction + "000000000")[:9])
    if not text.isdigit():
        raise LabelError(f"cannot read {key!r} as a frame index or a stamp")
    value = int(text)
    return ("stamp", value) if len(text) >= 16 else ("index", value)


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


def label_bag(bag: Path, topic: str, clicks: dict[str, list[Click]], out: Path, segmenter: ExtremePointSegmenter, *,
              split: str = "train", city: str = "labelled", progress: bool = True, skip_bad: bool = False,
              overwrite: bool = False) -> dict:
    """Label the clicked frames of `topic` in `bag` into the folder `out`; returns a summary.

    All or nothing (instseg_core.data.label_export.write_label_tree): everything is written into a sibling
    staging folder, which replaces `out` only when the whole run succeeded; on any error `out` is as it was and
    the staging folder is removed. An existing `out` is refused unless `overwrite`. With `skip_bad`, an entry
    that cannot be labelled (a frame that cannot be decoded or is not in the bag, an object whose points are
    invalid for its frame) is left out and listed in the summary's "skipped" with its reason, and the rest is
    labelled; without it, the first such entry fails the run with a LabelError naming it."""
    skipped: list[dict] = []
    frames = _labelled_frames(bag, topic, clicks, segmenter, progress=progress, skip_bad=skip_bad, skipped=skipped)
    try:
        summary = write_label_tree(out, frames, split=split, city=city, overwrite=overwrite)
    except LabelExportError as exc:
        raise LabelError(str(exc)) from exc
    return {"frames": summary["frames"], "objects": summary["objects"], "skipped": skipped, "out": summary["out"]}


def _labelled_frames(bag: Path, topic: str, clicks: dict[str, list[Click]], segmenter: ExtremePointSegmenter, *,
                     progress: bool, skip_bad: bool, skipped: list[dict]) -> Iterator[LabelledFrame]:
    """The clicked frames of the bag, segmented, in bag order; entries that cannot be labelled raise LabelError,
    or with `skip_bad` are appended to `skipped` (key, object, reason). Raises at the end when clicked frames
    are not in the bag (without `skip_bad`)."""
    wanted = {key: _key_kind(key) for key in clicks}
    by_index = {v: k for k, (kind, v) in wanted.items() if kind == "index"}
    by_stamp = {v: k for k, (kind, v) in wanted.items() if kind == "stamp"}

    def skip(key: str, reason: str, obj: int | None = None) -> None:
        where = f"clicks[{key!r}]" + (f"[{obj}]" if obj is not None else "")
        if not skip_bad:
            raise LabelError(f"{where}: {reason}")
        skipped.append({"key": key, "object": obj, "reason": reason})
        print(f"instseg-label: skipped {where}: {reason}", file=sys.stderr, flush=True)

    if Path(bag).exists():
        try:
            verify_bag(bag)
        except BagIntegrityError as exc:
            raise LabelError(f"bag {bag} is damaged, not labelled: {exc}") from exc
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
        if connections[0].msgtype not in IMAGE_MSGTYPES:
            raise LabelError(f"topic {topic} carries {connections[0].msgtype}, not an image type {IMAGE_MSGTYPES}")
        total = sum(c.msgcount for c in connections)
        found = set()
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
                    rgb = decode_to_rgb8(msg, connection.msgtype)
                except ImageCodecError as exc:
                    skip(key, f"frame {index}: cannot decode the image: {exc}")
                    continue
                valid = []
                for number, click in enumerate(clicks[key]):
                    try:
                        validate_points(click.points, rgb.shape[:2])
                        valid.append(click)
                    except AnnotationError as exc:
                        skip(key, str(exc), number)
                if not valid:
                    continue
                results = segmenter.segment_batch(rgb, [c.points for c in valid])
                yield LabelledFrame(index, stamp, str(msg.header.frame_id), rgb, [
                    LabelledObject(c.class_name, r.polygon, c.points, r.score, r.polygon_iou, r.area)
                    for c, r in zip(valid, results, strict=True)])
        finally:
            bar.close()
    finally:
        reader.close()
    missing = sorted(set(clicks) - found)
    if missing and not skip_bad:
        raise LabelError(f"{len(missing)} clicked frame(s) not in {topic} of {bag} ({total} frames): "
                         + ", ".join(missing[:10]))
    for key in missing:
        skip(key, f"frame not in {topic} ({total} frames)")


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
    parser.add_argument("--flip", choices=FLIPS, default="union",
                        help="union: also segment the mirrored crop and keep the larger probability per pixel "
                             "(default; ~3 ms more per object); none: one network pass")
    parser.add_argument("--refine", choices=REFINEMENTS, default="none",
                        help="GrabCut refinement of the network's border (instseg_core.annotate.refine)")
    parser.add_argument("--split", default="train", choices=["train", "val", "test"])
    parser.add_argument("--city", default=None,
                        help="Cityscapes city name of the tree (default: from the bag's name and the topic, as the "
                             "studio's export names it, so that trees of several bags merge without collisions)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--skip-bad", action="store_true",
                        help="leave out entries that cannot be labelled (each is reported) instead of failing")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --out folder (only once the whole run has succeeded)")
    add_debug_argument(parser)
    args = parser.parse_args(argv)
    if args.city is not None and "_" in args.city:
        parser.error("--city must not contain '_' (Cityscapes file names split on it)")

    def run() -> dict:
        clicks = read_clicks(args.clicks)
        segmenter = create_annotation_segmenter(args.model_file, threads=args.threads,
                                                polygon_tolerance=args.polygon_tolerance, refine=args.refine,
                                                flip=args.flip)
        city = args.city or bag_city_name(args.bag, args.topic)
        return label_bag(args.bag, args.topic, clicks, args.out, segmenter, split=args.split, city=city,
                         progress=not args.quiet, skip_bad=args.skip_bad, overwrite=args.overwrite)

    summary = run_command("instseg-label", run, debug=debug_requested(args), input_errors=(LabelError, ModelFileError))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
