"""sensor_msgs/Image and sensor_msgs/CompressedImage <-> numpy, without cv_bridge.

Conventions
- Arrays are row-major, shape (H, W) for one-channel encodings and (H, W, C) otherwise, channel order as
  the encoding names it (rgb8 -> R,G,B; bgr8 -> B,G,R). Pixel (0, 0) is the top-left one.
- dtypes: *8 / 8U -> uint8, 8S -> int8, *16 / 16U -> uint16, 16S -> int16, 32S -> int32, 32F -> float32,
  64F -> float64. Values are taken as they are (no scaling between 8 and 16 bit).
- `is_bigendian` is honoured by the dtype's byte order: a big-endian mono16 message is received as a
  '>u2' view (zero copy) and an array with a big-endian dtype is sent with is_bigendian=1.

Receiving (`image_to_numpy`) returns a zero-copy view of `msg.data`, honouring `step` padding through
strides; the view is writable and keeps the message's buffer alive. Sending (`numpy_to_image`) copies
the pixels once with a memcpy (no per-element Python work), or into the buffer of a message given as
`out`, which avoids allocating 6 MB per frame in a publisher loop.

Any malformed message or array raises ImageCodecError, whose message says what is wrong. The functions
read message fields by name only, so messages deserialised by rosbags work as well as rclpy's.
"""

from __future__ import annotations

import array
import re
import sys
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header


class ImageCodecError(ValueError):
    """A message or array that cannot be converted; the text says which field is wrong and why."""


@dataclass(frozen=True)
class PixelFormat:
    """Element type and channel count of one encoding. `dtype` is in native byte order."""

    dtype: np.dtype
    channels: int

    @property
    def bytes_per_pixel(self) -> int:
        return self.dtype.itemsize * self.channels


_U8, _U16 = np.dtype(np.uint8), np.dtype(np.uint16)
_NAMED_ENCODINGS: dict[str, PixelFormat] = {
    "rgb8": PixelFormat(_U8, 3),
    "bgr8": PixelFormat(_U8, 3),
    "rgba8": PixelFormat(_U8, 4),
    "bgra8": PixelFormat(_U8, 4),
    "mono8": PixelFormat(_U8, 1),
    "rgb16": PixelFormat(_U16, 3),
    "bgr16": PixelFormat(_U16, 3),
    "rgba16": PixelFormat(_U16, 4),
    "bgra16": PixelFormat(_U16, 4),
    "mono16": PixelFormat(_U16, 1),
}
for _pattern in ("rggb", "bggr", "gbrg", "grbg"):
    _NAMED_ENCODINGS[f"bayer_{_pattern}8"] = PixelFormat(_U8, 1)
    _NAMED_ENCODINGS[f"bayer_{_pattern}16"] = PixelFormat(_U16, 1)

_DEPTH_DTYPES = {
    "8U": np.uint8, "8S": np.int8, "16U": np.uint16, "16S": np.int16,
    "32S": np.int32, "32F": np.float32, "64F": np.float64,
}
_GENERIC_ENCODING = re.compile(r"^(8U|8S|16U|16S|32S|32F|64F)C([1-4])$")
# Maximum payload we accept, to reject absurd headers before allocating anything (1 GiB).
MAX_IMAGE_BYTES = 1 << 30


def pixel_format(encoding: str) -> PixelFormat:
    """PixelFormat of a sensor_msgs/image_encodings name (e.g. 'rgb8', '16UC1', '32FC1')."""
    known = _NAMED_ENCODINGS.get(encoding)
    if known is not None:
        return known
    match = _GENERIC_ENCODING.match(encoding)
    if match is None:
        raise ImageCodecError(
            f"unknown image encoding {encoding!r}; supported: {sorted(_NAMED_ENCODINGS)} "
            "and [8U|8S|16U|16S|32S|32F|64F]C[1-4]"
        )
    return PixelFormat(np.dtype(_DEPTH_DTYPES[match.group(1)]), int(match.group(2)))


def _wire_dtype(fmt: PixelFormat, is_bigendian: bool) -> np.dtype:
    if fmt.dtype.itemsize == 1:
        return fmt.dtype
    return fmt.dtype.newbyteorder(">" if is_bigendian else "<")


def image_to_numpy(msg: Any, max_pixels: int | None = None) -> np.ndarray:
    """Zero-copy view of a sensor_msgs/Image's pixels.

    Returns shape (H, W) for one-channel encodings, (H, W, C) otherwise, with the encoding's dtype in
    the message's byte order (see `to_native_byte_order`). Rows are `msg.step` bytes apart, so padded
    rows cost nothing. Raises ImageCodecError for an unknown encoding, a zero or oversized image (over
    `max_pixels` pixels, when given), step < width * bytes-per-pixel, or len(data) != step * height.
    """
    fmt = pixel_format(msg.encoding)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ImageCodecError(f"image has zero size: {width}x{height} ({msg.encoding})")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageCodecError(f"image {width}x{height} is over the limit of {max_pixels} pixels (max_pixels)")
    row_bytes = width * fmt.bytes_per_pixel
    if step < row_bytes:
        raise ImageCodecError(
            f"step {step} is smaller than width {width} x {fmt.bytes_per_pixel} bytes per pixel "
            f"= {row_bytes} for {msg.encoding}"
        )
    expected = step * height
    if expected > MAX_IMAGE_BYTES:
        raise ImageCodecError(f"image of {expected} bytes exceeds the {MAX_IMAGE_BYTES}-byte limit")
    buffer = np.frombuffer(msg.data, dtype=np.uint8) if len(msg.data) else np.empty(0, np.uint8)
    if buffer.size != expected:
        raise ImageCodecError(
            f"data has {buffer.size} bytes but step x height = {step} x {height} = {expected} "
            f"({msg.encoding} {width}x{height}); the message is truncated or its header is wrong"
        )
    dtype = _wire_dtype(fmt, bool(msg.is_bigendian))
    item = fmt.dtype.itemsize
    if fmt.channels == 1:
        shape, strides = (height, width), (step, item)
    else:
        shape, strides = (height, width, fmt.channels), (step, fmt.bytes_per_pixel, item)
    return np.ndarray(shape=shape, dtype=dtype, buffer=buffer, strides=strides)


def to_native_byte_order(image: np.ndarray) -> np.ndarray:
    """`image` itself when its dtype is in this machine's byte order, else a byte-swapped copy."""
    if image.dtype.isnative:
        return image
    return image.astype(image.dtype.newbyteorder("="))


def _check_array(image: np.ndarray, encoding: str) -> PixelFormat:
    fmt = pixel_format(encoding)
    if not isinstance(image, np.ndarray):
        raise ImageCodecError(f"expected a numpy array, got {type(image).__name__}")
    channels = 1 if image.ndim == 2 else (image.shape[2] if image.ndim == 3 else -1)
    if channels != fmt.channels or image.dtype.newbyteorder("=") != fmt.dtype:
        layout = "(H, W)" if fmt.channels == 1 else f"(H, W, {fmt.channels})"
        raise ImageCodecError(
            f"encoding {encoding!r} needs a {fmt.dtype} array of shape {layout}, "
            f"got {image.dtype} {image.shape}"
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ImageCodecError(f"image has zero size: {image.shape}")
    if image.nbytes > MAX_IMAGE_BYTES:
        raise ImageCodecError(f"image of {image.nbytes} bytes exceeds the {MAX_IMAGE_BYTES}-byte limit")
    return fmt


def _is_bigendian(dtype: np.dtype) -> bool:
    order = dtype.byteorder
    return order == ">" or (order in "=|" and sys.byteorder == "big" and dtype.itemsize > 1)


def _copy_header(header: Any | None) -> Header:
    result = Header()
    if header is not None:
        result.stamp.sec = int(header.stamp.sec)
        result.stamp.nanosec = int(header.stamp.nanosec)
        result.frame_id = str(header.frame_id)
    return result


def numpy_to_image(
    image: np.ndarray, encoding: str, header: Any | None = None, *, out: Image | None = None
) -> Image:
    """sensor_msgs/Image holding a copy of `image` (rows packed: step = width x bytes per pixel).

    `image`: (H, W) or (H, W, C) array whose dtype and channel count match `encoding` (see the module
    docstring); any strides, either byte order. `header` (std_msgs/Header or anything with stamp and
    frame_id) is copied. With `out`, that message is filled and returned, reusing its data buffer when
    the size matches (one memcpy, no allocation). Raises ImageCodecError when the array does not fit
    the encoding.
    """
    fmt = _check_array(image, encoding)
    height, width = int(image.shape[0]), int(image.shape[1])
    step = width * fmt.bytes_per_pixel
    msg = out if out is not None else Image()
    msg.header = _copy_header(header) if header is not None else msg.header
    msg.height, msg.width, msg.encoding, msg.step = height, width, encoding, step
    msg.is_bigendian = int(_is_bigendian(image.dtype))
    data = msg.data if out is not None else None
    if isinstance(data, array.array) and len(data) == step * height:
        target = np.frombuffer(data, dtype=image.dtype).reshape(image.shape)
        target[...] = image
        return msg
    data = array.array("B")
    data.frombytes(np.ascontiguousarray(image).view(np.uint8).reshape(-1))
    msg.data = data
    return msg


# --- compressed images ------------------------------------------------------------------------------

_COMPRESSED_FORMATS = {"jpeg": ".jpg", "jpg": ".jpg", "png": ".png"}
# OpenCV decodes to these encodings, by (channels, dtype).
_DECODED_ENCODING = {(1, _U8): "mono8", (1, _U16): "mono16", (3, _U8): "bgr8", (3, _U16): "bgr16",
                     (4, _U8): "bgra8", (4, _U16): "bgra16"}
# (decoded encoding, original encoding) -> OpenCV conversion, or None where only the name differs.
_RESTORE_ORIGINAL = {
    ("bgr8", "rgb8"): cv2.COLOR_BGR2RGB, ("bgr8", "8UC3"): None,
    ("bgr8", "bgra8"): cv2.COLOR_BGR2BGRA, ("bgr8", "rgba8"): cv2.COLOR_BGR2RGBA,
    ("bgra8", "rgba8"): cv2.COLOR_BGRA2RGBA, ("bgra8", "8UC4"): None,
    ("mono8", "8UC1"): None, ("mono8", "bgr8"): cv2.COLOR_GRAY2BGR, ("mono8", "rgb8"): cv2.COLOR_GRAY2RGB,
    ("mono16", "16UC1"): None, ("bgr16", "rgb16"): cv2.COLOR_BGR2RGB,
    ("bgra16", "rgba16"): cv2.COLOR_BGRA2RGBA,
}
# compressed_image_transport's compressedDepth format prepends a 12-byte config header.
_COMPRESSED_DEPTH_HEADER_BYTES = 12


def _parse_compressed_format(fmt: str) -> tuple[str | None, str, bool]:
    """(original encoding or None, codec name, is compressedDepth) from a CompressedImage.format.

    Accepts 'jpeg', 'png' and image_transport's '<encoding>; <codec> compressed [<encoding>]' and
    '<encoding>; compressedDepth [png]' forms.
    """
    text = fmt.strip().lower()
    original = None
    if ";" in fmt:
        original, rest = (part.strip() for part in fmt.split(";", 1))
        text = rest.lower()
    if "compresseddepth" in text:
        return original, "png", True
    codec = text.split()[0] if text else ""
    if codec not in _COMPRESSED_FORMATS:
        raise ImageCodecError(
            f"unsupported CompressedImage format {fmt!r}; supported: jpeg, png, compressedDepth png"
        )
    return original or None, codec, False


_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def compressed_image_size(payload: bytes | np.ndarray) -> tuple[int, int] | None:
    """(width, height) that PNG or JPEG data declares in its header, read without decoding anything; None
    when the data is neither or its header is cut short. This is what a decompression bomb (a 100 kB PNG
    that decodes to 10000 x 10000) is caught by before any pixel memory is taken."""
    data = bytes(payload[:1 << 16])
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24 and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:2] == b"\xff\xd8":
        position = 2
        while position + 9 <= len(data):
            if data[position] != 0xFF:
                return None
            marker = data[position + 1]
            if marker == 0xFF:  # fill byte
                position += 1
                continue
            if marker in _JPEG_SOF:
                height = int.from_bytes(data[position + 5:position + 7], "big")
                width = int.from_bytes(data[position + 7:position + 9], "big")
                return width, height
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
                position += 2
                continue
            position += 2 + int.from_bytes(data[position + 2:position + 4], "big")
    return None


def compressed_to_numpy(msg: Any, max_pixels: int | None = None) -> tuple[np.ndarray, str]:
    """Decode a sensor_msgs/CompressedImage with OpenCV; returns (array, its encoding).

    When the format names the original encoding (image_transport style, e.g. 'rgb8; jpeg compressed
    bgr8'), the image is returned in that encoding; otherwise as OpenCV decodes it: 'bgr8', 'bgra8',
    'mono8' or 'mono16'. Raises ImageCodecError for an unsupported format, empty or undecodable data, and,
    with `max_pixels`, for data whose header declares more pixels than that (checked before decoding).
    """
    original, codec, depth = _parse_compressed_format(str(msg.format))
    payload = np.frombuffer(msg.data, dtype=np.uint8) if len(msg.data) else np.empty(0, np.uint8)
    if depth:
        payload = payload[_COMPRESSED_DEPTH_HEADER_BYTES:]
    if payload.size == 0:
        raise ImageCodecError(f"CompressedImage ({msg.format!r}) has no data")
    if max_pixels is not None:
        size = compressed_image_size(payload)
        if size is not None and size[0] * size[1] > max_pixels:
            raise ImageCodecError(f"{codec} data declares {size[0]}x{size[1]} = {size[0] * size[1]} pixels, over "
                                  f"the limit of {max_pixels} (max_pixels); not decoded")
    decoded = cv2.imdecode(payload, cv2.IMREAD_UNCHANGED)
    if decoded is None:
        raise ImageCodecError(
            f"could not decode {payload.size} bytes of {codec} data (format {msg.format!r}); "
            "the data is truncated or not a valid image"
        )
    channels = 1 if decoded.ndim == 2 else decoded.shape[2]
    natural = _DECODED_ENCODING.get((channels, decoded.dtype))
    if natural is None:
        raise ImageCodecError(f"decoded {codec} image has {channels} channels of {decoded.dtype}; "
                              "expected 8- or 16-bit mono, BGR or BGRA")
    key = (natural, original)
    if original is None or key not in _RESTORE_ORIGINAL:
        return decoded, natural
    conversion = _RESTORE_ORIGINAL[key]
    return (decoded if conversion is None else cv2.cvtColor(decoded, conversion)), original


_TO_BGR = {"rgb8": cv2.COLOR_RGB2BGR, "rgba8": cv2.COLOR_RGBA2BGRA, "bgr8": None, "bgra8": None,
           "mono8": None, "mono16": None, "8UC1": None, "8UC3": None, "16UC1": None}


def numpy_to_compressed(
    image: np.ndarray,
    encoding: str,
    fmt: str = "jpeg",
    header: Any | None = None,
    *,
    jpeg_quality: int = 90,
    png_level: int = 3,
) -> CompressedImage:
    """Encode `image` (given in `encoding`) as a sensor_msgs/CompressedImage with OpenCV.

    The format string follows image_transport ('rgb8; jpeg compressed bgr8'), so that
    `compressed_to_numpy` and image_transport's republisher both restore the original encoding.
    jpeg takes 8-bit images; png also 16-bit mono. Raises ImageCodecError otherwise.
    """
    _check_array(image, encoding)
    codec = fmt.lower()
    if codec not in _COMPRESSED_FORMATS:
        raise ImageCodecError(f"unsupported compression {fmt!r}; use 'jpeg' or 'png'")
    if encoding not in _TO_BGR:
        raise ImageCodecError(f"cannot compress encoding {encoding!r}; supported: {sorted(_TO_BGR)}")
    if codec != "png" and image.dtype != np.uint8:
        raise ImageCodecError(f"jpeg needs 8-bit images, {encoding!r} is {image.dtype}")
    conversion = _TO_BGR[encoding]
    native = to_native_byte_order(image)
    bgr = native if conversion is None else cv2.cvtColor(native, conversion)
    params = ([cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if codec != "png"
              else [cv2.IMWRITE_PNG_COMPRESSION, int(png_level)])
    ok, encoded = cv2.imencode(_COMPRESSED_FORMATS[codec], bgr, params)
    if not ok:
        raise ImageCodecError(f"OpenCV could not encode {encoding} {image.shape} as {codec}")
    stored = {3: "bgr8", 4: "bgra8"}.get(bgr.shape[2] if bgr.ndim == 3 else 1, encoding)
    msg = CompressedImage()
    msg.header = _copy_header(header)
    msg.format = f"{encoding}; {'jpeg' if codec != 'png' else 'png'} compressed {stored}"
    data = array.array("B")
    data.frombytes(encoded.reshape(-1))
    msg.data = data
    return msg


# --- colour conversion for networks --------------------------------------------------------------

_TO_RGB = {"rgb8": None, "8UC3": None, "bgr8": cv2.COLOR_BGR2RGB, "rgba8": cv2.COLOR_RGBA2RGB,
           "bgra8": cv2.COLOR_BGRA2RGB, "mono8": cv2.COLOR_GRAY2RGB, "8UC1": cv2.COLOR_GRAY2RGB}
RGB8_COMPATIBLE_ENCODINGS = tuple(sorted(_TO_RGB))


def to_rgb8(image: np.ndarray, encoding: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB from an 8-bit image in `encoding` (rgb8, bgr8, rgba8, bgra8, mono8, 8UC1/3).

    Returns `image` itself for rgb8 (no copy), else a converted copy. Raises ImageCodecError for
    other encodings (e.g. 16-bit), since networks here take 8-bit colour input.
    """
    if encoding not in _TO_RGB:
        raise ImageCodecError(
            f"encoding {encoding!r} cannot be used as 8-bit colour input; "
            f"expected one of {RGB8_COMPATIBLE_ENCODINGS}"
        )
    _check_array(image, encoding)
    conversion = _TO_RGB[encoding]
    return image if conversion is None else cv2.cvtColor(image, conversion)


# The message types decode_to_rgb8 reads, as a bag's connections name them.
IMAGE_MSGTYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")


def decode_to_rgb8(msg: Any, msgtype: str, max_pixels: int | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a deserialised sensor_msgs Image or CompressedImage (`msgtype` names which, as in a
    bag's connection: 'sensor_msgs/msg/CompressedImage' or '.../Image'); ImageCodecError for what cannot be
    shown as RGB (e.g. mono16)."""
    if msgtype.endswith("CompressedImage"):
        image, encoding = compressed_to_numpy(msg, max_pixels)
    else:
        image, encoding = image_to_numpy(msg, max_pixels), msg.encoding
    return to_rgb8(image, encoding)
