"""sensor_msgs Image / CompressedImage <-> numpy, with ROS 2 cv_bridge's API.

The nodes use this implementation (`image_msg_to_rgb`, `CvBridge`) everywhere,
robots with ROS 2's cv_bridge included, so they behave the same on every machine.
`get_cv_bridge()` returns the real cv_bridge where it works and this one
elsewhere; no node calls it. The semantics follow ROS 2 cv_bridge:

* passthrough `cv2_to_imgmsg` names the OpenCV type ("8UC3", "16UC1", ...);
* `desired_encoding` conversions follow cv_bridge's rules: colour layouts
  (rgb/bgr/rgba/bgra/mono, 8 or 16 bit) convert freely, a generic type such
  as 8UC3 (channel order unknown) never turns into a colour encoding, and
  8 <-> 16 bit conversions are scaled (x257 / /257);
* compressed images decode like `cv2.imdecode(..., IMREAD_UNCHANGED)`, i.e.
  BGR order for colour.

Conversions are strict where cv_bridge is lax: a message whose size, step or
encoding does not add up raises CvBridgeError instead of producing a garbage
array. No rclpy node code lives here, only message classes.
"""

from __future__ import annotations

import array
import importlib
import io
import sys
from typing import Any, Protocol, runtime_checkable

import numpy as np
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

__all__ = [
    "CvBridge",
    "CvBridgeError",
    "ENCODINGS",
    "ImageBridge",
    "get_cv_bridge",
    "image_msg_to_rgb",
]


class CvBridgeError(TypeError):
    """The image cannot be converted as asked (same base class as cv_bridge's)."""


@runtime_checkable
class ImageBridge(Protocol):
    """What node code may rely on: the four conversion methods of ROS 2 cv_bridge."""

    def imgmsg_to_cv2(self, img_msg: Image, desired_encoding: str = "passthrough") -> np.ndarray: ...

    def cv2_to_imgmsg(self, cvim: np.ndarray, encoding: str = "passthrough", header: Header | None = None) -> Image: ...

    def compressed_imgmsg_to_cv2(
        self, cmprs_img_msg: CompressedImage, desired_encoding: str = "passthrough"
    ) -> np.ndarray: ...

    def cv2_to_compressed_imgmsg(self, cvim: np.ndarray, dst_format: str = "jpg") -> CompressedImage: ...


# --------------------------------------------------------------------------------------------
# Encoding tables
# --------------------------------------------------------------------------------------------

# OpenCV depth name -> numpy dtype, as cv_bridge's cvtype2_to_dtype_with_channels.
_CV_DEPTHS: dict[str, np.dtype] = {
    "8U": np.dtype(np.uint8),
    "8S": np.dtype(np.int8),
    "16U": np.dtype(np.uint16),
    "16S": np.dtype(np.int16),
    "32S": np.dtype(np.int32),
    "32F": np.dtype(np.float32),
    "64F": np.dtype(np.float64),
}
_DTYPE_TO_CV_DEPTH = {dtype: name for name, dtype in _CV_DEPTHS.items()}

# Colour encodings -> channel layout. "L" is luminance (mono).
_LAYOUT: dict[str, str] = {
    "mono8": "L",
    "mono16": "L",
    "rgb8": "RGB",
    "rgb16": "RGB",
    "bgr8": "BGR",
    "bgr16": "BGR",
    "rgba8": "RGBA",
    "rgba16": "RGBA",
    "bgra8": "BGRA",
    "bgra16": "BGRA",
}

_BAYER = tuple(f"bayer_{pattern}{bits}" for pattern in ("rggb", "bggr", "gbrg", "grbg") for bits in (8, 16))

# encoding -> (numpy dtype in native byte order, channels)
ENCODINGS: dict[str, tuple[np.dtype, int]] = {
    **{
        name: (np.dtype(np.uint16 if name.endswith("16") else np.uint8), len(layout))
        for name, layout in _LAYOUT.items()
    },
    **{name: (np.dtype(np.uint16 if name.endswith("16") else np.uint8), 1) for name in _BAYER},
    **{f"{depth}C{channels}": (dtype, channels) for depth, dtype in _CV_DEPTHS.items() for channels in (1, 2, 3, 4)},
}

# Magic numbers of the formats CompressedImage carries in practice.
_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_COMPRESSED_FORMATS = ("jpg", "jpeg", "png")


def _unknown_encoding(encoding: Any, what: str = "image encoding") -> CvBridgeError:
    return CvBridgeError(f"unsupported {what} {encoding!r}; expected one of {sorted(ENCODINGS)}")


def _cv_type_name(dtype: np.dtype, channels: int) -> str:
    """numpy dtype + channels -> OpenCV type name ("8UC3"), as cv_bridge's passthrough encoding."""
    depth = _DTYPE_TO_CV_DEPTH.get(np.dtype(dtype).newbyteorder("="))
    if depth is None or not 1 <= channels <= 4:
        raise CvBridgeError(
            f"no ROS image encoding for an array of dtype {np.dtype(dtype)} with {channels} channel(s); "
            f"expected dtype one of {sorted(str(d) for d in _DTYPE_TO_CV_DEPTH)} with 1 to 4 channels"
        )
    return f"{depth}C{channels}"


# --------------------------------------------------------------------------------------------
# Colour / depth conversion (cv_bridge's cvtColor2 rules)
# --------------------------------------------------------------------------------------------


def _bit_depth(encoding: str) -> int:
    return ENCODINGS[encoding][0].itemsize * 8


def _saturate(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Cast with OpenCV's convertTo semantics: round to nearest, clip to the target range."""
    if dtype.kind == "f":
        return values.astype(dtype)
    if values.dtype.kind == "f":
        # NaN has no integer value; OpenCV's saturate_cast gives 0 for unsigned targets.
        values = np.rint(np.nan_to_num(values, nan=0.0, posinf=np.inf, neginf=-np.inf))
    info = np.iinfo(dtype)
    if values.dtype.kind in "iu" and np.iinfo(values.dtype).min >= info.min and np.iinfo(values.dtype).max <= info.max:
        return values.astype(dtype)
    return np.clip(values, info.min, info.max).astype(dtype)


def _convert_depth(image: np.ndarray, source: str, target: str) -> np.ndarray:
    """Change the element type only; 8 <-> 16 bit is scaled as cv_bridge does."""
    dst_dtype = ENCODINGS[target][0]
    if image.dtype == dst_dtype:
        return image
    src_bits, dst_bits = _bit_depth(source), _bit_depth(target)
    if src_bits == 8 and dst_bits == 16:
        return _saturate(image.astype(np.float64) * (65535.0 / 255.0), dst_dtype)
    if src_bits == 16 and dst_bits == 8:
        return _saturate(image.astype(np.float64) * (255.0 / 65535.0), dst_dtype)
    return _saturate(image, dst_dtype)


def _luma(planes: dict[str, np.ndarray], dtype: np.dtype) -> np.ndarray:
    # OpenCV's fixed-point BT.601 (RGB2Gray, 15-bit shift): bit-exact with cv2.cvtColor for 8 and 16 bit.
    r, g, b = (planes[name].astype(np.uint32) for name in "RGB")
    return ((r * 9798 + g * 19235 + b * 3735 + (1 << 14)) >> 15).astype(dtype)


def _convert_layout(image: np.ndarray, src: str, dst: str) -> np.ndarray:
    """Reorder / add / drop channels between colour layouts (L, RGB, BGR, RGBA, BGRA)."""
    if src == dst:
        return image
    if src == "L":
        gray = image.reshape(image.shape[:2])
        planes = {"R": gray, "G": gray, "B": gray}
    else:
        planes = {name: image[:, :, index] for index, name in enumerate(src)}
    if dst == "L":
        return _luma(planes, image.dtype)
    out = np.empty(image.shape[:2] + (len(dst),), dtype=image.dtype)
    for index, name in enumerate(dst):
        # A missing alpha channel means opaque, as cv::cvtColor fills it.
        out[:, :, index] = planes[name] if name in planes else np.iinfo(image.dtype).max
    return out


def _to_desired(image: np.ndarray, encoding: str, desired: str) -> np.ndarray:
    """cv_bridge's cvtColor2(image, encoding, desired) on a numpy array we own."""
    if desired == "passthrough" or desired == encoding:
        return image
    if desired not in ENCODINGS:
        raise _unknown_encoding(desired, "desired_encoding")
    if encoding in _BAYER or desired in _BAYER:
        raise CvBridgeError(f"conversion from {encoding} to {desired} is not supported (Bayer demosaicing)")
    src_channels, dst_channels = ENCODINGS[encoding][1], ENCODINGS[desired][1]
    if encoding not in _LAYOUT:
        # Generic types (8UC3, 32FC1, ...) carry no channel order, so colour is unknowable.
        if desired in _LAYOUT:
            raise CvBridgeError(
                f"cannot convert {encoding} to {desired}: {encoding} is not a colour format (channel order "
                f"unknown) but {desired} is; publish the image as mono8/rgb8/bgr8 instead"
            )
        if src_channels != dst_channels:
            raise CvBridgeError(f"cannot convert {encoding} to {desired}: {src_channels} vs {dst_channels} channels")
        return _convert_depth(image, encoding, desired)
    if desired not in _LAYOUT:
        if src_channels != dst_channels:
            raise CvBridgeError(
                f"cannot convert {encoding} to {desired}: a colour format converts to a generic type only "
                f"with the same number of channels ({src_channels} vs {dst_channels})"
            )
        return _convert_depth(image, encoding, desired)
    return _convert_depth(_convert_layout(image, _LAYOUT[encoding], _LAYOUT[desired]), encoding, desired)


# --------------------------------------------------------------------------------------------
# Compression back ends: OpenCV when importable, Pillow otherwise
# --------------------------------------------------------------------------------------------


def _cv2() -> Any:
    """The cv2 module, or None. Looked up per call so an OpenCV installed later is picked up."""
    try:
        return importlib.import_module("cv2")
    except Exception:  # ImportError, or a broken build (e.g. a NumPy ABI mismatch)
        return None


def _check_complete(data: bytes) -> None:
    """Reject truncated JPEG/PNG: some decoder builds return a partly grey image for them."""
    if data.startswith(_JPEG_MAGIC) and not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        raise CvBridgeError(f"compressed JPEG data ({len(data)} bytes) is truncated: no end-of-image marker")
    if data.startswith(_PNG_MAGIC) and b"IEND" not in data[-16:]:
        raise CvBridgeError(f"compressed PNG data ({len(data)} bytes) is truncated: no IEND chunk")


def _decode(data: bytes) -> np.ndarray:
    """Compressed bytes -> array as cv2.imdecode(IMREAD_UNCHANGED): mono (H, W) or BGR/BGRA, 8/16 bit."""
    _check_complete(data)
    cv2 = _cv2()
    if cv2 is not None:
        try:
            image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
        except cv2.error as err:
            raise CvBridgeError(f"compressed image data ({len(data)} bytes) could not be decoded: {err}") from err
        if image is None:
            raise CvBridgeError(
                f"compressed image data ({len(data)} bytes, starts {data[:8]!r}) could not be decoded; "
                "expected a complete JPEG or PNG"
            )
        return image
    return _decode_pillow(data)


def _decode_pillow(data: bytes) -> np.ndarray:
    from PIL import Image as PilImage

    try:
        pil = PilImage.open(io.BytesIO(data))
        pil.load()  # decode now: a truncated/corrupt stream raises here, not later
    except Exception as err:  # UnidentifiedImageError, OSError, SyntaxError, DecompressionBombError...
        raise CvBridgeError(
            f"compressed image data ({len(data)} bytes, starts {data[:8]!r}) could not be decoded: {err}"
        ) from err
    mode = pil.mode
    if mode in ("L", "1"):
        return np.array(pil.convert("L"), dtype=np.uint8)
    if mode.startswith("I;16"):
        return np.asarray(pil).astype(np.uint16)  # also turns a big-endian I;16B into native order
    if mode == "I":
        values = np.asarray(pil)
        if values.min() < 0 or values.max() > 65535:
            raise CvBridgeError(
                f"decoded 32-bit integer image does not fit 16 bits (range {values.min()}..{values.max()})"
            )
        return values.astype(np.uint16)
    has_alpha = mode in ("RGBA", "LA", "La", "RGBa", "PA") or (mode == "P" and "transparency" in pil.info)
    rgb = np.asarray(pil.convert("RGBA" if has_alpha else "RGB"))
    # OpenCV's convention is BGR(A); swap R and B.
    return _convert_layout(rgb, "RGBA" if has_alpha else "RGB", "BGRA" if has_alpha else "BGR")


def _decoded_encoding(image: np.ndarray) -> str:
    """The ROS encoding of what imdecode returned (BGR order for colour)."""
    channels = 1 if image.ndim == 2 else image.shape[2]
    names = {
        (np.dtype(np.uint8), 1): "mono8",
        (np.dtype(np.uint8), 3): "bgr8",
        (np.dtype(np.uint8), 4): "bgra8",
        (np.dtype(np.uint16), 1): "mono16",
        (np.dtype(np.uint16), 3): "bgr16",
        (np.dtype(np.uint16), 4): "bgra16",
    }
    try:
        return names[(image.dtype, channels)]
    except KeyError:
        raise CvBridgeError(f"decoded image has unsupported dtype {image.dtype} / shape {image.shape}") from None


def _encode(image: np.ndarray, fmt: str) -> bytes:
    cv2 = _cv2()
    if cv2 is not None:
        try:
            ok, encoded = cv2.imencode("." + fmt, image)
        except cv2.error as err:
            raise CvBridgeError(f"could not encode a {image.dtype} {image.shape} image as {fmt}: {err}") from err
        if not ok:
            raise CvBridgeError(f"could not encode a {image.dtype} {image.shape} image as {fmt}")
        return encoded.tobytes()
    return _encode_pillow(image, fmt)


def _encode_pillow(image: np.ndarray, fmt: str) -> bytes:
    from PIL import Image as PilImage

    channels = 1 if image.ndim == 2 else image.shape[2]
    if image.dtype == np.uint16 and channels != 1:
        raise CvBridgeError("16-bit colour PNG needs OpenCV (cv2); Pillow only writes 16-bit mono")
    if channels == 1:
        pil = PilImage.fromarray(np.ascontiguousarray(image.reshape(image.shape[:2])))
    elif channels == 3 or fmt in ("jpg", "jpeg"):
        # JPEG has no alpha: cv2.imencode drops it too.
        pil = PilImage.fromarray(_convert_layout(image, "BGR" if channels == 3 else "BGRA", "RGB"))
    else:
        pil = PilImage.fromarray(_convert_layout(image, "BGRA", "RGBA"))
    out = io.BytesIO()
    if fmt in ("jpg", "jpeg"):
        pil.save(out, format="JPEG", quality=95)  # OpenCV's default JPEG quality
    else:
        pil.save(out, format="PNG")
    return out.getvalue()


# --------------------------------------------------------------------------------------------
# Message helpers
# --------------------------------------------------------------------------------------------


def _buffer_of(data: Any) -> np.ndarray:
    """A read-only uint8 view of a message's data field (array.array, bytes, ...), no copy."""
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except (TypeError, ValueError):
        # A plain list of ints (possible with check_fields off): one conversion, still no Python loop per byte.
        try:
            return np.asarray(data, dtype=np.uint8).reshape(-1)
        except (TypeError, ValueError) as err:
            raise CvBridgeError(f"image data must be bytes-like, got {type(data).__name__}") from err


def _as_array_field(payload: bytes) -> array.array:
    # Assigning an array.array('B') skips rclpy's per-element field check, which is slow for megabytes.
    return array.array("B", payload)


class CvBridge:
    """Same method names and semantics as ROS 2 cv_bridge.CvBridge, implemented with numpy."""

    def imgmsg_to_cv2(self, img_msg: Image, desired_encoding: str = "passthrough") -> np.ndarray:
        """sensor_msgs/Image -> (H, W) or (H, W, C) array that owns its memory."""
        try:
            encoding, height, width = img_msg.encoding, int(img_msg.height), int(img_msg.width)
            step, is_bigendian, data = int(img_msg.step), bool(img_msg.is_bigendian), img_msg.data
        except AttributeError as err:
            raise CvBridgeError(f"expected a sensor_msgs/Image, got {type(img_msg).__name__}") from err
        if encoding not in ENCODINGS:
            raise _unknown_encoding(encoding)
        dtype, channels = ENCODINGS[encoding]
        if height <= 0 or width <= 0:
            raise CvBridgeError(f"empty image: expected height and width > 0, got {width}x{height} ({encoding})")
        row_bytes = width * channels * dtype.itemsize
        if step < row_bytes:
            raise CvBridgeError(
                f"step {step} is smaller than width*channels*bytes = {width}*{channels}*{dtype.itemsize} "
                f"= {row_bytes} for a {width}x{height} {encoding} image"
            )
        raw = _buffer_of(data)
        if raw.size != height * step:
            raise CvBridgeError(
                f"data has {raw.size} bytes, expected height*step = {height}*{step} = {height * step} "
                f"for a {width}x{height} {encoding} image"
            )
        # Drop row padding as a strided view, reinterpret in the message's byte order, and let the
        # single astype() copy produce a native-order, C-contiguous array that shares nothing with the message.
        rows = raw.reshape(height, step)[:, :row_bytes]
        wire = dtype.newbyteorder(">" if is_bigendian else "<") if dtype.itemsize > 1 else dtype
        pixels = rows.view(wire).astype(dtype, order="C", copy=True)
        image = pixels.reshape(height, width, channels) if channels > 1 else pixels.reshape(height, width)
        return _to_desired(image, encoding, desired_encoding)

    def cv2_to_imgmsg(self, cvim: np.ndarray, encoding: str = "passthrough", header: Header | None = None) -> Image:
        """(H, W) or (H, W, C) array -> sensor_msgs/Image; the array's dtype/channels must match `encoding`."""
        if not isinstance(cvim, np.ndarray):
            raise CvBridgeError(f"expected a numpy array, got {type(cvim).__name__}")
        if cvim.ndim not in (2, 3) or cvim.size == 0:
            raise CvBridgeError(f"expected a non-empty (H, W) or (H, W, C) array, got shape {cvim.shape}")
        if header is not None and not isinstance(header, Header):
            raise CvBridgeError(f"header must be a std_msgs/Header, got {type(header).__name__}")
        channels = 1 if cvim.ndim == 2 else cvim.shape[2]
        cv_type = _cv_type_name(cvim.dtype, channels)
        if encoding == "passthrough":
            encoding = cv_type
        elif encoding not in ENCODINGS:
            raise _unknown_encoding(encoding)
        else:
            dtype, expected_channels = ENCODINGS[encoding]
            if _cv_type_name(dtype, expected_channels) != cv_type:
                raise CvBridgeError(
                    f"encoding specified as {encoding}, which needs dtype {dtype} with {expected_channels} "
                    f"channel(s), but the image has dtype {cvim.dtype.newbyteorder('=')} with {channels} "
                    f"channel(s) (type {cv_type}, shape {cvim.shape})"
                )
        msg = Image()
        if header is not None:
            msg.header = header
        msg.height, msg.width = int(cvim.shape[0]), int(cvim.shape[1])
        msg.encoding = encoding
        # The bytes go out in the array's own byte order; say which (cv_bridge does the same for '>').
        byte_order = cvim.dtype.byteorder
        big = byte_order == ">" or (byte_order == "=" and sys.byteorder == "big")
        msg.is_bigendian = int(big and cvim.dtype.itemsize > 1)
        msg.step = msg.width * channels * cvim.dtype.itemsize
        msg.data = _as_array_field(cvim.tobytes(order="C"))  # tobytes copies: the message owns its data
        return msg

    def compressed_imgmsg_to_cv2(
        self, cmprs_img_msg: CompressedImage, desired_encoding: str = "passthrough"
    ) -> np.ndarray:
        """sensor_msgs/CompressedImage -> array; passthrough gives BGR (colour) or (H, W) mono like cv_bridge."""
        try:
            data = cmprs_img_msg.data
        except AttributeError as err:
            raise CvBridgeError(f"expected a sensor_msgs/CompressedImage, got {type(cmprs_img_msg).__name__}") from err
        payload = _buffer_of(data).tobytes()
        if not payload:
            raise CvBridgeError("compressed image has no data (0 bytes); expected JPEG or PNG bytes")
        image = _decode(payload)
        if desired_encoding == "passthrough":
            return image
        # cv_bridge assumes "bgr8" here; using what was actually decoded also handles mono/alpha/16-bit files.
        return _to_desired(image, _decoded_encoding(image), desired_encoding)

    def cv2_to_compressed_imgmsg(self, cvim: np.ndarray, dst_format: str = "jpg") -> CompressedImage:
        """BGR(A) or mono array -> CompressedImage (OpenCV's channel order, as cv_bridge)."""
        if not isinstance(cvim, np.ndarray):
            raise CvBridgeError(f"expected a numpy array, got {type(cvim).__name__}")
        fmt = str(dst_format).lower().lstrip(".")
        if fmt not in _COMPRESSED_FORMATS:
            raise CvBridgeError(f"unsupported compression format {dst_format!r}; expected one of {_COMPRESSED_FORMATS}")
        channels = 1 if cvim.ndim == 2 else (cvim.shape[2] if cvim.ndim == 3 else 0)
        allowed = (np.dtype(np.uint8),) if fmt != "png" else (np.dtype(np.uint8), np.dtype(np.uint16))
        if cvim.size == 0 or channels not in (1, 3, 4) or cvim.dtype.newbyteorder("=") not in allowed:
            raise CvBridgeError(
                f"{fmt} compression needs a non-empty (H, W), (H, W, 3) or (H, W, 4) array of dtype "
                f"{' or '.join(str(d) for d in allowed)}; got dtype {cvim.dtype} shape {cvim.shape}"
            )
        image = np.ascontiguousarray(cvim, dtype=cvim.dtype.newbyteorder("="))
        msg = CompressedImage()
        msg.format = str(dst_format)
        msg.data = _as_array_field(_encode(image, fmt))
        return msg


# --------------------------------------------------------------------------------------------
# Module-level entry points
# --------------------------------------------------------------------------------------------

_BRIDGE = CvBridge()  # stateless, so one instance serves every caller


def get_cv_bridge() -> ImageBridge:
    """The real ROS 2 cv_bridge.CvBridge when it works here, else this module's CvBridge."""
    try:
        cv_bridge = importlib.import_module("cv_bridge")
        bridge = cv_bridge.CvBridge()
        # The PyPI "cv-bridge" is a ROS 1 port that imports fine but fails on use with NumPy 2
        # (ndarray.tostring) or builds the wrong message class: prove it with a tiny round trip,
        # including a colour conversion, which needs cv_bridge's compiled extension.
        probe = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
        msg = bridge.cv2_to_imgmsg(probe, encoding="rgb8")
        if not isinstance(msg, Image):
            raise TypeError(f"cv_bridge built a {type(msg).__module__}.{type(msg).__name__}, not a ROS 2 Image")
        if not np.array_equal(np.asarray(bridge.imgmsg_to_cv2(msg, desired_encoding="bgr8")), probe[:, :, ::-1]):
            raise ValueError("cv_bridge round trip gave different pixels")
        if not isinstance(bridge, ImageBridge):
            raise TypeError("cv_bridge.CvBridge lacks the ROS 2 methods")
        return bridge
    except Exception:  # any failure means: no usable ROS 2 cv_bridge here
        return CvBridge()


def image_msg_to_rgb(msg: Image | CompressedImage) -> np.ndarray:
    """Image or CompressedImage -> (H, W, 3) uint8 RGB; CvBridgeError if it has no RGB meaning."""
    if isinstance(msg, CompressedImage):
        return _BRIDGE.compressed_imgmsg_to_cv2(msg, desired_encoding="rgb8")
    if isinstance(msg, Image):
        if msg.encoding not in _LAYOUT:
            raise CvBridgeError(
                f"cannot make RGB from a {msg.encoding!r} image; expected a colour or mono encoding "
                f"({', '.join(sorted(_LAYOUT))})"
            )
        return _BRIDGE.imgmsg_to_cv2(msg, desired_encoding="rgb8")
    raise CvBridgeError(f"expected a sensor_msgs Image or CompressedImage, got {type(msg).__name__}")
