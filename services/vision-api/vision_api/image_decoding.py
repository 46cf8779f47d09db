"""Decoding caller images safely: read the size from the header, refuse, and only then decode."""

from __future__ import annotations

import struct

import cv2
import numpy as np

from service_kit.errors import ApiError

ACCEPTED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WebP")

# JPEG start-of-frame markers (they carry the size); C4, C8 and CC are other segments.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def image_format(data: bytes) -> str | None:
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data.startswith(b"BM"):
        return "BMP"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return None


def header_size(data: bytes, kind: str) -> tuple[int, int] | None:
    """(width, height) as the header claims it, without decoding pixels; None if unreadable."""
    try:
        if kind == "PNG":
            return struct.unpack(">II", data[16:24])
        if kind == "GIF":
            return struct.unpack("<HH", data[6:10])
        if kind == "BMP":
            width, height = struct.unpack("<ii", data[18:26])
            return abs(width), abs(height)
        if kind == "WebP":
            return _webp_size(data)
        if kind == "JPEG":
            return _jpeg_size(data)
    except struct.error:
        return None
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD9)):  # standalone markers have no length
            position += 2
            continue
        (length,) = struct.unpack(">H", data[position + 2:position + 4])
        if marker in _JPEG_SOF:
            height, width = struct.unpack(">HH", data[position + 5:position + 9])
            return width, height
        position += 2 + length
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 ":
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":
        b0, b1, b2, b3 = data[21:25]
        return 1 + (b0 | (b1 & 0x3F) << 8), 1 + (b1 >> 6 | b2 << 2 | (b3 & 0x0F) << 10)
    if chunk == b"VP8X":
        return (1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little"))
    return None


def decode_image(data: bytes, max_pixels: int, min_side: int = 0) -> tuple[np.ndarray, int, int]:
    """The image as OpenCV decodes it (BGR, BGRA or gray; 8 or 16 bit) and its full width and
    height, or an ApiError.

    A JPEG whose shorter side is at least 2, 4 or 8 times `min_side` is decoded directly at that
    fraction of its size (libjpeg scales while decoding): the model sees 320x320 anyway, and a
    12-megapixel photo then costs a fraction of the time and memory.
    """
    if not data:
        raise ApiError(422, "empty_image", "the image is empty (0 bytes)")
    kind = image_format(data)
    if kind is None:
        raise ApiError(415, "not_an_image", f"not a supported image; send one of {', '.join(ACCEPTED_FORMATS)}")
    size = header_size(data, kind)
    if size is None:
        raise ApiError(400, "corrupt_image", f"the {kind} header is unreadable")
    width, height = size
    if width == 0 or height == 0:
        raise ApiError(422, "empty_image", f"the image is {width}x{height} pixels")
    if width * height > max_pixels:
        raise ApiError(413, "image_too_large",
                       f"the image is {width}x{height} pixels; the limit is {max_pixels} pixels")
    flags = cv2.IMREAD_UNCHANGED
    if kind == "JPEG" and min_side:
        factor = next((f for f in (8, 4, 2) if min(width, height) >= f * min_side), 1)
        flags = _JPEG_REDUCED.get(factor, flags)
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    if image is None or image.size == 0:
        raise ApiError(400, "corrupt_image", f"the {kind} image could not be decoded")
    return image, width, height


_JPEG_REDUCED = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}
