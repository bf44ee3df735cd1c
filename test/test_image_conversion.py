"""sensor_msgs/Image and CompressedImage <-> NumPy: every encoding, row padding, byte order, errors."""
import struct

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from lisa_ros.image_conversion import (
    ImageConversionError, color_to_rgb, compressed_from_bytes, compressed_to_rgb, depth_to_image, depth_to_metres,
    image_to_numpy, image_to_rgb, mask_to_image, numpy_to_image, rgb_to_compressed, rgb_to_image,
)

RNG = np.random.default_rng(0)
H, W = 5, 7
# encoding -> (NumPy dtype of a channel, channels)
ENCODINGS = {
    "rgb8": ("u1", 3), "bgr8": ("u1", 3), "rgba8": ("u1", 4), "bgra8": ("u1", 4), "mono8": ("u1", 1),
    "8UC1": ("u1", 1), "8UC3": ("u1", 3), "8UC4": ("u1", 4), "mono16": ("u2", 1), "16UC1": ("u2", 1),
    "32FC1": ("f4", 1),
}


def _pixels(encoding: str) -> np.ndarray:
    dtype, channels = ENCODINGS[encoding]
    shape = (H, W, channels) if channels > 1 else (H, W)
    if dtype == "f4":
        return RNG.uniform(0.2, 9.0, shape).astype(np.float32)
    return RNG.integers(0, np.iinfo(dtype).max, shape, endpoint=True).astype(dtype)


def _hand_made(pixels: np.ndarray, encoding: str, padding: int = 0, bigendian: bool = False) -> Image:
    """An Image built byte by byte, independently of numpy_to_image: `padding` junk bytes after every row."""
    order = ">" if bigendian else "<"
    rows = pixels.astype(pixels.dtype.newbyteorder(order)).reshape(H, -1).view(np.uint8)
    junk = np.full((H, padding), 0xAB, np.uint8)
    msg = Image(height=H, width=W, encoding=encoding, is_bigendian=int(bigendian))
    msg.step = rows.shape[1] + padding
    msg.data = np.hstack([rows, junk]).tobytes()
    return msg


@pytest.mark.parametrize("bigendian", [False, True])
@pytest.mark.parametrize("padding", [0, 3, 8])
@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_image_to_numpy_every_encoding(encoding, padding, bigendian):
    pixels = _pixels(encoding)
    out = image_to_numpy(_hand_made(pixels, encoding, padding, bigendian))
    assert out.shape == pixels.shape and out.dtype == pixels.dtype and out.dtype.isnative
    np.testing.assert_array_equal(out, pixels)
    out[0, 0] = 0  # a writable copy, not a view of the message


@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_numpy_to_image_round_trip(encoding):
    pixels = _pixels(encoding)
    header = Header(frame_id="cam")
    header.stamp.sec, header.stamp.nanosec = 12, 345
    msg = numpy_to_image(pixels, encoding, header)
    assert (msg.width, msg.height, msg.encoding, msg.is_bigendian) == (W, H, encoding, 0)
    assert msg.step * msg.height == len(msg.data)
    assert msg.header.frame_id == "cam" and msg.header.stamp.nanosec == 345
    np.testing.assert_array_equal(image_to_numpy(msg), pixels)


# One pixel R=10, G=20, B=30 (alpha 99) in each colour encoding's channel order.
_ORDERED = {"rgb8": [10, 20, 30], "bgr8": [30, 20, 10], "8UC3": [30, 20, 10], "rgba8": [10, 20, 30, 99],
            "bgra8": [30, 20, 10, 99], "8UC4": [30, 20, 10, 99]}


@pytest.mark.parametrize("encoding", list(_ORDERED))
def test_colour_channel_order_becomes_rgb(encoding):
    pixels = np.tile(np.array(_ORDERED[encoding], np.uint8), (H, W, 1))
    rgb = image_to_rgb(_hand_made(pixels, encoding, padding=2))
    assert rgb.shape == (H, W, 3) and rgb.dtype == np.uint8
    assert (rgb == [10, 20, 30]).all()


@pytest.mark.parametrize("encoding", ["mono8", "8UC1"])
def test_mono_becomes_grey_rgb(encoding):
    pixels = _pixels(encoding)
    rgb = color_to_rgb(_hand_made(pixels, encoding))
    np.testing.assert_array_equal(rgb, np.repeat(pixels[..., None], 3, axis=2))


def test_rgb8_and_overlay_round_trip():
    rgb = _pixels("rgb8")
    np.testing.assert_array_equal(image_to_rgb(rgb_to_image(rgb)), rgb)


@pytest.mark.parametrize("bigendian", [False, True])
@pytest.mark.parametrize("encoding", ["16UC1", "mono16"])
def test_millimetre_depth(encoding, bigendian):
    raw = np.array([[0, 1, 1000, 65535, 2500, 0, 7]] * H, np.uint16)
    depth = depth_to_metres(_hand_made(raw, encoding, padding=4, bigendian=bigendian))
    assert depth.dtype == np.float32 and depth.shape == (H, W)
    assert np.isnan(depth[:, 0]).all() and np.isnan(depth[:, 5]).all()  # 0 = no reading
    np.testing.assert_allclose(depth[0, [1, 2, 3, 4, 6]], [0.001, 1.0, 65.535, 2.5, 0.007], rtol=1e-6)


@pytest.mark.parametrize("bigendian", [False, True])
def test_metre_depth(bigendian):
    raw = np.array([[1.25, 0.0, np.nan, np.inf, -1.0, 3.5, 0.3]] * H, np.float32)
    depth = depth_to_metres(_hand_made(raw, "32FC1", padding=4, bigendian=bigendian))
    assert np.isnan(depth[:, 1:5]).all()  # 0, NaN, inf and negative are "no reading"
    np.testing.assert_array_equal(depth[0, [0, 5, 6]], np.float32([1.25, 3.5, 0.3]))


def test_depth_to_image_round_trips():
    mm = np.array([[0, 500, 1234]], np.uint16)
    assert depth_to_image(mm).encoding == "16UC1"
    np.testing.assert_allclose(depth_to_metres(depth_to_image(mm)), [[np.nan, 0.5, 1.234]], rtol=1e-6)
    m = np.array([[np.nan, 0.5, 1.234]], np.float32)
    assert depth_to_image(m).encoding == "32FC1"
    np.testing.assert_array_equal(depth_to_metres(depth_to_image(m)), m)


def test_mask_to_image_is_mono8_255():
    mask = np.zeros((H, W), bool)
    mask[1:3, 2:5] = True
    msg = mask_to_image(mask, Header(frame_id="cam"))
    assert msg.encoding == "mono8" and msg.header.frame_id == "cam"
    out = image_to_numpy(msg)
    assert set(np.unique(out)) == {0, 255} and ((out == 255) == mask).all()


def _smooth_rgb(h: int = 48, w: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 4, y * 5, (x + y) * 2], axis=-1).astype(np.uint8)


def test_png_compressed_round_trip_is_exact():
    rgb = _smooth_rgb()
    msg = rgb_to_compressed(rgb, Header(frame_id="cam"), fmt="png")
    assert msg.format == "rgb8; png compressed bgr8" and msg.header.frame_id == "cam"
    np.testing.assert_array_equal(compressed_to_rgb(msg), rgb)


@pytest.mark.parametrize("fmt", ["jpeg", "rgb8; jpeg compressed bgr8", "bgr8; jpeg compressed bgr8"])
def test_jpeg_compressed_keeps_colours(fmt):
    rgb = _smooth_rgb()
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    msg = CompressedImage(format=fmt, data=data.tobytes())
    out = color_to_rgb(msg)
    assert out.shape == rgb.shape
    assert np.abs(out.astype(int) - rgb).mean() < 3  # lossy, but not channel-swapped
    np.testing.assert_array_equal(compressed_to_rgb(compressed_from_bytes(data.tobytes(), "jpeg")), out)


def _compressed_depth(fmt: str, png16: np.ndarray, quant=(0.0, 0.0)) -> CompressedImage:
    ok, png = cv2.imencode(".png", png16)
    header = struct.pack("<iff", 0, *quant)  # image_transport's ConfigHeader
    return CompressedImage(format=fmt, data=header + png.tobytes())


def test_compressed_depth_16uc1_is_exact():
    raw = np.array([[0, 800, 1500], [65535, 1, 2]], np.uint16)
    depth = depth_to_metres(_compressed_depth("16UC1; compressedDepth png", raw))
    np.testing.assert_allclose(depth, [[np.nan, 0.8, 1.5], [65.535, 0.001, 0.002]], rtol=1e-6)


def test_compressed_depth_32fc1_inverse_quantisation():
    # image_transport's encoder with its defaults depth_quantization = 100, depth_max = 10 m.
    quant_a = 100.0 * (100.0 + 1.0)
    quant_b = 1.0 - quant_a / 10.0
    metres = np.array([[0.5, 1.0, 3.0, 0.0]], np.float32)
    inverse = np.where(metres > 0, quant_a / np.where(metres > 0, metres, 1) + quant_b, 0)
    depth = depth_to_metres(_compressed_depth("32FC1; compressedDepth", np.round(inverse).astype(np.uint16),
                                              (quant_a, quant_b)))
    np.testing.assert_allclose(depth[0, :3], metres[0, :3], rtol=5e-4)
    assert np.isnan(depth[0, 3])


@pytest.mark.parametrize("mutate, message", [
    (lambda m: setattr(m, "encoding", "yuv422"), "unsupported image encoding 'yuv422'"),
    (lambda m: setattr(m, "data", bytes(m.data)[:-1]), "needs 105 bytes of data, got 104"),
    (lambda m: setattr(m, "data", bytes(m.data) + b"\0"), "got 106"),
    (lambda m: setattr(m, "step", 20), "smaller than width"),
    (lambda m: setattr(m, "width", 0), "no pixels"),
])
def test_malformed_images_raise(mutate, message):
    msg = _hand_made(_pixels("rgb8"), "rgb8")
    mutate(msg)
    with pytest.raises(ImageConversionError, match=message):
        image_to_numpy(msg)


def test_errors_are_value_errors_and_sizes_are_capped():
    msg = _hand_made(_pixels("rgb8"), "rgb8")
    with pytest.raises(ValueError, match="more than the allowed 34"):
        image_to_rgb(msg, max_pixels=34)
    png = rgb_to_compressed(_smooth_rgb(), fmt="png")
    with pytest.raises(ImageConversionError, match="3072 pixels, more than the allowed 3000"):
        compressed_to_rgb(png, max_pixels=3000)  # refused from the header, before decoding


def test_wrong_kind_of_image_raises():
    with pytest.raises(ImageConversionError, match="not a colour encoding"):
        image_to_rgb(_hand_made(_pixels("16UC1"), "16UC1"))
    with pytest.raises(ImageConversionError, match="not a depth encoding"):
        depth_to_metres(_hand_made(_pixels("rgb8"), "rgb8"))
    with pytest.raises(ImageConversionError, match="not a readable image"):
        compressed_to_rgb(CompressedImage(format="jpeg", data=b"not an image at all"))
    with pytest.raises(ImageConversionError, match="depth, not colour"):
        compressed_to_rgb(_compressed_depth("16UC1; compressedDepth png", np.zeros((2, 2), np.uint16)))
    with pytest.raises(ImageConversionError, match="compressedDepth format"):
        depth_to_metres(rgb_to_compressed(_smooth_rgb(), fmt="png"))
    with pytest.raises(ImageConversionError, match="needs an array of shape HxWx3"):
        numpy_to_image(np.zeros((4, 4), np.uint8), "rgb8")
