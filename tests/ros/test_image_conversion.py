"""Image / CompressedImage <-> numpy conversion (cv_bridge-compatible) in rla_wm_ros.image_conversion."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from rla_wm_ros import image_conversion
from rla_wm_ros.image_conversion import (
    ENCODINGS,
    CvBridge,
    CvBridgeError,
    get_cv_bridge,
    image_msg_to_rgb,
)

BRIDGE_METHODS = ("imgmsg_to_cv2", "cv2_to_imgmsg", "compressed_imgmsg_to_cv2", "cv2_to_compressed_imgmsg")


@pytest.fixture
def bridge() -> CvBridge:
    return CvBridge()


@pytest.fixture(params=["cv2", "pillow"])
def codec(request, monkeypatch) -> str:
    """Run a compression test on both back ends: OpenCV, and Pillow as if cv2 were missing."""
    if request.param == "pillow":
        monkeypatch.setattr(image_conversion, "_cv2", lambda: None)
    else:
        import cv2  # noqa: F401  (the cv2 back end must really be there for this variant)
    return request.param


def random_image(encoding: str, height: int = 5, width: int = 7, seed: int = 0) -> np.ndarray:
    """An array of the dtype/channels `encoding` needs, filled across the dtype's range."""
    dtype, channels = ENCODINGS[encoding]
    shape = (height, width) if channels == 1 else (height, width, channels)
    rng = np.random.default_rng(seed)
    if dtype.kind == "f":
        return rng.normal(0.0, 1000.0, size=shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)


def raw_msg(encoding: str, height: int, width: int, step: int, data: bytes, bigendian: bool = False) -> Image:
    msg = Image()
    msg.encoding = encoding
    msg.height, msg.width, msg.step = height, width, step
    msg.is_bigendian = int(bigendian)
    msg.data = data
    return msg


def colour_msg(bridge: CvBridge, encoding: str, pixels: list) -> Image:
    return bridge.cv2_to_imgmsg(np.array([pixels], dtype=np.uint8), encoding=encoding)


def smooth_bgr(height: int = 48, width: int = 64) -> np.ndarray:
    """A smooth gradient (JPEG-friendly) with distinct B, G and R planes."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // (width - 1), y * 255 // (height - 1), 255 - x * 255 // (width - 1)], axis=-1).astype(
        np.uint8
    )


# ------------------------------------------------------------------ raw round trips


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_round_trip_every_encoding(bridge, encoding):
    image = random_image(encoding)
    msg = bridge.cv2_to_imgmsg(image, encoding=encoding)
    dtype, channels = ENCODINGS[encoding]
    assert msg.encoding == encoding
    assert (msg.height, msg.width) == (5, 7)
    assert msg.step == 7 * channels * dtype.itemsize
    assert len(msg.data) == msg.step * msg.height
    back = bridge.imgmsg_to_cv2(msg)
    assert back.dtype == dtype
    assert back.shape == image.shape
    np.testing.assert_array_equal(back, image)
    # Asking for the message's own encoding is the same as passthrough.
    np.testing.assert_array_equal(bridge.imgmsg_to_cv2(msg, desired_encoding=encoding), image)


@pytest.mark.parametrize(
    "encoding", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16", "8UC1", "8UC3", "16UC1", "32FC1"]
)
def test_required_encodings_are_supported(bridge, encoding):
    assert encoding in ENCODINGS
    image = random_image(encoding, seed=3)
    np.testing.assert_array_equal(bridge.imgmsg_to_cv2(bridge.cv2_to_imgmsg(image, encoding)), image)


@pytest.mark.parametrize(
    "dtype, channels, expected",
    [
        (np.uint8, 1, "8UC1"),
        (np.uint8, 3, "8UC3"),
        (np.uint8, 4, "8UC4"),
        (np.uint16, 1, "16UC1"),
        (np.int16, 1, "16SC1"),
        (np.int32, 1, "32SC1"),
        (np.float32, 1, "32FC1"),
        (np.float64, 3, "64FC3"),
    ],
)
def test_passthrough_encoding_is_the_opencv_type_like_cv_bridge(bridge, dtype, channels, expected):
    shape = (3, 4) if channels == 1 else (3, 4, channels)
    image = np.arange(np.prod(shape)).reshape(shape).astype(dtype)
    msg = bridge.cv2_to_imgmsg(image)
    assert msg.encoding == expected
    np.testing.assert_array_equal(bridge.imgmsg_to_cv2(msg), image)


def test_hxwx1_array_is_a_one_channel_image(bridge):
    image = np.arange(12, dtype=np.uint8).reshape(3, 4, 1)
    msg = bridge.cv2_to_imgmsg(image, encoding="mono8")
    assert (msg.encoding, msg.step) == ("mono8", 4)
    np.testing.assert_array_equal(bridge.imgmsg_to_cv2(msg), image[:, :, 0])


def test_non_contiguous_array_is_serialised_in_row_order(bridge):
    base = random_image("bgr8", 6, 8)
    view = base[::2, 1::2, ::-1]  # strided and channel-reversed
    back = bridge.imgmsg_to_cv2(bridge.cv2_to_imgmsg(view, encoding="rgb8"))
    np.testing.assert_array_equal(back, view)


# ------------------------------------------------------------------ step / byte order


def test_padded_step_rgb8(bridge):
    image = random_image("rgb8", 4, 5)
    pad = 7
    rows = [image[r].tobytes() + bytes([0xEE] * pad) for r in range(4)]
    msg = raw_msg("rgb8", 4, 5, 5 * 3 + pad, b"".join(rows))
    back = bridge.imgmsg_to_cv2(msg)
    assert back.shape == (4, 5, 3)
    np.testing.assert_array_equal(back, image)
    assert back.flags.c_contiguous
    assert not (back == 0xEE).all(axis=-1).any(), "padding bytes leaked into the pixels"


def test_padded_step_16uc1_with_odd_padding_and_conversion(bridge):
    image = random_image("16UC1", 3, 5)
    step = 5 * 2 + 3  # not a multiple of the element size
    data = b"".join(image[r].astype("<u2").tobytes() + b"\x01\x02\x03" for r in range(3))
    back = bridge.imgmsg_to_cv2(raw_msg("16UC1", 3, 5, step, data))
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, image)
    padded_bgr = random_image("bgr8", 2, 3)
    data = b"".join(padded_bgr[r].tobytes() + b"\x00" * 3 for r in range(2))
    rgb = bridge.imgmsg_to_cv2(raw_msg("bgr8", 2, 3, 12, data), desired_encoding="rgb8")
    np.testing.assert_array_equal(rgb, padded_bgr[:, :, ::-1])


def test_big_endian_16uc1(bridge):
    image = np.array([[1, 256, 0x1234], [0xFFFF, 0x00FF, 0xFF00]], dtype=np.uint16)
    msg = raw_msg("16UC1", 2, 3, 6, image.astype(">u2").tobytes(), bigendian=True)
    back = bridge.imgmsg_to_cv2(msg)
    assert back.dtype == np.uint16 and back.dtype.isnative
    np.testing.assert_array_equal(back, image)
    # The flag matters: the same bytes read as little-endian are byte-swapped values.
    msg.is_bigendian = 0
    np.testing.assert_array_equal(bridge.imgmsg_to_cv2(msg), image.byteswap())


def test_big_endian_32fc1_and_mono16(bridge):
    depth = np.array([[0.5, -1.25, 1e6], [np.inf, 3.0, -0.0]], dtype=np.float32)
    msg = raw_msg("32FC1", 2, 3, 12, depth.astype(">f4").tobytes(), bigendian=True)
    np.testing.assert_array_equal(bridge.imgmsg_to_cv2(msg), depth)
    mono = np.array([[0x0102, 0xA0B0]], dtype=np.uint16)
    msg = raw_msg("mono16", 1, 2, 4, mono.astype(">u2").tobytes(), bigendian=True)
    np.testing.assert_array_equal(bridge.imgmsg_to_cv2(msg), mono)


def test_big_endian_array_round_trips_with_flag(bridge):
    image = np.array([[1, 2], [0x0A0B, 0xFFFE]], dtype=">u2")
    msg = bridge.cv2_to_imgmsg(image, encoding="16UC1")
    assert msg.is_bigendian == 1
    assert bytes(msg.data[:2]) == b"\x00\x01"
    back = bridge.imgmsg_to_cv2(msg)
    assert back.dtype.isnative
    np.testing.assert_array_equal(back, image)


def test_native_output_is_flagged_little_endian(bridge):
    msg = bridge.cv2_to_imgmsg(np.array([[1, 2]], dtype=np.uint16), encoding="mono16")
    assert msg.is_bigendian == int(sys.byteorder == "big")


# ------------------------------------------------------------------ desired_encoding


def test_bgr8_message_as_rgb8_swaps_channels(bridge):
    msg = colour_msg(bridge, "bgr8", [[10, 20, 30], [200, 100, 0]])
    rgb = bridge.imgmsg_to_cv2(msg, desired_encoding="rgb8")
    assert rgb.shape == (1, 2, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == [30, 20, 10]
    assert rgb[0, 1].tolist() == [0, 100, 200]


def test_rgb8_message_as_bgr8_swaps_channels(bridge):
    msg = colour_msg(bridge, "rgb8", [[255, 0, 0]])
    assert bridge.imgmsg_to_cv2(msg, "bgr8")[0, 0].tolist() == [0, 0, 255]
    assert bridge.imgmsg_to_cv2(msg)[0, 0].tolist() == [255, 0, 0]


def test_alpha_is_added_opaque_and_dropped(bridge):
    rgb = colour_msg(bridge, "rgb8", [[1, 2, 3]])
    assert bridge.imgmsg_to_cv2(rgb, "bgra8")[0, 0].tolist() == [3, 2, 1, 255]
    assert bridge.imgmsg_to_cv2(rgb, "rgba8")[0, 0].tolist() == [1, 2, 3, 255]
    bgra = colour_msg(bridge, "bgra8", [[1, 2, 3, 4]])
    assert bridge.imgmsg_to_cv2(bgra, "rgb8")[0, 0].tolist() == [3, 2, 1]
    assert bridge.imgmsg_to_cv2(bgra, "rgba8")[0, 0].tolist() == [3, 2, 1, 4]
    rgba = colour_msg(bridge, "rgba8", [[1, 2, 3, 4]])
    assert bridge.imgmsg_to_cv2(rgba, "bgr8")[0, 0].tolist() == [3, 2, 1]


def test_mono8_to_colour_replicates_gray(bridge):
    msg = bridge.cv2_to_imgmsg(np.array([[0, 77], [128, 255]], dtype=np.uint8), encoding="mono8")
    rgb = bridge.imgmsg_to_cv2(msg, desired_encoding="rgb8")
    assert rgb.shape == (2, 2, 3)
    assert rgb[0, 1].tolist() == [77, 77, 77]
    assert rgb[1, 1].tolist() == [255, 255, 255]
    assert bridge.imgmsg_to_cv2(msg, "bgra8")[1, 0].tolist() == [128, 128, 128, 255]


def test_colour_to_mono8_uses_bt601_luma(bridge):
    msg = colour_msg(bridge, "rgb8", [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [0, 0, 0]])
    assert bridge.imgmsg_to_cv2(msg, "mono8")[0].tolist() == [76, 150, 29, 255, 0]
    # Same pixels in BGR order give the same luma.
    bgr = colour_msg(bridge, "bgr8", [[0, 0, 255], [0, 255, 0], [255, 0, 0]])
    assert bridge.imgmsg_to_cv2(bgr, "mono8")[0].tolist() == [76, 150, 29]


def test_8_and_16_bit_depths_are_scaled(bridge):
    mono8 = bridge.cv2_to_imgmsg(np.array([[0, 1, 255]], dtype=np.uint8), encoding="mono8")
    assert bridge.imgmsg_to_cv2(mono8, "mono16")[0].tolist() == [0, 257, 65535]
    mono16 = bridge.cv2_to_imgmsg(np.array([[0, 257, 65535, 1000]], dtype=np.uint16), encoding="mono16")
    out = bridge.imgmsg_to_cv2(mono16, "mono8")
    assert out.dtype == np.uint8 and out[0].tolist() == [0, 1, 255, 4]
    rgb = bridge.imgmsg_to_cv2(mono16, "rgb8")
    assert rgb.shape == (1, 4, 3) and rgb[0, 2].tolist() == [255, 255, 255]


def test_generic_type_conversions_follow_cv_bridge(bridge):
    bgr = colour_msg(bridge, "bgr8", [[1, 2, 3]])
    generic = bridge.imgmsg_to_cv2(bgr, "8UC3")
    assert generic[0, 0].tolist() == [1, 2, 3]
    depth = bridge.cv2_to_imgmsg(np.array([[1, 2000]], dtype=np.uint16), encoding="16UC1")
    as_float = bridge.imgmsg_to_cv2(depth, "32FC1")
    assert as_float.dtype == np.float32 and as_float[0].tolist() == [1.0, 2000.0]
    floats = bridge.cv2_to_imgmsg(np.array([[-3.0, 2.6, 70000.0, np.nan]], dtype=np.float32), encoding="32FC1")
    assert bridge.imgmsg_to_cv2(floats, "16UC1")[0].tolist() == [0, 3, 65535, 0]


@pytest.mark.parametrize(
    "source, desired",
    [
        ("8UC3", "rgb8"),  # no channel order: colour would be a guess
        ("32FC1", "mono8"),
        ("16UC1", "mono16"),
        ("rgb8", "8UC1"),  # colour -> generic needs the same channel count
        ("mono8", "8UC3"),
        ("8UC1", "8UC3"),
        ("bayer_rggb8", "rgb8"),
    ],
)
def test_impossible_conversions_raise(bridge, source, desired):
    msg = bridge.cv2_to_imgmsg(random_image(source), encoding=source)
    with pytest.raises(CvBridgeError, match=f"{source}.*{desired}"):
        bridge.imgmsg_to_cv2(msg, desired_encoding=desired)


def test_unknown_desired_encoding_raises(bridge):
    msg = colour_msg(bridge, "rgb8", [[1, 2, 3]])
    with pytest.raises(CvBridgeError, match="desired_encoding 'rgb24'"):
        bridge.imgmsg_to_cv2(msg, desired_encoding="rgb24")


# ------------------------------------------------------------------ strict validation


def test_unknown_encoding_raises(bridge):
    msg = raw_msg("yuv999", 2, 2, 6, bytes(12))
    with pytest.raises(CvBridgeError, match="unsupported image encoding 'yuv999'"):
        bridge.imgmsg_to_cv2(msg)
    with pytest.raises(CvBridgeError, match="'yuv999'"):
        bridge.cv2_to_imgmsg(np.zeros((2, 2, 3), dtype=np.uint8), encoding="yuv999")


@pytest.mark.parametrize("size", [4 * 15 - 1, 4 * 15 + 1, 0, 5 * 15])
def test_data_length_mismatch_raises(bridge, size):
    msg = raw_msg("rgb8", 4, 5, 15, bytes(size))
    with pytest.raises(CvBridgeError, match=rf"data has {size} bytes, expected height\*step = 4\*15 = 60"):
        bridge.imgmsg_to_cv2(msg)


def test_step_smaller_than_row_raises(bridge):
    msg = raw_msg("16UC1", 3, 5, 9, bytes(27))
    with pytest.raises(CvBridgeError, match=r"step 9 is smaller than .* = 10"):
        bridge.imgmsg_to_cv2(msg)


@pytest.mark.parametrize("height, width", [(0, 4), (4, 0), (0, 0)])
def test_empty_image_raises(bridge, height, width):
    msg = raw_msg("mono8", height, width, width, bytes(height * width))
    with pytest.raises(CvBridgeError, match="empty image"):
        bridge.imgmsg_to_cv2(msg)
    with pytest.raises(CvBridgeError, match="non-empty"):
        bridge.cv2_to_imgmsg(np.zeros((height, width), dtype=np.uint8), encoding="mono8")


@pytest.mark.parametrize(
    "array, encoding",
    [
        (np.zeros((4, 5, 3), dtype=np.float32), "rgb8"),
        (np.zeros((4, 5), dtype=np.uint8), "rgb8"),
        (np.zeros((4, 5, 3), dtype=np.uint16), "bgr8"),
        (np.zeros((4, 5, 4), dtype=np.uint8), "bgr8"),
        (np.zeros((4, 5), dtype=np.float64), "32FC1"),
        (np.zeros((4, 5), dtype=np.int16), "mono16"),
        (np.zeros((4, 5), dtype=np.uint8), "16UC1"),
    ],
)
def test_wrong_dtype_or_channels_for_encoding_raises(bridge, array, encoding):
    with pytest.raises(CvBridgeError, match=f"encoding specified as {encoding}.*but the image has dtype {array.dtype}"):
        bridge.cv2_to_imgmsg(array, encoding=encoding)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((2, 2), dtype=np.int64),
        np.zeros((2, 2), dtype=bool),
        np.zeros((2, 2, 5), dtype=np.uint8),
        np.zeros((2, 2, 3, 1), dtype=np.uint8),
        np.zeros(4, dtype=np.uint8),
        [[1, 2], [3, 4]],
    ],
)
def test_unrepresentable_arrays_raise(bridge, bad):
    with pytest.raises(CvBridgeError):
        bridge.cv2_to_imgmsg(bad)


def test_cv_bridge_error_is_a_type_error():
    assert issubclass(CvBridgeError, TypeError)


def test_non_message_input_raises(bridge):
    with pytest.raises(CvBridgeError, match="sensor_msgs/Image"):
        bridge.imgmsg_to_cv2(object())
    with pytest.raises(CvBridgeError, match="CompressedImage"):
        bridge.compressed_imgmsg_to_cv2(object())


# ------------------------------------------------------------------ header / aliasing


def test_header_is_preserved(bridge):
    header = Header(stamp=Time(sec=12, nanosec=345), frame_id="camera_optical")
    msg = bridge.cv2_to_imgmsg(random_image("rgb8"), encoding="rgb8", header=header)
    assert msg.header.frame_id == "camera_optical"
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (12, 345)
    assert bridge.cv2_to_imgmsg(random_image("rgb8"), encoding="rgb8").header.frame_id == ""
    with pytest.raises(CvBridgeError, match="Header"):
        bridge.cv2_to_imgmsg(random_image("rgb8"), encoding="rgb8", header="camera")


@pytest.mark.parametrize("desired", ["passthrough", "bgr8", "rgb8"])
def test_mutating_the_message_does_not_change_the_array(bridge, desired):
    original = random_image("bgr8", 4, 6)
    msg = bridge.cv2_to_imgmsg(original, encoding="bgr8")
    out = bridge.imgmsg_to_cv2(msg, desired_encoding=desired)
    snapshot = out.copy()
    assert not np.shares_memory(out, np.frombuffer(msg.data, dtype=np.uint8))
    for index in range(len(msg.data)):
        msg.data[index] = (msg.data[index] + 1) % 256
    msg.data.extend(b"xyz")
    np.testing.assert_array_equal(out, snapshot)
    assert out.flags.writeable
    out[0, 0, 0] ^= 0xFF  # writing the result is allowed and leaves the message alone
    assert msg.data[0] == (int(original[0, 0, 0]) + 1) % 256


def test_mutating_the_array_does_not_change_the_message(bridge):
    image = random_image("mono16")
    msg = bridge.cv2_to_imgmsg(image, encoding="mono16")
    before = bytes(msg.data)
    image[:] = 0
    assert bytes(msg.data) == before


def test_compressed_result_does_not_alias_message(bridge):
    image = smooth_bgr(8, 8)
    msg = bridge.cv2_to_compressed_imgmsg(image, dst_format="png")
    out = bridge.compressed_imgmsg_to_cv2(msg)
    msg.data[len(msg.data) // 2] ^= 0xFF
    np.testing.assert_array_equal(out, image)


# ------------------------------------------------------------------ compressed


def test_png_round_trip_is_exact(bridge, codec):
    image = random_image("bgr8", 16, 24)
    msg = bridge.cv2_to_compressed_imgmsg(image, dst_format="png")
    assert isinstance(msg, CompressedImage) and msg.format == "png"
    assert bytes(msg.data[:8]) == b"\x89PNG\r\n\x1a\n"
    back = bridge.compressed_imgmsg_to_cv2(msg)
    assert back.dtype == np.uint8 and back.shape == (16, 24, 3)
    np.testing.assert_array_equal(back, image)  # passthrough is BGR, like cv_bridge


def test_png_variants_round_trip(bridge, codec):
    mono = random_image("mono8", 6, 9)
    np.testing.assert_array_equal(bridge.compressed_imgmsg_to_cv2(bridge.cv2_to_compressed_imgmsg(mono, "png")), mono)
    bgra = random_image("bgra8", 6, 9)
    np.testing.assert_array_equal(bridge.compressed_imgmsg_to_cv2(bridge.cv2_to_compressed_imgmsg(bgra, "png")), bgra)
    depth = random_image("mono16", 6, 9)
    back = bridge.compressed_imgmsg_to_cv2(bridge.cv2_to_compressed_imgmsg(depth, "png"))
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, depth)


def test_jpg_round_trip_is_close(bridge, codec):
    image = smooth_bgr()
    msg = bridge.cv2_to_compressed_imgmsg(image)  # default is jpg
    assert msg.format == "jpg"
    assert bytes(msg.data[:3]) == b"\xff\xd8\xff"
    back = bridge.compressed_imgmsg_to_cv2(msg)
    assert back.shape == image.shape and back.dtype == np.uint8
    error = np.abs(back.astype(np.int16) - image.astype(np.int16))
    assert error.mean() < 3.0 and error.max() < 40
    # Channel order survives: B rises left->right, R falls.
    assert back[24, 60, 0] > 200 and back[24, 60, 2] < 50


def test_compressed_desired_encoding(bridge, codec):
    image = random_image("bgr8", 5, 6)
    msg = bridge.cv2_to_compressed_imgmsg(image, "png")
    np.testing.assert_array_equal(bridge.compressed_imgmsg_to_cv2(msg, desired_encoding="rgb8"), image[:, :, ::-1])
    np.testing.assert_array_equal(bridge.compressed_imgmsg_to_cv2(msg, desired_encoding="bgr8"), image)
    mono = bridge.compressed_imgmsg_to_cv2(msg, desired_encoding="mono8")
    assert mono.shape == (5, 6) and mono.dtype == np.uint8
    gray_msg = bridge.cv2_to_compressed_imgmsg(np.full((3, 4), 90, dtype=np.uint8), "png")
    rgb = bridge.compressed_imgmsg_to_cv2(gray_msg, desired_encoding="rgb8")
    assert rgb.shape == (3, 4, 3) and (rgb == 90).all()
    with pytest.raises(CvBridgeError):
        bridge.compressed_imgmsg_to_cv2(msg, desired_encoding="32FC1")


def test_back_ends_read_each_others_output(bridge, monkeypatch):
    image = random_image("bgr8", 7, 5)
    with_cv2 = bridge.cv2_to_compressed_imgmsg(image, "png")
    monkeypatch.setattr(image_conversion, "_cv2", lambda: None)
    with_pillow = bridge.cv2_to_compressed_imgmsg(image, "png")
    np.testing.assert_array_equal(bridge.compressed_imgmsg_to_cv2(with_cv2), image)
    monkeypatch.undo()
    np.testing.assert_array_equal(bridge.compressed_imgmsg_to_cv2(with_pillow), image)


def _compressed(data: bytes, fmt: str = "jpeg") -> CompressedImage:
    msg = CompressedImage()
    msg.format = fmt
    msg.data = data
    return msg


@pytest.mark.parametrize(
    "kind", ["garbage", "empty", "truncated_jpg", "truncated_png", "png_without_iend", "bad_header"]
)
def test_corrupt_compressed_data_raises(bridge, codec, kind):
    jpg = bytes(bridge.cv2_to_compressed_imgmsg(smooth_bgr(), "jpg").data)
    png = bytes(bridge.cv2_to_compressed_imgmsg(smooth_bgr(), "png").data)
    data = {
        "garbage": bytes(range(256)) * 4,
        "empty": b"",
        "truncated_jpg": jpg[: len(jpg) // 2],
        "truncated_png": png[: len(png) // 2],
        "png_without_iend": png[:-12],  # Pillow alone would decode this; the module must still refuse it
        "bad_header": b"\x00\x00\x00\x00" + jpg[4:],
    }[kind]
    with pytest.raises(CvBridgeError, match="compressed"):
        bridge.compressed_imgmsg_to_cv2(_compressed(data))
    with pytest.raises(CvBridgeError, match="compressed"):
        image_msg_to_rgb(_compressed(data))


@pytest.mark.parametrize(
    "array, fmt",
    [
        (np.zeros((4, 4, 3), dtype=np.float32), "jpg"),
        (np.zeros((4, 4), dtype=np.uint16), "jpg"),
        (np.zeros((4, 4, 2), dtype=np.uint8), "png"),
        (np.zeros((0, 4, 3), dtype=np.uint8), "png"),
        (np.zeros((4, 4, 3), dtype=np.uint8), "gif"),
    ],
)
def test_bad_compression_input_raises(bridge, array, fmt):
    with pytest.raises(CvBridgeError):
        bridge.cv2_to_compressed_imgmsg(array, dst_format=fmt)


# ------------------------------------------------------------------ image_msg_to_rgb


def test_image_msg_to_rgb_from_raw_images(bridge):
    bgr = colour_msg(bridge, "bgr8", [[10, 20, 30]])
    assert image_msg_to_rgb(bgr)[0, 0].tolist() == [30, 20, 10]
    rgb = colour_msg(bridge, "rgb8", [[10, 20, 30]])
    assert image_msg_to_rgb(rgb)[0, 0].tolist() == [10, 20, 30]
    bgra = colour_msg(bridge, "bgra8", [[10, 20, 30, 0]])
    assert image_msg_to_rgb(bgra)[0, 0].tolist() == [30, 20, 10]
    mono = bridge.cv2_to_imgmsg(np.array([[5, 250]], dtype=np.uint8), encoding="mono8")
    out = image_msg_to_rgb(mono)
    assert out.shape == (1, 2, 3) and out.dtype == np.uint8
    assert out[0, 1].tolist() == [250, 250, 250]


def test_image_msg_to_rgb_from_compressed(bridge, codec):
    image = random_image("bgr8", 4, 4)
    out = image_msg_to_rgb(bridge.cv2_to_compressed_imgmsg(image, "png"))
    assert out.shape == (4, 4, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, image[:, :, ::-1])
    jpg = image_msg_to_rgb(bridge.cv2_to_compressed_imgmsg(smooth_bgr(), "jpg"))
    assert jpg.shape == (48, 64, 3)
    assert jpg[24, 60, 2] > 200 and jpg[24, 60, 0] < 50  # blue-heavy on the right, now in channel 2


@pytest.mark.parametrize("encoding", ["32FC1", "16UC1", "8UC3", "8UC1"])
def test_image_msg_to_rgb_rejects_non_colour(bridge, encoding):
    msg = bridge.cv2_to_imgmsg(random_image(encoding), encoding=encoding)
    with pytest.raises(CvBridgeError, match=f"cannot make RGB from a '{encoding}' image"):
        image_msg_to_rgb(msg)


def test_image_msg_to_rgb_rejects_other_objects():
    with pytest.raises(CvBridgeError, match="Image or CompressedImage"):
        image_msg_to_rgb(np.zeros((2, 2, 3), dtype=np.uint8))


# ------------------------------------------------------------------ get_cv_bridge


def _check_bridge_works(bridge) -> None:
    for name in BRIDGE_METHODS:
        assert callable(getattr(bridge, name)), name
    image = random_image("bgr8", 3, 4)
    msg = bridge.cv2_to_imgmsg(image, encoding="bgr8")
    assert isinstance(msg, Image)
    np.testing.assert_array_equal(bridge.imgmsg_to_cv2(msg, desired_encoding="rgb8"), image[:, :, ::-1])
    compressed = bridge.cv2_to_compressed_imgmsg(image, dst_format="png")
    np.testing.assert_array_equal(bridge.compressed_imgmsg_to_cv2(compressed), image)


def test_get_cv_bridge_returns_a_working_bridge():
    _check_bridge_works(get_cv_bridge())


def test_get_cv_bridge_falls_back_without_cv_bridge(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv_bridge", None)  # makes `import cv_bridge` raise ImportError
    bridge = get_cv_bridge()
    assert type(bridge) is CvBridge
    _check_bridge_works(bridge)


def test_get_cv_bridge_rejects_ros1_port(monkeypatch):
    class Ros1CvBridge:
        def cv2_to_imgmsg(self, cvim, encoding="passthrough", header=None):
            return cvim.tostring()  # what the PyPI ROS 1 port does; gone in NumPy 2

        imgmsg_to_cv2 = compressed_imgmsg_to_cv2 = cv2_to_compressed_imgmsg = cv2_to_imgmsg

    monkeypatch.setitem(sys.modules, "cv_bridge", types.SimpleNamespace(CvBridge=Ros1CvBridge))
    assert type(get_cv_bridge()) is CvBridge


def test_get_cv_bridge_survives_failing_import_and_constructor(monkeypatch):
    class Finder:
        def find_spec(self, name, path=None, target=None):
            if name == "cv_bridge":
                raise AttributeError("_ARRAY_API not found")  # a NumPy 1 extension loaded under NumPy 2
            return None

    monkeypatch.delitem(sys.modules, "cv_bridge", raising=False)
    monkeypatch.setattr(sys, "meta_path", [Finder(), *sys.meta_path])
    assert type(get_cv_bridge()) is CvBridge

    def broken():
        raise RuntimeError("boost extension missing")

    monkeypatch.setitem(sys.modules, "cv_bridge", types.SimpleNamespace(CvBridge=broken))
    assert type(get_cv_bridge()) is CvBridge


def test_get_cv_bridge_prefers_a_working_ros2_cv_bridge(monkeypatch):
    class Ros2CvBridge(CvBridge):
        """Stands in for the real ROS 2 cv_bridge.CvBridge."""

    monkeypatch.setitem(sys.modules, "cv_bridge", types.SimpleNamespace(CvBridge=Ros2CvBridge))
    bridge = get_cv_bridge()
    assert type(bridge) is Ros2CvBridge
    _check_bridge_works(bridge)
