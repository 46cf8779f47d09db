"""Decoding caller images safely: read the size from the header, refuse, and only then decode."""

from __future__ import annotations

import dataclasses
import os
import struct

import cv2
import numpy as np

from service_kit.model_endpoint import InvalidInput, UnsupportedInput, UnusableInput

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


@dataclasses.dataclass(frozen=True)
class ImageHeader:
    """What the header says, enough to know the memory decoding will take before taking it."""

    kind: str
    width: int
    height: int
    channels: int  # as OpenCV decodes it (IMREAD_UNCHANGED); where the header leaves it open, the most
    sample_bytes: int = 1  # 2 for 16-bit PNG

    @property
    def pixels(self) -> int:
        return self.width * self.height

    def describe(self) -> str:
        layout = {1: "gray", 3: "color", 4: "color with alpha"}[self.channels]
        return f"{self.width}x{self.height} {8 * self.sample_bytes}-bit {layout} {self.kind}"

    def jpeg_reduction(self, min_side: int) -> int:
        """libjpeg scales by 2, 4 or 8 while decoding: the largest that keeps `min_side`."""
        if self.kind != "JPEG" or not min_side:
            return 1
        return next((f for f in (8, 4, 2) if min(self.width, self.height) >= f * min_side), 1)

    def working_bytes(self, min_side: int = 0) -> int:
        """Peak bytes of handling this image, in two steps that never overlap (saliency.py frees
        the first before the second): the decoded pixels with an 8-bit copy of 16-bit ones with
        alpha (see model_preprocessing.image.to_rgb8); then the mask at full size and its PNG
        (compressed, at most about a byte a pixel). Checked against measured peaks in
        tests/services/vision_api/test_memory.py.
        """
        factor = self.jpeg_reduction(min_side)
        decoded_pixels = -(-self.width // factor) * -(-self.height // factor)
        channels = 3 if factor > 1 else self.channels  # reduced decoding is always BGR
        decoded = decoded_pixels * channels * self.sample_bytes
        eight_bit_copy = decoded_pixels * channels if self.sample_bytes == 2 and channels == 4 else 0
        return max(decoded + eight_bit_copy, 2 * self.pixels)


def read_header(data: bytes) -> ImageHeader:
    """The image's format, size and pixel layout from its first bytes, or an InputError."""
    if not data:
        raise UnusableInput("empty_image", "the image is empty (0 bytes)")
    kind = image_format(data)
    if kind is None:
        raise UnsupportedInput("not_an_image", f"not a supported image; send one of {', '.join(ACCEPTED_FORMATS)}")
    try:
        header = _HEADER_READERS[kind](data)
    except (struct.error, IndexError, ValueError, KeyError):
        header = None
    if header is None:
        raise InvalidInput("corrupt_image", f"the {kind} header is unreadable")
    if header.width == 0 or header.height == 0:
        raise UnusableInput("empty_image", f"the image is {header.width}x{header.height} pixels")
    return header


def _png_header(data: bytes) -> ImageHeader:
    width, height, depth, color_type = struct.unpack(">IIBB", data[16:26])
    channels = {0: 1, 2: 3, 3: 3, 4: 4, 6: 4}[color_type]
    if channels == 3 and _png_has_transparency(data):
        channels = 4  # OpenCV adds an alpha channel for a tRNS chunk
    return ImageHeader("PNG", width, height, channels, 2 if depth == 16 else 1)


def _png_has_transparency(data: bytes) -> bool:
    position = 8
    while position + 8 <= len(data):
        length, chunk = struct.unpack(">I4s", data[position:position + 8])
        if chunk in (b"tRNS", b"IDAT"):
            return chunk == b"tRNS"
        position += 12 + length
    return False


def _gif_header(data: bytes) -> ImageHeader:
    width, height = struct.unpack("<HH", data[6:10])
    return ImageHeader("GIF", width, height, 4)  # a transparent colour makes it BGRA


def _bmp_header(data: bytes) -> ImageHeader:
    width, height, _, bits = struct.unpack("<iiHH", data[18:30])
    return ImageHeader("BMP", abs(width), abs(height), 4 if bits == 32 else 3)


def _webp_header(data: bytes) -> ImageHeader | None:
    size = _webp_size(data)
    if size is None:
        return None
    return ImageHeader("WebP", *size, 3 if data[12:16] == b"VP8 " else 4)  # only simple lossy has no alpha


def _jpeg_header(data: bytes) -> ImageHeader | None:
    frame = _jpeg_frame(data)
    if frame is None:
        return None
    width, height, components = frame
    return ImageHeader("JPEG", width, height, 1 if components == 1 else 3)  # CMYK decodes to BGR


_HEADER_READERS = {"PNG": _png_header, "GIF": _gif_header, "BMP": _bmp_header, "WebP": _webp_header,
                   "JPEG": _jpeg_header}


def _jpeg_frame(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, components) from the first start-of-frame segment."""
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
            height, width, components = struct.unpack(">HHB", data[position + 5:position + 10])
            return width, height, components
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


def decode_image(data: bytes, header: ImageHeader, min_side: int = 0) -> np.ndarray:
    """The image as OpenCV decodes it (BGR, BGRA or gray; 8 or 16 bit), or an InputError.

    A JPEG whose shorter side is at least 2, 4 or 8 times `min_side` is decoded directly at that
    fraction of its size (libjpeg scales while decoding): the model sees 320x320 anyway, and a
    12-megapixel photo then costs a fraction of the time and memory.
    """
    flags = _JPEG_REDUCED.get(header.jpeg_reduction(min_side), cv2.IMREAD_UNCHANGED)
    image = _decode_once(data, flags)
    if image is None or image.size == 0:
        raise InvalidInput("corrupt_image", f"the {header.kind} image could not be decoded")
    return image


def _decode_once(data: bytes, flags: int) -> np.ndarray | None:
    """Decoded straight into the array that is returned. `cv2.imdecode` decodes into a buffer of
    its own and its Python binding copies that into a numpy array: twice the image's size at the
    peak. `cv2.imread` with an output argument writes into numpy's array directly, so the bytes
    are handed to it as an in-memory file (memfd: no disk, counted like the body it copies)."""
    if not hasattr(os, "memfd_create"):  # not Linux
        return cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    descriptor = os.memfd_create("image", os.MFD_CLOEXEC)
    try:
        with open(descriptor, "wb", closefd=False) as file:
            file.write(data)
        return cv2.imread(f"/proc/self/fd/{descriptor}", None, flags)
    finally:
        os.close(descriptor)


_JPEG_REDUCED = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}
