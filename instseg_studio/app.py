"""The studio's HTTP side: the page (static/) and a JSON API, with FastAPI.

API (all JSON unless said otherwise; errors are {"error": message} with a 4xx status, never a traceback; a value
a message names is cut to about 60 characters):

    GET  /api/info                         bag, topic, frame count, classes, attributes per class, next track
                                           id, segmenter, session version, counters
    GET  /api/timeline                     receive timestamps (ns) of every frame, indices of labelled frames
    GET  /api/tracks                       every track: id, class, the frames it is on
    GET  /api/frames/{i}                   index, timestamps, size, frame_id, objects of frame i
    GET  /api/frames/{i}/image             frame i as JPEG
    POST /api/frames/{i}/warm              decode frame i and wake the model before the first click (202)
    PUT  /api/frames/{i}/objects           {"base_version", "objects"} -> {"version", "next_track_id"}; 409 when
                                           the session changed since base_version (another tab); 422 when a
                                           vertex, extreme point or click lies outside the image
    POST /api/segment                      {"frame", "points" (4 clicks, any order), "tolerance", "positive",
                                           "negative" (optional correction clicks [[x, y], ...])} -> polygon
    POST /api/frames/{i}/brush             {"polygon", "strokes" [{"mode" paint|erase, "radius", "points"}],
                                           "tolerance"} -> the polygon of the painted or erased mask
    POST /api/frames/{i}/propagate         {"source": j, "objects" (frame i's objects as the page has them;
                                           default: the saved ones)} -> frame i's objects with frame j's moved
                                           onto them: an object of a track frame i has replaces it unless it
                                           is "edited" (kept), others are added ({"objects", "updated",
                                           "added", "kept", "failures"}; not saved)
    POST /api/frames/{i}/proposals         {"objects" (as above)} -> the streaming segmenter's instances on frame
                                           i, less those the objects mostly cover ({"proposals", "suppressed"})
    POST /api/export                       {"overwrite"} -> the export under OUT/export (all or nothing)

A field a request may leave out may also be null: the same (tolerance null is 1.0 px, source null the previous
frame, overwrite null true, positive / negative null none, objects null the saved ones). A frame, in the path or
as "frame" / "source", is a whole number: 404 when the bag has no such frame (-1, 4, 1e300 in a JSON body),
400 when it is not a whole number (1.5, "3", null for "frame"; in a path anything but an integer, 1e300 included).

Safety: requests whose Host is not one of the server's own names, or whose Origin is another site, are refused
(403; DNS rebinding and cross-site requests), as are writes that are not `application/json` (415: an HTML form
of another site cannot send JSON) and bodies over 1 MB (413). Requests are bounded by construction: the body limit
is enforced while the body is read (`BoundedBody`, so a chunked upload without Content-Length is refused after
1 MB, never read whole), and JSON nested deeper than 32 levels is refused (400) before it is parsed. A save that
the disk refuses (full, read-only: an OSError) answers 507 "not saved: <reason>" and changes nothing; the page
keeps the change as unsaved and offers to retry. Every refusal and error is counted (/api/info). The server reads
only the bag and the output folder; the page's files come from the package.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from instseg_core.annotate.segmenter import AnnotationError
from instseg_core.base.command_exit import describe, os_error_line
from instseg_core.data.label_export import LabelExportError
from instseg_studio.assist import brush, frame_proposals, merge_propagated, propagate
from instseg_studio.bag_frames import BagFrames, BagFramesError
from instseg_studio.segmenters import StudioSegmenter
from instseg_studio.session import (
    MAX_OBJECTS_PER_FRAME,
    OutsideImageError,
    Session,
    SessionError,
    VersionConflictError,
    export_labels,
    shown,
    validate_object,
)

STATIC = Path(__file__).resolve().parent / "static"
MAX_BODY_BYTES = 1 << 20
MAX_CLICKS = 100  # correction clicks of one kind per object
MAX_JSON_DEPTH = 32  # the API's deepest value is 4 levels down ({"objects": [{"polygon": [[x, y]]}]})
JPEG_QUALITY = 90
log = logging.getLogger("instseg_studio")


class RequestError(ValueError):
    """A request the studio refuses; `status` is the HTTP status."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Studio:
    """What the API serves: the bag's frames, the session, the segmenter, the output folder; `streaming` builds
    the proposal segmenter on first use (None: proposals are off)."""

    frames: BagFrames
    session: Session
    segmenter: StudioSegmenter
    out: Path
    streaming: Callable[[], Any] | None = None
    counters: Counter = field(default_factory=Counter)
    _streaming_instance: Any = None
    _streaming_lock: threading.Lock = field(default_factory=threading.Lock)

    def streaming_segmenter(self) -> Any:
        if self.streaming is None:
            raise RequestError("proposals are off: start the studio with --proposals MODEL", 409)
        with self._streaming_lock:
            if self._streaming_instance is None:
                self._streaming_instance = self.streaming()
            return self._streaming_instance

    def prepare_proposals_in_background(self) -> threading.Thread | None:
        """Build the proposal segmenter now, in a daemon thread, so that the operator's first P does not wait for
        its models to load (about 2 s for the semantic source). A failure is logged and counted
        (`proposals_prepare_failures`); the first P then tries again and reports it. None when proposals are off."""
        if self.streaming is None:
            return None

        def prepare() -> None:
            try:
                self.streaming_segmenter()
            except Exception as exc:  # any failure: reported again, with its message, by the first P
                self.counters["proposals_prepare_failures"] += 1
                log.warning("proposals could not be prepared: %s", exc)

        thread = threading.Thread(target=prepare, name="prepare-proposals", daemon=True)
        thread.start()
        return thread


def _frame_index(studio: Studio, value: Any) -> int:
    """A frame index from a request: a whole number (JSON 3, 3.0 or 3e0) in [0, frames), 404 for a whole number
    the bag has no frame for (-1, 4, 1e300), 400 for anything else (1.5, "3", null, true)."""
    if isinstance(value, float) and value.is_integer():  # JSON has numbers, not integers: 1e300 is a whole one
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"frame must be an integer index in [0, {len(studio.frames)}), got {shown(value)}")
    if not 0 <= value < len(studio.frames):
        raise RequestError(f"frame must be an index in [0, {len(studio.frames)}), got {shown(value)}", 404)
    return value


def _tolerance(value: Any) -> float:
    if value is None:  # null is the field left out, as for every optional field of a request
        return 1.0
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 50.0:
        raise RequestError(f"tolerance must be a number of pixels in [0, 50], got {shown(value)}")
    return float(value)


def _pixels(value: Any, name: str, shape: tuple[int, ...], minimum: int, maximum: int) -> list[list[float]]:
    """[[x, y], ...] image pixels inside an (H, W) image, `minimum` to `maximum` of them, or RequestError 422."""
    height, width = shape[:2]
    if not isinstance(value, list) or not minimum <= len(value) <= maximum:
        raise RequestError(f"{name} must be a list of {minimum} to {maximum} [x, y] pixels", 422)
    points = []
    for k, point in enumerate(value):
        if (not isinstance(point, list) or len(point) != 2
                or any(isinstance(v, bool) or not isinstance(v, int | float) for v in point)):
            raise RequestError(f"{name}[{k}] must be [x, y] numbers, got {shown(point)}", 422)
        if not (0 <= point[0] <= width - 1 and 0 <= point[1] <= height - 1):
            raise RequestError(f"{name}[{k}] {shown(point)} is outside the {width}x{height} image", 422)
        points.append([float(point[0]), float(point[1])])
    return points


def frame_ranges(frames: list[int]) -> str:
    """Frame indices as the page shows them (1-based ranges): [0, 1, 2, 6] -> "1-3, 7"."""
    ranges: list[list[int]] = []
    for k in sorted(frames):
        if ranges and k == ranges[-1][1] + 1:
            ranges[-1][1] = k
        else:
            ranges.append([k, k])
    return ", ".join(f"{a + 1}" if a == b else f"{a + 1}-{b + 1}" for a, b in ranges)


class RequestGuard:
    """ASGI middleware in front of every route (module docstring, Safety): refuses requests for another Host or
    from another Origin (403), writes that are not JSON (415) and declared bodies over `max_bytes` (413), each
    counted in `counters`; and counts the body while the route receives it, raising RequestError 413 in the reader
    once it passes `max_bytes`, whether or not a Content-Length was declared (chunked uploads). So at most
    `max_bytes` and one received piece are ever held. (A pure ASGI middleware: Starlette's BaseHTTPMiddleware
    would wrap an error raised while receiving into an ExceptionGroup the routes' error handlers do not see.)"""

    def __init__(self, app: ASGIApp, allowed_hosts: set[str], counters: Counter,
                 max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app, self.allowed_hosts, self.counters, self.max_bytes = app, allowed_hosts, counters, max_bytes
        self.allowed_origins = {f"http://{host}" for host in allowed_hosts}

    def refusal(self, method: str, headers: Headers) -> tuple[str, int, str] | None:
        """(reason, status, counter) when the request is refused before it reaches a route, else None."""
        host = headers.get("host", "")
        if host not in self.allowed_hosts:
            return f"unknown Host {shown(host)}", 403, "refused_host"
        origin = headers.get("origin")
        if origin is not None and origin not in self.allowed_origins:
            return f"cross-site request from {shown(origin)}", 403, "refused_origin"
        if method not in ("GET", "HEAD"):
            if headers.get("content-type", "").split(";")[0].strip() != "application/json":
                return "writes must be application/json", 415, "refused_content_type"
            declared = headers.get("content-length")
            if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
                return f"request body over {self.max_bytes} bytes", 413, "refused_size"
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refused = self.refusal(scope["method"], Headers(scope=scope))
        if refused is not None:
            reason, status, counter = refused
            self.counters[counter] += 1
            log.warning("refused a request: %s", reason)
            await JSONResponse({"error": reason}, status_code=status)(scope, receive, send)
            return
        received = 0

        async def bounded_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise RequestError(f"request body over {self.max_bytes} bytes", 413)
            return message

        await self.app(scope, bounded_receive, send)


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')


def json_depth(body: bytes) -> int:
    """How deeply the arrays and objects of a JSON text nest (0 for a scalar), counted on the bytes without
    parsing (brackets inside strings do not count): deep nesting is refused before the recursive parser sees it."""
    brackets = np.frombuffer(_JSON_STRING.sub(b"", body), np.uint8)
    steps = np.isin(brackets, (ord("["), ord("{"))).astype(np.int32) - np.isin(brackets, (ord("]"), ord("}")))
    return int(np.cumsum(steps).max(initial=0))


async def _json_body(request: Request) -> dict:
    body = await request.body()  # bounded by BoundedBody
    if (depth := json_depth(body)) > MAX_JSON_DEPTH:
        raise RequestError(f"request JSON nests {depth} levels deep; at most {MAX_JSON_DEPTH} are accepted")
    try:
        data = json.loads(body or b"{}")
    except (ValueError, RecursionError) as exc:
        if "digits" in str(exc):  # Python's limit on converting long integers
            raise RequestError("request JSON holds a number with more than 4300 digits") from exc
        raise RequestError(f"request body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise RequestError("request body must be a JSON object")
    return data


def create_app(studio: Studio, allowed_hosts: set[str]) -> FastAPI:
    """The FastAPI application over `studio`; `allowed_hosts` are the Host header values (host:port) the
    server answers to."""
    app = FastAPI(title="instseg studio", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(RequestGuard, allowed_hosts=allowed_hosts, counters=studio.counters, max_bytes=MAX_BODY_BYTES)

    @app.exception_handler(RequestError)
    async def request_error(_: Request, exc: RequestError) -> JSONResponse:
        if exc.status < 500:  # a failing server counts its own failures (save_failures)
            studio.counters["refused_size" if exc.status == 413 else "bad_requests"] += 1
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def bad_path(_: Request, exc: RequestValidationError) -> JSONResponse:
        # a path that does not parse (/api/frames/1.5): the API's own error shape, not FastAPI's {"detail": [...]}
        studio.counters["bad_requests"] += 1
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors())
        return JSONResponse({"error": f"bad request: {problems}"}, status_code=400)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        studio.counters["internal_errors"] += 1
        log.exception("internal error in %s %s", request.method, request.url.path)
        return JSONResponse({"error": f"internal error ({type(exc).__name__}: {exc}); see the console"},
                            status_code=500)

    def frame_or_error(index: int) -> Any:
        try:
            return studio.frames.frame(index)
        except BagFramesError as exc:
            studio.counters["bad_frames"] += 1
            raise RequestError(str(exc), 422) from exc

    @app.get("/")
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/favicon.ico")
    def favicon() -> Response:
        return Response(status_code=204)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/info")
    def info() -> dict:
        return {"bag": str(studio.frames.bag), "topic": studio.frames.topic, "topics": studio.frames.image_topics,
                "frames": len(studio.frames), "classes": list(studio.session.classes),
                "attributes": studio.session.attribute_config(), "next_track_id": studio.session.next_track_id,
                "objects": sum(len(studio.session.objects(k)) for k in studio.session.labelled_frames()),
                "segmenter": studio.segmenter.name, "segmenter_stats": dict(studio.segmenter.stats),
                "proposals": studio.streaming is not None,
                "version": studio.session.version, "out": str(studio.out), "counters": dict(studio.counters)}

    @app.get("/api/timeline")
    def timeline() -> dict:
        return {"timestamps_ns": studio.frames.timestamps.tolist(), "labelled": studio.session.labelled_frames(),
                "version": studio.session.version}

    @app.get("/api/tracks")
    def tracks() -> dict:
        return {"tracks": [{**t, "ranges": frame_ranges(t["frames"])} for t in studio.session.tracks()]}

    @app.post("/api/frames/{index}/warm", status_code=202)
    def warm(index: int) -> dict:
        # the frame decoded into the cache and the model's threads awake before the operator's first click
        frame = frame_or_error(_frame_index(studio, index))
        studio.segmenter.warm(frame)  # in-process: one small segmentation; service: the frame's pixels sent ahead
        return {"warm": index}

    @app.get("/api/frames/{index}")
    def frame_info(index: int) -> dict:
        frame = frame_or_error(_frame_index(studio, index))
        height, width = frame.rgb.shape[:2]
        return {"index": index, "timestamp_ns": frame.timestamp_ns, "stamp_ns": frame.stamp_ns,
                "frame_id": frame.frame_id, "width": width, "height": height,
                "objects": studio.session.objects(index), "version": studio.session.version}

    @app.get("/api/frames/{index}/image")
    def frame_image(index: int) -> Response:
        frame = frame_or_error(_frame_index(studio, index))
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(frame.rgb, cv2.COLOR_RGB2BGR),
                                [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise RequestError(f"frame {index} could not be encoded", 500)
        return Response(jpeg.tobytes(), media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.put("/api/frames/{index}/objects")
    async def set_objects(index: int, request: Request) -> dict:
        return await run_in_threadpool(save_objects, index, await _json_body(request))

    def save_objects(index: int, body: dict) -> dict:
        frame = frame_or_error(_frame_index(studio, index))
        base_version = body.get("base_version")
        if isinstance(base_version, bool) or not isinstance(base_version, int):  # not a version: not a conflict
            raise RequestError(f"base_version must be the session version the change was made on (an integer), got "
                               f"{shown(base_version)}")
        try:
            version = studio.session.set_objects(index, frame.stamp_ns, body.get("objects"), base_version,
                                                 frame.rgb.shape)
        except VersionConflictError as exc:
            studio.counters["version_conflicts"] += 1
            raise RequestError(str(exc), 409) from exc
        except OutsideImageError as exc:  # as /api/segment and the brush refuse such pixels
            raise RequestError(str(exc), 422) from exc
        except SessionError as exc:
            raise RequestError(str(exc)) from exc
        except OSError as exc:  # a full or read-only disk: nothing changed, the page keeps the change as unsaved
            studio.counters["save_failures"] += 1
            reason = os_error_line(OSError(exc.errno, exc.strerror or str(exc), str(studio.session.path)))
            log.warning("frame %d not saved: %s", index, reason)  # the session file, not its temporary file
            raise RequestError(f"not saved: {reason}", 507) from exc
        return {"version": version, "next_track_id": studio.session.next_track_id}

    @app.post("/api/segment")
    async def segment(request: Request) -> dict:
        # CPU work runs in the thread pool: one request never holds up the others (the event loop stays free)
        return await run_in_threadpool(segment_object, await _json_body(request))

    def segment_object(body: dict) -> dict:
        frame = frame_or_error(_frame_index(studio, body.get("frame")))
        clicks = {kind: _pixels(body[kind], kind, frame.rgb.shape, 0, MAX_CLICKS)
                  for kind in ("positive", "negative") if body.get(kind) is not None}
        clicks = {kind: value for kind, value in clicks.items() if value}
        try:
            result = studio.segmenter.segment(frame, body.get("points"), _tolerance(body.get("tolerance")), **clicks)
        except AnnotationError as exc:
            studio.counters[f"segment_{exc.code.name.lower()}"] += 1
            raise RequestError(str(exc), 422) from exc
        if len(result.polygon) < 3:
            raise RequestError("the model found no object inside these points", 422)
        return {"polygon": result.polygon.tolist(), "points": result.points.tolist(), "score": result.score,
                "polygon_iou": result.polygon_iou, "area": result.area, "milliseconds": result.milliseconds,
                "id": f"o{uuid.uuid4().hex[:10]}"}

    @app.post("/api/frames/{index}/brush")
    async def paint(index: int, request: Request) -> dict:
        return await run_in_threadpool(paint_object, index, await _json_body(request))

    def paint_object(index: int, body: dict) -> dict:
        frame = frame_or_error(_frame_index(studio, index))
        shape = frame.rgb.shape
        # every coordinate inside the image before any work (a vertex at 1e12 took OpenCV 20 s)
        polygon = _pixels(body.get("polygon") or [], "polygon", shape, 0, 10000)
        strokes = body.get("strokes")
        if not isinstance(strokes, list) or not 1 <= len(strokes) <= 1000:
            raise RequestError("strokes must be a list of 1 to 1000 strokes", 422)
        for k, stroke in enumerate(strokes):
            if not isinstance(stroke, dict):
                raise RequestError(f"strokes[{k}] must be {{\"mode\", \"radius\", \"points\"}}", 422)
            _pixels(stroke.get("points"), f"strokes[{k}].points", shape, 1, 10000)
        try:
            return brush(polygon, shape[:2], strokes, _tolerance(body.get("tolerance")))
        except AnnotationError as exc:
            raise RequestError(str(exc), 422) from exc

    def page_objects(body: dict, index: int) -> list[dict]:
        """The frame's objects as the page has them (possibly not yet saved), else the saved ones."""
        objects = body.get("objects")
        if objects is None:
            return studio.session.objects(index)
        if not isinstance(objects, list) or len(objects) > MAX_OBJECTS_PER_FRAME:
            raise RequestError(f"objects must be a list of at most {MAX_OBJECTS_PER_FRAME} objects")
        try:
            return [{**o, **validate_object(o, studio.session.classes, f"objects[{k}]", studio.session.attributes)}
                    for k, o in enumerate(objects)]
        except SessionError as exc:
            raise RequestError(str(exc)) from exc

    @app.post("/api/frames/{index}/propagate")
    async def propagate_objects(index: int, request: Request) -> dict:
        return await run_in_threadpool(propagate_to, index, await _json_body(request))

    def propagate_to(index: int, body: dict) -> dict:
        target = frame_or_error(_frame_index(studio, index))
        source = body.get("source")  # null or left out: the previous frame
        source_index = _frame_index(studio, index - 1 if source is None else source)
        objects = studio.session.objects(source_index)
        if not objects:
            raise RequestError(f"frame {source_index} has no objects to copy", 422)
        moved, failures = propagate(objects, frame_or_error(source_index), target, studio.segmenter)
        merged, summary = merge_propagated(page_objects(body, index), moved)
        return {"objects": merged, **summary, "failures": failures}

    @app.post("/api/frames/{index}/proposals")
    async def frame_proposals_route(index: int, request: Request) -> dict:
        return await run_in_threadpool(propose, index, await _json_body(request))

    def propose(index: int, body: dict) -> dict:
        frame = frame_or_error(_frame_index(studio, index))
        existing, tolerance = page_objects(body, index), _tolerance(body.get("tolerance"))
        return frame_proposals(studio.streaming_segmenter(), frame, studio.session.classes, existing, tolerance)

    @app.post("/api/export")
    async def export(request: Request) -> dict:
        body = await _json_body(request)
        overwrite = body.get("overwrite")
        if overwrite is None:  # null or left out: the default
            overwrite = True
        if not isinstance(overwrite, bool):
            raise RequestError(f"overwrite must be true or false, got {shown(overwrite)}")
        return await run_in_threadpool(export_session, studio, overwrite)

    return app


def export_session(studio: Studio, overwrite: bool = True) -> dict:
    """Write the session's labelled frames to OUT/export through the shared label writer (all or nothing; excluded
    objects left out, track ids and attributes exported: instseg_studio.session.export_labels)."""
    try:
        return export_labels(studio.session, studio.frames.frame, studio.out / "export", overwrite=overwrite)
    except (LabelExportError, BagFramesError) as exc:
        raise RequestError(f"export failed, nothing written: {exc}", 422) from exc
    except OSError as exc:
        raise RequestError(f"export failed, nothing written: {describe(exc)}", 507) from exc
