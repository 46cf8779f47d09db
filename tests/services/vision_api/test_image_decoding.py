"""Header sizes are read without decoding, and every format and pixel layout decodes or is refused."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from service_kit.errors import ApiError
from tests.services.vision_api.conftest import encode, photo, pil_bytes, png_claiming
from vision_api.image_decoding import decode_image, header_size, image_format

LIMIT = 10_000_000


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
    assert header_size(data, kind) == (40, 30)


def test_pixel_layouts_decode():
    gray, width, height = decode_image(encode(np.full((5, 6), 100, np.uint8)), LIMIT)
    assert (width, height) == (6, 5)
    assert gray.shape == (5, 6)
    deep, _, _ = decode_image(encode(np.full((5, 6, 3), 60000, np.uint16)), LIMIT)
    assert deep.dtype == np.uint16
    rgba, _, _ = decode_image(encode(np.zeros((5, 6, 4), np.uint8)), LIMIT)
    assert rgba.shape == (5, 6, 4)
    cmyk, _, _ = decode_image(pil_bytes(Image.new("CMYK", (6, 5), (0, 255, 0, 0)), "JPEG"), LIMIT)
    assert cmyk.shape == (5, 6, 3)
    frames = [Image.new("RGB", (6, 5), c) for c in ("red", "blue")]
    animated = pil_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert decode_image(animated, LIMIT)[0].shape[:2] == (5, 6)


@pytest.mark.parametrize(("data", "status", "code"), [
    (b"", 422, "empty_image"),
    (b"hello, not an image", 415, "not_an_image"),
    (b"<svg xmlns='http://www.w3.org/2000/svg'></svg>", 415, "not_an_image"),
    (b"<html><body>GIF89a</body></html>", 415, "not_an_image"),
    (png_claiming(100_000, 100_000), 413, "image_too_large"),
    (png_claiming(0, 10), 422, "empty_image"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", 400, "corrupt_image"),
    (encode(photo(), ".png")[:60], 400, "corrupt_image"),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF", 400, "corrupt_image"),
])
def test_hostile_images_are_refused_with_the_right_status(data, status, code):
    with pytest.raises(ApiError) as caught:
        decode_image(data, LIMIT)
    assert (caught.value.status, caught.value.code) == (status, code)


def test_size_limit_is_checked_before_decoding(monkeypatch):
    def must_not_decode(*args):
        raise AssertionError("decoded an image that is over the limit")

    monkeypatch.setattr(cv2, "imdecode", must_not_decode)
    with pytest.raises(ApiError) as caught:
        decode_image(encode(photo(100, 100), ".jpg"), 5000)
    assert caught.value.status == 413


def test_truncated_jpeg_decodes_what_is_there_or_is_refused():
    data = encode(photo(200, 200), ".jpg")
    try:
        image, _, _ = decode_image(data[: len(data) // 2], LIMIT)
    except ApiError as error:
        assert error.status == 400
    else:
        assert image.shape == (200, 200, 3)


def test_large_jpegs_are_decoded_reduced_but_report_their_full_size():
    big = encode(photo(1400, 2000), ".jpg")
    image, width, height = decode_image(big, LIMIT, min_side=320)
    assert (width, height) == (2000, 1400)
    assert image.shape[:2] == (350, 500), "decoded at 1/4: still at least 320 on the short side"
    full, _, _ = decode_image(big, LIMIT)
    assert full.shape[:2] == (1400, 2000)
    small, _, _ = decode_image(encode(photo(500, 600), ".jpg"), LIMIT, min_side=320)
    assert small.shape[:2] == (500, 600), "not reduced below the model's size"
