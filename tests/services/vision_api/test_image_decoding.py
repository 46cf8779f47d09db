"""Every format and pixel layout decodes or is refused, at a reduced size where libjpeg can, turned
as its viewer sees it; and what the header says is never less than what decoding takes."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from service_kit.core.refusals import InputError
from service_kit.http.errors import from_input_error
from tests.services.vision_api import crafted_images
from tests.services.vision_api.conftest import encode, photo, pil_bytes, png_claiming
from vision_api.image_decoding import decode_image, orient
from vision_api.image_headers import read_header


def decode(data: bytes, min_side: int = 0):
    return decode_image(data, read_header(data), min_side)


@pytest.mark.parametrize("data", [
    encode(np.full((5, 6), 100, np.uint8)),
    encode(np.full((5, 6, 3), 60000, np.uint16)),
    encode(np.full((5, 6, 4), 60000, np.uint16)),
    encode(np.zeros((5, 6, 4), np.uint8)),
    encode(photo(5, 6), ".jpg"),
    encode(photo(5, 6), ".bmp"),
    encode(np.zeros((5, 6, 4), np.uint8), ".webp"),
    pil_bytes(Image.new("L", (6, 5)), "JPEG"),
    pil_bytes(Image.new("CMYK", (6, 5)), "JPEG"),
    pil_bytes(Image.new("P", (6, 5)), "PNG", transparency=0),
    pil_bytes(Image.new("RGB", (6, 5)), "PNG", transparency=(0, 0, 0)),
    pil_bytes(Image.new("LA", (6, 5)), "PNG"),
    pil_bytes(Image.new("RGBA", (6, 5)), "BMP"),
    pil_bytes(Image.new("RGB", (6, 5), "red"), "GIF", transparency=0),
    pil_bytes(Image.new("RGBA", (6, 5), (1, 2, 3, 100)), "WEBP", lossless=True),
])
def test_the_header_never_underestimates_what_decoding_takes(data):
    """The memory budget is reserved from the header: the decoded array must fit what it says."""
    header = read_header(data)
    decoded = decode(data)
    channels = 1 if decoded.ndim == 2 else decoded.shape[2]
    assert decoded.nbytes <= header.width * header.height * header.channels * header.sample_bytes
    assert channels <= header.channels and decoded.itemsize == header.sample_bytes


def test_pixel_layouts_decode():
    assert decode(encode(np.full((5, 6), 100, np.uint8))).shape == (5, 6)
    assert decode(encode(np.full((5, 6, 3), 60000, np.uint16))).dtype == np.uint16
    assert decode(encode(np.zeros((5, 6, 4), np.uint8))).shape == (5, 6, 4)
    assert decode(pil_bytes(Image.new("CMYK", (6, 5), (0, 255, 0, 0)), "JPEG")).shape == (5, 6, 3)
    frames = [Image.new("RGB", (6, 5), c) for c in ("red", "blue")]
    animated = pil_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert decode(animated).shape[:2] == (5, 6)


@pytest.mark.parametrize(("data", "status", "code"), [
    (b"", 422, "empty_image"),
    (b"hello, not an image", 415, "not_an_image"),
    (b"<svg xmlns='http://www.w3.org/2000/svg'></svg>", 415, "not_an_image"),
    (b"<html><body>GIF89a</body></html>", 415, "not_an_image"),
    (png_claiming(0, 10), 422, "empty_image"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", 400, "corrupt_image"),
    (encode(photo(), ".png")[:60], 400, "corrupt_image"),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF", 400, "corrupt_image"),
])
def test_hostile_images_are_refused_with_the_right_status(data, status, code):
    """Decoding raises what is wrong with the image; service_kit.http.errors makes it a status."""
    with pytest.raises(InputError) as caught:
        decode(data)
    assert (from_input_error(caught.value).status, caught.value.code) == (status, code)


def test_truncated_jpeg_decodes_what_is_there_or_is_refused():
    data = encode(photo(200, 200), ".jpg")
    try:
        image = decode(data[: len(data) // 2])
    except InputError as error:
        assert from_input_error(error).status == 400
    else:
        assert image.shape == (200, 200, 3)


def test_large_jpegs_are_decoded_reduced_but_report_their_full_size():
    big = encode(photo(1400, 2000), ".jpg")
    assert (read_header(big).width, read_header(big).height) == (2000, 1400)
    assert decode(big, min_side=320).shape[:2] == (350, 500), "decoded at 1/4: still at least 320 on the short side"
    assert decode(big).shape[:2] == (1400, 2000)
    small = decode(encode(photo(500, 600), ".jpg"), min_side=320)
    assert small.shape[:2] == (500, 600), "not reduced below the model's size"


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("image_format", ["JPEG", "PNG", "WEBP"])
def test_exif_orientation_is_read_and_applied_as_opencv_applies_it(image_format, orientation):
    """One rule for every size and format (item 10): the orientation a viewer sees. OpenCV turns
    JPEG, PNG and WebP by their EXIF tag for every flag but IMREAD_UNCHANGED; orient() must do
    exactly what it does."""
    pixels = np.random.default_rng(orientation).integers(0, 255, (20, 32, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = pil_bytes(Image.fromarray(pixels), image_format, exif=exif.tobytes(), **(
        {"lossless": True} if image_format == "WEBP" else {"quality": 100} if image_format == "JPEG" else {}))
    header = read_header(data)
    assert header.orientation == orientation
    stored = decode(data)
    shown_by_opencv = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert np.array_equal(orient(stored, orientation), shown_by_opencv)
    assert header.display_size == shown_by_opencv.shape[1::-1]


def test_reduced_decoding_keeps_the_stored_orientation():
    """Reduced JPEG decoding would turn the image itself (OpenCV applies EXIF there): it must not,
    or orient() would turn it twice."""
    data = crafted_images.exif_rotated_jpeg(2560, 1280, orientation=6)
    assert decode(data, min_side=320).shape[:2] == (320, 640)
    assert decode(data).shape[:2] == (1280, 2560)
