"""instseg_ros.image_codec: every encoding, step padding, byte order, zero-copy, errors, compression."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from rosbags.typesys import Stores, get_typestore
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from instseg_ros.image_codec import (
    ImageCodecError,
    compressed_to_numpy,
    image_to_numpy,
    numpy_to_compressed,
    numpy_to_image,
    pixel_format,
    to_native_byte_order,
    to_rgb8,
)

# encoding -> (dtype, channels); the list the foundation issue names, plus a few generic ones.
ENCODINGS = {
    "rgb8": (np.uint8, 3), "bgr8": (np.uint8, 3), "rgba8": (np.uint8, 4), "bgra8": (np.uint8, 4),
    "mono8": (np.uint8, 1), "mono16": (np.uint16, 1), "8UC1": (np.uint8, 1), "8UC3": (np.uint8, 3),
    "16UC1": (np.uint16, 1), "32SC1": (np.int32, 1), "32FC1": (np.float32, 1),
    "64FC1": (np.float64, 1), "16SC3": (np.int16, 3), "8SC4": (np.int8, 4), "bayer_rggb8": (np.uint8, 1),
}


def random_image(encoding: str, height: int = 37, width: int = 53, seed: int = 0) -> np.ndarray:
    dtype, channels = ENCODINGS[encoding]
    shape = (height, width) if channels == 1 else (height, width, channels)
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.normal(size=shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_round_trip_every_encoding(encoding: str) -> None:
    pixels = random_image(encoding)
    header = Header(frame_id="cam")
    header.stamp.sec, header.stamp.nanosec = 5, 6
    msg = numpy_to_image(pixels, encoding, header)
    dtype, channels = ENCODINGS[encoding]
    assert (msg.height, msg.width, msg.encoding) == (37, 53, encoding)
    assert msg.step == 53 * channels * np.dtype(dtype).itemsize
    assert len(msg.data) == msg.step * msg.height
    assert msg.header == header and msg.header is not header
    back = image_to_numpy(msg)
    assert back.dtype == np.dtype(dtype) and back.shape == pixels.shape
    np.testing.assert_array_equal(back, pixels)
    assert pixel_format(encoding).channels == channels


def test_receive_is_zero_copy_view() -> None:
    msg = numpy_to_image(random_image("rgb8"), "rgb8")
    view = image_to_numpy(msg)
    assert np.shares_memory(view, np.frombuffer(msg.data, np.uint8))
    view[0, 0] = (1, 2, 3)
    assert list(msg.data[:3]) == [1, 2, 3]


def test_step_padding_is_honoured_without_copy() -> None:
    height, width, step = 4, 5, 5 * 3 + 7
    rows = np.arange(height * step, dtype=np.uint8).reshape(height, step)
    msg = Image(height=height, width=width, encoding="bgr8", step=step)
    msg.data = rows.tobytes()
    view = image_to_numpy(msg)
    np.testing.assert_array_equal(view, rows[:, : width * 3].reshape(height, width, 3))
    assert np.shares_memory(view, np.frombuffer(msg.data, np.uint8))


def test_big_endian_message_is_read_by_value() -> None:
    values = np.array([[1, 258], [65535, 4096]], np.uint16)
    msg = Image(height=2, width=2, encoding="mono16", is_bigendian=1, step=4)
    msg.data = values.astype(">u2").tobytes()
    view = image_to_numpy(msg)
    assert view.dtype == np.dtype(">u2")
    np.testing.assert_array_equal(view, values)
    native = to_native_byte_order(view)
    assert native.dtype.isnative and native.dtype == np.uint16
    np.testing.assert_array_equal(native, values)
    assert to_native_byte_order(native) is native


def test_big_endian_array_is_sent_as_big_endian() -> None:
    values = np.array([[1, 2, 3]], dtype=">u2")
    msg = numpy_to_image(values, "16UC1")
    assert msg.is_bigendian == 1
    assert bytes(msg.data) == b"\x00\x01\x00\x02\x00\x03"
    np.testing.assert_array_equal(image_to_numpy(msg), [[1, 2, 3]])
    assert numpy_to_image(values.astype("<u2"), "16UC1").is_bigendian == 0


def test_non_contiguous_input_is_packed() -> None:
    pixels = random_image("rgb8", 40, 60)
    strided = pixels[::2, 1::3]
    msg = numpy_to_image(strided, "rgb8")
    assert msg.step == strided.shape[1] * 3
    np.testing.assert_array_equal(image_to_numpy(msg), strided)


def test_out_message_buffer_is_reused() -> None:
    first, second = random_image("rgb8", seed=1), random_image("rgb8", seed=2)
    msg = numpy_to_image(first, "rgb8")
    buffer = msg.data
    same = numpy_to_image(second, "rgb8", out=msg)
    assert same is msg and msg.data is buffer
    np.testing.assert_array_equal(image_to_numpy(msg), second)
    smaller = random_image("rgb8", 10, 10)
    numpy_to_image(smaller, "rgb8", out=msg)
    assert msg.data is not buffer and (msg.height, msg.width) == (10, 10)
    np.testing.assert_array_equal(image_to_numpy(msg), smaller)


def test_rosbags_messages_decode_too() -> None:
    """Messages deserialised by rosbags (numpy data, dataclasses) go through the same codec."""
    store = get_typestore(Stores.ROS2_KILTED)
    image_type = store.types["sensor_msgs/msg/Image"]
    header_type, time_type = store.types["std_msgs/msg/Header"], store.types["builtin_interfaces/msg/Time"]
    pixels = random_image("mono16")
    msg = image_type(
        header=header_type(stamp=time_type(sec=1, nanosec=2), frame_id="cam"), height=37, width=53,
        encoding="mono16", is_bigendian=0, step=106, data=pixels.view(np.uint8).reshape(-1),
    )
    np.testing.assert_array_equal(image_to_numpy(msg), pixels)


@pytest.mark.parametrize(
    ("fields", "data_len", "words"),
    [
        ({"encoding": "rgb8", "height": 4, "width": 4, "step": 12}, 47, ["47 bytes", "48", "truncated"]),
        ({"encoding": "rgb8", "height": 4, "width": 4, "step": 12}, 49, ["49 bytes", "48"]),
        ({"encoding": "rgb8", "height": 4, "width": 4, "step": 11}, 44, ["step 11", "12"]),
        ({"encoding": "yuv422_yuy2", "height": 4, "width": 4, "step": 8}, 32, ["unknown image encoding"]),
        ({"encoding": "", "height": 4, "width": 4, "step": 8}, 32, ["unknown image encoding"]),
        ({"encoding": "mono8", "height": 0, "width": 0, "step": 0}, 0, ["zero size"]),
        ({"encoding": "mono8", "height": 3, "width": 0, "step": 0}, 0, ["zero size"]),
        ({"encoding": "mono8", "height": 70000, "width": 70000, "step": 70000}, 0, ["exceeds"]),
    ],
)
def test_bad_messages_raise_one_error_type(fields: dict, data_len: int, words: list[str]) -> None:
    msg = Image(**fields)
    msg.data = bytes(data_len)
    with pytest.raises(ImageCodecError) as info:
        image_to_numpy(msg)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize(
    ("array", "encoding", "words"),
    [
        (np.zeros((4, 4, 3), np.uint16), "rgb8", ["uint8", "uint16"]),
        (np.zeros((4, 4), np.uint8), "rgb8", ["(H, W, 3)", "(4, 4)"]),
        (np.zeros((4, 4, 3), np.uint8), "mono8", ["(H, W)"]),
        (np.zeros((0, 4, 3), np.uint8), "rgb8", ["zero size"]),
        (np.zeros((4, 4, 3), np.uint8), "nv12", ["unknown image encoding"]),
        (np.zeros((2, 2, 2, 2), np.uint8), "8UC1", ["(H, W)"]),
    ],
)
def test_bad_arrays_raise(array: np.ndarray, encoding: str, words: list[str]) -> None:
    with pytest.raises(ImageCodecError) as info:
        numpy_to_image(array, encoding)
    for word in words:
        assert word in str(info.value)


def smooth_image(height: int = 64, width: int = 96) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 2, y * 3, (x + y)], axis=-1).astype(np.uint8)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8"])
def test_png_round_trip_is_lossless_and_restores_channel_order(encoding: str) -> None:
    pixels = smooth_image()
    if encoding.endswith("a8"):
        pixels = np.dstack([pixels, np.full(pixels.shape[:2], 200, np.uint8)])
    msg = numpy_to_compressed(pixels, encoding, "png")
    assert msg.format.startswith(f"{encoding}; png compressed")
    decoded, decoded_encoding = compressed_to_numpy(msg)
    assert decoded_encoding == encoding
    np.testing.assert_array_equal(decoded, pixels)


def test_png_16bit_mono_and_jpeg_colour() -> None:
    depth = (np.arange(64 * 96, dtype=np.uint16) * 7).reshape(64, 96)
    decoded, encoding = compressed_to_numpy(numpy_to_compressed(depth, "16UC1", "png"))
    assert encoding == "16UC1"
    np.testing.assert_array_equal(decoded, depth)
    pixels = smooth_image()
    decoded, encoding = compressed_to_numpy(numpy_to_compressed(pixels, "rgb8", "jpeg", jpeg_quality=95))
    assert encoding == "rgb8" and decoded.shape == pixels.shape
    assert np.abs(decoded.astype(int) - pixels).mean() < 3.0


def test_plain_format_strings_decode_in_opencv_order() -> None:
    pixels = smooth_image()
    msg = numpy_to_compressed(pixels, "rgb8", "png")
    msg.format = "png"
    decoded, encoding = compressed_to_numpy(msg)
    assert encoding == "bgr8"
    np.testing.assert_array_equal(decoded, pixels[..., ::-1])


def test_compressed_depth_png() -> None:
    depth = (np.arange(32 * 48, dtype=np.uint16) * 11).reshape(32, 48)
    png = numpy_to_compressed(depth, "16UC1", "png")
    msg = CompressedImage(format="16UC1; compressedDepth png")
    msg.data = bytes(12) + bytes(png.data)
    decoded, encoding = compressed_to_numpy(msg)
    assert encoding == "16UC1"
    np.testing.assert_array_equal(decoded, depth)


@pytest.mark.parametrize(
    ("fmt", "data", "words"),
    [
        ("jpeg", b"", ["no data"]),
        ("jpeg", b"\xff\xd8\xff\xe0garbage", ["could not decode", "jpeg"]),
        ("h264", b"\x00\x00\x01", ["unsupported CompressedImage format"]),
        ("rgb8; tiff compressed bgr8", b"II*", ["unsupported"]),
    ],
)
def test_bad_compressed_messages_raise(fmt: str, data: bytes, words: list[str]) -> None:
    msg = CompressedImage(format=fmt)
    msg.data = data
    with pytest.raises(ImageCodecError) as info:
        compressed_to_numpy(msg)
    for word in words:
        assert word in str(info.value)


def test_truncated_jpeg_raises() -> None:
    msg = numpy_to_compressed(smooth_image(), "bgr8", "jpeg")
    msg.data = bytes(msg.data)[:40]
    with pytest.raises(ImageCodecError, match="could not decode"):
        compressed_to_numpy(msg)


def test_jpeg_refuses_16bit() -> None:
    with pytest.raises(ImageCodecError, match="8-bit"):
        numpy_to_compressed(np.zeros((4, 4), np.uint16), "mono16", "jpeg")


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8"])
def test_to_rgb8(encoding: str) -> None:
    rgb = smooth_image()
    source = {
        "rgb8": rgb, "bgr8": rgb[..., ::-1].copy(),
        "rgba8": np.dstack([rgb, np.zeros(rgb.shape[:2], np.uint8)]),
        "bgra8": np.dstack([rgb[..., ::-1], np.zeros(rgb.shape[:2], np.uint8)]),
        "mono8": rgb[..., 0].copy(),
    }[encoding]
    out = to_rgb8(source, encoding)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    expected = np.repeat(rgb[..., :1], 3, axis=2) if encoding == "mono8" else rgb
    np.testing.assert_array_equal(out, expected)
    if encoding == "rgb8":
        assert out is source


def test_to_rgb8_refuses_16bit() -> None:
    with pytest.raises(ImageCodecError, match="8-bit colour"):
        to_rgb8(np.zeros((4, 4), np.uint16), "mono16")


def test_compressed_frames_over_max_pixels_are_refused_before_decoding() -> None:
    """A decompression bomb (a small PNG or JPEG declaring 10000 x 10000) is refused from its header, before any
    pixel memory is taken; real images report their true size; data of another kind is left to the decoder."""
    from types import SimpleNamespace

    from instseg_ros.image_codec import compressed_image_size

    small = np.arange(48 * 64 * 3, dtype=np.uint8).reshape(48, 64, 3)
    for ext in (".png", ".jpg"):
        data = cv2.imencode(ext, small)[1].tobytes()
        assert compressed_image_size(data) == (64, 48), ext
        image, _ = compressed_to_numpy(SimpleNamespace(format=ext[1:], data=data), max_pixels=64 * 48)
        assert image.shape[:2] == (48, 64)
    bomb = bytearray(cv2.imencode(".png", small)[1].tobytes())
    bomb[16:24] = (10000).to_bytes(4, "big") * 2  # IHDR claims 10000 x 10000
    with pytest.raises(ImageCodecError, match=r"10000x10000 = 100000000 pixels, over the limit of 16777216"):
        compressed_to_numpy(SimpleNamespace(format="png", data=bytes(bomb)), max_pixels=4096 * 4096)
    jpeg = bytearray(cv2.imencode(".jpg", small)[1].tobytes())
    sof = next(i for i in range(2, len(jpeg) - 1) if jpeg[i] == 0xFF and jpeg[i + 1] in (0xC0, 0xC2))
    jpeg[sof + 5:sof + 9] = (20000).to_bytes(2, "big") + (30000).to_bytes(2, "big")
    assert compressed_image_size(bytes(jpeg)) == (30000, 20000)
    with pytest.raises(ImageCodecError, match="over the limit"):
        compressed_to_numpy(SimpleNamespace(format="jpeg", data=bytes(jpeg)), max_pixels=4096 * 4096)
    assert compressed_image_size(b"GIF89a....") is None and compressed_image_size(b"\xff\xd8\xff") is None


def test_raw_frames_over_max_pixels_are_refused_before_any_view() -> None:
    msg = numpy_to_image(np.zeros((30, 40, 3), np.uint8), "rgb8")
    assert image_to_numpy(msg, max_pixels=1200).shape == (30, 40, 3)
    with pytest.raises(ImageCodecError, match=r"40x30 is over the limit of 1199 pixels"):
        image_to_numpy(msg, max_pixels=1199)
