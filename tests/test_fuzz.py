"""Property-based tests of the edges: whatever arrives, the result or the documented error, never another kind.

- the image codec (raw and compressed messages as a node receives them): an array or ImageCodecError;
- SegmentObject request validation (the extreme points of any length and value, on any image size): (4, 2)
  points or AnnotationError with a code of SegmentObject's constants;
- the clicks parser of instseg-label (any JSON): the clicks or LabelError.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import cv2
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from instseg_core.annotate.segmenter import AnnotationError, ErrorCode, validate_points
from instseg_ros.image_codec import ImageCodecError, compressed_to_numpy, image_to_numpy, to_rgb8
from instseg_ros.label_bag import LabelError, parse_clicks

# derandomize: the same examples on every run and machine (a failure is reproducible, never a flake)
SETTINGS = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
ENCODINGS = ["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16", "rgb16", "8UC3", "16UC1", "32FC1", "64FC4",
             "bayer_rggb8", "yuv422", "", "RGB8", "8UC9", "\x00"]


@st.composite
def raw_images(draw: st.DrawFn) -> SimpleNamespace:
    """A sensor_msgs/Image as a node may receive it: any size, step, encoding and amount of data."""
    height = draw(st.integers(-2, 40))
    width = draw(st.integers(-2, 40))
    encoding = draw(st.sampled_from(ENCODINGS) | st.text(max_size=12))
    step = draw(st.integers(-8, 400))
    if draw(st.booleans()) and height > 0 and step > 0:
        size = step * height + draw(st.sampled_from([0, 0, 0, -1, 1, -step]))
    else:
        size = draw(st.integers(0, 2000))
    data = bytes(draw(st.binary(min_size=max(0, size), max_size=max(0, size))))
    return SimpleNamespace(height=height, width=width, encoding=encoding, step=step, data=data,
                           is_bigendian=draw(st.integers(0, 3)))


@SETTINGS
@given(raw_images())
def test_raw_image_decoding_gives_an_array_or_an_image_codec_error(msg: SimpleNamespace) -> None:
    try:
        image = image_to_numpy(msg)
    except ImageCodecError:
        return
    assert image.shape[:2] == (msg.height, msg.width)
    try:
        rgb = to_rgb8(np.ascontiguousarray(image), msg.encoding)
    except ImageCodecError:
        return
    assert rgb.shape == (msg.height, msg.width, 3) and rgb.dtype == np.uint8


def _png(height: int, width: int, channels: int) -> bytes:
    pixels = np.arange(height * width * channels, dtype=np.uint8).reshape(height, width, channels)
    return cv2.imencode(".png", pixels)[1].tobytes()


@SETTINGS
@given(st.sampled_from(["jpeg", "png", "rgb8; jpeg compressed bgr8", "bgr8; png compressed bgr8",
                        "16UC1; compressedDepth png", "mono8; png compressed mono8", "tiff", ""])
       | st.text(max_size=30),
       st.one_of(st.binary(max_size=600),
                 st.builds(_png, st.integers(1, 8), st.integers(1, 8), st.sampled_from([1, 3, 4]))),
       st.integers(0, 40))
def test_compressed_decoding_gives_an_array_or_an_image_codec_error(fmt: str, data: bytes, cut: int) -> None:
    msg = SimpleNamespace(format=fmt, data=data[:len(data) - cut] if cut < len(data) else data)
    try:
        image, encoding = compressed_to_numpy(msg, max_pixels=4096 * 4096)
    except ImageCodecError:
        return
    assert isinstance(encoding, str) and image.ndim in (2, 3) and image.size > 0


FINITE_OR_NOT = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-10**6, 10**6)


@SETTINGS
@given(st.lists(st.integers(-2**31, 2**31 - 1), max_size=12), st.integers(1, 5000), st.integers(1, 5000))
def test_segment_object_points_validate_or_refuse_with_a_code(points: list[int], height: int, width: int) -> None:
    """The service's int32[] extreme_points, as any client may send them."""
    try:
        array = validate_points(np.asarray(points, np.float64), (height, width))
    except AnnotationError as exc:
        assert exc.code in (ErrorCode.BAD_POINTS, ErrorCode.POINTS_OUTSIDE, ErrorCode.DEGENERATE_BOX)
        return
    assert array.shape == (4, 2) and len(points) == 8
    assert np.all((array[:, 0] >= 0) & (array[:, 0] < width) & (array[:, 1] >= 0) & (array[:, 1] < height))


@SETTINGS
@given(st.recursive(st.none() | st.booleans() | FINITE_OR_NOT | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=5), max_leaves=20), st.integers(1, 3000))
def test_python_points_validate_or_refuse_with_a_code(points: object, size: int) -> None:
    """The Python API (the studio, scripts): nested lists of anything."""
    try:
        array = validate_points(points, (size, size))  # type: ignore[arg-type]
    except AnnotationError as exc:
        assert exc.code in (ErrorCode.BAD_POINTS, ErrorCode.POINTS_OUTSIDE, ErrorCode.DEGENERATE_BOX)
        return
    assert array.shape == (4, 2)


JSON = st.recursive(st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=6), inner,
                                                                                  max_size=4),
                    max_leaves=30)
POINTS = st.lists(st.lists(st.integers(-5, 3000) | st.floats(allow_nan=False), min_size=2, max_size=2),
                  min_size=4, max_size=4)
CLICKS = st.dictionaries(
    st.sampled_from(["0", "1", "01", "17", "1700000000066666667", "1700000000.066666667", "x", "-3", "1.2.3"]),
    st.lists(st.one_of(st.fixed_dictionaries({"points": POINTS, "class": st.sampled_from(["car", "person", "sky!"])}),
                       st.tuples(POINTS, st.sampled_from(["car", "bus"])).map(lambda t: [*t[0], t[1]]), JSON),
             max_size=3),
    max_size=4)


@SETTINGS
@given(st.one_of(JSON, CLICKS))
def test_clicks_parse_or_fail_with_a_label_error(data: object) -> None:
    try:
        clicks = parse_clicks(json.loads(json.dumps(data)))
    except LabelError:
        return
    for objects in clicks.values():
        assert objects and all(c.points.shape == (4, 2) and np.all(np.isfinite(c.points)) for c in objects)
