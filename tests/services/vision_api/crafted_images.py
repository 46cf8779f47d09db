"""Small crafted images that cost much to decode (issue 20): what an attacker sends instead of a
large plain file. Made in memory, each a few bytes to a few MB, each within the body and pixel limits.

Used by the decoder's unit tests, the memory tests under compose's limit, the fuzzer's seed corpus
and the fault tier's stream of worst inputs.
"""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image

EOI = b"\xff\xd9"
SOS = b"\xff\xda"


def _save(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def flat(width: int, height: int, mode: str = "RGB", value: int = 128) -> Image.Image:
    return Image.new(mode, (width, height), value if mode in ("L", "P") else (value,) * len(mode))


def flat_gif(width: int = 8000, height: int = 5000) -> bytes:
    """One colour, LZW-compressed to almost nothing: 40 MP in about 2 MB (issue 20, item 0)."""
    return _save(flat(width, height, "P", 1), "GIF")


def lossless_webp(width: int = 4000, height: int = 3000) -> bytes:
    """A flat lossless WebP: 12 MP in a few KB, decoded through a 4-byte ARGB buffer and a copy."""
    return _save(flat(width, height), "WEBP", lossless=True)


def progressive_jpeg(width: int = 4000, height: int = 3000, subsampling: int = 0, gray: bool = False) -> bytes:
    """Progressive JPEG (4:4:4 by default): libjpeg keeps every coefficient of the image while
    decoding, 2 bytes a sample, however much it scales the output down."""
    image = flat(width, height, "L" if gray else "RGB")
    return _save(image, "JPEG", progressive=True, quality=90, subsampling=subsampling)


def many_scan_jpeg(scans: int = 1000, width: int = 4000, height: int = 3000) -> bytes:
    """A uniform grey progressive JPEG whose last scan is followed by `scans` copies of it: each costs a
    pass over every block of the image, and each is a few dozen bytes (issue 20, item 1)."""
    data = progressive_jpeg(width, height, gray=True)
    last_scan = data[data.rindex(SOS):data.rindex(EOI)]
    return data[:data.rindex(EOI)] + last_scan * scans + EOI


def huge_bmp_header(width: int = 1_100_000, height: int = 30) -> bytes:
    """A 54-byte BMP whose header claims width x height 24-bit pixels and holds none (item 2)."""
    row = (width * 3 + 3) // 4 * 4
    file_header = b"BM" + struct.pack("<IHHI", 54 + row * height, 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, row * height, 2835, 2835, 0, 0)
    return file_header + info


def exif_rotated_jpeg(width: int = 2560, height: int = 1280, orientation: int = 6) -> bytes:
    """A photo as phones store it: pixels as the sensor saw them, and an EXIF Orientation tag that
    says how to turn them for display (6: 90 degrees clockwise). The salient object, a bright
    disc, sits in the left third of the stored pixels (item 10)."""
    yy, xx = np.mgrid[0:height, 0:width]
    pixels = np.full((height, width, 3), 40, np.uint8)
    pixels[(xx - width // 6) ** 2 + (yy - height // 2) ** 2 < (height // 4) ** 2] = 230
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _save(Image.fromarray(pixels), "JPEG", quality=90, exif=exif.tobytes())


def worst_inputs() -> dict[str, bytes]:
    """Name -> the costliest small input of each kind above, at the sizes the issue measured."""
    return {
        "flat 40 MP GIF": flat_gif(),
        "flat 12 MP lossless WebP": lossless_webp(),
        "12 MP progressive 4:4:4 JPEG": progressive_jpeg(),
        "12 MP JPEG with 10,000 scans": many_scan_jpeg(10_000),
        "BMP header claiming 1,100,000 x 30": huge_bmp_header(),
    }
