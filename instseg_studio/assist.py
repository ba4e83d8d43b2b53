"""What the studio does for the operator beyond four clicks: propagation to the next frame and proposals.

- `propagate`: the objects of one frame re-segmented on another from their extreme points, each shifted by the
  object's motion: the median displacement of corners inside the object tracked with pyramidal Lucas-Kanade
  optical flow (OpenCV, forward-backward checked); where tracking fails the points stay.
- `proposals`: the streaming segmenter's instances on the frame (any streaming model), each as a polygon with
  its extreme points and class, for the operator to accept or reject; or, for a session pre-labelled by
  `instseg-fleet prelabel`, the proposals stored in the session (`StoredProposals`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

from instseg_core.annotate.encoding import extreme_points_from_mask
from instseg_core.annotate.segmenter import AnnotationError
from instseg_core.postprocess.polygons import mask_to_polygon
from instseg_studio.bag_frames import Frame
from instseg_studio.segmenters import StudioSegmenter

LK_WINDOW, LK_LEVELS = (21, 21), 3
LK_CRITERIA = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01)
MAX_TRACKED_POINTS = 48


def object_motion(previous_gray: np.ndarray, current_gray: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """(2,) float32 median displacement (dx, dy) in pixels of the object inside `polygon` (N, 2) from one (H, W)
    uint8 image to the next; (0, 0) when nothing could be tracked.

    Tracked are corners (Shi-Tomasi) inside the polygon shrunk by 2 pixels, so that the background seen at the
    object's border does not pull the estimate, by Lucas-Kanade flow with a forward-backward check (a point that
    does not come back to within 1 pixel of where it started is dropped)."""
    mask = np.zeros(previous_gray.shape, np.uint8)
    cv2.fillPoly(mask, [np.asarray(polygon, np.int32).reshape(-1, 1, 2)], 255)
    mask = cv2.erode(mask, np.ones((5, 5), np.uint8))
    start = cv2.goodFeaturesToTrack(previous_gray, MAX_TRACKED_POINTS, 0.01, 3, mask=mask)
    if start is None:
        ys, xs = np.nonzero(mask)
        if not len(xs):
            return np.zeros(2, np.float32)
        start = np.array([[[xs.mean(), ys.mean()]]], np.float32)
    start = start.astype(np.float32)
    moved, status, _ = cv2.calcOpticalFlowPyrLK(previous_gray, current_gray, start, None, winSize=LK_WINDOW,
                                                 maxLevel=LK_LEVELS, criteria=LK_CRITERIA)
    if moved is None:
        return np.zeros(2, np.float32)
    back, back_status, _ = cv2.calcOpticalFlowPyrLK(current_gray, previous_gray, moved, None, winSize=LK_WINDOW,
                                                      maxLevel=LK_LEVELS, criteria=LK_CRITERIA)
    round_trip = np.linalg.norm((back - start).reshape(-1, 2), axis=1)
    good = (status.reshape(-1) == 1) & (back_status.reshape(-1) == 1) & (round_trip < 1.0)
    if not good.any():
        return np.zeros(2, np.float32)
    return np.median((moved - start).reshape(-1, 2)[good], axis=0).astype(np.float32)


def propagate(objects: list[dict], previous: Frame, current: Frame, segmenter: StudioSegmenter) -> tuple[
        list[dict], list[dict]]:
    """(objects on `current`, failures): each of `objects` (session objects of `previous`) moved by its optical
    flow motion and re-segmented from its shifted extreme points; an object whose points leave the frame or
    cannot be segmented is reported in failures ({"id", "reason"}) instead."""
    previous_gray = cv2.cvtColor(previous.rgb, cv2.COLOR_RGB2GRAY)
    current_gray = cv2.cvtColor(current.rgb, cv2.COLOR_RGB2GRAY)
    height, width = current.rgb.shape[:2]
    moved_objects, failures = [], []
    for obj in objects:
        points = np.asarray(obj["points"], np.float32)
        shift = object_motion(previous_gray, current_gray, np.asarray(obj["polygon"], np.float32))
        shifted = points + shift
        shifted[:, 0] = np.clip(shifted[:, 0], 0, width - 1)
        shifted[:, 1] = np.clip(shifted[:, 1], 0, height - 1)
        try:
            result = segmenter.segment(current, shifted, obj.get("tolerance", 1.0))
        except AnnotationError as exc:
            failures.append({"id": obj["id"], "reason": str(exc)})
            continue
        moved_objects.append({**obj, "points": result.points.tolist(), "polygon": result.polygon.tolist(),
                              "score": result.score, "polygon_iou": result.polygon_iou, "source": "propagated",
                              "motion": [float(shift[0]), float(shift[1])]})
    return moved_objects, failures


def proposals_from_result(result: Any, classes: tuple[str, ...], tolerance: float = 1.0, min_area: int = 64,
                          min_score: float = 0.0) -> list[dict]:
    """The instances of a streaming segmenter's `result` (instseg_core.runtime.SegmentationResult) as proposals,
    best score first: those whose class is one of `classes`, that cover at least `min_area` pixels and score at
    least `min_score`, each {"class", "polygon", "points", "score", "polygon_iou", "area"} in image pixels."""
    instances = result.instances
    found = []
    for k in np.argsort(-instances.scores):
        name = result.class_names[k]
        if name not in classes or instances.areas[k] < min_area or instances.scores[k] < min_score:
            continue
        x0, y0, x1, y1 = (int(v) for v in instances.boxes[k])
        window = instances.id_image[y0:y1, x0:x1] == k + 1
        polygon, polygon_iou = mask_to_polygon(window, tolerance)
        if len(polygon) < 3:
            continue
        points = extreme_points_from_mask(window) + np.array([x0, y0])
        found.append({"class": name, "polygon": (polygon + np.array([x0, y0], np.int32)).tolist(),
                      "points": points.tolist(), "score": float(instances.scores[k]),
                      "polygon_iou": float(polygon_iou), "area": int(instances.areas[k])})
    return found


class StoredProposals:
    """The proposal source of a session pre-labelled by `instseg-fleet prelabel`: frames with proposals stored in
    the session get those (less the ones the operator already accepted), other frames the live streaming model
    `live` builds (a factory; None: no proposals there)."""

    def __init__(self, session: Any, live: Callable[[], Any] | None = None) -> None:
        self.session, self._live_factory, self._live = session, live, None

    def for_frame(self, index: int) -> list[dict] | None:
        """The stored proposals of frame `index` not yet accepted as objects, or None when it has none stored."""
        stored = self.session.proposals(index)
        if stored is None:
            return None
        accepted = {json.dumps(o["polygon"]) for o in self.session.objects(index) if o.get("source") == "proposal"}
        return [p for p in stored if json.dumps(p["polygon"]) not in accepted]

    def live(self) -> Any:
        """The live streaming segmenter (built on first use), or None when there is none."""
        if self._live is None and self._live_factory is not None:
            self._live = self._live_factory()
        return self._live


def proposals(streaming_segmenter: Any, frame: Frame, classes: tuple[str, ...], tolerance: float = 1.0,
              min_area: int = 64) -> tuple[list[dict], float]:
    """(proposals, milliseconds): the streaming segmenter's instances on `frame` whose class is one of `classes`
    and that cover at least `min_area` pixels, best score first: {"class", "polygon", "points", "score",
    "polygon_iou", "area"} in image pixels. A `StoredProposals` source answers from the session where it can."""
    start = time.perf_counter()
    if isinstance(streaming_segmenter, StoredProposals):
        stored = streaming_segmenter.for_frame(frame.index)
        if stored is not None:
            return [p for p in stored if p["class"] in classes], (time.perf_counter() - start) * 1e3
        streaming_segmenter = streaming_segmenter.live()
        if streaming_segmenter is None:
            return [], (time.perf_counter() - start) * 1e3
    found = proposals_from_result(streaming_segmenter(frame.rgb), classes, tolerance, min_area)
    return found, (time.perf_counter() - start) * 1e3
