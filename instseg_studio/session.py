"""The studio's session: every object of every frame, saved atomically to one JSON file after each change.

File `OUT/studio_session.json`:

    {"format": "instseg-studio-session/1", "bag": "...", "topic": "/camera/image_raw", "version": 17,
     "frames": {"12": {"stamp_ns": 1700000000400000000, "objects": [OBJECT, ...]}}}

OBJECT: {"id": "o7", "class": "car", "points": [[x, y] x 4: left, top, right, bottom], "polygon": [[x, y], ...],
"tolerance": 1.0, "score": 0.93, "polygon_iou": 0.97, "hidden": false, "source": "clicks", "track_id": 3,
"attributes": {"occluded": false, "truncated": true, "crowd": false}, "excluded": false, "edited": false,
"carried": false, "clicks": {"positive": [[x, y], ...], "negative": [[x, y], ...]}} in image pixels:
- "track_id" (int >= 1) says which object of the sequence this is: the car of frame 3 that is the car of frame 2
  has the same track id; at most one object of a frame per track. An object saved without one gets the next free
  id of the session's counter ("next_track_id" in the file, never reused within the session). Sessions written
  before track ids existed are given them when loaded: objects that share their "id" string across frames (what
  copying to the next frame kept) share a track.
- "attributes": the boolean attributes its class offers (`Session.attributes`, `--attributes`; by default
  occluded, truncated and crowd for every class), all present in the clean object, missing ones false. A true
  attribute the class does not offer is refused on save; on load (a session opened with other --attributes) it is
  dropped with a logged warning.
- "excluded": kept in the session and shown, but left out of every export ("hidden" only hides it in the page
  and is exported).
- "edited": the operator changed the outline by hand (vertex drag, insert or delete, brush or eraser, correction
  click, moved extreme point; the page sets it). Copying to the next frame (assist.merge_propagated) keeps an
  edited object of the target frame instead of replacing it, and carries an edited source object's polygon
  instead of segmenting it again (assist.propagate); the objects a copy produces have it false. Missing (older
  sessions): false.
- "carried": the polygon is such a carried copy of a hand-edited object (set by assist.propagate, false when the
  object is segmented again), so that copying it on to the next frame carries it again. Missing: false.
- "clicks": correction clicks (image pixels) the polygon was segmented with after the 4 extreme points, kept so
  that moving an extreme point re-segments with them; empty lists by default.
- "source": "clicks", "propagated" (copied from another frame), "proposal" (an accepted proposal) or "brush" (the
  polygon was recomputed from a brushed or erased mask). A copied object edited by hand is no longer
  "propagated": the page makes it "brush" after a brush or eraser stroke, "clicks" after any other hand edit.
A frame may also carry, written beforehand by `instseg-fleet prelabel` (instseg_fleet):
"proposals": [PROPOSAL, ...], a model's instances not yet accepted by the operator, PROPOSAL = {"class",
"polygon", "points" (4 extreme points), "score", "polygon_iou", "area" (mask pixels)}; and "mining": {"reason":
"why this frame was chosen", numbers...}. Both are kept as they are when the operator changes the frame's objects
(an accepted proposal becomes an OBJECT with "source": "proposal"); older sessions simply have neither. Proposals
of a class the session does not label (`instseg-studio --labels`) are left out when it is loaded.
A session belongs to one bag (checked by its folder or file name, so a moved bag keeps its session) and topic.
`version` grows by one with every saved change. A change names the version it was made on; a change made on
an older version (another browser tab saved in between) is refused with VersionConflictError instead of silently
overwriting the other tab's work. Killing the server at any moment leaves the last saved version on disk: the
file is replaced by rename, never written in place.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from instseg_core.base.atomic_files import write_text_atomically
from instseg_core.data.label_export import (
    LabelExportError,
    LabelledFrame,
    LabelledObject,
    bag_city_name,
    check_class,
    write_label_tree,
)

SESSION_FORMAT = "instseg-studio-session/1"
SESSION_FILE = "studio_session.json"
OBJECT_SOURCES = ("clicks", "propagated", "proposal", "brush")
ATTRIBUTE_NAMES = ("occluded", "truncated", "crowd")
MAX_OBJECTS_PER_FRAME = 1000
MAX_POLYGON_VERTICES = 10000
MAX_CORRECTION_CLICKS = 100
MAX_TRACK_ID = 10**9
log = logging.getLogger("instseg_studio")


MESSAGE_VALUE_CHARS = 60


def shown(value: Any, limit: int = MESSAGE_VALUE_CHARS) -> str:
    """repr(value) for a message, cut to about `limit` characters: a request's 4000-digit number or megabyte of text
    is named, not echoed whole."""
    try:
        text = repr(value)
    except ValueError:  # an integer past Python's 4300-digit conversion limit
        return "a number of more than 4300 digits"
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class SessionError(ValueError):
    """A session file or a change that cannot be used; the message says what is wrong."""


class OutsideImageError(SessionError):
    """A vertex, extreme point or correction click of an object lies outside its frame's image."""


def check_inside_image(objects: list[dict], image_shape: tuple[int, ...]) -> None:
    """OutsideImageError naming the object and the coordinate when a polygon vertex, extreme point or correction
    click of the validated `objects` (validate_object's form) lies outside an (H, W[, C]) image."""
    height, width = image_shape[:2]
    for k, obj in enumerate(objects):
        parts = (("polygon", obj["polygon"]), ("points", obj["points"]),
                 *((f"clicks.{kind}", obj["clicks"][kind]) for kind in ("positive", "negative")))
        for name, points in parts:
            for j, (x, y) in enumerate(points):
                if not (0 <= x <= width - 1 and 0 <= y <= height - 1):
                    raise OutsideImageError(f"objects[{k}] (id {obj['id']!r}, {obj['class']}).{name}[{j}] "
                                            f"{shown([x, y])} is outside the {width}x{height} image")


class VersionConflictError(SessionError):
    """The change was made on an older version of the session than the one saved."""


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value or abs(value) > 1e7:
        raise SessionError(f"{where}: expected a finite number, got {shown(value)}")
    return float(value)


def _points(value: Any, where: str, count: int | None = None) -> list[list[float]]:
    if not isinstance(value, list) or (count is not None and len(value) != count):
        raise SessionError(f"{where}: expected a list of {count or 'n'} [x, y] points")
    if len(value) > MAX_POLYGON_VERTICES:
        raise SessionError(f"{where}: more than {MAX_POLYGON_VERTICES} points")
    points = []
    for k, point in enumerate(value):
        if not isinstance(point, list) or len(point) != 2:
            raise SessionError(f"{where}[{k}]: expected [x, y], got {shown(point)}")
        points.append([_number(point[0], f"{where}[{k}]"), _number(point[1], f"{where}[{k}]")])
    return points


def parse_attribute_config(text: str | None, classes: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """The attributes each class offers, from `--attributes` TEXT: entries "CLASS=ATTR,ATTR" separated by ";",
    CLASS "*" for every class not named, an empty ATTR list (or "none") for no attribute; ATTR one of
    ATTRIBUTE_NAMES. None or "" gives all of them to every class. Example: "*=occluded,truncated;person=occluded,
    truncated,crowd". ValueError naming the bad entry otherwise."""
    default: tuple[str, ...] = ATTRIBUTE_NAMES
    named: dict[str, tuple[str, ...]] = {}
    for entry in (text or "").split(";"):
        if not entry.strip():
            continue
        name, equals, listed = entry.partition("=")
        name = name.strip()
        if not equals:
            raise ValueError(f"--attributes entry {entry.strip()!r}: expected CLASS=ATTR,ATTR (or *=...)")
        if name != "*" and name not in classes:
            raise ValueError(f"--attributes entry {entry.strip()!r}: {name!r} is not one of the studio's classes")
        attributes = tuple(a.strip() for a in listed.split(",") if a.strip() and a.strip() != "none")
        unknown = [a for a in attributes if a not in ATTRIBUTE_NAMES]
        if unknown:
            raise ValueError(f"--attributes entry {entry.strip()!r}: unknown attribute {unknown[0]!r} (known: "
                             f"{', '.join(ATTRIBUTE_NAMES)})")
        if name == "*":
            default = attributes
        else:
            named[name] = attributes
    return {name: named.get(name, default) for name in classes}


def _attributes(value: Any, offered: tuple[str, ...], where: str, strict: bool) -> dict[str, bool]:
    """{attribute: bool} for every attribute in `offered` (missing: false) from an OBJECT's "attributes"."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise SessionError(f"{where}: expected {{\"occluded\": bool, ...}}, got {type(value).__name__}")
    clean = dict.fromkeys(offered, False)
    for key, flag in value.items():
        if key not in ATTRIBUTE_NAMES:
            raise SessionError(f"{where}: unknown attribute {shown(key)} (known: {', '.join(ATTRIBUTE_NAMES)})")
        if not isinstance(flag, bool):
            raise SessionError(f"{where}.{key}: expected true or false, got {shown(flag)}")
        if key in offered:
            clean[key] = flag
        elif flag and strict:
            raise SessionError(f"{where}.{key}: this class does not offer {key!r} (it offers: "
                               f"{', '.join(offered) or 'no attribute'})")
        elif flag:
            log.warning("%s.%s: dropped, the class does not offer it (--attributes)", where, key)
    return clean


def _clicks(value: Any, where: str) -> dict[str, list[list[float]]]:
    """{"positive": [[x, y], ...], "negative": [[x, y], ...]} from an OBJECT's "clicks" (missing: empty)."""
    if value is None:
        value = {}
    if not isinstance(value, dict) or set(value) - {"positive", "negative"}:
        raise SessionError(f"{where}: expected {{\"positive\": [[x, y], ...], \"negative\": [[x, y], ...]}}")
    clean = {}
    for key in ("positive", "negative"):
        points = _points(value.get(key, []), f"{where}.{key}")
        if len(points) > MAX_CORRECTION_CLICKS:
            raise SessionError(f"{where}.{key}: more than {MAX_CORRECTION_CLICKS} clicks")
        clean[key] = [[round(x, 2), round(y, 2)] for x, y in points]
    return clean


def validate_object(obj: Any, classes: tuple[str, ...], where: str,
                    attributes: Mapping[str, tuple[str, ...]] | None = None, strict: bool = True) -> dict:
    """A clean copy of one OBJECT (see the module docstring), or SessionError naming the field. `attributes`: the
    attributes each class offers (None: all of ATTRIBUTE_NAMES); `strict` False (loading a file) drops a true
    attribute the class does not offer with a warning instead of refusing it. A missing "track_id" stays missing
    (the Session assigns one)."""
    if not isinstance(obj, dict):
        raise SessionError(f"{where}: expected an object, got {type(obj).__name__}")
    object_id = obj.get("id")
    if not isinstance(object_id, str) or not 0 < len(object_id) <= 64:
        raise SessionError(f"{where}.id: expected a short string")
    name = obj.get("class")
    if name not in classes:
        raise SessionError(f"{where}.class: {shown(name)} is not one of the studio's classes")
    polygon = _points(obj.get("polygon"), f"{where}.polygon")
    if len(polygon) < 3:
        raise SessionError(f"{where}.polygon: at least 3 vertices are needed")
    source = obj.get("source", "clicks")
    if source not in OBJECT_SOURCES:
        raise SessionError(f"{where}.source: {shown(source)} is not one of {OBJECT_SOURCES}")
    # view and export flags: missing or null is false; edited and carried: missing is false
    flags = {**{key: obj.get(key) or False for key in ("hidden", "excluded")},
             **{key: obj.get(key, False) for key in ("edited", "carried")}}
    for key, flag in flags.items():
        if not isinstance(flag, bool):
            raise SessionError(f"{where}.{key}: expected true or false, got {shown(flag)}")
    offered = ATTRIBUTE_NAMES if attributes is None else attributes.get(name, ())
    clean = {"id": object_id, "class": name, "points": _points(obj.get("points"), f"{where}.points", 4),
             "polygon": [[round(x, 2), round(y, 2)] for x, y in polygon],
             "tolerance": _number(obj.get("tolerance", 1.0), f"{where}.tolerance"),
             "source": source, **flags,
             "attributes": _attributes(obj.get("attributes"), offered, f"{where}.attributes", strict),
             "clicks": _clicks(obj.get("clicks"), f"{where}.clicks")}
    track_id = obj.get("track_id")
    if track_id is not None:
        if isinstance(track_id, bool) or not isinstance(track_id, int) or not 1 <= track_id <= MAX_TRACK_ID:
            raise SessionError(f"{where}.track_id: expected a whole number from 1 to {MAX_TRACK_ID}, got "
                               f"{shown(track_id)}")
        clean["track_id"] = track_id
    for key in ("score", "polygon_iou"):
        if obj.get(key) is not None:
            clean[key] = _number(obj[key], f"{where}.{key}")
    return clean


def validate_proposal(proposal: Any, classes: tuple[str, ...], where: str) -> dict:
    """A clean copy of one PROPOSAL (see the module docstring), or SessionError naming the field."""
    if not isinstance(proposal, dict):
        raise SessionError(f"{where}: expected an object, got {type(proposal).__name__}")
    if proposal.get("class") not in classes:
        raise SessionError(f"{where}.class: {shown(proposal.get('class'))} is not one of the studio's classes")
    polygon = _points(proposal.get("polygon"), f"{where}.polygon")
    if len(polygon) < 3:
        raise SessionError(f"{where}.polygon: at least 3 vertices are needed")
    clean = {"class": proposal["class"], "polygon": [[round(x, 2), round(y, 2)] for x, y in polygon],
             "points": _points(proposal.get("points"), f"{where}.points", 4),
             "score": _number(proposal.get("score"), f"{where}.score")}
    for key in ("polygon_iou", "area"):
        if proposal.get(key) is not None:
            clean[key] = _number(proposal[key], f"{where}.{key}")
    return clean


def validate_mining(mining: Any, where: str) -> dict:
    """A clean copy of a frame's "mining" note: {"reason": str, other keys: numbers or strings}."""
    if not isinstance(mining, dict) or not isinstance(mining.get("reason"), str):
        raise SessionError(f"{where}: expected {{\"reason\": str, ...}}")
    clean: dict[str, Any] = {}
    for key, value in mining.items():
        if not isinstance(key, str) or len(key) > 64:
            raise SessionError(f"{where}: bad key {shown(key)}")
        clean[key] = value[:1000] if isinstance(value, str) else _number(value, f"{where}.{key}")
    return clean


def _has_content(frame: dict) -> bool:
    return bool(frame["objects"] or frame.get("proposals") or frame.get("mining"))


class Session:
    """The session of one bag topic, kept in memory and on disk (`path`); thread-safe."""

    def __init__(self, path: Path, bag: str, topic: str, classes: tuple[str, ...],
                 attributes: Mapping[str, tuple[str, ...]] | None = None) -> None:
        """`attributes`: the attributes each class offers (parse_attribute_config; None: all of ATTRIBUTE_NAMES
        for every class)."""
        for name in classes:
            try:
                check_class(name)
            except LabelExportError as exc:
                raise SessionError(f"class list: {exc}") from exc
        self.path = Path(path)
        self.bag, self.topic, self.classes = bag, topic, classes
        self.attributes: dict[str, tuple[str, ...]] = {
            name: tuple(ATTRIBUTE_NAMES if attributes is None else attributes.get(name, ())) for name in classes}
        self._lock = threading.Lock()
        self.version = 0
        self.next_track_id = 1
        self.frames: dict[int, dict] = {}
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError) as exc:
            raise SessionError(f"session file {self.path} cannot be read ({exc}); move it away to start a new "
                               "session") from exc
        if not isinstance(data, dict) or data.get("format") != SESSION_FORMAT:
            raise SessionError(f"{self.path} is not a studio session ({SESSION_FORMAT})")
        if Path(str(data.get("bag"))).name != Path(self.bag).name:
            raise SessionError(f"{self.path} labels the bag {data.get('bag')!r}, not {self.bag!r}; use another --out "
                               "folder for this bag")
        if data.get("topic") != self.topic:
            raise SessionError(f"{self.path} labels topic {data.get('topic')!r}, not {self.topic!r}; use another "
                               "--out folder or --topic")
        version = data.get("version")
        frames = data.get("frames")
        if not isinstance(version, int) or version < 0 or not isinstance(frames, dict):
            raise SessionError(f"{self.path}: damaged (version or frames missing)")
        loaded = {}
        for key, frame in frames.items():
            if not str(key).isdigit() or not isinstance(frame, dict) or not isinstance(frame.get("objects"), list):
                raise SessionError(f"{self.path}: frames[{key!r}] is damaged")
            objects = [validate_object(o, self.classes, f"{self.path}: frames[{key}].objects[{k}]", self.attributes,
                                       strict=False) for k, o in enumerate(frame["objects"])]
            loaded[int(key)] = {"stamp_ns": int(frame.get("stamp_ns") or 0), "objects": objects}
            if frame.get("proposals") is not None or frame.get("mining") is not None:
                try:
                    loaded[int(key)].update(self._extras(frame.get("proposals"), frame.get("mining"),
                                                         f"{self.path}: frames[{key}]"))
                except SessionError as exc:
                    raise SessionError(f"{exc} (damaged)") from exc
        counter = data.get("next_track_id", 1)
        if isinstance(counter, bool) or not isinstance(counter, int) or not 1 <= counter <= MAX_TRACK_ID + 1:
            raise SessionError(f"{self.path}: damaged (next_track_id {counter!r})")
        self.next_track_id = counter
        self._assign_loaded_tracks(loaded)
        self.version, self.frames = version, loaded

    def _assign_loaded_tracks(self, frames: dict[int, dict]) -> None:
        """Give the objects of a loaded file that have no track id one (see the module docstring: objects sharing
        their "id" across frames share a track); a frame holding one track twice is damaged."""
        used = [o["track_id"] for f in frames.values() for o in f["objects"] if "track_id" in o]
        self.next_track_id = max([self.next_track_id, *(t + 1 for t in used)])
        by_object_id: dict[str, int] = {}
        for index in sorted(frames):
            seen = set()
            for obj in frames[index]["objects"]:
                if "track_id" not in obj:
                    if obj["id"] not in by_object_id:
                        by_object_id[obj["id"]] = self._next_track()
                    obj["track_id"] = by_object_id[obj["id"]]
                if obj["track_id"] in seen:
                    raise SessionError(f"{self.path}: damaged (frame {index} holds track {obj['track_id']} twice)")
                seen.add(obj["track_id"])

    def _next_track(self) -> int:
        track_id = self.next_track_id
        self.next_track_id += 1
        return track_id

    def reserve_track_id(self) -> int:
        """A new track id, never handed out before in this session (the counter is saved with the next change)."""
        with self._lock:
            return self._next_track()

    def attribute_config(self) -> dict[str, list[str]]:
        """{class: [attribute, ...]}: what each class offers (for /api/info)."""
        return {name: list(offered) for name, offered in self.attributes.items()}

    def tracks(self) -> list[dict]:
        """The session's tracks, by track id: {"track_id", "class" (of its last object), "frames": [index, ...],
        "objects": count}."""
        with self._lock:
            found: dict[int, dict] = {}
            for index in sorted(self.frames):
                for obj in self.frames[index]["objects"]:
                    track = found.setdefault(obj["track_id"], {"track_id": obj["track_id"], "frames": []})
                    track["class"] = obj["class"]
                    track["frames"].append(index)
            return [{**found[t], "objects": len(found[t]["frames"])} for t in sorted(found)]

    def _extras(self, proposals: Any, mining: Any, where: str) -> dict:
        """The validated "proposals" and "mining" entries of one frame (absent ones left out)."""
        extras: dict[str, Any] = {}
        if proposals is not None:
            if not isinstance(proposals, list) or len(proposals) > MAX_OBJECTS_PER_FRAME:
                raise SessionError(f"{where}.proposals: expected a list of at most {MAX_OBJECTS_PER_FRAME}")
            # a proposal of a class this session does not label (--labels) is left out, not an error
            extras["proposals"] = [validate_proposal(p, self.classes, f"{where}.proposals[{k}]")
                                   for k, p in enumerate(proposals)
                                   if not isinstance(p, dict) or p.get("class") in self.classes]
        if mining is not None:
            extras["mining"] = validate_mining(mining, f"{where}.mining")
        return extras

    def objects(self, index: int) -> list[dict]:
        with self._lock:
            return [dict(o) for o in self.frames.get(index, {}).get("objects", [])]

    def proposals(self, index: int) -> list[dict] | None:
        """The proposals stored for frame `index` (copies), or None when none were stored for it."""
        with self._lock:
            stored = self.frames.get(index, {}).get("proposals")
            return None if stored is None else [dict(p) for p in stored]

    def mining(self, index: int) -> dict | None:
        """Why frame `index` was chosen for labelling ({"reason", ...}), or None."""
        with self._lock:
            note = self.frames.get(index, {}).get("mining")
            return None if note is None else dict(note)

    def proposed_frames(self) -> list[int]:
        """Indices of the frames with stored proposals (possibly an empty list of them), ascending."""
        with self._lock:
            return sorted(k for k, f in self.frames.items() if "proposals" in f)

    def set_proposals(self, entries: dict[int, dict], base_version: Any) -> int:
        """Store proposals and mining notes of many frames in one saved change: `entries` maps a frame index to
        {"stamp_ns", "proposals": [PROPOSAL], "mining": {...} (optional)}; the frames' objects stay as they are.
        Returns the new version; VersionConflictError as for `set_objects`."""
        clean = {}
        for index, entry in entries.items():
            if not isinstance(index, int) or index < 0 or not isinstance(entry, dict):
                raise SessionError(f"proposals of frame {index!r}: expected a frame index and an object")
            clean[index] = (int(entry.get("stamp_ns") or 0),
                            self._extras(entry.get("proposals", []), entry.get("mining"), f"frames[{index}]"))
        with self._lock:
            if base_version != self.version:
                raise VersionConflictError(f"the session was changed elsewhere: it is at version {self.version}, "
                                           f"this change was made on version {base_version}")
            frames = dict(self.frames)
            for index, (stamp_ns, extras) in clean.items():
                previous = frames.get(index, {"stamp_ns": stamp_ns, "objects": []})
                frames[index] = {**{k: v for k, v in previous.items() if k not in ("proposals", "mining")},
                                 "stamp_ns": stamp_ns or previous["stamp_ns"], **extras}
            self._save(frames, self.version + 1)
            self.frames, self.version = frames, self.version + 1
            return self.version

    def labelled_frames(self) -> list[int]:
        """Indices of the frames that hold at least one object or were chosen for labelling by `instseg-fleet`
        (stored proposals or a mining note), ascending: the frames the timeline marks and N visits (the export
        writes only those with objects)."""
        with self._lock:
            return sorted(k for k, f in self.frames.items() if _has_content(f))

    def set_objects(self, index: int, stamp_ns: int, objects: Any, base_version: Any,
                    image_shape: tuple[int, ...] | None = None) -> int:
        """Replace frame `index`'s objects (validated; with `image_shape`, every coordinate inside that image:
        check_inside_image) if `base_version` is the saved version; save; return the new version.
        VersionConflictError when another change was saved since `base_version`."""
        return self.save_objects(index, stamp_ns, objects, base_version, image_shape)[0]

    def save_objects(self, index: int, stamp_ns: int, objects: Any, base_version: Any,
                     image_shape: tuple[int, ...] | None = None) -> tuple[int, list[dict]]:
        """`set_objects`, returning (new version, the frame's objects as saved): objects sent without a track id
        have the one the session gave them. Two objects of the frame with one id or one track id are refused."""
        if not isinstance(objects, list) or len(objects) > MAX_OBJECTS_PER_FRAME:
            raise SessionError(f"objects: expected a list of at most {MAX_OBJECTS_PER_FRAME} objects")
        clean = [validate_object(o, self.classes, f"objects[{k}]", self.attributes) for k, o in enumerate(objects)]
        if image_shape is not None:
            check_inside_image(clean, image_shape)
        if len({o["id"] for o in clean}) != len(clean):
            raise SessionError("objects: two objects share an id")
        tracks = [o["track_id"] for o in clean if "track_id" in o]
        if len(set(tracks)) != len(tracks):
            raise SessionError("objects: two objects of the frame share a track id (one object per track and frame: "
                               "update the track's object instead of adding another)")
        with self._lock:
            if base_version != self.version:
                raise VersionConflictError(f"the session was changed elsewhere (another tab?): it is at version "
                                      f"{self.version}, this change was made on version {base_version}. Reload "
                                      "the page to see the saved state; nothing was overwritten.")
            counter = self.next_track_id
            for obj in clean:
                if "track_id" not in obj:
                    obj["track_id"] = self._next_track()
            self.next_track_id = max([self.next_track_id, *(t + 1 for t in tracks)])
            frames = dict(self.frames)
            kept = {k: v for k, v in frames.get(index, {}).items() if k in ("proposals", "mining")}
            frames[index] = {"stamp_ns": int(stamp_ns), "objects": clean, **kept}
            try:
                self._save(frames, self.version + 1)
            except BaseException:
                self.next_track_id = counter
                raise
            self.frames, self.version = frames, self.version + 1
            return self.version, [dict(o) for o in clean]

    def _save(self, frames: dict[int, dict], version: int) -> None:
        data = {"format": SESSION_FORMAT, "bag": self.bag, "topic": self.topic, "version": version,
                "next_track_id": self.next_track_id,
                "frames": {str(k): frames[k] for k in sorted(frames) if _has_content(frames[k])}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomically(self.path, json.dumps(data, indent=1))


def export_city(bag: str, topic: str) -> str:
    """The Cityscapes city name of a session's export: the bag's name (without .mcap) and the topic, e.g.
    ("/data/drive_0412.mcap", "/camera/image_raw") -> "drive-0412-camera-image-raw", so that the exports of several
    bags (or topics) merged into one tree do not collide."""
    return bag_city_name(bag, topic)


def export_labels(session: Session, read_frame: Callable[[int], Any], out: Path, *, overwrite: bool = True) -> dict:
    """Write the session's labelled frames to `out` through the shared label writer (all or nothing): one
    sequence whose city is `export_city(bag, topic)`; excluded objects left out (a frame left with none is not
    written); track ids and attributes exported (instseg_core.data.label_export). `read_frame(index)` gives the
    frame (.rgb (H, W, 3) uint8, .stamp_ns, .frame_id), e.g. BagFrames.frame. Returns write_label_tree's summary
    plus "excluded" (objects left out). Raises LabelExportError, the reader's errors and OSError."""
    excluded = 0

    def frames() -> Iterator[LabelledFrame]:
        nonlocal excluded
        for index in session.labelled_frames():
            kept = [o for o in session.objects(index) if not o.get("excluded")]
            excluded += len(session.objects(index)) - len(kept)
            if not kept:
                continue
            frame = read_frame(index)
            objects = [LabelledObject(o["class"], np.asarray(o["polygon"]), np.asarray(o["points"], float),
                                      o.get("score"), o.get("polygon_iou"), track_id=o.get("track_id"),
                                      attributes=dict(o.get("attributes", {}))) for o in kept]
            yield LabelledFrame(index, frame.stamp_ns, frame.frame_id, frame.rgb, objects)

    info = {"description": f"instseg-studio labels of {session.bag} ({session.topic})", "bag": session.bag,
            "topic": session.topic, "session_version": session.version}
    summary = write_label_tree(out, frames(), city=export_city(session.bag, session.topic), overwrite=overwrite,
                               info=info)
    return {**summary, "excluded": excluded}
