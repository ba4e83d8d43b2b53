"""The annotation service's frame cache: a request without pixels names a frame sent before by its header.

An operator clicks several objects per frame, so only the first request of a frame needs to carry the image;
later ones send an empty image with the same header (stamp, frame_id), the cache `key`. A cache hit must be
unambiguous, because a mask computed on another frame is a wrong answer that looks right:

- the default header (stamp 0, empty frame_id), which every client that does not fill the header sends,
  names no frame: such frames are not cached, and a request without pixels and with that header is refused;
- a key that has been sent with two different images (two clients, or a client reusing a stamp) is marked
  ambiguous: a request without pixels naming it is refused until the key leaves the cache;
- the cache holds the last `capacity` keys (least recently used out); an unknown key is refused.

Images are compared only when a key arrives again with pixels (one memcmp of the frame), so a client that
sends every frame once pays nothing for the check.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

FrameKey = tuple[int, int, str]  # (stamp sec, stamp nanosec, frame_id)
DEFAULT_KEY: FrameKey = (0, 0, "")


class FrameCacheMissError(LookupError):
    """A request without pixels that cannot be answered from the cache; the message says why."""


class FrameCache:
    """Thread-safe; see the module docstring. Images are (H, W, 3) uint8 RGB arrays, stored as given."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(0, int(capacity))
        self._frames: OrderedDict[FrameKey, np.ndarray | None] = OrderedDict()  # None = ambiguous
        self._lock = threading.Lock()

    def store(self, key: FrameKey, rgb: np.ndarray) -> None:
        """Remember the image a request carried under its header's key."""
        if self.capacity == 0 or key == DEFAULT_KEY:
            return
        with self._lock:
            if key in self._frames:
                previous = self._frames[key]
                if previous is not None and not np.array_equal(previous, rgb):
                    self._frames[key] = None  # two images under one header: no cache-only answer is safe
            else:
                self._frames[key] = rgb
            self._frames.move_to_end(key)
            while len(self._frames) > self.capacity:
                self._frames.popitem(last=False)

    def lookup(self, key: FrameKey) -> np.ndarray:
        """The image stored under `key`; FrameCacheMissError saying why there is none."""
        sec, nanosec, frame_id = key
        name = f"stamp {sec}.{nanosec:09d}, frame_id {frame_id!r}"
        if key == DEFAULT_KEY:
            raise FrameCacheMissError("a request without pixels must name a frame sent before by its header; the "
                                      "default header (stamp 0, empty frame_id) names no frame: set the header or "
                                      "send the image")
        if self.capacity == 0:
            raise FrameCacheMissError("the frame cache is off (frame_cache = 0): send the image with every "
                                      "request")
        with self._lock:
            if key not in self._frames:
                raise FrameCacheMissError(f"frame ({name}) not cached: send the image with the first request of a "
                                          "frame")
            rgb = self._frames[key]
            self._frames.move_to_end(key)
        if rgb is None:
            raise FrameCacheMissError(f"frame ({name}) is ambiguous: two different images were sent with this "
                                      "header; send the image again with a header that names it uniquely")
        return rgb

    def __len__(self) -> int:
        with self._lock:
            return len(self._frames)
