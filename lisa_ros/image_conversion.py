"""sensor_msgs/Image and CompressedImage <-> NumPy, without cv_bridge (not installable for ROS 2 from PyPI, and
ROS 1's cv_bridge breaks under NumPy 2).

Colour comes out as HxWx3 uint8 RGB whatever the input order; depth as HxW float32 metres with NaN where the
sensor had no reading. Every malformed message raises ImageConversionError (a ValueError) with a message that
says what was wrong, so a node can answer success=false instead of crashing.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image as PILImage
from sensor_msgs.msg import CompressedImage, Image

DEFAULT_MAX_PIXELS = 4096 * 4096  # same default as lisa_node's max_image_pixels parameter


class ImageConversionError(ValueError):
    """A message that cannot be converted: unknown encoding, inconsistent sizes, too large, undecodable."""


@dataclass(frozen=True)
class _Layout:
    dtype: str  # NumPy dtype of one channel, little-endian spelling; byte order comes from is_bigendian
    channels: int


# Encodings of sensor_msgs/image_encodings.hpp we read. 8UC1/8UC3/8UC4 carry no channel order; OpenCV-based
# publishers (the usual source of them) write BGR, so they are read as mono8/bgr8/bgra8.
_LAYOUTS: dict[str, _Layout] = {
    "rgb8": _Layout("u1", 3), "bgr8": _Layout("u1", 3), "rgba8": _Layout("u1", 4), "bgra8": _Layout("u1", 4),
    "mono8": _Layout("u1", 1), "8UC1": _Layout("u1", 1), "8UC3": _Layout("u1", 3), "8UC4": _Layout("u1", 4),
    "mono16": _Layout("u2", 1), "16UC1": _Layout("u2", 1), "32FC1": _Layout("f4", 1),
}
# How to turn each colour layout into RGB (None: already RGB).
_TO_RGB = {
    "rgb8": None, "bgr8": cv2.COLOR_BGR2RGB, "8UC3": cv2.COLOR_BGR2RGB, "rgba8": cv2.COLOR_RGBA2RGB,
    "bgra8": cv2.COLOR_BGRA2RGB, "8UC4": cv2.COLOR_BGRA2RGB, "mono8": cv2.COLOR_GRAY2RGB, "8UC1": cv2.COLOR_GRAY2RGB,
}
MM_DEPTH_ENCODINGS = ("16UC1", "mono16")  # millimetres, 0 = no reading (REP-118)
M_DEPTH_ENCODINGS = ("32FC1",)  # metres, NaN/inf/0 = no reading (REP-118)

# image_transport's compressedDepth prepends a 12-byte header: int32 format, float32 depthQuantA, depthQuantB.
_COMPRESSED_DEPTH_HEADER = 12


def _check_size(width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageConversionError(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageConversionError(f"image {width}x{height} has {width * height} pixels, more than the allowed "
                                   f"{max_pixels}")


def image_to_numpy(msg: Image, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """The pixels of an Image as stored: HxW (one channel) or HxWxC, channel dtype of the encoding (uint8, uint16 or
    float32) in native byte order, row padding (`step` > width * bytes per pixel) removed. A new, writable array.
    """
    layout = _LAYOUTS.get(msg.encoding)
    if layout is None:
        raise ImageConversionError(f"unsupported image encoding {msg.encoding!r} (supported: {', '.join(_LAYOUTS)})")
    width, height = int(msg.width), int(msg.height)
    _check_size(width, height, max_pixels)
    channel = np.dtype(layout.dtype).newbyteorder(">" if msg.is_bigendian else "<")
    row_bytes = width * layout.channels * channel.itemsize
    step = int(msg.step)
    if step < row_bytes:
        raise ImageConversionError(f"{msg.encoding} image step {step} is smaller than width*bytes per pixel "
                                   f"({width}*{layout.channels * channel.itemsize} = {row_bytes})")
    try:  # rclpy gives array.array('B'); bytes and NumPy arrays also expose a buffer - no copy either way
        buffer = memoryview(msg.data).cast("B")
    except TypeError:
        buffer = np.asarray(msg.data, dtype=np.uint8)
    if len(buffer) != step * height:
        raise ImageConversionError(f"{msg.encoding} image {width}x{height} with step {step} needs "
                                   f"{step * height} bytes of data, got {len(buffer)}")
    rows = np.frombuffer(buffer, dtype=np.uint8).reshape(height, step)[:, :row_bytes]
    pixels = np.ascontiguousarray(rows).view(channel).astype(channel.newbyteorder("="), copy=True)
    return pixels.reshape(height, width, layout.channels) if layout.channels > 1 else pixels.reshape(height, width)


def image_to_rgb(msg: Image, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A colour (or mono8, replicated) Image as HxWx3 uint8 RGB."""
    if msg.encoding not in _TO_RGB:
        raise ImageConversionError(f"{msg.encoding!r} is not a colour encoding (supported: {', '.join(_TO_RGB)})")
    pixels = image_to_numpy(msg, max_pixels)
    code = _TO_RGB[msg.encoding]
    return pixels if code is None else cv2.cvtColor(pixels, code)


def _compressed_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the file header, without decoding: refuse decompression bombs before allocating."""
    try:
        with PILImage.open(io.BytesIO(data)) as im:
            return im.size
    except Exception as e:  # noqa: BLE001 - PIL raises many types for garbage
        raise ImageConversionError(f"compressed image data is not a readable image: {e}") from e


def _decode(data: bytes, flags: int, max_pixels: int) -> np.ndarray:
    width, height = _compressed_size(data)
    _check_size(width, height, max_pixels)
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if pixels is None:
        raise ImageConversionError("compressed image data could not be decoded")
    return pixels


def compressed_to_rgb(msg: CompressedImage, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A CompressedImage (jpeg or png, any `format` string of image_transport) as HxWx3 uint8 RGB."""
    if "compressedDepth" in msg.format:
        raise ImageConversionError(f"format {msg.format!r} is depth, not colour")
    bgr = _decode(bytes(msg.data), cv2.IMREAD_COLOR, max_pixels)  # OpenCV decodes colour as BGR
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def color_to_rgb(msg: Image | CompressedImage, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """HxWx3 uint8 RGB from either an Image or a CompressedImage."""
    if isinstance(msg, CompressedImage):
        return compressed_to_rgb(msg, max_pixels)
    return image_to_rgb(msg, max_pixels)


def _depth_metres(raw: np.ndarray, millimetres: bool) -> np.ndarray:
    """Raw depth values -> float32 metres, NaN where there was no reading (0, negative, NaN or inf)."""
    depth = raw.astype(np.float32)
    if millimetres:
        depth /= np.float32(1000.0)  # division, not * 0.001: correctly rounded, so 1234 mm -> 1.234 exactly
    depth[~np.isfinite(depth) | (depth <= 0)] = np.nan
    return depth


def depth_to_metres(msg: Image | CompressedImage, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A depth image as HxW float32 metres, NaN = no reading.

    Image: 16UC1/mono16 in millimetres (0 = none) or 32FC1 in metres (REP-118). CompressedImage: image_transport's
    compressedDepth ("16UC1; compressedDepth png" or the quantised inverse depth of "32FC1; compressedDepth").
    """
    if isinstance(msg, CompressedImage):
        return _compressed_depth_to_metres(msg, max_pixels)
    if msg.encoding not in MM_DEPTH_ENCODINGS + M_DEPTH_ENCODINGS:
        raise ImageConversionError(f"{msg.encoding!r} is not a depth encoding (supported: 16UC1, mono16 in mm; "
                                   f"32FC1 in m)")
    return _depth_metres(image_to_numpy(msg, max_pixels), msg.encoding in MM_DEPTH_ENCODINGS)


def _compressed_depth_to_metres(msg: CompressedImage, max_pixels: int) -> np.ndarray:
    data = bytes(msg.data)
    if "compressedDepth" not in msg.format or len(data) <= _COMPRESSED_DEPTH_HEADER:
        raise ImageConversionError(f"compressed depth needs image_transport's compressedDepth format, got "
                                   f"{msg.format!r} with {len(data)} bytes")
    quant_a, quant_b = np.frombuffer(data[4:_COMPRESSED_DEPTH_HEADER], dtype="<f4")
    raw = _decode(data[_COMPRESSED_DEPTH_HEADER:], cv2.IMREAD_UNCHANGED, max_pixels)
    if raw.dtype != np.uint16 or raw.ndim != 2:
        raise ImageConversionError(f"compressedDepth payload must be a 16-bit single-channel png, got {raw.dtype} "
                                   f"with shape {raw.shape}")
    if msg.format.startswith("32FC1"):
        inverse = raw.astype(np.float32)
        with np.errstate(divide="ignore"):
            depth = np.where(raw > 0, quant_a / (inverse - quant_b), np.nan).astype(np.float32)
        return _depth_metres(depth, millimetres=False)
    return _depth_metres(raw, millimetres=True)


# ----- NumPy -> messages ---------------------------------------------------------------------------------------

def numpy_to_image(array: np.ndarray, encoding: str, header=None) -> Image:
    """An Image from HxW or HxWxC pixels that already match `encoding` (e.g. uint8 HxWx3 for rgb8, uint16 HxW for
    16UC1, float32 HxW for 32FC1). Little-endian, unpadded rows. `header`: std_msgs/Header to copy, or None.
    """
    layout = _LAYOUTS.get(encoding)
    if layout is None:
        raise ImageConversionError(f"unsupported image encoding {encoding!r}")
    expected = (layout.channels,) if layout.channels > 1 else ()
    if array.ndim != 2 + len(expected) or array.shape[2:] != expected:
        shape = "HxW" + "".join(f"x{c}" for c in expected)
        raise ImageConversionError(f"{encoding} needs an array of shape {shape}, got {array.shape}")
    pixels = np.ascontiguousarray(array, dtype=np.dtype(layout.dtype).newbyteorder("<"))
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(array.shape[0]), int(array.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = msg.width * layout.channels * pixels.dtype.itemsize
    msg.data = pixels.tobytes()
    return msg


def mask_to_image(mask: np.ndarray, header=None) -> Image:
    """A mono8 mask Image (255 = target, 0 = background) from an HxW bool array (or any array: nonzero = target)."""
    return numpy_to_image(np.where(np.asarray(mask) != 0, 255, 0).astype(np.uint8), "mono8", header)


def rgb_to_image(rgb: np.ndarray, header=None) -> Image:
    """An rgb8 Image from HxWx3 uint8 RGB (e.g. an overlay)."""
    return numpy_to_image(rgb, "rgb8", header)


def depth_to_image(depth: np.ndarray, header=None) -> Image:
    """A depth Image: uint16 HxW millimetres -> 16UC1; float HxW metres -> 32FC1 (NaN stays NaN = no reading)."""
    if depth.dtype == np.uint16:
        return numpy_to_image(depth, "16UC1", header)
    return numpy_to_image(depth.astype(np.float32), "32FC1", header)


def rgb_to_compressed(rgb: np.ndarray, header=None, fmt: str = "jpeg", quality: int = 90) -> CompressedImage:
    """A CompressedImage (jpeg or png) from HxWx3 uint8 RGB, with image_transport's format string."""
    if fmt not in ("jpeg", "png"):
        raise ImageConversionError(f"compression format must be jpeg or png, got {fmt!r}")
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if fmt == "jpeg" else []
    ok, data = cv2.imencode("." + ("jpg" if fmt == "jpeg" else "png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ImageConversionError(f"could not encode a {rgb.shape} image as {fmt}")
    return compressed_from_bytes(data.tobytes(), fmt, header)


def compressed_from_bytes(data: bytes, fmt: str, header=None) -> CompressedImage:
    """A colour CompressedImage around already-encoded jpeg/png file bytes (no re-encoding)."""
    msg = CompressedImage()
    if header is not None:
        msg.header = header
    msg.format = f"rgb8; {fmt} compressed bgr8"  # what image_transport's compressed publisher writes
    msg.data = data
    return msg
