"""Raw Image <-> numpy conversion (cv_bridge-compatible) in rla_wm_ros.image_conversion: round trips of
every encoding, step padding and byte order, desired_encoding conversions, strict validation, and the
header and aliasing rules. Compressed images: test_image_conversion_compressed.py."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from std_msgs.msg import Header

from rla_wm_ros.image_conversion import ENCODINGS, CvBridgeError

from image_conversion_helpers import *  # noqa: F403  (the fixtures: bridge, codec)
from image_conversion_helpers import colour_msg, random_image, raw_msg, smooth_bgr

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
