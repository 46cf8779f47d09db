"""Decoding a caller's image, once its header (vision_api.image_headers) was read and checked: OpenCV
with the flags its header calls for, then the model's example, turned as its viewer sees it."""

from __future__ import annotations

import os

import cv2
import numpy as np

from model_preprocessing.image import MODEL_SIZE, model_input, to_rgb8
from service_kit.core.refusals import InvalidInput
from vision_api.image_headers import ImageHeader


def decode_flags(header: ImageHeader, min_side: int = 0) -> int:
    """OpenCV's flags for this image, stored orientation kept (see orient).

    A JPEG whose shorter side is at least 2, 4 or 8 times `min_side` is decoded directly at that
    fraction of its size (libjpeg scales while decoding): the model sees 320x320 anyway, and a
    12-megapixel photo then costs a fraction of the time and memory.
    """
    return _JPEG_REDUCED.get(header.jpeg_reduction(min_side), cv2.IMREAD_UNCHANGED)


def decode_file(path: str, flags: int, kind: str = "image") -> np.ndarray:
    """The image in a file as OpenCV decodes it (BGR, BGRA or gray; 8 or 16 bit), or an InputError.
    `cv2.imread` with an output argument writes into numpy's array directly; `cv2.imdecode` would
    decode into a buffer of its own and copy that: twice the image at the peak."""
    try:
        image = cv2.imread(path, None, flags)
    except cv2.error:  # OpenCV's own checks (sizes past its limits, allocation): the image is unusable
        image = None
    if image is None or image.size == 0:
        raise InvalidInput("corrupt_image", f"the {kind} image could not be decoded")
    return image


def decode_image(data: bytes, header: ImageHeader, min_side: int = 0) -> np.ndarray:
    """decode_file for bytes in memory (an in-memory file: no disk), in this process."""
    descriptor = os.memfd_create("image", os.MFD_CLOEXEC)
    try:
        with open(descriptor, "wb", closefd=False) as file:
            file.write(data)
        return decode_file(f"/proc/self/fd/{descriptor}", decode_flags(header, min_side), header.kind)
    finally:
        os.close(descriptor)


def model_example(image: np.ndarray, orientation: int) -> np.ndarray:
    """A decoded image's `img_in` example: at the model's size, turned for display, mean-subtracted.
    The full-size pixels are overwritten on the way (to_rgb8 in place)."""
    return model_input(orient(to_rgb8(image, MODEL_SIZE, in_place=True), orientation))


def orient(image: np.ndarray, orientation: int) -> np.ndarray:
    """Turn stored pixels as EXIF's Orientation says, the way OpenCV does when it applies it
    (imgcodecs' ApplyExifOrientation), so that every image is seen as its viewer sees it: OpenCV
    itself applies it for every flag but IMREAD_UNCHANGED, so whether a photo was turned would
    depend on whether it was decoded at a reduced size."""
    if orientation in (5, 6, 7, 8):
        image = cv2.transpose(image)
    flip = {2: 1, 3: -1, 4: 0, 6: 1, 7: -1, 8: 0}.get(orientation)
    return image if flip is None else cv2.flip(image, flip)


# Orientation is applied by orient(), at the model's size, for every format and decoding alike.
_JPEG_REDUCED = {factor: flag | cv2.IMREAD_IGNORE_ORIENTATION for factor, flag in
                 ((2, cv2.IMREAD_REDUCED_COLOR_2), (4, cv2.IMREAD_REDUCED_COLOR_4), (8, cv2.IMREAD_REDUCED_COLOR_8))}
