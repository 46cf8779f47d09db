"""An image's header is read without decoding it: its format, size and the layout OpenCV will decode
to, what decoding it will take in memory, and how long (vision_api.image_headers)."""

from __future__ import annotations

import pytest
from PIL import Image

from tests.services.vision_api import crafted_images
from tests.services.vision_api.conftest import encode, photo, pil_bytes
from vision_api.image_headers import ImageHeader, image_format, read_header


@pytest.mark.parametrize(("data", "kind"), [
    (encode(photo(30, 40), ".png"), "PNG"),
    (encode(photo(30, 40), ".jpg"), "JPEG"),
    (encode(photo(30, 40), ".bmp"), "BMP"),
    (encode(photo(30, 40), ".webp"), "WebP"),
    (pil_bytes(Image.new("RGB", (40, 30)), "GIF"), "GIF"),
    (pil_bytes(Image.new("RGB", (40, 30)), "WEBP", lossless=True), "WebP"),
    (pil_bytes(Image.new("RGBA", (40, 30)), "WEBP", lossless=False), "WebP"),
    (pil_bytes(Image.new("CMYK", (40, 30)), "JPEG"), "JPEG"),
    (pil_bytes(Image.new("RGB", (40, 30)), "JPEG", progressive=True), "JPEG"),
])
def test_header_size_of_every_accepted_format(data, kind):
    assert image_format(data) == kind
    header = read_header(data)
    assert (header.kind, header.width, header.height) == (kind, 40, 30)


def test_working_memory_is_the_larger_of_decoding_and_the_full_size_mask():
    photo_40mp = ImageHeader("JPEG", 8000, 5000, 3)
    assert photo_40mp.jpeg_reduction(320) == 8
    assert photo_40mp.working_bytes(320) == 2 * 40_000_000, "the mask and its PNG: more than 1000x625 BGR"
    assert ImageHeader("JPEG", 64000, 600, 3).working_bytes(320) == 64000 * 600 * 3, "too narrow to reduce"
    rgba16 = ImageHeader("PNG", 100, 100, 4, 2)
    assert rgba16.working_bytes(320) == 100 * 100 * (8 + 4), "decoded, and its 8-bit copy"
    assert "16-bit color with alpha PNG" in rgba16.describe()


# --- issue 20: what the header must tell before decoding ------------------------------------------

def test_the_scans_of_a_jpeg_are_counted_from_its_header():
    assert read_header(encode(photo(64, 64), ".jpg")).scans == 1
    assert read_header(crafted_images.progressive_jpeg(64, 64)).scans == 10  # libjpeg's script for colour
    assert read_header(crafted_images.many_scan_jpeg(1000, 64, 64)).scans == 6 + 1000  # gray: 6, and 1,000 more


def test_progressive_jpeg_is_charged_for_every_coefficient():
    """libjpeg keeps the whole image's coefficients for a progressive JPEG, however much it
    scales the output down: 6 bytes a pixel at 4:4:4, 3 at 4:2:0, 2 for gray (measured peaks:
    bench/results/decode_guard.md)."""
    for subsampling, gray, per_pixel in ((0, False, 6), (2, False, 3), (0, True, 2)):
        header = read_header(crafted_images.progressive_jpeg(1600, 1200, subsampling, gray))
        assert header.coefficient_bytes == 1600 * 1200 * per_pixel
        assert header.working_bytes(320) >= 1600 * 1200 * per_pixel
    assert read_header(encode(photo(1200, 1600), ".jpg")).coefficient_bytes == 0, "baseline: decoded as it streams"


def test_gif_and_webp_are_charged_for_what_their_decoders_hold():
    assert read_header(crafted_images.flat_gif(400, 300)).working_bytes(320) == 400 * 300 * (4 + 5)
    assert read_header(crafted_images.lossless_webp(400, 300)).working_bytes(320) == 400 * 300 * (4 + 4)


def test_the_header_tells_costly_images_from_normal_photos():
    costly = lambda data: read_header(data).decode_seconds(320) > 0.1  # noqa: E731 - VisionApiSettings' default
    assert not costly(encode(photo(3000, 4000), ".jpg")), "a phone's photo"
    assert not costly(encode(photo(1080, 1920), ".png"))
    assert costly(crafted_images.many_scan_jpeg(26, 6000, 4500))
    assert costly(crafted_images.flat_gif()) and costly(encode(photo(3000, 4000), ".png"))
