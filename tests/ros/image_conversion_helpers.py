"""Sample images, raw messages and the bridge fixtures shared by the image conversion tests.

The test files take the fixtures with `from image_conversion_helpers import *` (`__all__` names just
them), the other helpers by name."""

from __future__ import annotations

import numpy as np
import pytest
from sensor_msgs.msg import Image

from rla_wm_ros import image_conversion
from rla_wm_ros.image_conversion import ENCODINGS, CvBridge

__all__ = ["bridge", "codec"]


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
