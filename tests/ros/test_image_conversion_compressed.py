"""CompressedImage <-> numpy conversion on both back ends (OpenCV and Pillow), image_msg_to_rgb for any
colour image message, and get_cv_bridge's choice of a working bridge (rla_wm_ros.image_conversion)."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image

from rla_wm_ros import image_conversion
from rla_wm_ros.image_conversion import CvBridge, CvBridgeError, get_cv_bridge, image_msg_to_rgb

from image_conversion_helpers import *  # noqa: F403  (the fixtures: bridge, codec)
from image_conversion_helpers import colour_msg, random_image, smooth_bgr

BRIDGE_METHODS = ("imgmsg_to_cv2", "cv2_to_imgmsg", "compressed_imgmsg_to_cv2", "cv2_to_compressed_imgmsg")


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
