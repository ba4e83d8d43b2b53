"""The studio's HTTP side: the page (static/) and a JSON API, with FastAPI.

API (all JSON unless said otherwise; errors are {"error": message} with a 4xx status, never a traceback):

    GET  /api/info                         bag, topic, frame count, classes, segmenter, session version, counters
    GET  /api/timeline                     receive timestamps (ns) of every frame, indices of labelled frames
    GET  /api/frames/{i}                   index, timestamps, size, frame_id, objects of frame i
    GET  /api/frames/{i}/image             frame i as JPEG
    PUT  /api/frames/{i}/objects           {"base_version", "objects"} -> {"version"}; 409 when the session
                                           changed since base_version (another tab)
    POST /api/segment                      {"frame", "points" (4 clicks, any order), "tolerance"} -> polygon
    POST /api/frames/{i}/propagate         {"source": j} -> frame j's objects re-segmented on frame i (not saved)
    POST /api/frames/{i}/proposals         the streaming segmenter's instances on frame i (not saved)
    POST /api/export                       {"overwrite"} -> the export under OUT/export (all or nothing)

Safety: requests whose Host is not one of the server's own names, or whose Origin is another site, are refused
(403; DNS rebinding and cross-site requests), as are writes that are not `application/json` (415: an HTML form
of another site cannot send JSON) and bodies over 1 MB (413). Every refusal and error is counted (/api/info).
The server reads only the bag and the output folder; the page's files come from the package.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from instseg_core.annotate.segmenter import AnnotationError
from instseg_core.data.label_export import LabelExportError, LabelledFrame, LabelledObject, write_label_tree
from instseg_studio.assist import propagate, proposals
from instseg_studio.bag_frames import BagFrames, BagFramesError
from instseg_studio.segmenters import StudioSegmenter
from instseg_studio.session import Session, SessionError, VersionConflictError

STATIC = Path(__file__).resolve().parent / "static"
MAX_BODY_BYTES = 1 << 20
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


def _frame_index(studio: Studio, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < len(studio.frames):
        raise RequestError(f"frame must be an index in [0, {len(studio.frames)}), got {value!r}", 404)
    return value


def _tolerance(value: Any) -> float:
    if value is None:
        return 1.0
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 50.0:
        raise RequestError(f"tolerance must be a number of pixels in [0, 50], got {value!r}")
    return float(value)


async def _json_body(request: Request) -> dict:
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise RequestError(f"request body over {MAX_BODY_BYTES} bytes", 413)
    try:
        data = json.loads(body or b"{}")
    except ValueError as exc:
        raise RequestError(f"request body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise RequestError("request body must be a JSON object")
    return data


def create_app(studio: Studio, allowed_hosts: set[str]) -> FastAPI:
    """The FastAPI application over `studio`; `allowed_hosts` are the Host header values (host:port) the
    server answers to."""
    app = FastAPI(title="instseg studio", docs_url=None, redoc_url=None, openapi_url=None)
    allowed_origins = {f"http://{host}" for host in allowed_hosts}

    def refuse(reason: str, status: int, counter: str) -> JSONResponse:
        studio.counters[counter] += 1
        log.warning("refused a request: %s", reason)
        return JSONResponse({"error": reason}, status_code=status)

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable) -> Response:
        host = request.headers.get("host", "")
        if host not in allowed_hosts:
            return refuse(f"unknown Host {host!r}", 403, "refused_host")
        origin = request.headers.get("origin")
        if origin is not None and origin not in allowed_origins:
            return refuse(f"cross-site request from {origin!r}", 403, "refused_origin")
        if request.method not in ("GET", "HEAD"):
            if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
                return refuse("writes must be application/json", 415, "refused_content_type")
            declared = request.headers.get("content-length")
            if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
                return refuse(f"request body over {MAX_BODY_BYTES} bytes", 413, "refused_size")
        return await call_next(request)

    @app.exception_handler(RequestError)
    async def request_error(_: Request, exc: RequestError) -> JSONResponse:
        studio.counters["bad_requests"] += 1
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

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
                "segmenter": studio.segmenter.name, "segmenter_stats": dict(studio.segmenter.stats),
                "proposals": studio.streaming is not None,
                "version": studio.session.version, "out": str(studio.out), "counters": dict(studio.counters)}

    @app.get("/api/timeline")
    def timeline() -> dict:
        return {"timestamps_ns": studio.frames.timestamps.tolist(), "labelled": studio.session.labelled_frames(),
                "version": studio.session.version}

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
        body = await _json_body(request)
        frame = frame_or_error(_frame_index(studio, index))
        try:
            version = studio.session.set_objects(index, frame.stamp_ns, body.get("objects"), body.get("base_version"))
        except VersionConflictError as exc:
            studio.counters["version_conflicts"] += 1
            raise RequestError(str(exc), 409) from exc
        except SessionError as exc:
            raise RequestError(str(exc)) from exc
        return {"version": version}

    @app.post("/api/segment")
    async def segment(request: Request) -> dict:
        body = await _json_body(request)
        frame = frame_or_error(_frame_index(studio, body.get("frame")))
        try:
            result = studio.segmenter.segment(frame, body.get("points"), _tolerance(body.get("tolerance")))
        except AnnotationError as exc:
            studio.counters[f"segment_{exc.code.name.lower()}"] += 1
            raise RequestError(str(exc), 422) from exc
        if len(result.polygon) < 3:
            raise RequestError("the model found no object inside these points", 422)
        return {"polygon": result.polygon.tolist(), "points": result.points.tolist(), "score": result.score,
                "polygon_iou": result.polygon_iou, "area": result.area, "milliseconds": result.milliseconds,
                "id": f"o{uuid.uuid4().hex[:10]}"}

    @app.post("/api/frames/{index}/propagate")
    async def propagate_objects(index: int, request: Request) -> dict:
        body = await _json_body(request)
        target = frame_or_error(_frame_index(studio, index))
        source_index = _frame_index(studio, body.get("source", index - 1))
        objects = studio.session.objects(source_index)
        if not objects:
            raise RequestError(f"frame {source_index} has no objects to copy", 422)
        moved, failures = propagate(objects, frame_or_error(source_index), target, studio.segmenter)
        existing = {o["id"] for o in studio.session.objects(index)}
        for obj in moved:
            if obj["id"] in existing:
                obj["id"] = f"o{uuid.uuid4().hex[:10]}"
        return {"objects": moved, "failures": failures}

    @app.post("/api/frames/{index}/proposals")
    async def frame_proposals(index: int, request: Request) -> dict:
        body = await _json_body(request)
        frame = frame_or_error(_frame_index(studio, index))
        found, milliseconds = proposals(studio.streaming_segmenter(), frame, studio.session.classes,
                                        _tolerance(body.get("tolerance")))
        return {"proposals": found, "milliseconds": milliseconds}

    @app.post("/api/export")
    async def export(request: Request) -> dict:
        body = await _json_body(request)
        return export_session(studio, overwrite=bool(body.get("overwrite", True)))

    return app


def export_session(studio: Studio, overwrite: bool = True) -> dict:
    """Write the session's labelled frames to OUT/export through the shared label writer (all or nothing)."""
    def frames() -> Any:
        for index in studio.session.labelled_frames():
            frame = studio.frames.frame(index)
            objects = [LabelledObject(o["class"], o["polygon"], o["points"], o.get("score"), o.get("polygon_iou"))
                       for o in studio.session.objects(index)]
            yield LabelledFrame(index, frame.stamp_ns, frame.frame_id, frame.rgb, objects)

    try:
        return write_label_tree(studio.out / "export", frames(), overwrite=overwrite)
    except (LabelExportError, BagFramesError) as exc:
        raise RequestError(f"export failed, nothing written: {exc}", 422) from exc
